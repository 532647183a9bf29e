"""`dima eval`: named methods, scenario subsets, block-bootstrap CIs, --json, default checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

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
    from dima_planner.cli import eval as cli
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
    assert "VAD rule" in doc["command"]  # open-loop numbers say which command they were given
    for m in doc["methods"].values():
        vad = m["vad"]
        assert {"l2_avg", "col_avg", "num_samples", "ci95", "subsets"} <= set(vad) and "uniad" in m
        lo, hi = vad["ci95"]["l2_avg"]
        assert lo <= vad["l2_avg"] <= hi
        assert vad["subsets"] and all("ci95" in s for s in vad["subsets"].values())
        assert np.isfinite(m["speed_mae"])


STAGE2 = Path(__file__).resolve().parents[1] / "checkpoints" / "dima_tiny_stage2"


@pytest.mark.skipif(not (STAGE2 / "mllm.safetensors").exists(), reason="stage-2 checkpoint not present")
def test_eval_qa_end_to_end_with_the_default_stage2_checkpoint(training_world, tmp_path):
    """`dima eval --qa` with only the data flags: the shipped stage-2 checkpoint answers through
    the node's engine; the commentary, held to its grammar, always parses."""
    from dima_planner.cli import eval as cli

    out = tmp_path / "qa.json"
    parser = cli.argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--dataroot", str(training_world), "--version", "v1.0-dima", "--split", "val",
                              "--qa", "--threads", "1", "--qa-stride", "4", "--json", str(out),
                              "--cache-dir", str(tmp_path / "cache")])
    assert cli.run(args) == 0
    qa = json.loads(out.read_text())["qa"]
    assert qa["checkpoint"].endswith("dima_tiny_stage2") and qa["num_frames"] >= 2
    assert qa["num_questions"] == 4 * qa["num_frames"] and 0.0 <= qa["overall_exact_match"] <= 1.0
    assert set(qa["per_type"]) == set(qa["constant_baseline"]["per_type"])
    lo, hi = qa["overall_exact_match_ci95"]
    assert lo <= 100 * qa["overall_exact_match"] <= hi  # percentage points, scenes resampled
    diff = 100 * (qa["overall_exact_match"] - qa["constant_baseline"]["overall_exact_match"])
    assert qa["minus_constant_ci95"][0] <= diff <= qa["minus_constant_ci95"][1]
    wf = qa["well_formed"]
    assert wf["answer_grammar"] and wf["planning_free_text"] == 1.0 and wf["num_free_texts"] == qa["num_frames"]
    assert 0.0 <= wf["planning_free_text_unconstrained"] <= 1.0
    slots = qa["planning_slots"]
    assert slots["num"] >= 1 and {"action", "route", "reason", "reason_kind"} <= set(slots)
    assert all(t["reference"] and t["unconstrained"] is not None for t in qa["reasoning_texts"])
