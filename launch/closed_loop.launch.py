"""Closed loop: the simulator drives the planner through the generated world (ROS 2 Jazzy, launch_ros).

    ros2 launch dima_planner closed_loop.launch.py route:=turn_left:101
    ros2 launch dima_planner closed_loop.launch.py route:=scene-0003 mode:=realtime transport:=compressed

dima_sim_node owns /clock and publishes the six cameras, CameraInfo, /tf_static, /tf, /odom
and /dima/command from the simulated ego; the unchanged planner node (planner.launch.py with
use_sim_time and the reliable sensor QoS of params/ros/sim.yaml) answers with
/dima/trajectory, which the simulator tracks. In lockstep the simulation waits for each
frame's plan. The simulator writes the route's scores (JSON) and BEV picture into `out` and
exits, which ends the launch.

namespace:=sim1 runs one such loop per namespace side by side: /clock, /tf and /tf_static
are remapped into the namespace too, so that the loops never see each other's clock or
poses. Environment as in planner.launch.py: set for this file's processes only.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace, SetRemap
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from dima_planner.data.sample import CAMERAS
from dima_planner.bags import bag_io, replay
from dima_planner.resources import DEFAULT_CHECKPOINT
from dima_planner.ros.env import launch_process_environment


def _planner(context, share):
    """planner.launch.py with sim.yaml and the image transport the simulator publishes. It is
    included inside this file's group, so the namespace and the remaps above apply to it."""
    transport = LaunchConfiguration("transport").perform(context)
    cameras = {}
    for cam in CAMERAS:
        cameras[f"cameras.{cam}.transport"] = transport
        # relative (the namespace applies), named as the bag converter and the simulator name them
        cameras[f"cameras.{cam}.topic"] = bag_io.image_topic(cam, transport == "compressed").lstrip("/")
    return [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "planner.launch.py"])),
        launch_arguments={"overlay_params_file": PathJoinSubstitution([share, "params", "ros", "sim.yaml"]),
                          "extra_params_file": str(replay.planner_params_file(cameras)),
                          "checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device"),
                          "use_sim_time": "true", "namespace": "",  # pushed above
                          "domain_id": LaunchConfiguration("domain_id"),
                          "discovery_range": LaunchConfiguration("discovery_range")}.items())]


def generate_launch_description():
    share = FindPackageShare("dima_planner")
    return LaunchDescription([
        DeclareLaunchArgument("route", default_value="turn_left:101",
                              description="scene-000N of the world, or KIND:INDEX (a generated scenario)"),
        DeclareLaunchArgument("world", default_value="data/world", description="generated world (dima synth)"),
        DeclareLaunchArgument("mode", default_value="lockstep", description="lockstep | realtime"),
        DeclareLaunchArgument("frame_hz", default_value="12.0"),
        DeclareLaunchArgument("image_scale", default_value="0.25", description="1.0 = 1600x900"),
        DeclareLaunchArgument("transport", default_value="raw", description="raw (rgb8) | compressed (JPEG)"),
        DeclareLaunchArgument("out", default_value="out/sim"),
        DeclareLaunchArgument("checkpoint", default_value=DEFAULT_CHECKPOINT),
        DeclareLaunchArgument("device", default_value="cpu"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="ROS namespace of both nodes, their topics and their clock"),
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
            OpaqueFunction(function=_planner, args=[share]),
            Node(
                package="dima_planner", executable="dima_sim_node", name="dima_sim", namespace="", output="screen",
                # The route is over when the simulator exits: so is the launch (the planner with it).
                on_exit=[EmitEvent(event=Shutdown(reason="route finished"))],
                parameters=[PathJoinSubstitution([share, "params", "ros", "sim.yaml"]), {
                    "route": LaunchConfiguration("route"),
                    "world": LaunchConfiguration("world"),
                    "mode": LaunchConfiguration("mode"),
                    "frame_hz": ParameterValue(LaunchConfiguration("frame_hz"), value_type=float),
                    "image_scale": ParameterValue(LaunchConfiguration("image_scale"), value_type=float),
                    "transport": LaunchConfiguration("transport"),
                    "out": LaunchConfiguration("out"),
                }],
            ),
        ]),
    ])
