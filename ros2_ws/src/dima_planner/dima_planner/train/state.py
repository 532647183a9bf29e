"""What a run saves and restores: model checkpoints, optimiser/scheduler/RNG state, processes."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint, recover_dir, replace_dir, save_checkpoint
from ..config import to_dict
from ..model.config import ModelConfig
from ..model.planner import VisionPlanner

TRAIN_STATE = "train_state.pt"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_init(path: str | Path, expect: ModelConfig) -> VisionPlanner:
    """The planner of `init_from`, which must have been built with the same model config."""
    from ..checkpoint import read_model_config

    theirs = read_model_config(path) if Path(path).is_dir() else None
    if theirs is not None and theirs != expect:
        diff = [f"{k} {getattr(theirs, k)!r} != {getattr(expect, k)!r}" for k in vars(expect)
                if getattr(theirs, k) != getattr(expect, k)]
        raise CheckpointError(f"init_from checkpoint {path} was made for another model config "
                              f"({', '.join(diff[:3])}): set `model` to match it or train stage 1 first")
    model, _ = load_checkpoint(path, "cpu", expect=expect)
    return model


def read_mllm_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from ..model.mllm.checkpoint import MLLM_WEIGHTS

    path = directory / MLLM_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"cannot resume stage 2: {path} does not exist")
    return load_file(str(path))


def save_model_dir(directory: str | Path, model: VisionPlanner, cfg, mllm: nn.Module | None,
                   meta: dict[str, Any]) -> Path:
    """Planner checkpoint (checkpoint.py format); in stage 2 plus the MLLM branch's trainable
    weights in the format the ROS MLLM node loads (model.mllm.checkpoint.save_mllm_checkpoint).
    Written whole or not at all (checkpoint.replace_dir)."""
    return replace_dir(directory, lambda tmp: _write_model_dir(tmp, model, cfg, mllm, meta))


def _write_model_dir(directory: Path, model: VisionPlanner, cfg, mllm: nn.Module | None,
                     meta: dict[str, Any]) -> Path:
    meta = {"stage": cfg.stage, **meta}
    if mllm is not None:
        from ..checkpoint import sha256_file
        from ..model.mllm.checkpoint import MLLM_WEIGHTS, save_mllm_checkpoint

        save_mllm_checkpoint(directory, mllm)
        meta["mllm_sha256"] = sha256_file(Path(directory) / MLLM_WEIGHTS)
        meta["mllm_trainable_parameters"] = sum(p.numel() for p in mllm.trainable_parameters())
    return save_checkpoint(directory, model, to_dict(cfg), meta)


def is_sharded(optim: torch.optim.Optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optim, ZeroRedundancyOptimizer)


def save_train_state(run_dir: Path, model: VisionPlanner, cfg, optim, sched, step: int,
                     metrics: dict | None = None, mllm: nn.Module | None = None,
                     extra_files: dict[str, str] | None = None) -> None:
    """<run_dir>/last: the model checkpoint, train_state.pt and `extra_files` ({name: text}),
    replaced as one directory: a run killed while saving resumes from the previous step."""
    opt_state = optim.state_dict()  # sharded: needs optim.consolidate_state_dict(to=0) on every rank first
    if is_sharded(optim):  # drop the placeholders a sharded load leaves for other ranks' parameters
        opt_state["state"] = {k: v for k, v in opt_state["state"].items() if v is not None}
    state = {"step": step, "optimizer": opt_state, "scheduler": sched.state_dict(), "rng": rng_state()}

    def fill(tmp: Path) -> None:
        _write_model_dir(tmp, model, cfg, mllm, {"step": step, "val": metrics or {}})
        torch.save(state, tmp / TRAIN_STATE)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)

    replace_dir(run_dir / "last", fill)


def load_train_state(run_dir: Path, model: VisionPlanner, cfg, optim, sched, device: torch.device,
                     mllm=None) -> int:
    """Restore <run_dir>/last into model (and MLLM), optimiser, scheduler and RNGs; the step."""
    ckpt = run_dir / "last"
    recover_dir(ckpt)  # a run killed between the two renames of its last save
    if not (ckpt / TRAIN_STATE).is_file():
        raise CheckpointError(f"cannot resume: {ckpt / TRAIN_STATE} does not exist")
    loaded, _ = load_checkpoint(ckpt, device, expect=cfg.model)
    model.load_state_dict(loaded.state_dict())
    if mllm is not None:
        mllm.load_trainable_state_dict(read_mllm_weights(ckpt))
    state = torch.load(ckpt / TRAIN_STATE, map_location=device, weights_only=False)
    optim.load_state_dict(state["optimizer"])  # sharded: the full state; each rank keeps its shard
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


class Distributed:
    """torchrun environment detection; a no-op in a plain process."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        if name.startswith("cuda") and self.enabled:
            return torch.device("cuda", self.local_rank)
        return torch.device(name)

    def all_mean(self, x: float) -> float:
        if not self.enabled:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            # Rank 0 writes the checkpoint and the export after the last step; without this
            # barrier another rank could leave, start a resumed run and read `last` before it
            # exists (then the ranks disagree on the step and hang in a collective).
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
