"""Baselines, evaluate() and the `dima eval` CLI on the tiny hand-built dataroot of test_data."""
import argparse
import json

import numpy as np
import pytest
from safetensors.torch import save_file
import torch

from dima_planner.config import load_yaml
from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset, collate
from dima_planner.cli import eval as cli
from dima_planner.eval.baselines import ConstantVelocity, EgoMLP, EgoMLPConfig, train_ego_mlp
from dima_planner.eval.evaluate import evaluate
from test_data import VERSION, build_fixture


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_fixture(tmp_path_factory.mktemp("nusc"))


@pytest.fixture(scope="module")
def train(root, tmp_path_factory):
    cfg = DatasetConfig(dataroot=str(root), version=VERSION, split="train", load_images=False,
                        cache_dir=str(tmp_path_factory.mktemp("cache")))
    return NuScenesPlanningDataset(cfg)


def test_constant_velocity_extrapolates_last_half_second(train):
    batch = collate([train[1], train[0]])
    pred = ConstantVelocity().predict(batch)
    # Sample 1: 2.5 m per 0.5 s straight ahead -> exactly the GT of this constant-speed world.
    np.testing.assert_allclose(pred[0], batch["ego_fut_traj"][0].numpy(), atol=0.05)
    # Sample 0 is a scene's first keyframe: no history, and the ego status is causal (it may not
    # read the next keyframe's pose), so there is no velocity to extrapolate.
    np.testing.assert_allclose(pred[1], 0.0, atol=1e-6)


def test_evaluate_scores_and_subsets(train):
    res = evaluate(ConstantVelocity().predict, train)
    assert res["num_samples"] == 8 and res["num_valid"] == 2  # only 2 keyframes have 6 future ones
    assert res["vad"]["num_samples"] == 2 and res["uniad"]["num_samples"] == 8
    # the keyframe with history is extrapolated exactly; the scene's first one (no past, causal
    # ego status) stands still: half of the standing error below
    assert res["vad"]["l2_1s"] == pytest.approx((2.5 + 5) / 4, abs=0.05) and res["vad"]["col_avg"] == 0.0
    assert res["vad"]["subsets"]["overtake"]["num_samples"] == 2

    def stop(batch):  # stand still: the car 9 m ahead never reaches us, L2 grows with time
        return np.zeros((len(batch["token"]), 6, 2))

    res = evaluate(stop, train, conventions=("vad",))
    assert res["vad"]["l2_1s"] == pytest.approx((2.5 + 5) / 2, abs=0.05)
    with pytest.raises(ValueError, match="expected"):
        evaluate(lambda b: np.zeros((1, 6, 2)), train)


def test_ego_mlp_trains_saves_and_loads(train, tmp_path):
    cfg = load_yaml(EgoMLPConfig, "params/eval_mlp.yaml", {"epochs": 150})
    model = train_ego_mlp(train, cfg)
    batch = collate([train[i] for i in range(4)])
    before = model.predict(batch)
    err = np.abs(before - batch["ego_fut_traj"].numpy())[batch["ego_fut_mask"].numpy() > 0]
    assert err.mean() < 1.0  # learned the 2.5 m/step pattern (untrained output is ~0)
    model.save(tmp_path / "m.safetensors")
    np.testing.assert_allclose(EgoMLP.load(tmp_path / "m.safetensors").predict(batch), before, atol=1e-6)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an ego-MLP"):
        EgoMLP.load(tmp_path / "other.safetensors")


def test_cli_writes_metrics_and_figures(root, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "eval"
    args = parser.parse_args(["--dataroot", str(root), "--version", VERSION, "--split", "train",
                              "--baselines", "const_vel", "ego_mlp", "--checkpoint", "none", "--out", str(out),
                              "--num-plots", "1",
                              "--cache-dir", str(tmp_path / "c")])
    assert cli.run(args) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["methods"]) == {"const_vel", "ego_mlp"}
    assert {"vad", "uniad"} <= set(data["methods"]["const_vel"])
    for name in ("bars_vad.png", "bars_uniad.png", "bev_0.png", "ego_mlp.safetensors", "metrics.md"):
        assert (out / name).stat().st_size > 0
    bad = parser.parse_args(["--dataroot", str(tmp_path / "nope"), "--out", str(out)])
    assert cli.run(bad) == 2
    assert "does not exist" in capsys.readouterr().err
