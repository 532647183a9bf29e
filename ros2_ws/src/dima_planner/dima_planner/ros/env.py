"""ROS 2 environment defaults every dima process applies before `rclpy.init`.

Why this exists:
* Kilted ignores ROS_LOCALHOST_ONLY; discovery must be limited with
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST or nodes talk to the whole LAN.
* Six 1600x900 rgb8 cameras at 12 Hz lose messages with Fast DDS' default 0.5 MiB
  shared-memory segment; params/fastdds_shm.xml ships a 128 MiB segment.
A value the user already exported always wins, except an explicit `domain_id` argument
(tests pass their own id so that parallel runs never see each other).

No rclpy import here: this must run before rclpy is loaded.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import resources

DEFAULT_DOMAIN_ID = 42
PROFILE_NAME = "fastdds_shm.xml"
# Fast DDS 3 (Kilted) reads FASTDDS_DEFAULT_PROFILES_FILE; the older FASTRTPS_ name still
# works but logs a deprecation warning, so a user value under either name is respected.
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
LEGACY_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"


def params_dir() -> Path:
    """The params/ directory that holds the Fast DDS profile (see resources.resource_roots)."""
    found = resources.find(Path("params") / PROFILE_NAME)
    if found is None:
        tried = ", ".join(str(c) for c in resources.candidates(Path("params") / PROFILE_NAME))
        raise FileNotFoundError(f"params/{PROFILE_NAME} not found (looked in: {tried or 'no package root'})")
    return found.parent


def fastdds_profile_path() -> Path:
    return params_dir() / PROFILE_NAME


def apply_ros_env_defaults(domain_id: int | None = None) -> dict[str, str]:
    """Set the network-safe ROS environment; returns the values now in effect.

    domain_id: forced ROS_DOMAIN_ID when given; otherwise the user's value or
    DEFAULT_DOMAIN_ID. Must be called before rclpy.init (the RMW reads these at init).
    """
    if domain_id is not None:
        if not 0 <= int(domain_id) <= 232:
            raise ValueError(f"ROS domain id must be in [0, 232], got {domain_id}")
        os.environ["ROS_DOMAIN_ID"] = str(int(domain_id))
    else:
        os.environ.setdefault("ROS_DOMAIN_ID", str(DEFAULT_DOMAIN_ID))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if not os.environ.get(PROFILE_ENV) and not os.environ.get(LEGACY_PROFILE_ENV):
        os.environ[PROFILE_ENV] = str(fastdds_profile_path())
    keys = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", PROFILE_ENV, LEGACY_PROFILE_ENV)
    return {k: os.environ[k] for k in keys if k in os.environ}


def pid_domain_id(offset: int = 0) -> int:
    """A domain id derived from the process id, for tests that run in parallel."""
    return 100 + (os.getpid() * 7 + offset) % 100
