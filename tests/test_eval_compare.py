"""tools/bench_stage2.py's paired block bootstrap (the README's stage-2 and ablation tables)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "bench_stage2.py"
    spec = importlib.util.spec_from_file_location("bench_stage2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_differences_against_every_reference():
    tool = _tool()
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.3, 200)  # shared per-sample difficulty: pairing removes it
    values = {"ref": base, "better": base - 0.05 + rng.normal(0, 0.01, 200), "same": base + rng.normal(0, 0.01, 200)}
    values["better"][3] = np.nan  # an invalid sample is left out, not counted as 0
    blocks = tool.blocks_of([f"s{i // 20}" for i in range(200)], 5)
    assert sum(len(b) for b in blocks) == 200 and all(len(b) <= 5 for b in blocks)
    out = tool.bootstrap(values, blocks, ["ref", "same"])
    better = out["better"]["diff_vs"]
    assert better["ref"]["ci95"][1] < 0 and better["same"]["ci95"][1] < 0  # outside the CI
    lo, hi = out["same"]["diff_vs"]["ref"]["ci95"]
    assert lo < 0 < hi  # noise
    assert out["better"]["diff_vs_reference"] == better["ref"]["diff"]  # the first reference's legacy keys
    assert "ref" not in out["ref"].get("diff_vs", {}) and out["better"]["n"] == 199
