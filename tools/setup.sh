#!/usr/bin/env bash
# One-command, idempotent set-up of the dima development environment on a fresh
# Debian 12 machine with Python 3.11:
#   1. a venv at .venv with the pinned requirements: ROS 2 Jazzy wheels by default
#      (tools/requirements-ros-jazzy.txt), Kilted with `ROS_DISTRO=kilted make setup`
#      (tools/requirements-ros-kilted.txt), plus torch CPU, ... (tools/requirements.txt);
#   2. the ROS wheels' CMake exports fixed to point at this interpreter's headers;
#   3. dima_msgs (and tf2_msgs, autoware_planning_msgs, autoware_perception_msgs where the
#      ROS environment lacks them) built with plain cmake into the venv prefix, so they
#      import without sourcing anything;
#   4. the dima_planner package installed editable (console entry points in .venv/bin).
# Each step records a stamp (a hash of its inputs) and is skipped when nothing changed,
# so a second run takes about a second. A venv made for another distro is removed and
# made again from scratch (the distro stamp): ROS wheels of two distros never mix.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="${DIMA_VENV:-$root/.venv}"
stamps="$venv/.dima-stamps"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$stamps"; echo "$2" >"$stamps/$1"; }

# 0. ROS distro ------------------------------------------------------------------------
# ROS_DISTRO when set (`ROS_DISTRO=kilted make setup`, or a sourced ROS environment);
# unset: the distro the venv was made for (so `make test` after a kilted setup tests
# kilted), else the LTS, jazzy. A venv older than the distro stamp was Kilted: remade.
distro="${ROS_DISTRO:-$(cat "$stamps/distro" 2>/dev/null || echo jazzy)}"
ros_req="$root/tools/requirements-ros-$distro.txt"
if [ ! -f "$ros_req" ]; then
  supported=$(cd "$root/tools" && ls requirements-ros-*.txt | sed 's/requirements-ros-\(.*\)\.txt/\1/' | tr '\n' ' ')
  echo "dima setup: no ROS wheels for ROS_DISTRO=$distro; supported: $supported" >&2
  exit 1
fi
if [ -x "$venv/bin/python" ] && ! stamp_ok distro "$distro"; then
  if [ ! -d "$stamps" ]; then
    echo "dima setup: $venv exists but was not made by this script; remove it or set DIMA_VENV=" >&2
    exit 1
  fi
  say "$venv was made for ROS $(cat "$stamps/distro" 2>/dev/null || echo kilted); making it again for $distro"
  rm -rf "$venv"
fi

# 1. venv + requirements ------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "dima needs Python 3.11 (the ROS 2 wheels are cp311); set PYTHON=" >&2; exit 1; }
  say "creating $venv (ROS 2 $distro)"
  "$python" -m venv "$venv"
  # The venv's share/ holds the ROS wheels' package.xml files: a colcon workspace with this
  # repository in src/ must not take them for source packages.
  touch "$venv/COLCON_IGNORE"
  stamp_set distro "$distro"
fi
py="$venv/bin/python"
req_hash=$(hash_of "$root/tools/requirements.txt" "$ros_req" "$root/tools/requirements-nodeps.txt")
if ! stamp_ok requirements "$req_hash"; then
  say "installing pinned requirements (first time: a few minutes)"
  "$py" -m pip install -q --upgrade pip wheel  # setuptools: pinned in requirements.txt (colcon)
  "$py" -m pip install -q -r "$ros_req" -r "$root/tools/requirements.txt"
  # Packages whose declared dependencies must not be installed (see the file's comments).
  "$py" -m pip install -q --no-deps -r "$root/tools/requirements-nodeps.txt"
  rm -f "$stamps/cmake-fix" "$stamps/dima_msgs" "$stamps/tf2_msgs" "$stamps/autoware_planning_msgs" \
    "$stamps/autoware_perception_msgs"
  stamp_set requirements "$req_hash"
fi

# 2. CMake exports of the ROS wheels --------------------------------------------------
# The wheels were built under /opt/python/cp311-cp311; their exported CMake targets name
# that interpreter's include dirs, which do not exist here.
if ! stamp_ok cmake-fix "$req_hash"; then
  say "pointing the ROS wheels' CMake exports at this interpreter"
  "$py" "$root/tools/fix_ros_cmake_exports.py" "$venv"
  stamp_set cmake-fix "$req_hash"
fi

# 3. interface packages ---------------------------------------------------------------
build_interface() {  # name source_dir
  local name=$1 src=$2 h
  h=$(find "$src" -type f | sort | xargs cat | sha256sum | cut -c1-16)
  stamp_ok "$name" "$h" && return 0
  say "building $name (about 30 s)"
  local build
  build=$(mktemp -d)
  (cd "$build" \
    && PATH="$venv/bin:$PATH" cmake "$src" -DCMAKE_INSTALL_PREFIX="$venv" -DCMAKE_PREFIX_PATH="$venv" \
        -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF >cmake.log 2>&1 \
    && PATH="$venv/bin:$PATH" make -j"$(nproc)" install >make.log 2>&1) \
    || { echo "building $name failed; log in $build" >&2; tail -30 "$build"/*.log >&2; exit 1; }
  rm -rf "$build"
  stamp_set "$name" "$h"
}
build_interface dima_msgs "$root/ros2_ws/src/dima_msgs"
# tf2_msgs, and the Autoware messages the node can publish: only where the environment does
# not already provide them (never shadow a distro's or an Autoware install's own). A stamp
# means the copy in the venv is ours and may be rebuilt.
for pkg in tf2_msgs autoware_planning_msgs autoware_perception_msgs; do
  if [ -f "$stamps/$pkg" ] || ! "$py" -c "import $pkg.msg" >/dev/null 2>&1; then
    build_interface "$pkg" "$root/tools/interfaces/$pkg"
  fi
done

# 4. the dima_planner package -------------------------------------------------------
pkg_hash=$(hash_of "$root/ros2_ws/src/dima_planner/setup.py" "$root/ros2_ws/src/dima_planner/package.xml")
if ! stamp_ok dima_planner "$pkg_hash" || [ ! -x "$venv/bin/dima" ]; then
  say "installing dima_planner (editable)"
  "$py" -m pip install -q --no-deps --no-build-isolation -e "$root/ros2_ws/src/dima_planner"
  stamp_set dima_planner "$pkg_hash"
fi
say "environment ready: $venv (ROS 2 $distro)"
