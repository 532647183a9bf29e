"""The MLLM node in its own process, driven over real DDS (loopback only) from this process.

One node (real offline SmolLM2, untrained branch, Dual mode) gets SceneTokens from the
test: it must publish Reasoning stamped with the tokens' stamp and a Dual-mode trajectory,
answer AskScene (false before any scene, true after), and drop malformed tokens with a
diagnostic while staying alive. A second node with a wrong llm_path must stay up and say
why in /diagnostics and in AskScene.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dima_planner.ros.env import apply_ros_env_defaults, pid_domain_id

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params" / "ros" / "mllm.yaml"
DOMAIN, BAD_DOMAIN = pid_domain_id(11), pid_domain_id(12)

apply_ros_env_defaults(domain_id=DOMAIN)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from dima_msgs.msg import PlannedTrajectory, Reasoning, SceneTokens  # noqa: E402
from dima_msgs.srv import AskScene  # noqa: E402
from dima_planner.ros.conversions import build_scene_tokens, stamp_to_ns  # noqa: E402
from dds_harness import TestNode, start_node_process, stop_node_process  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]
BEV_HW, DIM, PLANNER_DIM = (8, 8), 32, 24


def start_node(domain_id: int, *ros_args: str) -> subprocess.Popen:
    return start_node_process("dima_planner.ros.mllm_node", domain_id, PARAMS, "-p", "diagnostics_period:=0.2",
                              *ros_args)


class Driver(TestNode):
    def __init__(self, domain_id: int):
        super().__init__("dima_mllm_test_driver", domain_id)
        rel = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.tokens_pub = self.node.create_publisher(SceneTokens, "/dima/scene_tokens", rel)
        self.reasoning: list[Reasoning] = self.record(Reasoning, "/dima/reasoning", rel)
        self.trajs: list[PlannedTrajectory] = self.record(PlannedTrajectory, "/dima/mllm/trajectory", rel)
        self.diags: list[DiagnosticArray] = self.record(DiagnosticArray, "/diagnostics", rel)
        self.ask_client = self.node.create_client(AskScene, "/dima/ask_scene")

    def status(self, name_part: str):
        """Latest status whose name contains name_part: (values, message, level)."""
        for arr in reversed(self.diags):
            for s in arr.status:
                if name_part in s.name:
                    level = s.level[0] if isinstance(s.level, bytes) else s.level
                    return {kv.key: kv.value for kv in s.values}, s.message, level
        return None

    def ask(self, question: str, max_new_tokens: int = 6, timeout: float = 60.0) -> AskScene.Response:
        assert self.ask_client.wait_for_service(timeout_sec=30.0), "/dima/ask_scene never appeared"
        fut = self.ask_client.call_async(AskScene.Request(question=question, max_new_tokens=max_new_tokens))
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fut.done(), f"AskScene({question!r}) got no response in {timeout} s"
        return fut.result()


def scene_msg(stamp_ns: int, seed: int = 0, ego_feature: bool = True) -> SceneTokens:
    rng = np.random.default_rng(seed)
    tokens = {"bev": rng.normal(size=(BEV_HW[0] * BEV_HW[1], DIM)), "ego": rng.normal(size=(1, DIM)),
              "agent": rng.normal(size=(5, DIM)), "map": rng.normal(size=(3, DIM))}
    feat = rng.normal(size=PLANNER_DIM) if ego_feature else None
    return build_scene_tokens(tokens, BEV_HW, stamp_ns, "base_link", 2, np.tile(np.eye(4), (6, 1, 1)), "test:0",
                              feat)


def test_mllm_node_over_dds():
    bad = start_node(BAD_DOMAIN, "-p", "llm_path:=/nonexistent/llm_folder")
    proc = start_node(DOMAIN, "-p", "max_new_tokens:=6", "-p", "min_period:=0.0", "-p", "dual_mode:=true")
    drv = bad_drv = None
    try:
        drv = Driver(DOMAIN)
        # 1. AskScene before any scene: a clear refusal (even while the LLM is still loading).
        r = drv.ask("What is ahead?")
        assert not r.success and "no scene" in r.text

        # 2. The model loads (offline SmolLM2) and is reported in /diagnostics.
        assert drv.wait(lambda: (s := drv.status("dima_mllm: model")) and s[0]["loaded"] == "True", 90), \
            f"model never loaded: {drv.status('dima_mllm: model')}"

        # 3. A scene -> Reasoning with the tokens' stamp, non-empty text; Dual-mode trajectory.
        stamp = time.time_ns()
        drv.tokens_pub.publish(scene_msg(stamp))
        got = drv.wait(lambda: [m for m in drv.reasoning if stamp_to_ns(m.input_stamp) == stamp], 45)
        assert got, "no /dima/reasoning for the scene"
        msg = got[0]
        assert msg.text.strip() and msg.question == "" and msg.latency > 0
        assert msg.model_id == "smollm2-135m+untrained"
        traj = drv.wait(lambda: [m for m in drv.trajs if stamp_to_ns(m.header.stamp) == stamp], 10)
        assert traj and len(traj[0].poses) == 6 and traj[0].command == 2
        assert all(np.isfinite([p.position.x, p.position.y]).all() for p in traj[0].poses)

        # 4. AskScene after the scene: answered about that scene.
        r = drv.ask("Is there a pedestrian crossing ahead?")
        assert r.success, r.text
        assert r.text.strip() and stamp_to_ns(r.input_stamp) == stamp and r.model_id == msg.model_id

        # 5. Malformed tokens are dropped with a diagnostic; the node stays alive and working.
        broken = []
        m = scene_msg(stamp + 1)
        m.offsets = [m.offsets[0], m.offsets[1], m.offsets[2], 10 ** 8]
        broken.append(m)
        m = scene_msg(stamp + 2)
        m.dims = [DIM, DIM, DIM, DIM // 2]
        broken.append(m)
        m = scene_msg(stamp + 3)
        data = np.asarray(m.data).copy()
        data[5] = np.nan
        m.data = data
        broken.append(m)
        # The node keeps only the latest scene (KEEP_LAST 1, by design: the LLM is slow), so
        # messages sent back to back may replace each other: send each one after the last
        # was counted.
        want = ("rejected.bad_offsets", "rejected.bad_shape", "rejected.non_finite")
        for m, key in zip(broken, want):
            drv.tokens_pub.publish(m)
            ok = drv.wait(lambda: (s := drv.status("dima_mllm: reasoning")) and int(s[0].get(key, 0)) >= 1, 15)
            assert ok, f"malformed tokens not reported as {key}: {drv.status('dima_mllm: reasoning')}"
        assert proc.poll() is None, "the node died on malformed tokens"
        assert not [r for r in drv.reasoning if stamp_to_ns(r.input_stamp) in (stamp + 1, stamp + 2, stamp + 3)]
        stamp2 = stamp + 10 ** 9
        drv.tokens_pub.publish(scene_msg(stamp2, seed=1, ego_feature=False))  # an older planner: no ego_feature
        assert drv.wait(lambda: [m for m in drv.reasoning if stamp_to_ns(m.input_stamp) == stamp2], 45), \
            "no reasoning after the malformed messages"
        st = drv.wait(lambda: (s := drv.status("dima_mllm: reasoning")) and int(s[0]["generations"]) >= 2 and s, 5)
        assert st, f"generations not counted: {drv.status('dima_mllm: reasoning')}"
        values = st[0]
        # Dual: the first scene's MLLM feature was max-pooled with the planner's, the last one
        # (no ego_feature) used the MLLM feature alone.
        assert int(values["dual.pooled_with_planner"]) == 1 and int(values["dual.mllm_only"]) == 1, values
        assert drv.wait(lambda: [m for m in drv.trajs if stamp_to_ns(m.header.stamp) == stamp2], 5)
        assert int(values["scenes_received"]) >= 5
        assert float(values["generation_latency_p50_ms"]) > 0

        # 6. Wrong llm_path: the node stays up and says why (diagnostics and AskScene).
        drv.close()
        drv = None
        bad_drv = Driver(BAD_DOMAIN)
        st = bad_drv.wait(lambda: (s := bad_drv.status("dima_mllm: model")) and s[0]["state"] == "error" and s, 30)
        assert st, "the wrong llm_path was not reported in /diagnostics"
        assert st[2] == 2 and "/nonexistent/llm_folder" in st[1]
        bad_drv.tokens_pub.publish(scene_msg(stamp))
        time.sleep(0.5)
        r = bad_drv.ask("anything")
        assert not r.success and "/nonexistent/llm_folder" in r.text
        assert bad.poll() is None, "the node exited on a wrong llm_path"
    finally:
        for d in (drv, bad_drv):
            if d is not None:
                d.close()
        out = stop_node_process(proc)
        out_bad = stop_node_process(bad)
    assert "Traceback" not in out, out[-3000:]
    assert "LLM not found" in out_bad and "Traceback" not in out_bad, out_bad[-3000:]


@pytest.mark.parametrize("arg, words", [("device:=tpu", "device='tpu'"), ("max_new_tokens:=0", "max_new_tokens")])
def test_invalid_parameters_stop_the_entry_point_with_a_message(arg, words):
    proc = start_node(BAD_DOMAIN, "-p", arg)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"node with {arg} did not exit")
    out = stop_node_process(proc)  # the harness drained its output
    assert proc.returncode == 2, out
    assert "invalid parameters" in out and words in out and "Traceback" not in out, out
