"""DiMA planner node alone (ROS 2 Jazzy, launch_ros).

    ros2 launch dima_planner planner.launch.py checkpoint:=/path/to/dima_tiny device:=cuda
    ros2 launch dima_planner planner.launch.py overlay_params_file:=$(ros2 pkg prefix dima_planner)/share/dima_planner/params/ros/autoware.yaml

The node is a lifecycle node; with autostart:=true (default) it configures and activates
itself, with autostart:=false a lifecycle manager drives /dima_planner/change_state.
DDS discovery stays on this machine unless discovery_range:=SUBNET is given; the Fast DDS
profile follows it (params/fastdds_shm.xml or fastdds_shm_network.xml, see dima_planner.ros.env).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from dima_planner.ros.env import launch_dds_environment


def generate_launch_description():
    share = FindPackageShare("dima_planner")
    params = PathJoinSubstitution([share, "params", "ros", "planner.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=params, description="planner parameters"),
        DeclareLaunchArgument("overlay_params_file", default_value=params,
                              description="loaded after params_file (carla.yaml, autoware.yaml, replay.yaml)"),
        DeclareLaunchArgument("checkpoint", default_value="checkpoints/dima_tiny"),
        DeclareLaunchArgument("device", default_value="cpu"),
        DeclareLaunchArgument("backend", default_value="torch",
                              description="torch | onnxruntime (planner.onnx) | tensorrt (planner_trt.ep)"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("autostart", default_value="true"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("discovery_range", default_value="LOCALHOST",
                              description="ROS_AUTOMATIC_DISCOVERY_RANGE (LOCALHOST, SUBNET, OFF, SYSTEM_DEFAULT)"),
        DeclareLaunchArgument("domain_id", default_value=EnvironmentVariable("ROS_DOMAIN_ID", default_value="42")),
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", LaunchConfiguration("discovery_range")),
        SetEnvironmentVariable("ROS_DOMAIN_ID", LaunchConfiguration("domain_id")),
        # Fast DDS profile for the discovery range, under the variable this distro reads.
        OpaqueFunction(function=launch_dds_environment),
        LifecycleNode(
            package="dima_planner", executable="dima_planner_node", name="dima_planner", namespace="",
            output="screen",
            parameters=[LaunchConfiguration("params_file"), LaunchConfiguration("overlay_params_file"), {
                "checkpoint": LaunchConfiguration("checkpoint"),
                "device": LaunchConfiguration("device"),
                "backend": LaunchConfiguration("backend"),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
            }],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        ),
    ])
