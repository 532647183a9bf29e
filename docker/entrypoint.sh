#!/bin/bash
# Source ROS 2 Jazzy and the dima workspace, export the Fast DDS profile for the discovery
# range under the variable Jazzy reads (python3 -m dima_planner.ros.env; a profile the
# user passed with -e wins), then run the given command.
set -e
source /opt/ros/jazzy/setup.bash
source /ws/install/setup.bash
eval "$(python3 -m dima_planner.ros.env)"
exec "$@"
