#!/bin/bash
# Docker HEALTHCHECK: healthy when the node reports itself ready on its own /diagnostics
# (model loaded, lifecycle state active; `ready` for the MLLM node), see dima_healthcheck.
#   DIMA_HEALTH_NODE     fully qualified node name (default /dima_planner; /car1/dima_planner)
#   DIMA_HEALTH_TIMEOUT  seconds to listen (default 10; the diagnostics come every second)
set -eo pipefail
source /opt/ros/jazzy/setup.bash
source /ws/install/setup.bash
eval "$(python3 -m dima_planner.ros.env)"
exec ros2 run dima_planner dima_healthcheck --node "${DIMA_HEALTH_NODE:-/dima_planner}" \
    --timeout "${DIMA_HEALTH_TIMEOUT:-10}" --quiet
