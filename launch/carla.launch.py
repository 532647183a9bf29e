"""DiMA planner on the CARLA ROS bridge (carla-simulator/ros-bridge, ROS 2): no rig file needed.

    ros2 launch carla_ros_bridge carla_ros_bridge_with_example_ego_vehicle.launch.py \
        objects_definition_file:=<objects.json with rgb_front ... rgb_back_right>   # the bridge
    ros2 launch dima_planner carla.launch.py checkpoint:=/path/to/ckpt namespace:=/ego

planner.launch.py with the overlay params/ros/carla.yaml: images /carla/ego_vehicle/<id>/image,
odometry /carla/ego_vehicle/odometry (map -> ego_vehicle), extrinsics from the bridge's stamped
/tf sensor poses (extrinsics_source: tf), and /clock (use_sim_time defaults to true: the bridge
runs the simulation clock). Every planner.launch.py argument applies (checkpoint, device,
backend, discovery_range, ...).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare("dima_planner")
    return LaunchDescription([
        DeclareLaunchArgument("overlay_params_file", default_value=PathJoinSubstitution(
            [share, "params", "ros", "carla.yaml"]), description="CARLA names and frames (params/ros/carla.yaml)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace (several vehicles)"),
        DeclareLaunchArgument("use_sim_time", default_value="true", description="the bridge publishes /clock"),
        DeclareLaunchArgument("domain_id", default_value="", description="ROS_DOMAIN_ID of the planner; empty: the exported one"),
        DeclareLaunchArgument("discovery_range", default_value="",
                              description="ROS_AUTOMATIC_DISCOVERY_RANGE of the planner; empty: the exported one, else LOCALHOST"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "planner.launch.py"])),
            launch_arguments={"overlay_params_file": LaunchConfiguration("overlay_params_file"),
                              "namespace": LaunchConfiguration("namespace"),
                              "use_sim_time": LaunchConfiguration("use_sim_time"),
                              "domain_id": LaunchConfiguration("domain_id"),
                              "discovery_range": LaunchConfiguration("discovery_range")}.items()),
    ])
