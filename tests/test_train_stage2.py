"""Stage 2 (DiMA joint training), `dima export` and Dual inference on a tiny world with a
2-layer SmolLM2 (the offline LLM truncated for speed)."""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
import torch

from dima_planner.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dima_planner.config import ConfigError
from dima_planner.model import VisionPlanner, preset
from dima_planner.model.mllm import MLLMConfig
from dima_planner.model.mllm.config import LLMConfig, LoRAConfig, QFormerConfig, SurrogateConfig
from dima_planner.train import TrainConfig, add_arguments, run, train


@pytest.fixture(scope="module")
def world(training_world):
    return training_world  # conftest.py: generated once for every training test


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    torch.manual_seed(0)
    model = VisionPlanner(preset("tiny_cpu"))
    return save_checkpoint(tmp_path_factory.mktemp("stage1") / "ckpt", model)


def mllm_cfg(model_cfg, **llm) -> MLLMConfig:
    c = model_cfg.embed_dim
    return MLLMConfig(token_dim=c, planner_dim=c, bev_hw=(model_cfg.bev_h, model_cfg.bev_w),
                      llm=LLMConfig(num_layers=2, max_answer_tokens=16, **llm), lora=LoRAConfig(rank=4, alpha=8.0),
                      qformer=QFormerConfig(dim=32, num_layers=1, num_heads=4, ffn_mult=2,
                                            num_queries={"bev": 4, "ego": 1, "agent": 2, "map": 2}),
                      surrogate=SurrogateConfig(head_hidden=32, max_supervised_cells=16))


def config(world, stage1, out, steps=2, **llm) -> TrainConfig:
    model_cfg = preset("tiny_cpu")
    cfg = TrainConfig(model=model_cfg, out_dir=str(out / "run"), export_dir=str(out / "export"), seed=0, threads=0,
                      stage=2, init_from=str(stage1), mllm=mllm_cfg(model_cfg, **llm))
    cfg.data.dataroot, cfg.data.version, cfg.data.batch_size, cfg.data.val_split = str(world), "v1.0-dima", 2, ""
    cfg.schedule.steps, cfg.schedule.warmup_steps = steps, 1
    cfg.schedule.val_every = cfg.schedule.ckpt_every = 0
    cfg.logging.progress = cfg.logging.tensorboard = False
    cfg.stage2.edit_fraction = 1.0
    cfg.stage2.dual_weight = 1.0
    cfg.stage2.qa_tune.steps, cfg.stage2.qa_tune.batch_scenes = 2, 2
    cfg.stage2.dual_tune.steps, cfg.stage2.dual_tune.batch_size = 3, 4
    return cfg


@pytest.fixture(scope="module")
def trained(world, stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2")
    result = train(config(world, stage1, out))
    return out / "export", result


def test_stage2_trains_all_losses_and_writes_planner_plus_mllm(trained, stage1):
    export, result = trained
    assert len(result["losses"]) == 2 and all(np.isfinite(result["losses"]))
    # the planner moved away from its stage-1 initialisation
    before, _ = load_checkpoint(stage1)
    after, meta = load_checkpoint(export)
    assert meta["stage"] == 2 and meta["mllm_trainable_parameters"] > 0
    # every MLLM loss was balanced against planning on the encoder; QA fine-tuning ran
    assert {"qa", "plan", "bev_recon", "bev_future", "edit_qa", "edit_plan", "dual_plan"} <= set(meta["loss_weights"])
    assert all(0 < w for w in meta["loss_weights"].values())
    assert meta["qa_tune"]["steps"] == 2 and np.isfinite(meta["qa_tune"]["final_loss"])
    # then Dual calibration, with its metrics on the training frames before and after
    dual = meta["dual_tune"]
    assert dual["steps"] == 3 and dual["before"]["llm_free_l1"] == dual["after"]["llm_free_l1"]
    assert all(0 <= d["mllm_share"] <= 1 and np.isfinite(d["dual_l1"]) for d in (dual["before"], dual["after"]))
    assert meta["distill_open"] is False  # no validation ran, so the gate stayed closed
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    # MLLM part in the ROS node's format, loadable by its engine (no LLM weights in it)
    from safetensors.torch import load_file

    from dima_planner.runtime.reasoning import MLLMEngine

    state = load_file(str(export / "mllm.safetensors"))
    assert any("lora" in k for k in state) and not any("embed_tokens" in k for k in state)
    engine = MLLMEngine(checkpoint=str(export))
    tokens = {k: np.zeros((n, 64), np.float32) for k, n in (("bev", 24 * 24), ("ego", 1), ("agent", 24), ("map", 16))}
    traj, pooled = engine.plan(tokens, (24, 24), 2, np.zeros(64, np.float32))
    assert traj.shape == (6, 2) and pooled


def test_stage2_step_has_every_mllm_loss(world, stage1, tmp_path):
    """One joint step by hand: QA, planning head, recon, future BEV, edits and distillation."""
    from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset
    from dima_planner.model.joint import DiMAJoint
    from dima_planner.train import TemporalPairs, build_mllm, collate_pairs

    cfg = config(world, stage1, tmp_path)
    ds = NuScenesPlanningDataset(DatasetConfig(dataroot=str(world), version="v1.0-dima", split="train",
                                               image_size=list(cfg.model.image_size)))
    pairs = TemporalPairs(ds, True, 2)
    batch = collate_pairs([pairs[0], pairs[1]])
    assert batch["future"]["mask"].sum() > 0  # next keyframes exist for the first samples
    joint = DiMAJoint(VisionPlanner(cfg.model), build_mllm(cfg.mllm, torch.device("cpu"))).train()
    assert not joint.distill_open  # gated until the teacher beats the planner on validation
    joint.distill_open = True
    dev = torch.device("cpu")
    _, losses = joint(batch["inputs"], batch["samples"], np.random.default_rng(0), cfg.stage2, batch["future"])
    for k in ("qa", "plan", "bev_recon", "bev_future", "edit_qa", "edit_plan", "distill", "dual_plan"):
        assert k in losses and torch.isfinite(losses[k]), k
    # Dual training: the plan from max-pooled ego features reaches the MLLM's ego feature
    joint.zero_grad()
    losses["dual_plan"].backward(retain_graph=True)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.mllm.trainable_parameters())
    losses["total"].backward()
    enc_grad = joint.planner.bev_encoder.parameters().__next__().grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0  # MLLM losses reach the scene encoder


def test_export_is_llm_free_and_plans_identically(trained, world, tmp_path):
    from safetensors.torch import load_file

    from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset, collate
    from dima_planner.export import add_arguments as export_args
    from dima_planner.export import run as export_run
    from dima_planner.inference import load_planner

    export, _ = trained
    out = tmp_path / "llm_free"
    parser = argparse.ArgumentParser()
    export_args(parser)
    assert export_run(parser.parse_args(["--checkpoint", str(export), "--out", str(out)])) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "meta.json", "model.safetensors"]
    keys = load_file(str(out / "model.safetensors")).keys()
    assert not any(k.startswith(("mllm", "llm", "qformer", "branch")) or "lora" in k for k in keys)
    ds = NuScenesPlanningDataset(DatasetConfig(dataroot=str(world), version="v1.0-dima", split="val",
                                               image_size=[96, 160]))
    batch = collate([ds[i] for i in range(min(3, len(ds)))])
    a, b = load_planner(export).predict(batch), load_planner(out).predict(batch)
    np.testing.assert_array_equal(a, b)
    # Dual: MLLM ego feature max-pooled into the planning head
    dual = load_planner(export, dual=True)
    c = dual.predict(batch)
    assert c.shape == a.shape and np.isfinite(c).all() and not np.allclose(a, c)
    with pytest.raises(CheckpointError, match="no mllm"):
        load_planner(out, dual=True)


def test_export_refuses_bad_checkpoints(tmp_path, capsys):
    from dima_planner.export import export_planner

    with pytest.raises(CheckpointError, match="does not exist"):
        export_planner(tmp_path / "missing", tmp_path / "out")


def test_stage2_bad_inputs_fail_before_training(world, stage1, tmp_path, capsys):
    cfg = config(world, stage1, tmp_path)
    with pytest.raises(ConfigError, match="init_from"):
        replace(cfg, init_from=None)
    with pytest.raises(ConfigError, match="mllm"):
        replace(cfg, mllm=None)
    with pytest.raises(ConfigError, match="embed_dim"):
        replace(cfg, mllm=replace(cfg.mllm, token_dim=32))
    bev_only = replace(cfg.mllm.qformer, num_queries={"bev": 4, "ego": 0, "agent": 0, "map": 0})
    with pytest.raises(ConfigError, match="scene editing .* agent"):
        replace(cfg, mllm=replace(cfg.mllm, qformer=bev_only), stage2=replace(cfg.stage2, edit_fraction=0.5))
    # a checkpoint of another architecture as init_from
    other = save_checkpoint(tmp_path / "other", VisionPlanner(replace(preset("tiny_cpu"), embed_dim=32)))
    with pytest.raises(CheckpointError, match="another model config.*embed_dim"):
        train(replace(cfg, init_from=str(other)))
    # a missing LLM folder: one sentence from the CLI, nothing trained
    bad = tmp_path / "bad.yaml"
    from dima_planner.config import to_dict
    import yaml

    d = to_dict(config(world, stage1, tmp_path, path=str(tmp_path / "no_llm")))
    bad.write_text(yaml.safe_dump(d))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--config", str(bad)])) == 1
    err = capsys.readouterr().err
    assert "LLM" in err and "no_llm" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "last").exists()


def test_dual_calibration_fits_the_pooled_feature_and_leaves_the_planner_alone():
    """Targets are what the planner's trajectory layer makes from max(planner feature, a
    fixed map of the LLM read-out): calibration must find that map through the max-pool,
    with the planner frozen, and say how often the MLLM feature wins the pool."""
    from dima_planner.model.mllm.dual_tune import DualTuneConfig, DualTuneData, tune_dual
    from dima_planner.train import build_mllm

    torch.manual_seed(0)
    model = VisionPlanner(preset("tiny_cpu")).requires_grad_(False)
    branch = build_mllm(mllm_cfg(preset("tiny_cpu")), torch.device("cpu"))
    trajectories = model.planning_head.trajectories
    n, d = 256, branch.llm.get_input_embeddings().weight.shape[1]
    readout, planner_feat = torch.randn(n, d), torch.relu(torch.randn(n, 64))
    truth = torch.nn.Linear(d, 64).requires_grad_(False)
    command = torch.randint(3, (n,))
    with torch.no_grad():
        target = trajectories(torch.maximum(planner_feat, truth(readout)))[torch.arange(n), command]
    data = DualTuneData(readout, planner_feat, command, target, torch.ones(n, 6))
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in branch.parameters()]
    out = tune_dual(branch, trajectories, data, DualTuneConfig(steps=300, batch_size=64, lr=1e-3, head_lr=1e-3),
                    progress=False)
    before, after = out["before"], out["after"]
    assert after["dual_l1"] < 0.5 * before["dual_l1"]
    assert after["llm_free_l1"] == before["llm_free_l1"]
    assert after["teacher_l1"] < before["teacher_l1"]  # the MLLM head follows its new feature
    assert 0 < after["mllm_share"] < 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert [p.requires_grad for p in branch.parameters()] == flags
