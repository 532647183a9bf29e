"""Score a planner over a dataset: VAD-exact planning metrics, overall and per scenario tag."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.nuscenes_dataset import collate
from ..distributed import Distributed
from .metrics import aggregate_per_sample, planning_metrics, scene_bootstrap_ci

PredictFn = Callable[[dict[str, Any]], np.ndarray]


def evaluate(
    predict_fn: PredictFn,
    dataset,
    conventions: Sequence[str] = ("vad", "uniad"),
    batch_size: int = 16,
    num_workers: int = 0,
    keep_predictions: bool = False,
    shard: "Shard | None" = None,
) -> dict[str, Any]:
    """Run `predict_fn(batch) -> (B, 6, 2)` over `dataset` and score it.

    Returns {"num_samples", "num_valid", convention: {metrics..., "num_samples",
    "subsets": {tag: metrics}}} for each convention (VAD first by default). Tags come from
    dima_meta.json (Sample.extras["tags"]); real nuScenes has none, so "subsets" is empty.
    With keep_predictions, "predictions" maps sample token -> (6, 2) list.

    shard: with several processes (torchrun), each rank scores its contiguous block of
    whole scenes (`scene_blocks`) and the per-sample results are gathered on rank 0 in
    dataset order, so rank 0 returns exactly the single-process result; other ranks
    return None.
    """
    if len(dataset) == 0:
        raise ValueError("evaluate: the dataset is empty")
    part = collect(predict_fn, dataset if shard is None else shard.subset(dataset), conventions,
                   batch_size, num_workers, keep_predictions)
    if shard is not None:
        parts = shard.gather(part)
        if parts is None:
            return None
        part = merge_parts(parts)
    return summarize(part, len(dataset), conventions, keep_predictions)


def collect(predict_fn: PredictFn, dataset, conventions: Sequence[str], batch_size: int, num_workers: int,
            keep_predictions: bool) -> dict[str, Any]:
    """Per-sample metric arrays of `dataset` (may be empty: a rank with no scenes)."""
    per: dict[str, list[dict[str, np.ndarray]]] = {c: [] for c in conventions}
    masks: dict[str, list[np.ndarray]] = {c: [] for c in conventions}
    tags: list[list[str]] = []
    scenes: list[str] = []
    preds: dict[str, list[float]] = {}
    num_valid = 0
    if len(dataset):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate)
        for batch in tqdm(loader, desc="evaluate", unit="batch", leave=False):
            pred = np.asarray(predict_fn(batch), dtype=np.float64)
            b = len(batch["token"])
            if pred.shape != (b, 6, 2):
                raise ValueError(f"evaluate: predict_fn returned shape {pred.shape}, expected ({b}, 6, 2)")
            step_mask = batch["ego_fut_mask"].numpy() > 0
            num_valid += int(step_mask.all(axis=1).sum())
            for c in conventions:
                out = planning_metrics(pred, batch["ego_fut_traj"].numpy(), batch["occupancy"].numpy(),
                                       valid=step_mask, convention=c, return_per_sample=True)
                per[c].append(out["per_sample"])
                masks[c].append(out["sample_mask"])
            tags.extend(batch["tags"])
            scenes.extend(batch["scene_token"])
            if keep_predictions:
                preds.update({t: p.tolist() for t, p in zip(batch["token"], pred)})
    return {"per": per, "masks": masks, "tags": tags, "scenes": scenes, "preds": preds, "num_valid": num_valid}


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate collect() results in the given (rank = dataset) order."""
    out = {"per": {}, "masks": {}, "tags": [], "scenes": [], "preds": {}, "num_valid": 0}
    for p in parts:
        for c in p["per"]:
            out["per"].setdefault(c, []).extend(p["per"][c])
            out["masks"].setdefault(c, []).extend(p["masks"][c])
        out["tags"].extend(p["tags"])
        out["scenes"].extend(p["scenes"])
        out["preds"].update(p["preds"])
        out["num_valid"] += p["num_valid"]
    return out


def summarize(part: dict[str, Any], num_samples: int, conventions: Sequence[str],
              keep_predictions: bool) -> dict[str, Any]:
    per, masks, tags, scenes = part["per"], part["masks"], part["tags"], part["scenes"]
    all_tags = sorted({t for ts in tags for t in ts})
    result: dict[str, Any] = {"num_samples": num_samples}
    for c in conventions:
        merged = {k: np.concatenate([p[k] for p in per[c]]) for k in per[c][0]}
        mask = np.concatenate(masks[c])

        def scored(subset=None):
            res = aggregate_per_sample(merged, mask, subset)
            res["ci95"] = scene_bootstrap_ci(merged, mask, scenes, subset)  # block bootstrap over scenes
            res["num_scenes"] = len({s for s, m, k in zip(scenes, mask, subset if subset is not None
                                                             else np.ones(len(mask), bool)) if m and k})
            return res

        res = scored()
        res["subsets"] = {tag: scored(np.array([tag in ts for ts in tags])) for tag in all_tags}
        result[c] = res
    result["num_valid"] = part["num_valid"]  # samples with all 6 future keyframes (the VAD denominator)
    if keep_predictions:
        result["predictions"] = part["preds"]
    return result


def scene_blocks(scene_tokens: Sequence[str], world: int) -> list[range]:
    """Split dataset indices into `world` contiguous blocks of whole scenes (runs of equal
    scene token), balanced by sample count; the temporal BEV never crosses a block edge
    inside a scene. Blocks may be empty when there are fewer scenes than ranks."""
    runs: list[tuple[int, int]] = []
    for i, tok in enumerate(scene_tokens):
        if runs and scene_tokens[runs[-1][0]] == tok:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    n = len(scene_tokens)
    edges = [0] + [e for _, e in runs]  # indices where a block may start or end
    bounds = [0]
    for k in range(1, world):
        target = n * k / world
        bounds.append(min((e for e in edges if e >= bounds[-1]), key=lambda e: (abs(e - target), e)))
    bounds.append(n)
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


class Shard(Distributed):
    """This process's share of an evaluation under torchrun: a contiguous block of whole
    scenes (`scene_blocks`); results are gathered on rank 0 (distributed.Distributed)."""

    def subset(self, dataset):
        from torch.utils.data import Subset

        tokens = [r["scene_token"] for r in dataset.records]
        return Subset(dataset, list(scene_blocks(tokens, self.world)[self.rank]))


def format_table(results: dict[str, dict[str, Any]], convention: str = "vad", subset: str | None = None) -> str:
    """Markdown table: one row per method, L2 in metres and collisions in percent, each with
    its 95 % CI (block bootstrap over scenes) for the averages. subset: a scenario tag."""
    head = ("| method | L2 1s | L2 2s | L2 3s | L2 avg [95% CI] | col 1s % | col 2s % | col 3s % "
            "| col avg % [95% CI] | n | scenes |")
    title = f"Convention: {convention}" + (f", subset: {subset}" if subset else "")
    lines = [title, head, "|" + " --- |" * 11]
    for name, res in results.items():
        r = res[convention] if subset is None else res[convention]["subsets"].get(subset)
        if r is None:
            continue
        ci = r.get("ci95", {})
        l2 = [f"{r[k]:.3f}" for k in ("l2_1s", "l2_2s", "l2_3s")]
        l2.append(f"{r['l2_avg']:.3f} [{ci['l2_avg'][0]:.3f}, {ci['l2_avg'][1]:.3f}]" if "l2_avg" in ci
                  else f"{r['l2_avg']:.3f}")
        col = [f"{100 * r[k]:.2f}" for k in ("col_1s", "col_2s", "col_3s")]
        col.append(f"{100 * r['col_avg']:.2f} [{100 * ci['col_avg'][0]:.2f}, {100 * ci['col_avg'][1]:.2f}]"
                   if "col_avg" in ci else f"{100 * r['col_avg']:.2f}")
        lines.append(f"| {name} | " + " | ".join(l2 + col) + f" | {r['num_samples']} | {r.get('num_scenes', '')} |")
    return "\n".join(lines)
