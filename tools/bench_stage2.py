"""Planner checkpoints compared on one split, with moving-block bootstrap 95% CIs.

    python tools/bench_stage2.py --dataroot data/world --version v1.0-dima --split val \
        --method stage1_cont=runs/stage1_cont_export --method stage2=checkpoints/dima_tiny_stage2 \
        --method dual=checkpoints/dima_tiny_stage2:dual --reference stage1_cont --json out.json

Each method's per-sample L2 avg (VAD convention, valid samples) comes from `dima eval`'s
own scorer (eval.evaluate). CIs: the validation split has few scenes, so whole-scene
blocks would give a handful of resamples; instead consecutive keyframes of a scene are cut
into blocks of `--block` frames (2.5 s at 5), which keeps most of the temporal correlation,
and blocks are resampled with replacement (10,000 draws). Differences to the reference are
paired (the same blocks for both methods): an interval that contains 0 is noise.
Subsets: the scenario tags of dima_meta.json (every sample of a tagged scene).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def blocks_of(scene_tokens: list[str], block: int) -> list[np.ndarray]:
    out, start = [], 0
    for i in range(1, len(scene_tokens) + 1):
        if i == len(scene_tokens) or scene_tokens[i] != scene_tokens[start]:
            idx = np.arange(start, i)
            out += [idx[k: k + block] for k in range(0, len(idx), block)]
            start = i
    return out


def bootstrap(values: dict[str, np.ndarray], blocks: list[np.ndarray], references: list[str],
              draws: int = 10000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean and 95% CI per method, and of (method - reference) for each reference, over block
    resamples (the same draws for all). `diff_vs_reference`/`diff_ci95` are those against the
    first reference; `diff_vs` holds every reference's."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(blocks), size=(draws, len(blocks)))
    out = {}
    for name, v in values.items():
        sums = np.array([[np.nansum(v[b]), np.sum(~np.isnan(v[b]))] for b in blocks])
        s = sums[picks].sum(axis=1)
        means = s[:, 0] / np.maximum(s[:, 1], 1)
        res = {"mean": float(np.nanmean(v)), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
               "n": int(np.sum(~np.isnan(v)))}
        for ref in references:
            if name == ref:
                continue
            d = v - values[ref]
            ds = np.array([[np.nansum(d[b]), np.sum(~np.isnan(d[b]))] for b in blocks])[picks].sum(axis=1)
            dm = ds[:, 0] / np.maximum(ds[:, 1], 1)
            res.setdefault("diff_vs", {})[ref] = {"diff": float(np.nanmean(d)), "ci95": [
                float(np.percentile(dm, 2.5)), float(np.percentile(dm, 97.5))]}
            if ref == references[0]:
                res["diff_vs_reference"], res["diff_ci95"] = res["diff_vs"][ref]["diff"], res["diff_vs"][ref]["ci95"]
        out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-dima")
    p.add_argument("--split", default="val")
    p.add_argument("--method", action="append", required=True, metavar="NAME=CHECKPOINT[:dual]")
    p.add_argument("--reference", action="append", default=[],
                   help="method the others are compared with (paired); repeatable, one column each")
    p.add_argument("--block", type=int, default=5, help="keyframes per bootstrap block")
    p.add_argument("--json", default=None)
    p.add_argument("--reuse", action="append", default=[], metavar="JSON",
                   help="an earlier --json of the same split: methods with the same NAME=CHECKPOINT take "
                        "their per-sample L2 from it instead of being evaluated again")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from dima_planner.data.nuscenes_dataset import dataset_from_args
    from dima_planner.eval.evaluate import evaluate
    from dima_planner.eval.metrics import planning_metrics
    from dima_planner.inference import load_planner

    torch.set_num_threads(args.threads)
    ds = dataset_from_args(args.dataroot, args.version, args.split, load_images=False)
    recs = ds.records
    gt = np.stack([r["ego_fut_traj"] for r in recs])
    mask = np.stack([r["ego_fut_mask"] for r in recs]) > 0
    from dima_planner.data.nuscenes_dataset import occupancy_of

    occ = np.stack([occupancy_of(r) for r in recs])
    tags = [set(r["tags"]) for r in recs]
    per: dict[str, np.ndarray] = {}
    earlier = {}
    for path in args.reuse:
        doc = json.loads(Path(path).read_text())
        if doc.get("per_sample", {}).get("tokens") != [r["token"] for r in recs]:
            p.error(f"--reuse {path}: no per-sample values for these samples (another split, or an older JSON)")
        for name, ck in doc["methods"].items():
            earlier[f"{name}={ck}"] = np.array([np.nan if x is None else x for x in doc["per_sample"]["l2_avg"][name]])
    for spec in args.method:
        name, _, ck = spec.partition("=")
        if spec in earlier:
            per[name] = earlier[spec]
            print(f"{name}: L2 avg {np.nanmean(per[name]):.3f} m (from --reuse)", file=sys.stderr)
            continue
        dual = ck.endswith(":dual")
        ck = ck[: -len(":dual")] if dual else ck
        planner = load_planner(ck, "cpu", dual=dual)
        m = planner.cfg  # images at the checkpoint's size and fit, as `dima eval` builds them
        images = dataset_from_args(args.dataroot, args.version, args.split, image_size=list(m.image_size),
                                   image_fit=getattr(m, "image_fit", "stretch"))
        res = evaluate(planner.predict, images, ("vad",), batch_size=8, keep_predictions=True)
        pred = np.stack([np.asarray(res["predictions"][r["token"]]) for r in recs])
        m = planning_metrics(pred, gt, occ, valid=mask, convention="vad", return_per_sample=True)
        per[name] = np.where(m["sample_mask"], m["per_sample"]["l2_avg"], np.nan)
        print(f"{name}: L2 avg {np.nanmean(per[name]):.3f} m over {np.sum(~np.isnan(per[name]))} samples",
              file=sys.stderr)
    scenes = [r["scene_token"] for r in recs]
    result = {"all": bootstrap(per, blocks_of(scenes, args.block), args.reference)}
    for tag in sorted(set().union(*tags)):
        sel = np.array([tag in t for t in tags])
        sub = {k: v[sel] for k, v in per.items()}
        result[tag] = bootstrap(sub, blocks_of([s for s, k in zip(scenes, sel) if k], args.block), args.reference)
    lines = ["| subset | method | L2 avg (m) [95% CI] | " + "".join(f"minus {ref} [95% CI] | " for ref in args.reference)
             + "n |", "| --- | --- | --- | " + "--- | " * len(args.reference) + "--- |"]
    for subset, rows in result.items():
        for name, r in rows.items():
            diffs = [r.get("diff_vs", {}).get(ref) for ref in args.reference]
            cells = "".join((f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "") + " | "
                            for d in diffs)
            lines.append(f"| {subset} | {name} | {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {cells}{r['n']} |")
    print("\n".join(lines))
    if args.json:
        # per-sample L2 (null: not a valid sample) so that later comparisons need no re-run
        samples = {"tokens": [r["token"] for r in recs],
                   "l2_avg": {k: [None if np.isnan(x) else round(float(x), 5) for x in v] for k, v in per.items()}}
        Path(args.json).write_text(json.dumps({"block": args.block, "methods": dict(m.split("=", 1) for m in args.method),
                                               "results": result, "per_sample": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
