"""Replay a nuScenes rosbag2 (from `dima bag convert`) into the planner, optionally with RViz.

    ros2 launch dima_planner nuscenes_replay.launch.py bag:=/data/nuscenes_mini_bag rviz:=true

`ros2 bag play --clock` publishes /clock; the planner runs with use_sim_time and the
reliable QoS of params/ros/replay.yaml. /tf_static is recorded transient-local by the
converter, so the camera extrinsics survive the replay.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, SetEnvironmentVariable, TimerAction
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from dima_planner.ros.env import launch_dds_environment


def generate_launch_description():
    share = FindPackageShare("dima_planner")
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory to play"),
        DeclareLaunchArgument("rate", default_value="1.0"),
        DeclareLaunchArgument("checkpoint", default_value="checkpoints/dima_tiny"),
        DeclareLaunchArgument("device", default_value="cpu"),
        DeclareLaunchArgument("rviz", default_value="false"),
        DeclareLaunchArgument("play_delay", default_value="5.0",
                              description="seconds to let the planner load its model before playing"),
        DeclareLaunchArgument("discovery_range", default_value="LOCALHOST"),
        DeclareLaunchArgument("domain_id", default_value=EnvironmentVariable("ROS_DOMAIN_ID", default_value="42")),
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", LaunchConfiguration("discovery_range")),
        SetEnvironmentVariable("ROS_DOMAIN_ID", LaunchConfiguration("domain_id")),
        # Fast DDS profile for the discovery range, under the variable this distro reads.
        OpaqueFunction(function=launch_dds_environment),
        LifecycleNode(
            package="dima_planner", executable="dima_planner_node", name="dima_planner", namespace="",
            output="screen",
            parameters=[PathJoinSubstitution([share, "params", "ros", "planner.yaml"]),
                        PathJoinSubstitution([share, "params", "ros", "replay.yaml"]),
                        {"checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device"),
                         "autostart": True}],
        ),
        TimerAction(period=LaunchConfiguration("play_delay"), actions=[
            ExecuteProcess(cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock",
                                "--rate", LaunchConfiguration("rate")], output="screen"),
        ]),
        Node(
            package="rviz2", executable="rviz2", name="rviz2", output="screen",
            arguments=["-d", PathJoinSubstitution([share, "launch", "dima.rviz"])],
            parameters=[{"use_sim_time": True}],
            condition=IfCondition(LaunchConfiguration("rviz")),
        ),
    ])
