"""Ablation: how much of a CAN-bus planner's accuracy comes from the ego-motion input.

Experiment behind README.md "The ablation that says why, and why the default is not the
best open-loop row" (the ego-motion input table: L2 and speed error with and without ego
motion). Not a maintained benchmark.

    .venv/bin/python tools/experiments/ablate_ego_motion.py --dataroot data/bench --checkpoint checkpoints/dima_tiny

Scores the checkpoint on the validation split as `dima eval` does, then again with the
CAN-bus vector zeroed at every frame (what the model sees at a scene start), and prints L2,
collision (95 % block-bootstrap CIs over scenes) and the speed error of both.
"""
from __future__ import annotations

import argparse

import numpy as np

from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset
from dima_planner.cli.eval import speed_errors
from dima_planner.eval.evaluate import evaluate, format_table
from dima_planner.inference import load_planner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataroot", default="data/bench")
    ap.add_argument("--version", default="v1.0-dima")
    ap.add_argument("--split", default="val")
    ap.add_argument("--checkpoint", default="checkpoints/dima_tiny")
    args = ap.parse_args()
    planner = load_planner(args.checkpoint)
    if not planner.uses_can_bus:
        raise SystemExit(f"{args.checkpoint} takes no ego-motion input (model.can_bus: false)")
    ds = NuScenesPlanningDataset(DatasetConfig(dataroot=args.dataroot, version=args.version, split=args.split,
                                               image_size=list(planner.cfg.image_size),
                                               image_fit=planner.cfg.image_fit))

    def zeroed(batch):
        batch = dict(batch)
        batch["can_bus"] = batch["can_bus"] * 0
        return planner.predict(batch)

    results = {}
    for name, fn in (("planner", planner.predict), ("planner, can_bus zeroed", zeroed)):
        planner.reset()
        results[name] = evaluate(fn, ds, ("vad",), batch_size=8, keep_predictions=True)
    preds = {n: r.pop("predictions") for n, r in results.items()}
    print(format_table(results, "vad"))
    for n, v in speed_errors(ds, preds).items():
        print(f"speed error {n}: {v:.3f} m/s")
    print(f"(n = {np.sum([1 for r in ds.records if np.all(r['ego_fut_mask'] > 0)])} valid keyframes)")


if __name__ == "__main__":
    main()
