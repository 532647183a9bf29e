"""A looped replay and a killed bag player, with real processes: `dima bag play --loop --clock`
feeds dima_planner_node (params/ros/replay.yaml: sim time); every loop jumps /clock and the
stamps back to the bag start. The planner must plan in every pass (the jump resets its
temporal state, counted in /diagnostics), keep running when the player is SIGKILLed (its
/diagnostics naming the camera publishers that disappeared), and plan again from a new
player without being restarted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dima_planner.ros.env import pid_domain_id
from dds_harness import start_node_process, stop_node_process
from test_bag_play_eval import one_scene_bag  # noqa: F401 - a module fixture
from test_ros_node import PARAMS, REPO, Driver, checkpoint  # noqa: F401 - checkpoint is a fixture

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(420)]


def player(bag, domain: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), ROS_DOMAIN_ID=str(domain))
    cmd = [sys.executable, "-m", "dima_planner.ros.bag_play", str(bag), "--domain-id", str(domain),
           "--clock", "50", "--rate", "0.5", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_looped_replay_and_a_killed_player(checkpoint, one_scene_bag):  # noqa: F811
    domain = pid_domain_id(99)
    node = start_node_process("dima_planner.ros.planner_node", domain, PARAMS, "--params-file",
                              str(REPO / "params" / "ros" / "replay.yaml"), "-p", f"checkpoint:={checkpoint}",
                              "-p", "num_threads:=1", "-p", "warmup_width:=160", "-p", "warmup_height:=96",
                              "-p", "diagnostics_period:=0.2")
    drv = Driver(domain)
    play = None
    try:
        ok = drv.wait(lambda: (d := drv.diag_values("model")) and d[1].startswith("loaded (active)"), 180)
        assert ok, f"node never became active; output:\n{stop_node_process(node)}"
        play = player(one_scene_bag, domain, "--loop")

        def passes() -> int:  # planned stamps going back = a new pass of the bag
            stamps = [p.header.stamp.sec * 10**9 + p.header.stamp.nanosec for p in drv.paths]
            return 1 + sum(b < a for a, b in zip(stamps, stamps[1:])) if stamps else 0

        assert drv.wait(lambda: passes() >= 3, 150.0, poll=0.5), f"planned {len(drv.paths)} paths in {passes()} passes"
        assert drv.counter("rejected.time_jump") >= 2  # each loop reported, temporal state reset

        # the player dies without a goodbye: the planner stays, /diagnostics says what went away
        os.kill(play.pid, signal.SIGKILL)
        play.wait(10)
        gone = drv.wait(lambda: (d := drv.diag_values("peers")) and "/cam_front/image_raw" in d[1] and d, 60.0,
                        poll=0.5)
        assert gone and gone[2] == 1, drv.diag_values("peers")
        assert node.poll() is None

        # a new player: planning resumes, the planner was not restarted
        n = len(drv.paths)
        play = player(one_scene_bag, domain)
        assert drv.wait(lambda: len(drv.paths) > n + 3, 90.0, poll=0.5), "no plans from the restarted player"
        assert drv.wait(lambda: (d := drv.diag_values("peers")) and d[2] == 0, 10.0), drv.diag_values("peers")
        assert node.poll() is None
    finally:
        if play is not None and play.poll() is None:
            play.kill()
            play.wait(10)
        drv.close()
        out = stop_node_process(node)
    assert node.returncode == 0, out[-3000:]
