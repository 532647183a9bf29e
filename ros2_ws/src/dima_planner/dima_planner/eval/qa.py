"""`dima eval --qa`: does the reasoning node say true things about held-out scenes?

Every frame of the split goes through the serving path: the planner (inference.Planner,
the planner node's core, temporal BEV from the previous keyframe of the scene) makes the
BEAM tokens, and the MLLM engine of the reasoning node (runtime.reasoning.MLLMEngine, its
greedy decoding and `max_new_tokens`) answers the four factual questions of
qa/factual.py. Reported:

  * exact match per question type and overall, next to the constant-answer baseline
    (always the training split's most common answer of that type);
  * well-formedness: the share of generated answers that parse as their template, and
    of the free-text planning reasoning (the node's periodic question) that parses as
    the planning template;
  * whether the scene tokens reach the LLM: teacher-forced next-token accuracy on the
    reference answers with the frame's own tokens and with a frame of another scene;
  * whether decoding can produce every reference (references longer than
    max_new_tokens tokens);
  * reasoning latency per answer (p50/p90) with the engine's thread count.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..model.mllm.batch import QABatch
from ..model.mllm.qa_tune import stack_beams
from ..qa.factual import QTYPES, TEMPLATES, answer_text, factual_qa, factual_values, normalise
from ..qa.generate import PLANNING_QUESTION, generate_qa, parse_planning
from ..qa.types import QAPair
from .metrics import scene_bootstrap_ci


@dataclass
class Frame:
    token: str
    scene: str
    beam: dict[str, np.ndarray]  # as the planner node publishes them (float32 (count, C))
    answers: dict[str, str]  # qtype -> reference answer
    factual: list[QAPair]  # the four factual QA pairs (QTYPES order)
    free_text: list[QAPair]  # generated perception/prediction/planning QA (qa.generate)
    command: int = 2  # the navigation command the planner was given (the node's SceneTokens.command)
    ego_feat: np.ndarray | None = None  # (C,) planning head's penultimate ego feature (PlanResult.ego_feat)
    ego_fut_traj: np.ndarray | None = None  # (6, 2) ground-truth future, LiDAR frame
    ego_fut_mask: np.ndarray | None = None  # (6,)
    # The planner's decoded agents (PlanResult agent_boxes (Na, 7), agent_labels, agent_scores)
    detections: dict[str, np.ndarray] | None = None


def scene_frames(planner: Any, dataset, progress: bool = True) -> list[Frame]:
    """BEAM tokens of every frame of `dataset` (in order) through inference.Planner.plan,
    with stamps and poses so the temporal BEV is chosen as the planner node chooses it."""

    frames, last_scene = [], None
    planner.reset()
    for i in tqdm(range(len(dataset)), desc="scene tokens", disable=not progress):
        s = dataset[i]
        lidar2world = np.asarray(s.ego2global, np.float64) @ np.asarray(s.lidar2ego, np.float64)
        res = planner.plan(list(s.images), s.intrinsics, s.cam2lidar, int(s.command), ego_status=s.ego_status,
                           scene_start=s.scene_token != last_scene, stamp_ns=int(s.timestamp) * 1000,
                           lidar2world=lidar2world,
                           can_bus=s.can_bus if getattr(planner, "uses_can_bus", False) else None)
        last_scene = s.scene_token
        vals = factual_values(s)
        frames.append(Frame(s.token, s.scene_token, res.beam, {t: answer_text(t, v) for t, v in vals.items()},
                            factual_qa(s), generate_qa(s), int(s.command), res.ego_feat, s.ego_fut_traj,
                            s.ego_fut_mask, {"boxes": res.agent_boxes, "labels": res.agent_labels,
                                             "scores": res.agent_scores}))
    return frames


def constant_answers(train_dataset) -> dict[str, str]:
    """The training split's most common answer per question type (annotations only)."""
    counts = {t: Counter() for t in QTYPES}
    for i in range(len(train_dataset)):
        for t, v in factual_values(train_dataset[i]).items():
            counts[t][answer_text(t, v)] += 1
    return {t: c.most_common(1)[0][0] for t, c in counts.items()}


def other_scene_index(frames: Sequence[Frame]) -> list[int]:
    """For frame i, the frame at the same position of the next scene (cyclic): tokens of
    a different scene for the 'does the LLM read the scene' check."""
    scenes = list(dict.fromkeys(f.scene for f in frames))
    if len(scenes) < 2:
        raise ValueError("the scene-token check needs at least two scenes")
    by_scene = {s: [i for i, f in enumerate(frames) if f.scene == s] for s in scenes}
    out = []
    for i, f in enumerate(frames):
        other = by_scene[scenes[(scenes.index(f.scene) + 1) % len(scenes)]]
        out.append(other[by_scene[f.scene].index(i) % len(other)])
    return out


def teacher_forced(branch, frames: Sequence[Frame], batch: int = 8) -> dict[str, float]:
    """Mean next-token accuracy on the factual reference answers, with each frame's own
    tokens and with another scene's (other_scene_index)."""
    dt = branch.dtype
    beams = [f.beam for f in frames]
    other = other_scene_index(frames)
    acc = {"own": [], "other": []}
    branch.eval()
    with torch.no_grad():
        for k in range(0, len(frames), batch):
            idx = list(range(k, min(k + batch, len(frames))))
            qa = QABatch([TEMPLATES[t].question for _ in idx for t in QTYPES],
                         [frames[i].answers[t] for i in idx for t in QTYPES],
                         [j for j in range(len(idx)) for _ in QTYPES])
            for name, src in (("own", idx), ("other", [other[i] for i in idx])):
                acc[name] += branch.answer_loss(stack_beams(beams, src, branch.device, dt), qa,
                                                reduce=False).tolist()
    return {"own_tokens": float(np.mean(acc["own"])), "other_scene_tokens": float(np.mean(acc["other"]))}


def planning_slots(text: str) -> dict[str, str] | None:
    """The parts of a planning answer (qa.generate.PLANNING_PATTERN) a reader acts on:
    action, route, reason, and the reason's kind (its numbers masked); None if it does
    not parse."""
    parsed = parse_planning(text)
    if parsed is None:
        return None
    action, route, reason = parsed
    return {"action": action, "route": route, "reason": reason, "reason_kind": re.sub(r"\d+", "N", reason)}


def slot_accuracy(got: Sequence[dict | None], refs: Sequence[dict]) -> dict[str, Any]:
    """Per slot: the fraction of texts that say what the reference says, beside the
    best constant answer (the most common reference value of these very frames: an
    upper bound for any constant answer)."""
    out: dict[str, Any] = {"num": len(refs)}
    for slot in ("action", "route", "reason", "reason_kind"):
        values = [r[slot] for r in refs]
        if not values:
            break
        common = Counter(values).most_common(1)[0]
        out[slot] = {"accuracy": float(np.mean([g is not None and g[slot] == r[slot] for g, r in zip(got, refs)])),
                     "constant": common[1] / len(values), "constant_answer": common[0]}
    return out


def exact_match_ci(hits: dict[str, list[bool]], base: dict[str, list[bool]], scene_of: Sequence[str],
                   num: int = 10000, seed: int = 0) -> tuple[list[float], list[float]]:
    """95 % CIs in percentage points of the overall exact match and of its paired difference
    to the constant answer: the planning metrics' block bootstrap over scenes
    (eval.metrics.scene_bootstrap_ci; a scene's frames are not independent of each other).
    Every frame asks every question type, so frame means weight questions alike."""

    got, const = (100.0 * np.mean([np.asarray(v, np.float64) for v in d.values()], axis=0) for d in (hits, base))
    ci = scene_bootstrap_ci({"model": got, "diff": got - const}, np.ones(len(got), bool), scene_of,
                            num=num, seed=seed, keys=("model", "diff"))
    return tuple([round(lo, 2), round(hi, 2)] for lo, hi in (ci["model"], ci["diff"]))


def evaluate_qa(engine: Any, frames: Sequence[Frame], bev_hw: tuple[int, int], constant: dict[str, str],
                max_new_tokens: int, free_text: bool = True, progress: bool = True) -> dict[str, Any]:
    """Generate the answers through the reasoning node's engine and score them."""

    hits = {t: [] for t in QTYPES}
    base = {t: [] for t in QTYPES}
    scene_of = []  # the scene of each frame (hits[t][i] is frame i's)
    formed = {t: [] for t in QTYPES}
    latency, free_ok, free_raw_ok, examples, texts = [], [], [], [], []
    slot_refs, slot_got = [], []
    commentary = {"node": [], "free": []}  # seconds per planning answer, as the node decodes it / freely
    tok = engine.tokenizer
    too_long = sum(len(tok(f.answers[t], add_special_tokens=False).input_ids) + 1 > max_new_tokens
                   for f in frames for t in QTYPES)
    for f in tqdm(frames, desc="QA", disable=not progress):
        scene_of.append(f.scene)
        for t in QTYPES:
            t0 = time.perf_counter()
            text = engine.generate(f.beam, bev_hw, TEMPLATES[t].question, max_new_tokens)
            latency.append(time.perf_counter() - t0)
            ref = normalise(f.answers[t])
            hits[t].append(normalise(text) == ref)
            base[t].append(normalise(constant[t]) == ref)
            formed[t].append(TEMPLATES[t].parse(text) is not None)
            if len(examples) < 12 and t == QTYPES[len(examples) % len(QTYPES)]:
                examples.append({"token": f.token, "question": TEMPLATES[t].question, "answer": text,
                                 "reference": f.answers[t]})
        if free_text:
            # As the node decodes it (held to the grammar when the engine is), and free:
            # the second says how much of the form the model itself has learnt.
            t0 = time.perf_counter()
            text = engine.generate(f.beam, bev_hw, PLANNING_QUESTION, max_new_tokens, command=f.command)
            t1 = time.perf_counter()
            free = engine.generate(f.beam, bev_hw, PLANNING_QUESTION, max_new_tokens, grammar=False)
            latency.append(t1 - t0)
            commentary["node"].append(t1 - t0)
            commentary["free"].append(time.perf_counter() - t1)
            free_ok.append(parse_planning(text) is not None)
            free_raw_ok.append(parse_planning(free) is not None)
            ref = next((q.answer for q in f.free_text if q.question == PLANNING_QUESTION), None)
            if ref is not None and parse_planning(ref) is not None:
                slot_refs.append(planning_slots(ref))
                slot_got.append(planning_slots(text))
            texts.append({"token": f.token, "scene": f.scene, "text": text, "unconstrained": free,
                          "reference": ref})
    n = sum(len(v) for v in hits.values())
    lat = np.asarray(latency) * 1e3
    em_ci, diff_ci = exact_match_ci(hits, base, scene_of)
    return {
        "overall_exact_match": float(np.mean([x for v in hits.values() for x in v])),
        "overall_exact_match_ci95": em_ci,  # percentage points, scenes resampled
        "minus_constant_ci95": diff_ci,
        "per_type": {t: float(np.mean(v)) for t, v in hits.items()},
        "num_questions": n,
        "constant_baseline": {"overall_exact_match": float(np.mean([x for v in base.values() for x in v])),
                              "per_type": {t: float(np.mean(v)) for t, v in base.items()},
                              "answers": constant},
        "well_formed": {"factual": float(np.mean([x for v in formed.values() for x in v])),
                        "planning_free_text": float(np.mean(free_ok)) if free_ok else None,
                        "planning_free_text_unconstrained": float(np.mean(free_raw_ok)) if free_raw_ok else None,
                        "answer_grammar": bool(getattr(engine, "answer_grammar", False)),
                        "num_free_texts": len(free_ok)},
        "planning_slots": slot_accuracy(slot_got, slot_refs),
        "references_longer_than_max_new_tokens": int(too_long),
        "max_new_tokens": int(max_new_tokens),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                       "num": len(lat),
                       **{f"commentary_{k}_p50": float(np.percentile(v, 50)) * 1e3 for k, v in commentary.items() if v}},
        "examples": examples,
        "reasoning_texts": texts,
    }
