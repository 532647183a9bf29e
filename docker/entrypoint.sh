#!/bin/bash
# Source ROS 2 Jazzy and the dima workspace, then run the given command.
set -e
source /opt/ros/jazzy/setup.bash
source /ws/ros2_ws/install/setup.bash
exec "$@"
