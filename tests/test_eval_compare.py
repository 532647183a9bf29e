"""`dima eval --method ... --reference ...`: the paired block bootstrap of the README's
stage-2 and ablation tables (eval/compare.py, eval/stats.py)."""
from __future__ import annotations

import numpy as np

from dima_planner.eval.compare import paired_bootstrap
from dima_planner.eval.stats import block_bootstrap_ci, blocks_of


def test_paired_differences_against_every_reference():
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.3, 200)  # shared per-sample difficulty: pairing removes it
    values = {"ref": base, "better": base - 0.05 + rng.normal(0, 0.01, 200), "same": base + rng.normal(0, 0.01, 200)}
    values["better"][3] = np.nan  # an invalid sample is left out, not counted as 0
    blocks = blocks_of([f"s{i // 20}" for i in range(200)], 5)
    assert sum(len(b) for b in blocks) == 200 and all(len(b) <= 5 for b in blocks)
    out = paired_bootstrap(values, blocks, ["ref", "same"])
    better = out["better"]["diff_vs"]
    assert better["ref"]["ci95"][1] < 0 and better["same"]["ci95"][1] < 0  # outside the CI
    lo, hi = out["same"]["diff_vs"]["ref"]["ci95"]
    assert lo < 0 < hi  # noise
    assert out["better"]["diff_vs_reference"] == better["ref"]["diff"]  # the first reference's legacy keys
    assert "ref" not in out["ref"].get("diff_vs", {}) and out["better"]["n"] == 199


def test_one_block_per_route_is_the_plain_bootstrap_of_the_mean():
    """sim's route CI: every route its own block, counts 1: the CI of the plain mean."""
    x = np.random.default_rng(1).normal(2.0, 1.0, 40)
    (lo, hi), = block_bootstrap_ci([x], np.ones(x.size), num=2000, seed=0)
    idx = np.random.default_rng(0).integers(0, x.size, size=(2000, x.size))
    means = x[idx].mean(1)
    np.testing.assert_allclose((lo, hi), (np.quantile(means, 0.025), np.quantile(means, 0.975)), rtol=0, atol=1e-12)
    assert lo < x.mean() < hi
    assert np.isnan(block_bootstrap_ci([np.array([])], np.array([]))[0]).all()  # no route: no interval
