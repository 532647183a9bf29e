"""The node starts the way the README starts it: the console entry point, its defaults, a
plain venv environment (no AMENT_PREFIX_PATH, nothing sourced), from an unrelated directory.

Regression test for the documented start that stayed `unconfigured` forever: the checkpoint
lookup raised OSError from ament_index_python when AMENT_PREFIX_PATH was unset.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dds_harness import REPO, TestNode, lifecycle_state
from dima_planner.ros.env import LOCALHOST_NOTE, pid_domain_id

pytestmark = pytest.mark.ros
ENTRY = Path(sys.executable).parent / "dima_planner_node"


def _clean_env(domain: int, discovery_range: str | None = "LOCALHOST") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMENT_", "COLCON_", "ROS_", "PYTHONPATH", "RMW_", "FASTDDS_", "FASTRTPS_"))}
    env.update(ROS_DOMAIN_ID=str(domain), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if discovery_range:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery_range
    return env


@pytest.mark.parametrize("args", [[], ["--ros-args", "--params-file", str(REPO / "params/ros/planner.yaml")]],
                         ids=["defaults", "documented-params-file"])
def test_console_entry_point_reaches_active_with_defaults(tmp_path, args):
    assert ENTRY.is_file(), f"{ENTRY} is not installed (make setup)"
    domain = pid_domain_id(31 + len(args))
    # The plain shell of a new user has no ROS_AUTOMATIC_DISCOVERY_RANGE: the node keeps to
    # loopback (the probe, on loopback, sees it) and says so once, with how to change it.
    env = _clean_env(domain, discovery_range=None if not args else "LOCALHOST")
    proc = subprocess.Popen([str(ENTRY), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe = TestNode("start_probe", domain)
    try:
        state = lifecycle_state(probe, "dima_planner", timeout=90.0)
    finally:
        probe.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert state == "active", f"node state {state!r}; its output:\n{out}"
    assert "failed" not in out.lower(), out
    assert out.count(LOCALHOST_NOTE) == (0 if args else 1), out
