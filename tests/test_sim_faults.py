"""The simulator node killed and restarted under a running planner, over DDS (three processes:
dima_planner_node, dima_sim_node, and this test's listener).

A SIGKILLed dima_sim_node (no goodbye on the graph) must leave the planner running, with its
/diagnostics `peers` status naming the camera topics whose publisher went away. A new
dima_sim_node then drives a route whose clock starts 1000 s *before* the killed one's (a
simulator reset: /clock and every stamp jump backwards): the planner, never restarted,
resets its temporal state (counted as `rejected.time_jump` in /diagnostics) and plans the
new route from its first frames: the route finishes with no missed plan.
"""
from __future__ import annotations

import json
import os
import signal

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy

from dds_harness import REPO, TestNode, start_node_process, stop_node_process
from dima_msgs.msg import PlannedTrajectory
from dima_planner.ros.env import pid_domain_id
from test_sim_ros import CKPT, town_world

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(480)]
SEC = 10**9


def _sim(domain: int, world, out, offset: float, seconds: float):
    return start_node_process("dima_planner.ros.sim_node", domain, REPO / "params/ros/sim.yaml",
                              "-p", f"world:={world}", "-p", "route:=straight:100", "-p", f"seconds:={seconds}",
                              "-p", "timeout_slack:=0.0", "-p", "frame_hz:=4.0", "-p", f"out:={out}",
                              "-p", f"time_offset:={offset}", "-p", "plan_timeout:=20.0")


def _status(diags: list, name_part: str):
    """Latest /diagnostics status whose name contains name_part: (values, message, level)."""
    for arr in reversed(diags):
        for s in arr.status:
            if name_part in s.name:
                level = s.level[0] if isinstance(s.level, bytes) else s.level
                return {kv.key: kv.value for kv in s.values}, s.message, level
    return None


@pytest.mark.skipif(not (CKPT / "model.safetensors").exists(), reason="default checkpoint not present")
def test_planner_survives_a_killed_simulator_and_follows_its_reset(tmp_path):
    world = town_world(tmp_path)
    domain = pid_domain_id(17)
    planner = start_node_process("dima_planner.ros.planner_node", domain, REPO / "params/ros/planner.yaml",
                                 "--params-file", str(REPO / "params/ros/sim.yaml"), "-p", f"checkpoint:={CKPT}",
                                 "-p", "num_threads:=1", "-p", "diagnostics_period:=0.5")
    probe = TestNode("dima_test_sim_faults", domain)
    rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    trajs = probe.record(PlannedTrajectory, "/dima/trajectory", rel)
    diags = probe.record(DiagnosticArray, "/diagnostics", rel)

    def stamps() -> list[int]:
        return [t.header.stamp.sec * SEC + t.header.stamp.nanosec for t in trajs]

    sims = []
    try:
        first = _sim(domain, world, tmp_path / "killed", 2000.0, 20.0)
        sims.append(first)
        assert probe.wait(lambda: sum(s >= 2000 * SEC for s in stamps()) >= 4, 300.0, poll=0.2), \
            f"no plans from the first simulator:\n{stop_node_process(first)[-3000:]}\n{stop_node_process(planner)[-3000:]}"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)

        gone = probe.wait(lambda: (d := _status(diags, "peers")) and "/cam_front/image_raw" in d[1] and d, 60.0,
                          poll=0.5)
        assert gone and gone[2] == 1, _status(diags, "peers")  # WARN, naming what disappeared
        assert planner.poll() is None

        # A simulator reset: a new node, its clock 1000 s behind the killed one's.
        n_before = len(stamps())
        second = _sim(domain, world, tmp_path / "reset", 1000.0, 4.0)
        sims.append(second)
        second.wait(360)
        sim_log = stop_node_process(second)
        assert second.returncode == 0, sim_log[-3000:]
        res = json.loads((tmp_path / "reset" / "straight-100.json").read_text())
        assert res["missed_plans"] == 0 and res["plans"] >= 16, (res, sim_log[-2000:])
        assert res["collisions"] == 0 and res["progress_m"] > 15.0, res
        new = [s for s in stamps()[n_before:] if s < 2000 * SEC]
        assert new and min(new) < 1000 * SEC + SEC // 2, [s / SEC for s in new[:3]]  # its first two frames
        reset = probe.wait(lambda: (d := _status(diags, "planning")) and int(d[0].get("rejected.time_jump", 0)) >= 1
                           and d, 10.0, poll=0.5)
        assert reset, _status(diags, "planning")
        assert planner.poll() is None
    finally:
        for p in sims:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        probe.close()
        out = stop_node_process(planner)
    assert planner.returncode == 0, out[-3000:]
