"""Open-loop planning metrics with VAD-exact semantics (docs/METHOD.md section 3).

Everything here reproduces the ST-P3 `PlanningMetric` as used by VAD, including its
quirks, so numbers are comparable with published tables:

* occupancy (data/occupancy.py): agent boxes drawn with `cv2.fillPoly` from 4 corners
  rounded with np.round (column = round((x + 50) / 0.5), row = round((50 - y) / 0.5));
* ego footprint: rasterised once with `skimage.draw.polygon` on fractional indices
  (cell-centre origin bx = -49.75), shifted by each waypoint / 0.5 as floats, then
  truncated toward zero (`astype(int32)`) and clipped to [0, 199]. Note the half-cell
  asymmetry between the two rasterisations is VAD's own and is kept on purpose;
* a step counts as a collision only where the GT trajectory's footprint does not collide.

Frames: trajectories and boxes are in the current LiDAR frame, x right, y forward (m).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from skimage.draw import polygon as sk_polygon

from ..data.occupancy import BX, DX, GRID
from .stats import block_bootstrap_ci

EGO_LENGTH = 4.084
EGO_WIDTH = 1.85
EGO_FORWARD_SHIFT = 0.5
HORIZONS_S = (1, 2, 3)  # seconds; n = 2 * k steps at 0.5 s
N_STEPS = 6

Convention = Literal["vad", "uniad"]


def ego_footprint_cells() -> np.ndarray:
    """Float (P, 2) ego footprint cells as (forward index, column), before any shift."""
    pts = np.array(
        [
            [-EGO_LENGTH / 2 + EGO_FORWARD_SHIFT, EGO_WIDTH / 2],
            [EGO_LENGTH / 2 + EGO_FORWARD_SHIFT, EGO_WIDTH / 2],
            [EGO_LENGTH / 2 + EGO_FORWARD_SHIFT, -EGO_WIDTH / 2],
            [-EGO_LENGTH / 2 + EGO_FORWARD_SHIFT, -EGO_WIDTH / 2],
        ]
    )  # (forward, side) in metres
    idx = (pts - BX) / DX
    rr, cc = sk_polygon(idx[:, 0], idx[:, 1])  # rows = forward index, cols = side index
    return np.stack([rr, cc], axis=-1).astype(np.float64)


def footprint_pixels(traj: np.ndarray, cells: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grid (rows, cols), each int (S, P), covered by the footprint at each waypoint of traj (S, 2)."""
    if cells is None:
        cells = ego_footprint_cells()
    traj = np.asarray(traj, dtype=np.float64)
    fwd = cells[None, :, 0] + traj[:, 1:2] / DX
    col = cells[None, :, 1] + traj[:, 0:1] / DX
    # astype(int32) truncates toward zero, exactly like VAD; then clip into the grid.
    r = np.clip((GRID - fwd).astype(np.int32), 0, GRID - 1)
    c = np.clip(col.astype(np.int32), 0, GRID - 1)
    return r, c


def collisions(traj: np.ndarray, occupancy: np.ndarray, cells: np.ndarray | None = None) -> np.ndarray:
    """Bool (S,): does the footprint at waypoint t touch an occupied cell of occupancy[t]?"""
    r, c = footprint_pixels(traj, cells)
    t = np.arange(traj.shape[0])[:, None]
    return np.asarray(occupancy[t, r, c]).any(axis=1)


def _validate(pred: np.ndarray, gt: np.ndarray, occupancy: np.ndarray, valid: np.ndarray | None):
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    occupancy = np.asarray(occupancy)
    if pred.ndim != 3 or pred.shape[1:] != (N_STEPS, 2):
        raise ValueError(f"planning_metrics: pred must have shape (N, 6, 2), got {pred.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"planning_metrics: gt shape {gt.shape} differs from pred shape {pred.shape}")
    n = pred.shape[0]
    if occupancy.shape != (n, N_STEPS, GRID, GRID):
        raise ValueError(f"planning_metrics: occupancy must have shape ({n}, 6, 200, 200), got {occupancy.shape}")
    if occupancy.dtype != bool:
        raise ValueError(f"planning_metrics: occupancy must be bool, got {occupancy.dtype}")
    if valid is None:
        step_valid = np.ones((n, N_STEPS), dtype=bool)
    else:
        valid = np.asarray(valid)
        if valid.dtype != bool:
            raise ValueError(f"planning_metrics: valid must be bool, got {valid.dtype}")
        if valid.shape == (n,):
            step_valid = np.repeat(valid[:, None], N_STEPS, axis=1)
        elif valid.shape == (n, N_STEPS):
            step_valid = valid
        else:
            raise ValueError(f"planning_metrics: valid must have shape ({n},) or ({n}, 6), got {valid.shape}")
    if not np.all(np.isfinite(pred[step_valid])):
        raise ValueError("planning_metrics: pred has NaN or infinite values at evaluated steps")
    if not np.all(np.isfinite(gt[step_valid])):
        raise ValueError("planning_metrics: gt has NaN or infinite values at evaluated steps")
    return pred, gt, occupancy, step_valid


def planning_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    occupancy: np.ndarray,
    valid: np.ndarray | None = None,
    convention: Convention = "vad",
    return_per_sample: bool = False,
) -> dict:
    """L2 (m) and collision rate (fraction, not percent) at 1/2/3 s and their average.

    pred, gt: float (N, 6, 2), LiDAR frame; occupancy: bool (N, 6, 200, 200).
    valid: bool (N,) sample mask or (N, 6) per-step future mask; default all valid.

    convention="vad" (ST-P3 / VAD, DiMA's main table): per sample, L2_k = mean over steps
      1..2k of the Euclidean error and col_k = (#steps <= 2k where the prediction collides
      and the GT footprint does not) / 2k. Only samples whose steps are all valid count;
      the dataset value is the mean over them.
    convention="uniad": the value at step 2k itself (L2 error and collision flag at that
      step). Every sample counts in the denominator; a step whose future mask is 0
      contributes 0 to the numerator (UniAD multiplies the L2 by the GT step mask and
      divides by the number of samples). A (N,) `valid` marks whole samples as masked.
    In both, "avg" is the mean of the 1 s, 2 s and 3 s values. With no evaluated samples
    the values are NaN (never a silent 0).

    return_per_sample=True adds "per_sample": {key: float (N,)} (NaN for samples the
    convention excludes) and "sample_mask" so subsets can be re-aggregated with
    `aggregate_per_sample`.
    """
    if convention not in ("vad", "uniad"):
        raise ValueError(f"planning_metrics: convention must be 'vad' or 'uniad', got {convention!r}")
    pred, gt, occupancy, step_valid = _validate(pred, gt, occupancy, valid)
    n = pred.shape[0]
    # Masked steps may hold padding (even NaN); zero them so they rasterise harmlessly.
    pred = np.where(step_valid[..., None], pred, 0.0)
    gt = np.where(step_valid[..., None], gt, 0.0)
    cells = ego_footprint_cells()
    err = np.linalg.norm(pred - gt, axis=-1)  # (N, 6)
    col = np.zeros((n, N_STEPS), dtype=bool)
    for i in range(n):
        gt_col = collisions(gt[i], occupancy[i], cells)
        pred_col = collisions(pred[i], occupancy[i], cells)
        col[i] = pred_col & ~gt_col

    per: dict[str, np.ndarray] = {}
    if convention == "vad":
        sample_mask = step_valid.all(axis=1)
        for k in HORIZONS_S:
            m = 2 * k
            per[f"l2_{k}s"] = np.where(sample_mask, err[:, :m].mean(axis=1), np.nan)
            per[f"col_{k}s"] = np.where(sample_mask, col[:, :m].mean(axis=1), np.nan)
    else:
        sample_mask = np.ones(n, dtype=bool)
        err_m = np.where(step_valid, err, 0.0)
        col_m = np.where(step_valid, col, False)
        for k in HORIZONS_S:
            per[f"l2_{k}s"] = err_m[:, 2 * k - 1].astype(np.float64)
            per[f"col_{k}s"] = col_m[:, 2 * k - 1].astype(np.float64)
    per["l2_avg"] = np.mean([per[f"l2_{k}s"] for k in HORIZONS_S], axis=0)
    per["col_avg"] = np.mean([per[f"col_{k}s"] for k in HORIZONS_S], axis=0)

    out: dict = aggregate_per_sample(per, sample_mask)
    out["convention"] = convention
    if return_per_sample:
        out["per_sample"] = per
        out["sample_mask"] = sample_mask
    return out


METRIC_KEYS = ("l2_1s", "l2_2s", "l2_3s", "l2_avg", "col_1s", "col_2s", "col_3s", "col_avg")


def aggregate_per_sample(per: dict[str, np.ndarray], sample_mask: np.ndarray, subset: np.ndarray | None = None) -> dict:
    """Dataset means of per-sample values over `sample_mask` (and an optional subset mask)."""
    sel = np.asarray(sample_mask, dtype=bool)
    if subset is not None:
        sel = sel & np.asarray(subset, dtype=bool)
    count = int(sel.sum())
    out: dict = {"num_samples": count}
    for key in METRIC_KEYS:
        out[key] = float(np.mean(per[key][sel])) if count else float("nan")
    return out


def scene_bootstrap_ci(per: dict[str, np.ndarray], sample_mask: np.ndarray, scenes: Sequence[str],
                       subset: np.ndarray | None = None, num: int = 1000, seed: int = 0,
                       level: float = 0.95, keys: Sequence[str] = METRIC_KEYS) -> dict[str, list[float]]:
    """95 % confidence interval of the mean of every `keys` entry of `per` (the planning
    metrics by default) by block bootstrap over scenes.

    Frames of one scene are strongly correlated, so scenes (not frames) are resampled with
    replacement; each replicate's metric is the sample-weighted mean over its scenes, like
    the point estimate. Returns {key: [lo, hi]} (NaN where no sample is selected)."""
    sel = np.asarray(sample_mask, dtype=bool)
    if subset is not None:
        sel = sel & np.asarray(subset, dtype=bool)
    names, inv = np.unique(np.asarray(scenes), return_inverse=True)
    counts = np.bincount(inv, weights=sel.astype(float), minlength=len(names))
    used = counts > 0
    sums = [np.bincount(inv, weights=np.where(sel, np.nan_to_num(np.asarray(per[key], np.float64)), 0.0),
                        minlength=len(names))[used] for key in keys]
    return dict(zip(keys, block_bootstrap_ci(sums, counts[used], num, seed, level)))
