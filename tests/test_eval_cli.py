"""`dima eval`: named methods, scenario subsets, block-bootstrap CIs, --json, default checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dima_planner.eval.metrics import METRIC_KEYS, scene_bootstrap_ci


def test_block_bootstrap_resamples_scenes_not_frames():
    rng = np.random.default_rng(0)
    scenes = np.repeat([f"s{i}" for i in range(20)], 30)
    # frames of a scene share its level: 600 frames but only 20 independent values
    level = np.repeat(rng.normal(1.0, 0.5, 20), 30)
    per = {k: level.copy() for k in METRIC_KEYS}
    ci = scene_bootstrap_ci(per, np.ones(600, bool), scenes)
    lo, hi = ci["l2_avg"]
    assert lo < level.mean() < hi
    frame_se = level.std() / np.sqrt(600)
    assert (hi - lo) > 3 * 2 * 1.96 * frame_se  # much wider than an i.i.d.-frame interval would be
    sub = scene_bootstrap_ci(per, np.ones(600, bool), scenes, subset=scenes == "s3")
    assert sub["l2_avg"][0] == pytest.approx(sub["l2_avg"][1])  # one scene: no spread


def test_eval_json_shape_subsets_and_cis(training_world, tmp_path, monkeypatch):
    from dima_planner.checkpoint import save_checkpoint
    from dima_planner.eval import cli
    from dima_planner.model import VisionPlanner, preset

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", VisionPlanner(preset("tiny_cpu")))
    monkeypatch.setattr(cli, "DEFAULT_CHECKPOINT", str(ckpt))
    parser = cli.argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "m.json"
    args = parser.parse_args(["--dataroot", str(training_world), "--version", "v1.0-dima", "--split", "val",
                              "--baselines", "const_vel", "--json", str(out), "--out", str(tmp_path / "eval"),
                              "--num-plots", "0", "--cache-dir", str(tmp_path / "cache")])
    assert args.checkpoint == str(ckpt)  # no --checkpoint: the default one
    assert cli.run(args) == 0
    doc = json.loads(out.read_text())
    assert set(doc["methods"]) == {"planner", "const_vel"}
    for m in doc["methods"].values():
        vad = m["vad"]
        assert {"l2_avg", "col_avg", "num_samples", "ci95", "subsets"} <= set(vad) and "uniad" in m
        lo, hi = vad["ci95"]["l2_avg"]
        assert lo <= vad["l2_avg"] <= hi
        assert vad["subsets"] and all("ci95" in s for s in vad["subsets"].values())
        assert np.isfinite(m["speed_mae"])
