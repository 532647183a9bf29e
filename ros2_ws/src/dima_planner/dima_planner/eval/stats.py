"""Bootstrap confidence intervals, one resampling rule for every score dima reports.

Samples that are not independent (the frames of one scene, consecutive keyframes, the
frames of one route) are grouped into blocks, and blocks are resampled with replacement;
a replicate's value is the ratio of its summed values to its summed counts, like the point
estimate (a sample-weighted mean). Quantities resampled together (several metrics,
several methods and their paired differences) share the same draws."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def block_bootstrap_ci(sums: Sequence[np.ndarray], counts: Sequence[np.ndarray] | np.ndarray, num: int = 10000,
                       seed: int = 0, level: float = 0.95) -> list[list[float]]:
    """[lo, hi] of sum/count over `num` resamples of B blocks, for each row of `sums`
    ((K, B): the per-block sums of K quantities); `counts` per block, (B,) shared by every
    row or (K, B) one per row. NaN bounds where there is no block."""
    sums = [np.asarray(s, np.float64) for s in sums]
    shared = np.ndim(counts) == 1
    nblocks = len(counts) if shared else len(counts[0])
    if nblocks == 0:
        return [[float("nan"), float("nan")] for _ in sums]
    idx = np.random.default_rng(seed).integers(0, nblocks, size=(num, nblocks))
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    n_shared = np.asarray(counts)[idx].sum(1) if shared else None
    out = []
    for k, s in enumerate(sums):
        n = n_shared if shared else np.asarray(counts[k])[idx].sum(1)
        rep = s[idx].sum(1) / np.maximum(n, 1)
        out.append([float(np.quantile(rep, lo_q)), float(np.quantile(rep, hi_q))])
    return out


def blocks_of(groups: Sequence, size: int | None = None) -> list[np.ndarray]:
    """Index blocks of consecutive equal `groups` entries (e.g. scene tokens in dataset
    order), cut into pieces of at most `size` (None: whole groups)."""
    out, start = [], 0
    for i in range(1, len(groups) + 1):
        if i == len(groups) or groups[i] != groups[start]:
            idx = np.arange(start, i)
            step = size or len(idx)
            out += [idx[k: k + step] for k in range(0, len(idx), step)]
            start = i
    return out


def per_block(values: np.ndarray, blocks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sums, counts) of `values` per block, NaN entries left out of both."""
    v = np.asarray(values, np.float64)
    return (np.array([np.nansum(v[b]) for b in blocks]), np.array([np.sum(~np.isnan(v[b])) for b in blocks]))
