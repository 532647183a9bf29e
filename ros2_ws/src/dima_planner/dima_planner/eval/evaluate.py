"""Score a planner over a dataset: VAD-exact planning metrics, overall and per scenario tag."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.nuscenes_dataset import collate
from .metrics import aggregate_per_sample, planning_metrics

PredictFn = Callable[[dict[str, Any]], np.ndarray]


def evaluate(
    predict_fn: PredictFn,
    dataset,
    conventions: Sequence[str] = ("vad", "uniad"),
    batch_size: int = 16,
    num_workers: int = 0,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Run `predict_fn(batch) -> (B, 6, 2)` over `dataset` and score it.

    Returns {"num_samples", "num_valid", convention: {metrics..., "num_samples",
    "subsets": {tag: metrics}}} for each convention (VAD first by default). Tags come from
    dima_meta.json (Sample.extras["tags"]); real nuScenes has none, so "subsets" is empty.
    With keep_predictions, "predictions" maps sample token -> (6, 2) list.
    """
    if len(dataset) == 0:
        raise ValueError("evaluate: the dataset is empty")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    per: dict[str, list[dict[str, np.ndarray]]] = {c: [] for c in conventions}
    masks: dict[str, list[np.ndarray]] = {c: [] for c in conventions}
    tags: list[list[str]] = []
    preds: dict[str, list[float]] = {}
    num_valid = 0
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
        if keep_predictions:
            preds.update({t: p.tolist() for t, p in zip(batch["token"], pred)})

    all_tags = sorted({t for ts in tags for t in ts})
    result: dict[str, Any] = {"num_samples": len(dataset)}
    for c in conventions:
        merged = {k: np.concatenate([p[k] for p in per[c]]) for k in per[c][0]}
        mask = np.concatenate(masks[c])
        res = aggregate_per_sample(merged, mask)
        res["subsets"] = {tag: aggregate_per_sample(merged, mask, np.array([tag in ts for ts in tags]))
                          for tag in all_tags}
        result[c] = res
    result["num_valid"] = num_valid  # samples with all 6 future keyframes (the VAD denominator)
    if keep_predictions:
        result["predictions"] = preds
    return result


def format_table(results: dict[str, dict[str, Any]], convention: str = "vad") -> str:
    """Markdown table: one row per method, L2 in metres and collisions in percent."""
    head = "| method | L2 1s | L2 2s | L2 3s | L2 avg | col 1s % | col 2s % | col 3s % | col avg % | n |"
    lines = [f"Convention: {convention}", head, "|" + " --- |" * 10]
    for name, res in results.items():
        r = res[convention]
        l2 = [f"{r[k]:.3f}" for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg")]
        col = [f"{100 * r[k]:.2f}" for k in ("col_1s", "col_2s", "col_3s", "col_avg")]
        lines.append(f"| {name} | " + " | ".join(l2 + col) + f" | {r['num_samples']} |")
    return "\n".join(lines)
