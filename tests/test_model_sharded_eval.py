"""`dima eval` sharded across 2 CPU processes (gloo, torchrun-style env) equals one process."""
from __future__ import annotations

import json

import pytest
import torch

from dima_planner.eval.evaluate import scene_blocks


def test_scene_blocks_are_contiguous_whole_scenes():
    toks = list("aaabbbbcc")
    assert scene_blocks(toks, 1) == [range(0, 9)]
    assert scene_blocks(toks, 2) == [range(0, 3), range(3, 9)]
    assert scene_blocks(toks, 3) == [range(0, 3), range(3, 7), range(7, 9)]
    assert scene_blocks(["a"], 2) == [range(0, 0), range(0, 1)]  # more ranks than scenes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pathlib import Path

    from dima_planner.checkpoint import save_checkpoint
    from dima_planner.config import load_yaml
    from dima_planner.model import VisionPlanner, preset
    from dima_planner.synth.config import SynthConfig
    from dima_planner.synth.generate import generate

    root = tmp_path_factory.mktemp("tiny")
    cfg = load_yaml(SynthConfig, Path(__file__).parents[1] / "params" / "synth_tiny.yaml")
    generate(cfg, root / "world", progress=False)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "ckpt", VisionPlanner(preset("tiny_cpu")))
    return root / "world", ckpt


def _argv(world, ckpt, out):
    return ["--dataroot", str(world), "--version", "v1.0-dima", "--split", "all", "--checkpoint", str(ckpt),
            "--baselines", "const_vel", "ego_mlp", "--out", str(out), "--num-plots", "0", "--batch-size", "3",
            "--cache-dir", str(out.parent / "cache")]


def _worker(rank: int, argv: list[str], rendezvous_dir: str) -> None:
    from dist_harness import env_rendezvous

    env_rendezvous(rank, 2, rendezvous_dir, "eval")
    torch.set_num_threads(1)
    from dima_planner.cli.eval import main

    assert main(argv) == 0


def test_two_process_eval_matches_single_process(tiny, tmp_path):
    import torch.multiprocessing as mp

    from dima_planner.cli.eval import main

    world, ckpt = tiny
    assert main(_argv(world, ckpt, tmp_path / "single")) == 0
    # The ego-MLP fitted above is reused (fitting it again under other thread counts differs
    # in the last float bits, which is not what this test is about).
    argv = _argv(world, ckpt, tmp_path / "sharded") + ["--mlp-weights", str(tmp_path / "single" / "ego_mlp.safetensors")]
    mp.spawn(_worker, args=(argv, str(tmp_path)), nprocs=2, join=True)
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((tmp_path / "sharded" / "metrics.json").read_text())
    assert one["methods"]["planner"]["num_samples"] > 0
    # constant velocity: every metric, subset and prediction identical
    assert two["methods"]["const_vel"] == one["methods"]["const_vel"]
    # planner: the same, up to float summation order (each rank runs torch with its own
    # thread count, so reductions may differ in the last bits)
    _assert_close(two["methods"]["planner"], one["methods"]["planner"], "planner")
    # ego-MLP: rank 0 reloads the saved float32 weights, the single run used them in memory
    assert two["methods"]["ego_mlp"]["vad"]["l2_avg"] == pytest.approx(one["methods"]["ego_mlp"]["vad"]["l2_avg"],
                                                                       rel=1e-6)


def _assert_close(a, b, where: str) -> None:
    """Equal structure, equal strings and counts, floats equal to 1e-6 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), where
    else:
        assert a == b, where
