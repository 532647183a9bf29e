"""Replay a nuScenes rosbag2 (from `dima bag convert`) into the planner, optionally with RViz.

    ros2 launch dima_planner nuscenes_replay.launch.py bag:=/data/nuscenes_mini_bag rviz:=true
    ros2 launch dima_planner nuscenes_replay.launch.py bag:=/data/bag_a namespace:=car1   # several side by side

The replay follows the bag: the planner subscribes to the image transport the bag carries
(raw `sensor_msgs/Image` or, from `dima bag convert --compressed`, the original JPEGs as
`CompressedImage` on `.../image_raw/compressed`; `transport:=raw|compressed` insists on one),
and RViz's camera view shows the same. `ros2 bag play --clock` starts once the planner
reports itself active on /diagnostics (`dima_healthcheck`), not after a fixed delay; it
publishes /clock and the planner (planner.launch.py with the overlay params/ros/replay.yaml)
runs with use_sim_time and its reliable QoS. /tf_static is recorded transient-local by the converter, so the
camera extrinsics survive the replay. With a namespace, every topic of the bag (and /clock)
is played into it and the planner's /clock, /tf and /tf_static follow, so replays never
cross. Environment as in planner.launch.py: set for this file's processes only.
"""
import tempfile

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, GroupAction,
                            IncludeLaunchDescription, LogInfo, OpaqueFunction, RegisterEventHandler)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace, SetRemap
from launch_ros.substitutions import ExecutableInPackage, FindPackageShare

from dima_planner.bags import replay
from dima_planner.resources import DEFAULT_CHECKPOINT
from dima_planner.ros.env import launch_process_environment


def _replay(context, share):
    """The planner, the readiness wait, the player and RViz, from what the bag carries."""
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    bag, transport = arg("bag"), arg("transport")
    cameras = replay.node_parameters(bag, transport)  # a clear error for a bag without front images
    ns = context.launch_configurations.get("ros_namespace", "/").rstrip("/")
    kinds = sorted({v for k, v in cameras.items() if k.endswith(".transport")})
    # planner.launch.py, included inside this file's group: the namespace and remaps apply to it.
    planner = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "planner.launch.py"])),
        launch_arguments={"overlay_params_file": PathJoinSubstitution([share, "params", "ros", "replay.yaml"]),
                          "extra_params_file": str(replay.planner_params_file(cameras)),
                          "checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device"),
                          "use_sim_time": "true", "namespace": "",  # pushed above
                          "domain_id": LaunchConfiguration("domain_id"),
                          "discovery_range": LaunchConfiguration("discovery_range")}.items())
    wait = ExecuteProcess(
        cmd=[ExecutableInPackage("dima_healthcheck", "dima_planner"), "--node", f"{ns}/dima_planner",
             "--timeout", LaunchConfiguration("ready_timeout")],
        name="wait_for_planner", output="screen")
    remaps = replay.namespace_remaps(bag, ns)
    play = ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock", "--rate", LaunchConfiguration("rate"),
                               *(["--remap", *remaps] if remaps else [])],
                          name="bag_play", output="screen")

    def on_wait_exit(event, _context):
        if event.returncode == 0:
            return [play]
        return [LogInfo(msg=f"{ns}/dima_planner did not become active; not playing {bag}"),
                EmitEvent(event=Shutdown(reason="planner not active"))]

    front = cameras[f"cameras.{replay.bag_io.CAMERAS_ORDER[0]}.topic"]
    actions = [LogInfo(msg=f"planner for {bag}: {' and '.join(kinds)} images"), planner]
    if IfCondition(LaunchConfiguration("play")).evaluate(context):
        actions += [wait, RegisterEventHandler(OnProcessExit(target_action=wait, on_exit=on_wait_exit))]
    if IfCondition(LaunchConfiguration("rviz")).evaluate(context):
        template = PathJoinSubstitution([share, "launch", "dima.rviz"]).perform(context)
        config = replay.rviz_config(template, tempfile.mkdtemp(prefix="dima_rviz_") + "/dima.rviz", "/" + front, ns)
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                            arguments=["-d", str(config)], parameters=[{"use_sim_time": True}]))
    return actions


def generate_launch_description():
    share = FindPackageShare("dima_planner")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory to play"),
        DeclareLaunchArgument("rate", default_value="1.0"),
        DeclareLaunchArgument("checkpoint", default_value=DEFAULT_CHECKPOINT),
        DeclareLaunchArgument("device", default_value="cpu"),
        DeclareLaunchArgument("rviz", default_value="false"),
        DeclareLaunchArgument("transport", default_value="auto",
                              description="auto (what the bag carries) | raw | compressed"),
        DeclareLaunchArgument("play", default_value="true",
                              description="false: only the planner, configured for the bag (docker/compose.yaml "
                                          "plays it from another container)"),
        DeclareLaunchArgument("ready_timeout", default_value="300",
                              description="seconds to wait for the planner to report active before giving up"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="ROS namespace of the planner; the bag's topics and /clock are played into it"),
        DeclareLaunchArgument("discovery_range", default_value="",
                              description="ROS_AUTOMATIC_DISCOVERY_RANGE (LOCALHOST, SUBNET, OFF, SYSTEM_DEFAULT); "
                                          "empty: the exported one, else LOCALHOST"),
        DeclareLaunchArgument("domain_id", default_value="",
                              description="ROS_DOMAIN_ID of the started processes; empty: the exported one"),
        GroupAction(scoped=True, actions=[
            PushRosNamespace(LaunchConfiguration("namespace")),
            # Relative targets resolve in the namespace (the root one: unchanged).
            SetRemap(src="/clock", dst="clock"),
            SetRemap(src="/tf", dst="tf"),
            SetRemap(src="/tf_static", dst="tf_static"),
            OpaqueFunction(function=launch_process_environment),
            OpaqueFunction(function=_replay, args=[share]),
        ]),
    ])
