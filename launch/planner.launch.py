"""DiMA planner node alone (ROS 2 Jazzy, launch_ros).

    ros2 launch dima_planner planner.launch.py checkpoint:=/path/to/dima_tiny device:=cuda
    ros2 launch dima_planner planner.launch.py namespace:=car1     # one planner per vehicle
    ros2 launch dima_planner planner.launch.py overlay_params_file:=$(ros2 pkg prefix dima_planner)/share/dima_planner/params/ros/autoware.yaml

The node is a lifecycle node; with autostart:=true (default) it configures and activates
itself, with autostart:=false a lifecycle manager drives <namespace>/dima_planner/change_state.
The ROS domain is the one you exported (domain_id:=N sets another for this launch's
processes). DDS discovery follows ROS_AUTOMATIC_DISCOVERY_RANGE, or stays on this computer
where that is unset (discovery_range:=SUBNET reaches the others); the Fast DDS profile
follows it (see dima_planner.ros.env). Everything below is set for the processes this file
starts only (a scoped group): a launch file that includes this one keeps its environment.

Every other launch file starts the planner through this one (IncludeLaunchDescription):
`extra_params_file` is loaded after the overlay (the camera transport of a replayed bag or of
the simulator, written by those launch files).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from dima_planner.resources import DEFAULT_CHECKPOINT
from dima_planner.ros.env import launch_process_environment


def _planner_node(context):
    """The node, with extra_params_file after the two parameter files where one is given."""
    extra = LaunchConfiguration("extra_params_file").perform(context)
    return [LifecycleNode(
        package="dima_planner", executable="dima_planner_node", name="dima_planner", namespace="",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), LaunchConfiguration("overlay_params_file"),
                    *([extra] if extra else []), {
                        "checkpoint": LaunchConfiguration("checkpoint"),
                        "device": LaunchConfiguration("device"),
                        "backend": LaunchConfiguration("backend"),
                        "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                        "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
                    }],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )]


def generate_launch_description():
    share = FindPackageShare("dima_planner")
    params = PathJoinSubstitution([share, "params", "ros", "planner.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=params, description="planner parameters"),
        DeclareLaunchArgument("overlay_params_file", default_value=params,
                              description="loaded after params_file (carla.yaml, autoware.yaml, replay.yaml)"),
        DeclareLaunchArgument("extra_params_file", default_value="",
                              description="loaded after overlay_params_file; empty: none"),
        DeclareLaunchArgument("checkpoint", default_value=DEFAULT_CHECKPOINT),
        DeclareLaunchArgument("device", default_value="cpu"),
        DeclareLaunchArgument("backend", default_value="torch",
                              description="torch | onnxruntime (planner.onnx) | tensorrt (planner_trt.ep)"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("autostart", default_value="true"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="ROS namespace of the node and its relative topics (car1: /car1/dima/path)"),
        DeclareLaunchArgument("discovery_range", default_value="",
                              description="ROS_AUTOMATIC_DISCOVERY_RANGE (LOCALHOST, SUBNET, OFF, SYSTEM_DEFAULT); "
                                          "empty: the exported one, else LOCALHOST"),
        DeclareLaunchArgument("domain_id", default_value="",
                              description="ROS_DOMAIN_ID of the started processes; empty: the exported one"),
        GroupAction(scoped=True, actions=[
            PushRosNamespace(LaunchConfiguration("namespace")),
            OpaqueFunction(function=launch_process_environment),
            OpaqueFunction(function=_planner_node),
        ]),
    ])
