"""The MLLM node's plain parts without DDS: SceneTokens decoding against the planner's
encoder, the generation worker's drop/queue rules, the engine on the real offline LLM, and
params/ros/mllm.yaml against the declared parameters."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dima_msgs.msg import SceneTokens
from dima_planner.ros.conversions import build_scene_tokens
from dima_planner.ros.mllm_node import NODE_NAME, PARAMS, validate
from dima_planner.runtime.params import flatten_ros_params
from dima_planner.runtime.reasoning import (TYPE_IDS, GenerationWorker, Job, MLLMEngine, MLLMStats, ModelLoadError,
                                        TokenError, decode_ego_feature, decode_scene_tokens,
                                        decode_scene_tokens_msg)
from dima_planner.model.mllm.checkpoint import save_mllm_checkpoint

REPO = Path(__file__).resolve().parents[1]
BEV_HW, DIM = (6, 5), 16


def beam(seed: int = 0, n_agent: int = 7, n_map: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"bev": rng.normal(size=(BEV_HW[0] * BEV_HW[1], DIM)), "ego": rng.normal(size=(1, DIM)),
            "agent": rng.normal(size=(n_agent, DIM)), "map": rng.normal(size=(n_map, DIM))}


def encode(tokens, ego_feature=None) -> SceneTokens:
    return build_scene_tokens(tokens, BEV_HW, 1_700_000_000_123_456_789, "base_link", 2, np.tile(np.eye(4), (6, 1, 1)),
                              "tiny:abc", ego_feature)


def test_type_ids_match_the_message_constants():
    assert TYPE_IDS == {"bev": SceneTokens.TYPE_BEV, "ego": SceneTokens.TYPE_EGO,
                        "agent": SceneTokens.TYPE_AGENT, "map": SceneTokens.TYPE_MAP}


def test_decode_inverts_the_planner_encoder():
    tokens = beam()
    feat = np.random.default_rng(3).normal(size=24)
    msg = encode(tokens, feat)
    out, ego_feature = decode_scene_tokens_msg(msg)
    assert set(out) == set(tokens)
    for k in tokens:
        assert out[k].dtype == np.float32 and out[k].shape == tokens[k].shape
        np.testing.assert_array_equal(out[k], tokens[k].astype(np.float32))
    assert ego_feature.dtype == np.float32 and ego_feature.shape == (24,)
    np.testing.assert_array_equal(ego_feature, feat.astype(np.float32))
    # No agents / map elements is a valid scene (an empty road); no ego feature -> None.
    empty, none = decode_scene_tokens_msg(encode(beam(n_agent=0, n_map=0)))
    assert empty["agent"].shape == (0, DIM) and empty["map"].shape == (0, DIM)
    assert none is None


def test_ego_feature_encode_and_decode_reject_bad_values():
    with pytest.raises(ValueError, match="NaN"):
        encode(beam(), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"\(C,\)"):
        encode(beam(), np.zeros((2, 3)))
    np.testing.assert_array_equal(encode(beam(), np.ones((1, 4))).ego_feature, np.ones(4, np.float32))
    with pytest.raises(TokenError) as e:
        decode_ego_feature(np.array([0.0, np.inf, 1.0], np.float32))
    assert e.value.category == "non_finite" and "ego_feature" in e.value.reason
    assert decode_ego_feature([]) is None


def _fields(msg):
    return dict(data=np.asarray(msg.data), types=list(msg.types), offsets=list(msg.offsets), counts=list(msg.counts),
                dims=list(msg.dims), bev_h=msg.bev_h, bev_w=msg.bev_w)


@pytest.mark.parametrize("mutate, category, words", [
    (lambda f: f["offsets"].__setitem__(3, 10 ** 9), "bad_offsets", "past the end"),
    (lambda f: f["offsets"].__setitem__(2, f["offsets"][2] - 3), "bad_offsets", "overlap"),
    (lambda f: f["dims"].__setitem__(3, DIM // 2), "bad_shape", "counts x dims"),
    (lambda f: f.__setitem__("data", np.concatenate([f["data"], np.zeros(5, np.float32)])), "bad_shape",
     "counts x dims"),
    (lambda f: f.__setitem__("bev_w", 4), "bad_shape", "grid"),
    (lambda f: f["data"].__setitem__(7, np.nan), "non_finite", "NaN"),
    (lambda f: f["data"].__setitem__(-1, np.inf), "non_finite", "NaN or infinite"),
    (lambda f: f["types"].__setitem__(3, 1), "bad_layout", "exactly once"),
    (lambda f: f["types"].__setitem__(3, 9), "bad_layout", "unknown"),
    (lambda f: f["counts"].pop(), "bad_layout", "different lengths"),
    (lambda f: f["dims"].__setitem__(1, 0), "bad_shape", "width 0"),
])
def test_malformed_tokens_raise_with_a_category(mutate, category, words):
    f = _fields(encode(beam()))
    f["data"] = f["data"].copy()
    mutate(f)
    with pytest.raises(TokenError) as e:
        decode_scene_tokens(**f)
    assert e.value.category == category
    assert words in e.value.reason


def _wait_until(cond, deadline: float) -> None:
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)


def _start_busy(w: GenerationWorker, order: list[str]) -> float:
    """Start the worker, offer the periodic job "first" (its run blocks) and wait until it
    runs; returns the deadline for what follows."""
    w.start()
    deadline = time.monotonic() + 5
    _wait_until(lambda: w.state == "ready", deadline)
    assert w.offer(Job("periodic", None, "first", 4, time.monotonic()))
    _wait_until(lambda: order == ["first"], deadline)
    return deadline


def test_worker_drops_periodic_work_while_busy_and_serves_questions_first():
    release = threading.Event()
    order: list[str] = []

    def run(model, job):
        order.append(job.question)
        if job.question == "first":
            release.wait(5)
        return f"{model}:{job.question}"

    stats = MLLMStats()
    w = GenerationWorker(lambda: "m", run, stats)
    assert not w.offer(Job("periodic", None, "too early", 4, time.monotonic()))  # still loading
    assert stats.dropped_not_ready == 1
    _start_busy(w, order)
    assert not w.offer(Job("periodic", None, "dropped", 4, time.monotonic()))
    assert stats.dropped_busy == 1
    ask = w.ask(Job("ask", None, "question", 4, time.monotonic()))
    assert not ask.done()
    release.set()
    assert ask.result(timeout=5) == "m:question"
    assert w.offer(Job("periodic", None, "later", 4, time.monotonic()))
    time.sleep(0.2)
    w.stop()
    assert order == ["first", "question", "later"]
    assert stats.dropped_busy == 1


def test_worker_dual_plans_latest_wins_first_but_text_gets_every_other_turn():
    release, release_dual = threading.Event(), threading.Event()
    order: list[str] = []

    def run(model, job):
        order.append(job.question)
        if job.question == "first":
            release.wait(5)
        if job.question == "dual-2":
            release_dual.wait(5)
        return job.question

    stats = MLLMStats()
    w = GenerationWorker(lambda: "m", run, stats)
    deadline = _start_busy(w, order)
    # While a commentary runs: Dual plans queue in their slot, the newest wins.
    assert w.offer(Job("dual", None, "dual-stale", 0, time.monotonic()))
    assert w.offer(Job("dual", None, "dual-1", 0, time.monotonic()))
    assert stats.dual_dropped == 1
    ask = w.ask(Job("ask", None, "question", 4, time.monotonic()))
    release.set()
    assert ask.result(timeout=5) == "question"
    # A commentary is taken while only a Dual plan runs (not dropped as busy).
    assert w.offer(Job("dual", None, "dual-2", 0, time.monotonic()))
    _wait_until(lambda: order[-1:] == ["dual-2"], deadline)
    assert w.offer(Job("periodic", None, "later", 4, time.monotonic()))
    release_dual.set()
    time.sleep(0.3)
    w.stop()
    assert order == ["first", "dual-1", "question", "dual-2", "later"]  # the plan first, then the question
    assert "dual-stale" not in order
    assert stats.dropped_busy == 0


def test_worker_load_error_fails_questions_with_the_reason():
    def load():
        raise ModelLoadError("LLM not found: /nope")

    w = GenerationWorker(load, lambda m, j: "", MLLMStats())
    pending = w.ask(Job("ask", None, "q", 4, time.monotonic()))  # queued while loading
    w.start()
    with pytest.raises(ModelLoadError, match="/nope"):
        pending.result(timeout=5)
    assert w.state == "error" and "/nope" in w.load_error
    with pytest.raises(ModelLoadError, match="/nope"):
        w.ask(Job("ask", None, "q", 4, time.monotonic())).result(timeout=1)
    w.stop()


def test_wrong_llm_path_or_checkpoint_is_one_clear_sentence(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        MLLMEngine(llm_path=str(tmp_path / "no_llm"))
    with pytest.raises(ModelLoadError, match="not a directory"):
        MLLMEngine(checkpoint=str(tmp_path / "no_ckpt"))
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ModelLoadError, match="has no mllm.yaml"):
        MLLMEngine(checkpoint=str(tmp_path / "ckpt"))


def test_params_file_matches_the_declared_parameters():
    doc = yaml.safe_load((REPO / "params" / "ros" / "mllm.yaml").read_text())
    flat = flatten_ros_params(doc, NODE_NAME)
    assert set(flat) == set(PARAMS)
    assert all(validate(k, v) is None for k, v in flat.items())
    assert flat["num_threads"] == 1
    assert validate("max_new_tokens", 0) and validate("min_period", 1) and validate("device", "tpu")


def test_engine_generates_plans_and_round_trips_a_checkpoint(tmp_path):
    """The real offline LLM: untrained branch -> fluent text, a finite MLLM plan; its
    weights saved and reloaded give the same greedy text; shapes are then enforced."""
    eng = MLLMEngine(num_threads=1)
    tokens = {k: v.astype(np.float32) for k, v in beam().items()}
    text = eng.generate(tokens, BEV_HW, "What should the ego vehicle do?", 6)
    assert isinstance(text, str) and text.strip()
    traj, pooled = eng.plan(tokens, BEV_HW, 2)
    assert traj.shape == (6, 2) and np.all(np.isfinite(traj)) and not pooled
    assert eng.model_id == "smollm2-135m+untrained"

    # Dual: the head's input is max(MLLM feature, planner feature), element-wise.
    branch = eng.branch_for(tokens, BEV_HW)
    pdim = branch.cfg.planner_dim
    import torch
    with torch.no_grad():
        own = branch.dual_ego_feature(eng._beam(tokens, branch))[0].numpy()
        planner_feat = np.where(np.arange(pdim) % 2 == 0, own + 5.0, own - 5.0).astype(np.float32)
        want = branch.plan_from_feature(torch.from_numpy(np.maximum(own, planner_feat))[None],
                                        torch.tensor([2]))[0].numpy()
    dual, pooled = eng.plan(tokens, BEV_HW, 2, planner_feat)
    assert pooled
    np.testing.assert_allclose(dual, want, atol=1e-5)
    assert np.abs(dual - traj).max() > 1e-4  # the planner's feature changed the plan
    # Without a checkpoint the untrained branch is sized to the planner's feature width.
    other, pooled = eng.plan(tokens, BEV_HW, 2, np.zeros(7, np.float32))
    assert pooled and other.shape == (6, 2) and eng.branch_for(tokens, BEV_HW, 7).cfg.planner_dim == 7

    branch = eng.branch_for(tokens, BEV_HW)
    save_mllm_checkpoint(tmp_path / "mllm_ck", branch)
    eng2 = MLLMEngine(checkpoint=str(tmp_path / "mllm_ck"), num_threads=1)
    assert eng2.model_id.startswith("smollm2-135m+mllm_ck:") and len(eng2.model_id.split(":")[-1]) == 12
    assert eng2.generate(tokens, BEV_HW, "What should the ego vehicle do?", 6) == text
    np.testing.assert_allclose(eng2.plan(tokens, BEV_HW, 2)[0], traj, atol=1e-5)
    np.testing.assert_allclose(eng2.plan(tokens, BEV_HW, 2, planner_feat)[0], dual, atol=1e-5)
    with pytest.raises(TokenError) as e:  # the checkpoint's head has a fixed width
        eng2.plan(tokens, BEV_HW, 2, np.zeros(pdim + 1, np.float32))
    assert e.value.category == "ego_feature_mismatch" and f"{pdim + 1} values" in e.value.reason
    wrong = {k: np.zeros((v.shape[0], DIM * 2), np.float32) for k, v in tokens.items()}
    with pytest.raises(TokenError) as e:
        eng2.generate(wrong, BEV_HW, "q", 2)
    assert e.value.category == "shape_mismatch"
