"""`dima eval --method NAME=CHECKPOINT[:dual] ... --reference NAME`: planner checkpoints
compared on one split, with paired moving-block bootstrap 95 % CIs.

Each method's per-sample L2 avg (VAD convention, valid samples) comes from `dima eval`'s
own scorer (eval.evaluate). CIs: the validation split has few scenes, so whole-scene blocks
would give a handful of resamples; instead consecutive keyframes of a scene are cut into
blocks of `--block` frames (2.5 s at 5), which keeps most of the temporal correlation, and
blocks are resampled with replacement (10,000 draws, eval/stats.py). Differences to a
reference are paired (the same blocks for both methods): an interval that contains 0 is
noise. Subsets: the scenario tags of dima_meta.json (every sample of a tagged scene).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .stats import block_bootstrap_ci, blocks_of, per_block


def paired_bootstrap(values: dict[str, np.ndarray], blocks: list[np.ndarray], references: list[str],
                     draws: int = 10000, seed: int = 0) -> dict[str, dict]:
    """Mean and 95 % CI per method, and of (method - reference) for each reference, over
    block resamples (the same draws for all). `diff_vs_reference` / `diff_ci95` are those
    against the first reference; `diff_vs` holds every reference's."""
    rows, keys = [], []
    for name, v in values.items():
        rows.append(per_block(v, blocks))
        keys.append((name, None))
        for ref in references:
            if name != ref:
                rows.append(per_block(v - values[ref], blocks))
                keys.append((name, ref))
    cis = block_bootstrap_ci([s for s, _ in rows], [n for _, n in rows], draws, seed)
    out: dict[str, dict] = {}
    for (name, ref), ci in zip(keys, cis):
        v = values[name]
        if ref is None:
            out[name] = {"mean": float(np.nanmean(v)), "ci95": ci, "n": int(np.sum(~np.isnan(v)))}
            continue
        res = out[name]
        res.setdefault("diff_vs", {})[ref] = {"diff": float(np.nanmean(v - values[ref])), "ci95": ci}
        if ref == references[0]:
            res["diff_vs_reference"], res["diff_ci95"] = res["diff_vs"][ref]["diff"], ci
    return out


def per_sample_l2(spec: str, dataroot: str, version: str, split: str, recs: list, gt, mask, occ) -> np.ndarray:
    """Per-sample L2 avg (NaN: not a valid sample) of CHECKPOINT[:dual] on the split."""
    from ..data.nuscenes_dataset import dataset_from_args
    from ..inference import load_planner
    from .evaluate import evaluate
    from .metrics import planning_metrics

    dual = spec.endswith(":dual")
    ck = spec[: -len(":dual")] if dual else spec
    planner = load_planner(ck, "cpu", dual=dual)
    m = planner.cfg  # images at the checkpoint's size and fit, as `dima eval` builds them
    images = dataset_from_args(dataroot, version, split, image_size=list(m.image_size),
                               image_fit=getattr(m, "image_fit", "stretch"))
    res = evaluate(planner.predict, images, ("vad",), batch_size=8, keep_predictions=True)
    pred = np.stack([np.asarray(res["predictions"][r["token"]]) for r in recs])
    m = planning_metrics(pred, gt, occ, valid=mask, convention="vad", return_per_sample=True)
    return np.where(m["sample_mask"], m["per_sample"]["l2_avg"], np.nan)


def run_compare(args: argparse.Namespace) -> int:
    import torch

    from ..data.nuscenes_dataset import dataset_from_args, occupancy_of

    torch.set_num_threads(args.threads)
    unknown = [r for r in args.reference if r not in {m.partition("=")[0] for m in args.method}]
    if unknown or any("=" not in m for m in args.method):
        print(f"dima eval: --method takes NAME=CHECKPOINT[:dual] and --reference one of its NAMEs "
              f"(unknown: {', '.join(unknown) or 'none'})", file=sys.stderr)
        return 2
    ds = dataset_from_args(args.dataroot, args.version, args.split, load_images=False)
    recs = ds.records
    gt = np.stack([r["ego_fut_traj"] for r in recs])
    mask = np.stack([r["ego_fut_mask"] for r in recs]) > 0
    occ = np.stack([occupancy_of(r) for r in recs])
    tags = [set(r["tags"]) for r in recs]
    earlier = {}
    for path in args.reuse:
        doc = json.loads(Path(path).read_text())
        if doc.get("per_sample", {}).get("tokens") != [r["token"] for r in recs]:
            print(f"dima eval: --reuse {path}: no per-sample values for these samples (another split, or an "
                  "older JSON)", file=sys.stderr)
            return 2
        for name, ck in doc["methods"].items():
            earlier[f"{name}={ck}"] = np.array([np.nan if x is None else x for x in doc["per_sample"]["l2_avg"][name]])
    per: dict[str, np.ndarray] = {}
    for spec in args.method:
        name, _, ck = spec.partition("=")
        if spec in earlier:
            per[name] = earlier[spec]
            print(f"{name}: L2 avg {np.nanmean(per[name]):.3f} m (from --reuse)", file=sys.stderr)
            continue
        per[name] = per_sample_l2(ck, args.dataroot, args.version, args.split, recs, gt, mask, occ)
        print(f"{name}: L2 avg {np.nanmean(per[name]):.3f} m over {np.sum(~np.isnan(per[name]))} samples",
              file=sys.stderr)
    scenes = [r["scene_token"] for r in recs]
    result = {"all": paired_bootstrap(per, blocks_of(scenes, args.block), args.reference)}
    for tag in sorted(set().union(*tags)):
        sel = np.array([tag in t for t in tags])
        sub = {k: v[sel] for k, v in per.items()}
        result[tag] = paired_bootstrap(sub, blocks_of([s for s, k in zip(scenes, sel) if k], args.block),
                                       args.reference)
    print(format_paired(result, args.reference))
    if args.json:
        # per-sample L2 (null: not a valid sample) so that later comparisons need no re-run
        samples = {"tokens": [r["token"] for r in recs],
                   "l2_avg": {k: [None if np.isnan(x) else round(float(x), 5) for x in v] for k, v in per.items()}}
        Path(args.json).write_text(json.dumps({"block": args.block, "methods": dict(m.split("=", 1) for m in args.method),
                                               "results": result, "per_sample": samples}, indent=2))
    return 0


def format_paired(result: dict[str, dict], references: list[str]) -> str:
    lines = ["| subset | method | L2 avg (m) [95% CI] | " + "".join(f"minus {ref} [95% CI] | " for ref in references)
             + "n |", "| --- | --- | --- | " + "--- | " * len(references) + "--- |"]
    for subset, rows in result.items():
        for name, r in rows.items():
            diffs = [r.get("diff_vs", {}).get(ref) for ref in references]
            cells = "".join((f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "") + " | "
                            for d in diffs)
            lines.append(f"| {subset} | {name} | {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
                         f"{cells}{r['n']} |")
    return "\n".join(lines)
