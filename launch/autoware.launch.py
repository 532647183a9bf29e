"""DiMA planner in an Autoware stack: Autoware's topic names in, Autoware's message types out.

    ros2 launch dima_planner autoware.launch.py                      # sample sensor kit (cameraN)
    ros2 launch dima_planner autoware.launch.py sensor_kit:=carla    # autoware_carla_interface names
    ros2 launch dima_planner autoware.launch.py checkpoint:=/path/to/ckpt backend:=onnxruntime namespace:=/car1

planner.launch.py with the overlay params/ros/autoware.yaml (sensor_kit:=sample: compressed
rectified images /sensing/camera/cameraN/image_rect_color/compressed, the TensorRT VAD node's
camera order) or autoware_carla.yaml (sensor_kit:=carla: /sensing/camera/CAM_FRONT/image_raw ...),
odometry from /localization/kinematic_state, and the Autoware outputs in map:
/planning/dima/trajectory (autoware_planning_msgs/Trajectory) and /planning/dima/objects
(autoware_perception_msgs/PredictedObjects). Every planner.launch.py argument applies
(checkpoint, device, backend, use_sim_time, discovery_range, ...); overlay_params_file:= a copy
of autoware.yaml changes names (e.g. the trajectory topic your control stack reads).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

SENSOR_KITS = ("sample", "carla")


def _planner(context):
    share = FindPackageShare("dima_planner")
    overlays = {"sample": PathJoinSubstitution([share, "params", "ros", "autoware.yaml"]),
                "carla": PathJoinSubstitution([share, "params", "ros", "autoware_carla.yaml"])}
    overlay = (LaunchConfiguration("overlay_params_file").perform(context)
               or overlays[LaunchConfiguration("sensor_kit").perform(context)])
    return [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "planner.launch.py"])),
        launch_arguments={"overlay_params_file": overlay, "namespace": LaunchConfiguration("namespace"),
                          "domain_id": LaunchConfiguration("domain_id"),
                          "discovery_range": LaunchConfiguration("discovery_range")}.items())]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("sensor_kit", default_value="sample", choices=list(SENSOR_KITS),
                              description="camera names: sample (cameraN, compressed) or carla "
                                          "(autoware_carla_interface: CAM_FRONT ..., raw)"),
        DeclareLaunchArgument("overlay_params_file", default_value="",
                              description="instead of the sensor kit's params/ros/autoware*.yaml"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace (several vehicles)"),
        DeclareLaunchArgument("domain_id", default_value="", description="ROS_DOMAIN_ID of the planner; empty: the exported one"),
        DeclareLaunchArgument("discovery_range", default_value="",
                              description="ROS_AUTOMATIC_DISCOVERY_RANGE of the planner; empty: the exported one, else LOCALHOST"),
        OpaqueFunction(function=_planner),
    ])
