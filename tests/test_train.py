"""Training loop on a tiny generated world: the loss goes down, resume is exact, CLI errors."""
from __future__ import annotations

import argparse

import pytest
import torch

from dima_planner.checkpoint import load_checkpoint
from dima_planner.train import TrainConfig, add_arguments, run, train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dima_planner.synth.config import SynthConfig
    from dima_planner.synth.generate import generate

    root = tmp_path_factory.mktemp("world")
    cfg = SynthConfig(seed=1, num_scenes=2, scene_seconds=4.0, scale=0.1, val_fraction=0.5,
                      traffic_vehicles=3, parked_vehicles=2, pedestrians=2, camera_sweeps=False,
                      scenarios=("straight", "stop_and_go"))
    generate(cfg, root, progress=False)
    return root


def config(world, out, steps: int, batch_size: int) -> TrainConfig:
    cfg = TrainConfig(out_dir=str(out), seed=0, threads=0)
    cfg.data.dataroot, cfg.data.version, cfg.data.batch_size = str(world), "v1.0-dima", batch_size
    cfg.data.val_split = ""  # validation has its own test below
    cfg.optim.lr = 2e-3
    cfg.schedule.steps, cfg.schedule.warmup_steps = steps, 1
    cfg.schedule.val_every = cfg.schedule.ckpt_every = 0
    cfg.logging.progress = False
    return cfg


def test_short_run_lowers_the_loss_and_validates(world, tmp_path):
    # batch = the whole (8-sample) train split, so every step sees the same data
    cfg = config(world, tmp_path / "run", steps=4, batch_size=8)
    cfg.data.val_split = "val"
    cfg.export_dir = str(tmp_path / "export")
    result = train(cfg)
    losses = result["losses"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert result["val"]["num_samples"] > 0 and result["val"]["l2_avg"] == result["val"]["l2_avg"]  # not NaN
    model, meta = load_checkpoint(tmp_path / "export")
    assert meta["step"] == 4 and meta["val"]["l2_avg"] == pytest.approx(result["val"]["l2_avg"])
    assert list((tmp_path / "run" / "tb").iterdir())  # TensorBoard events were written


def test_resume_is_exact(world, tmp_path):
    straight = train(config(world, tmp_path / "a", steps=3, batch_size=1))
    first = train(config(world, tmp_path / "b", steps=3, batch_size=1), stop_after=1)
    assert first["step"] == 1
    second = train(config(world, tmp_path / "b", steps=3, batch_size=1), resume=True)
    assert straight["losses"] == first["losses"] + second["losses"]
    a, _ = load_checkpoint(tmp_path / "a" / "last")
    b, _ = load_checkpoint(tmp_path / "b" / "last")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_cli_rejects_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embed_dimm: 3\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--config", str(bad)])) == 2
    assert "embed_dimm" in capsys.readouterr().err


def _ddp_worker(rank: int, world: str, out: str, port: int) -> None:
    import hashlib
    import os

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = config(world, out, steps=2, batch_size=2)
    cfg.logging.tensorboard = False
    model = train(cfg)["model"]
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
    with open(f"{out}/rank{rank}.sha", "w") as f:
        f.write(digest.hexdigest())


def test_ddp_two_cpu_processes_stay_in_sync(world, tmp_path):
    """torchrun-style env (WORLD_SIZE=2): gloo DDP, batches sharded, replicas identical."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_ddp_worker, args=(str(world), str(out), port), nprocs=2, join=True)
    assert (out / "rank0.sha").read_text() == (out / "rank1.sha").read_text()
    assert (out / "last" / "model.safetensors").is_file()  # only rank 0 writes checkpoints


def test_planner_predict_streams_like_validation(world):
    """`dima eval` batches in dataset order: Planner.predict carries the BEV like train.evaluate."""
    import numpy as np

    from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset, collate
    from dima_planner.inference import Planner
    from dima_planner.model import VisionPlanner, preset
    from dima_planner.train import predict_sequential

    torch.manual_seed(0)
    model = VisionPlanner(preset("tiny_cpu")).eval()
    ds = NuScenesPlanningDataset(DatasetConfig(dataroot=str(world), version="v1.0-dima", split="val",
                                               image_size=list(model.cfg.image_size)))
    want = predict_sequential(model, ds, torch.device("cpu"))
    planner = Planner(model)
    got = np.concatenate([planner.predict(collate([ds[j] for j in range(i, min(i + 3, len(ds)))]))
                          for i in range(0, len(ds), 3)])
    np.testing.assert_allclose(got, want, atol=1e-4)
