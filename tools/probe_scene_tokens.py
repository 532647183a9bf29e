"""Is the answer to each factual question in the planner's scene tokens? Linear probes.

    .venv/bin/python tools/probe_scene_tokens.py --dataroot data/bench --version v1.0-dima

The scene tokens of every frame of the train and validation splits are made exactly as the
planner node publishes them (eval.qa.scene_frames: inference.Planner, temporal BEV
within a scene). For each question type of qa/factual.py a logistic regression on the
standardised, pooled tokens (ego token, agent tokens' mean and max, BEV cells' mean and
max) is fitted on train and scored on val, next to the constant answer (the training
split's most common). It answers "is the information there?" for `dima eval --qa`: what
the MLLM answers below the probe, the planner's tokens held but the LLM did not read.

For the two questions about vehicles it also scores the planner's decoded detections: the
question's own rule (qa/factual.py) applied to the detected agents above a score threshold
chosen on train. That answers "would giving the LLM the agents' positions help?".
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np


REPO = Path(__file__).resolve().parents[1]  # defaults work from any directory
THRESHOLDS = np.round(np.arange(0.1, 0.96, 0.05), 2)  # detection score thresholds tried on train


def shown(path: str) -> str:
    """A path as the JSON records it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else path


def pooled(beam: dict[str, np.ndarray]) -> np.ndarray:
    """One vector per frame: what a linear reader could take without attention."""
    return np.concatenate([beam["ego"].ravel(), beam["agent"].mean(0), beam["agent"].max(0),
                           beam["bev"].mean(0), beam["bev"].max(0)])


def detection_rules() -> dict:
    """{qtype: rule}: the factual questions answerable from detected agents alone, each by
    its own annotation rule (qa/factual.py), as an answer value."""
    from dima_planner.qa import factual

    return {"vehicles_ahead": lambda agents: factual.vehicles_value(factual.vehicles_ahead(agents)),
            "lead_distance": lambda agents: factual.lead_value(factual.lead_vehicle_distance(agents))}


def detection_answers(frames, qtype: str, threshold: float) -> list[str]:
    """Answers (texts, as Frame.answers) of `qtype` by its annotation rule applied to the
    detections scoring >= threshold."""
    from types import SimpleNamespace

    from dima_planner.qa.factual import answer_text

    rule = detection_rules()[qtype]
    out = []
    for f in frames:
        keep = f.detections["scores"] >= threshold
        agents = SimpleNamespace(agent_boxes=f.detections["boxes"][keep], agent_labels=f.detections["labels"][keep])
        out.append(answer_text(qtype, rule(agents)))
    return out


def detection_accuracy(frames, answers: list[str], qtype: str, threshold: float) -> float:
    return float(np.mean([a == y for a, y in zip(detection_answers(frames, qtype, threshold), answers)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "dima_tiny_stage2"))
    p.add_argument("--dataroot", default=str(REPO / "data" / "bench"))
    p.add_argument("--version", default="v1.0-dima")
    p.add_argument("--train-split", default="train")
    p.add_argument("--split", default="val")
    p.add_argument("--stride", type=int, default=4, help="every Nth frame of --split, as dima eval --qa --qa-stride")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the accuracies here")
    args = p.parse_args(argv)

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset
    from dima_planner.inference import load_planner
    from dima_planner.eval.qa import scene_frames
    from dima_planner.qa.factual import QTYPES

    torch.set_num_threads(args.threads)
    planner = load_planner(args.checkpoint, "cpu")
    m = planner.cfg

    def frames(split: str):
        ds = NuScenesPlanningDataset(DatasetConfig(
            dataroot=args.dataroot, version=args.version, split=split, load_images=True,
            image_size=list(m.image_size), image_fit=getattr(m, "image_fit", "stretch")))
        return scene_frames(planner, ds)

    train, val = frames(args.train_split), frames(args.split)[:: max(1, args.stride)]
    x_train = np.stack([pooled(f.beam) for f in train])
    x_val = np.stack([pooled(f.beam) for f in val])
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    out: dict[str, dict[str, float]] = {}
    print(f"{'question type':<16}{'probe':>8}{'constant':>10}{'detections':>12}   "
          f"({len(train)} train, {len(val)} {args.split} frames)")
    for t in QTYPES:
        y_train = [f.answers[t] for f in train]
        y_val = [f.answers[t] for f in val]
        constant = Counter(y_train).most_common(1)[0][0]
        probe = LogisticRegression(max_iter=2000, C=0.1).fit(x_train, y_train)
        out[t] = {"probe": float(probe.score(x_val, y_val)),
                  "constant": float(np.mean([y == constant for y in y_val]))}
        detected = ""
        if t in detection_rules():
            th = max(THRESHOLDS, key=lambda th: detection_accuracy(train, y_train, t, th))
            out[t]["detections"] = detection_accuracy(val, y_val, t, th)
            out[t]["detection_threshold"] = float(th)
            detected = f"{100 * out[t]['detections']:>11.1f}% (score >= {th:.2f})"
        print(f"{t:<16}{100 * out[t]['probe']:>7.1f}%{100 * out[t]['constant']:>9.1f}%{detected}")
    overall = {k: float(np.mean([v[k] for v in out.values()])) for k in ("probe", "constant")}
    print(f"{'overall':<16}{100 * overall['probe']:>7.1f}%{100 * overall['constant']:>9.1f}%")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"per_type": out, "overall": overall,
                                               "checkpoint": shown(args.checkpoint), "num_train": len(train),
                                               "num_val": len(val)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
