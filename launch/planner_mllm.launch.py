"""DiMA planner + MLLM reasoning node (Dual deployment: the MLLM reads /dima/scene_tokens).

    ros2 launch dima_planner planner_mllm.launch.py checkpoint:=/ckpt/dima_tiny device:=cuda
    ros2 launch dima_planner planner_mllm.launch.py namespace:=car1

The planner is planner.launch.py's (every argument passed on); the MLLM node starts beside it,
also a lifecycle node: `autostart` applies to both (false: a lifecycle manager drives
<namespace>/dima_planner/change_state and <namespace>/dima_mllm/change_state).
Environment and namespace as in planner.launch.py: set for this file's processes only.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from dima_planner.resources import STAGE2_CHECKPOINT
from dima_planner.ros.env import launch_process_environment

# Passed on to planner.launch.py unchanged.
PLANNER_ARGUMENTS = ("params_file", "overlay_params_file", "checkpoint", "device", "use_sim_time", "autostart",
                     "log_level", "namespace", "domain_id", "discovery_range")


def generate_launch_description():
    share = FindPackageShare("dima_planner")
    params = PathJoinSubstitution([share, "params", "ros", "planner.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=params),
        DeclareLaunchArgument("overlay_params_file", default_value=params),
        DeclareLaunchArgument("mllm_params_file",
                              default_value=PathJoinSubstitution([share, "params", "ros", "mllm.yaml"])),
        DeclareLaunchArgument("checkpoint", default_value=STAGE2_CHECKPOINT),
        DeclareLaunchArgument("mllm_checkpoint",
                              default_value=PathJoinSubstitution([share, STAGE2_CHECKPOINT]),
                              description="MLLM branch (Q-Formers, LoRA, heads) of a stage-2 checkpoint; '' = untrained"),
        DeclareLaunchArgument("device", default_value="cpu"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("autostart", default_value="true"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="ROS namespace of both nodes and their relative topics"),
        DeclareLaunchArgument("discovery_range", default_value="",
                              description="ROS_AUTOMATIC_DISCOVERY_RANGE; empty: the exported one, else LOCALHOST"),
        DeclareLaunchArgument("domain_id", default_value="",
                              description="ROS_DOMAIN_ID of the started processes; empty: the exported one"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "planner.launch.py"])),
            launch_arguments=[(name, LaunchConfiguration(name)) for name in PLANNER_ARGUMENTS]),
        GroupAction(scoped=True, actions=[
            PushRosNamespace(LaunchConfiguration("namespace")),
            OpaqueFunction(function=launch_process_environment),
            LifecycleNode(
                package="dima_planner", executable="dima_mllm_node", name="dima_mllm", namespace="",
                output="screen",
                parameters=[LaunchConfiguration("mllm_params_file"), {
                    "checkpoint": LaunchConfiguration("mllm_checkpoint"),
                    "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                    "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
                }],
                arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            ),
        ]),
    ])
