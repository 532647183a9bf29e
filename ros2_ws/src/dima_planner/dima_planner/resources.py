"""Where the package's shipped files (params/, launch/, checkpoints/) are found.

One lookup for every way dima is installed, in this order:
  1. the source checkout the package runs from (an editable `pip install -e`, `make setup`);
  2. the ament share directory (`colcon build`, sourced workspace: AMENT_PREFIX_PATH set);
  3. `<sys.prefix>/share/dima_planner` (a plain `pip install` into a venv, no ament index).
A plain venv has no AMENT_PREFIX_PATH, and ament_index_python then raises OSError (not
PackageNotFoundError): that is a normal "not installed there", never a crash.
ROS-free: no rclpy import.
"""
from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

PACKAGE = "dima_planner"
# The shipped checkpoints every default names (node parameter, CLI options, configs' dataclass
# defaults, launch arguments): the stage-1 planner, and stage 2 (planner + MLLM branch).
DEFAULT_CHECKPOINT = "checkpoints/dima_tiny"
STAGE2_CHECKPOINT = "checkpoints/dima_tiny_stage2"


def source_root() -> Path | None:
    """The repository root when running from a source checkout (it has params/ and ros2_ws/)."""
    parents = Path(__file__).resolve().parents  # <root>/ros2_ws/src/dima_planner/dima_planner/resources.py
    root = parents[4] if len(parents) > 4 else None
    if root is not None and (root / "params").is_dir() and (root / "ros2_ws").is_dir():
        return root
    return None


def ament_share_dir(package: str = PACKAGE) -> Path | None:
    """The package's ament share directory, or None when there is no ament index for it."""
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(package))
    except (LookupError, OSError, ValueError):  # PackageNotFoundError is a LookupError; OSError: no AMENT_PREFIX_PATH
        return None


def resource_roots() -> list[Path]:
    """Every directory that may hold params/, launch/ and checkpoints/, most specific first."""
    roots = [source_root(), ament_share_dir(), Path(sys.prefix) / "share" / PACKAGE]
    out: list[Path] = []
    for r in roots:
        if r is not None and r.is_dir() and r not in out:
            out.append(r)
    return out


def candidates(relative: str | Path, cwd: str | Path | None = None) -> list[Path]:
    """Where a relative resource path is looked up: the working directory, then every root."""
    rel = Path(relative)
    out = [Path(cwd) / rel] if cwd is not None else []
    return out + [root / rel for root in resource_roots()]


def find(relative: str | Path, cwd: str | Path | None = None) -> Path | None:
    """The first existing candidate of `relative` (see candidates), or None."""
    return next((c for c in candidates(relative, cwd) if c.exists()), None)


# rclpy's major version -> distro, for a venv of PyPI wheels (no ROS_DISTRO there).
_RCLPY_MAJOR_TO_DISTRO = {3: "humble", 5: "iron", 7: "jazzy", 9: "kilted"}


def ros_distro() -> str:
    """The ROS 2 distro in use: ROS_DISTRO (a sourced ROS environment), else the one the
    installed rclpy wheel belongs to, else 'jazzy'."""
    distro = os.environ.get("ROS_DISTRO", "").strip().lower()
    if distro:
        return distro
    for dist in ("ros-rclpy", "rclpy"):
        try:
            major = int(metadata.version(dist).split(".")[0])
        except (metadata.PackageNotFoundError, ValueError):
            continue
        return _RCLPY_MAJOR_TO_DISTRO.get(major, "jazzy" if major < 9 else "kilted")
    return "jazzy"


def repo_path(relative: str | Path) -> Path:
    """A path named by the project's own commands and configs (params/..., checkpoints/...,
    data/..., out/...): absolute (or ~) as given; else relative to the source checkout when
    running from one, so `dima demo` or `dima sim` work from any directory; else an installed
    copy (find), else the working directory."""
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path
    root = source_root()
    if root is not None:
        return root / path
    found = find(path)
    return found if found is not None else Path.cwd() / path
