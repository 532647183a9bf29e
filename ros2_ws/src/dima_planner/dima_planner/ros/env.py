"""ROS 2 environment defaults every dima process applies before `rclpy.init`.

Why this exists:
* Jazzy deprecates and Kilted ignores ROS_LOCALHOST_ONLY; discovery is limited with
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, else nodes talk to the whole LAN.
* Six 1600x900 rgb8 cameras at 12 Hz lose messages with Fast DDS' default 0.5 MiB
  shared-memory segment; params/fastdds_shm*.xml ship a 128 MiB segment, with UDP on
  loopback only (LOCALHOST, OFF) or on every interface (SUBNET, SYSTEM_DEFAULT: other
  computers of the robot), chosen from ROS_AUTOMATIC_DISCOVERY_RANGE.
A value the user already exported always wins, except an explicit `domain_id` argument
(tests pass their own id so that parallel runs never see each other).

The ROS domain is the user's: an installed node or launch file never moves itself to another
domain (a node on a private default domain is invisible to every tool on the user's). Only the
project's own runs (tests, `dima demo`, `dima sim`, benches, make targets) pick their own
domain, and they say so explicitly (`domain_id` / `default_domain_id`).

No rclpy import here: this must run before rclpy is loaded.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import resources

# The one line a process prints when it chose loopback-only discovery itself.
LOCALHOST_NOTE = ("ROS_AUTOMATIC_DISCOVERY_RANGE is unset: DDS discovery stays on this computer (LOCALHOST); "
                  "export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET (launch: discovery_range:=SUBNET) "
                  "to reach the other computers of the robot")
# Fast DDS profiles (params/), chosen from ROS_AUTOMATIC_DISCOVERY_RANGE. Both have the
# 128 MiB shared-memory segment for images between processes on this host; they differ in
# where UDP may go: loopback only, or every interface (robots with several computers).
LOCAL_PROFILE = "fastdds_shm.xml"
NETWORK_PROFILE = "fastdds_shm_network.xml"
PROFILE_NAME = LOCAL_PROFILE  # the default (LOCALHOST)
LOCAL_RANGES = frozenset({"LOCALHOST", "OFF"})
DISCOVERY_RANGES = frozenset({"LOCALHOST", "SUBNET", "OFF", "SYSTEM_DEFAULT"})
# Fast DDS 2.x (Humble, Iron, Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE; Fast DDS 3
# (Kilted and later) reads FASTDDS_DEFAULT_PROFILES_FILE and only warns about the old name.
# Only the variable the running distro reads is set; a user value under either name wins.
FASTRTPS_DISTROS = frozenset({"humble", "iron", "jazzy"})
PROFILE_ENVS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
def profile_env_var(distro: str | None = None) -> str:
    """The Fast DDS profile variable that `distro` (default: the running one) reads."""
    distro = (distro or resources.ros_distro()).lower()
    return "FASTRTPS_DEFAULT_PROFILES_FILE" if distro in FASTRTPS_DISTROS else "FASTDDS_DEFAULT_PROFILES_FILE"


def profile_for_range(discovery_range: str | None) -> str:
    """Profile file name for a ROS_AUTOMATIC_DISCOVERY_RANGE value (unset = LOCALHOST)."""
    value = (discovery_range or "LOCALHOST").strip().upper()
    if value not in DISCOVERY_RANGES:
        raise ValueError(f"ROS_AUTOMATIC_DISCOVERY_RANGE={discovery_range!r} is not one of {sorted(DISCOVERY_RANGES)}")
    return LOCAL_PROFILE if value in LOCAL_RANGES else NETWORK_PROFILE


def params_dir() -> Path:
    """The params/ directory that holds the Fast DDS profiles (see resources.resource_roots)."""
    found = resources.find(Path("params") / LOCAL_PROFILE)
    if found is None:
        tried = ", ".join(str(c) for c in resources.candidates(Path("params") / LOCAL_PROFILE))
        raise FileNotFoundError(f"params/{LOCAL_PROFILE} not found (looked in: {tried or 'no package root'})")
    return found.parent


def fastdds_profile_path(discovery_range: str | None = None) -> Path:
    return params_dir() / profile_for_range(discovery_range)


def dds_profile_env(discovery_range: str | None, params: str | Path | None = None,
                    distro: str | None = None) -> dict[str, str]:
    """{variable: profile path} to export for a process with this discovery range; empty
    when the user already exported a profile under either variable."""
    if any(os.environ.get(k) for k in PROFILE_ENVS):
        return {}
    base = Path(params) if params is not None else params_dir()
    return {profile_env_var(distro): str(base / profile_for_range(discovery_range))}


def launch_process_environment(context, share: str | Path | None = None) -> list:
    """launch OpaqueFunction body: the environment of the processes this launch file starts.

    Put it inside a scoped `GroupAction` together with those processes: the variables it
    sets then apply to them only, never to a launch file that includes this one.
    * `domain_id`: ROS_DOMAIN_ID when given; empty (the default) keeps the inherited one.
    * `discovery_range`: ROS_AUTOMATIC_DISCOVERY_RANGE when given; empty (the default)
      keeps the inherited one, or LOCALHOST where it is unset (announced in one log line).
    * the Fast DDS profile for that range, under the variable this distro reads, unless the
      environment already names one.
    """
    from launch.actions import LogInfo, SetEnvironmentVariable

    if share is None:
        from ament_index_python.packages import get_package_share_directory

        share = get_package_share_directory(resources.PACKAGE)
    cfg, environ = context.launch_configurations, context.environment
    actions = []
    domain = cfg.get("domain_id", "").strip()
    if domain:
        if not domain.isdigit() or not 0 <= int(domain) <= 232:
            raise ValueError(f"domain_id:={domain!r} is not a ROS domain id in [0, 232]")
        actions.append(SetEnvironmentVariable("ROS_DOMAIN_ID", domain))
    rng = cfg.get("discovery_range", "").strip().upper() or environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "")
    if not rng:
        rng = "LOCALHOST"
        actions.append(LogInfo(msg=LOCALHOST_NOTE))
    profile_for_range(rng)  # a clear error for a bad value, before any process starts
    actions.append(SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", rng))
    if not any(environ.get(k) for k in PROFILE_ENVS):
        actions += [SetEnvironmentVariable(k, v) for k, v in dds_profile_env(rng, Path(share) / "params").items()]
    return actions


def discovery_note() -> str | None:
    """LOCALHOST_NOTE when apply_ros_env_defaults() is about to choose the discovery range."""
    return None if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") else LOCALHOST_NOTE


def apply_ros_env_defaults(domain_id: int | None = None, default_domain_id: int | None = None) -> dict[str, str]:
    """Set the network-safe ROS environment; returns the values now in effect.

    domain_id: forced ROS_DOMAIN_ID when given; otherwise the user's value, else
    default_domain_id when given (the project's own runs), else unset (the RMW's default,
    0). Discovery: the user's ROS_AUTOMATIC_DISCOVERY_RANGE, else LOCALHOST (see
    discovery_note()). Must be called before rclpy.init (the RMW reads these at init).
    """
    for value in (domain_id, default_domain_id):
        if value is not None and not 0 <= int(value) <= 232:
            raise ValueError(f"ROS domain id must be in [0, 232], got {value}")
    if domain_id is not None:
        os.environ["ROS_DOMAIN_ID"] = str(int(domain_id))
    elif default_domain_id is not None:
        os.environ.setdefault("ROS_DOMAIN_ID", str(int(default_domain_id)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update(dds_profile_env(os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"]))
    keys = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", *PROFILE_ENVS)
    return {k: os.environ[k] for k in keys if k in os.environ}


def pid_domain_id(offset: int = 0) -> int:
    """A domain id derived from the process id, for tests that run in parallel."""
    return 100 + (os.getpid() * 7 + offset) % 100


def main() -> int:
    """`python3 -m dima_planner.ros.env`: print the environment dima would use as shell
    exports, for processes dima does not start itself (`ros2 bag play`, other nodes):
        eval "$(python3 -m dima_planner.ros.env)"
    """
    import shlex

    for key, value in apply_ros_env_defaults().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
