"""What a run saves and restores: model checkpoints, optimiser / scheduler / RNG state.

Checkpointer is what the loop sees: it resumes a run from <out_dir>/last, saves there
when due (whole or not at all: checkpoint.replace_dir writes a temporary directory,
fsyncs it and renames it into place) and exports the trained model."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import (CheckpointError, load_checkpoint, read_model_config, recover_dir, replace_dir,
                          save_checkpoint, sha256_file)
from ..config import to_dict
from ..model.config import ModelConfig
from ..model.mllm.checkpoint import MLLM_WEIGHTS, MLLMCheckpointError, load_mllm_weights, save_mllm_checkpoint
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
    theirs = read_model_config(path) if Path(path).is_dir() else None
    if theirs is not None and theirs != expect:
        diff = [f"{k} {getattr(theirs, k)!r} != {getattr(expect, k)!r}" for k in vars(expect)
                if getattr(theirs, k) != getattr(expect, k)]
        raise CheckpointError(f"init_from checkpoint {path} was made for another model config "
                              f"({', '.join(diff[:3])}): set `model` to match it or train stage 1 first")
    model, _ = load_checkpoint(path, "cpu", expect=expect)
    return model


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
        try:
            load_mllm_weights(mllm, ckpt)
        except MLLMCheckpointError as e:
            raise CheckpointError(f"cannot resume stage 2: {e}") from None
    state = torch.load(ckpt / TRAIN_STATE, map_location=device, weights_only=False)
    optim.load_state_dict(state["optimizer"])  # sharded: the full state; each rank keeps its shard
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


OBJECTIVE_STATE = "objective_state.json"  # stage 2: loss weights and the distillation gate


class Checkpointer:
    """<run_dir>/last of one run: resume from it, save into it when due, export at the end.
    Only the main process writes; a sharded optimiser is consolidated on every rank first."""

    def __init__(self, cfg, dist, stop_after: int | None = None):
        self.cfg, self.dist, self.stop_after = cfg, dist, stop_after
        self.run_dir = Path(cfg.out_dir)

    def resume(self, model: VisionPlanner, optim, sched, objective, device: torch.device) -> tuple[int, dict[str, Any]]:
        """Restore model, MLLM, optimiser, scheduler, RNGs and the objective's state; the step
        and the last validation before the interruption (a run resumed at its final step, to
        redo only the work after it, e.g. QA fine-tuning, still exports the planner's scores)."""
        last = self.run_dir / "last"
        step = load_train_state(self.run_dir, model, self.cfg, optim, sched, device, objective.mllm)
        if (last / OBJECTIVE_STATE).is_file():
            objective.load_state(json.loads((last / OBJECTIVE_STATE).read_text()))
        metrics: dict[str, Any] = {}
        if (last / "meta.json").is_file():
            metrics = dict(json.loads((last / "meta.json").read_text()).get("val") or {})
        return step, metrics

    def write_config(self) -> None:
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))

    def interrupted(self, step: int, total: int) -> bool:
        """--stop-after: leave after this step with a checkpoint, as if interrupted."""
        return self.stop_after is not None and step >= self.stop_after and step != total

    def maybe_save(self, step: int, total: int, model: VisionPlanner, optim, sched, objective,
                   metrics: dict[str, Any]) -> None:
        every = self.cfg.schedule.ckpt_every
        if not (step == total or self.interrupted(step, total) or bool(every and step % every == 0)):
            return
        if is_sharded(optim):
            optim.consolidate_state_dict(to=0)  # a collective: every rank, before rank 0 saves
        if self.dist.main:
            save_train_state(self.run_dir, model, self.cfg, optim, sched, step, metrics, objective.mllm,
                             {OBJECTIVE_STATE: json.dumps(objective.state())})

    def export(self, model: VisionPlanner, mllm, meta: dict[str, Any]) -> None:
        """The trained model into cfg.export_dir (planner checkpoint, stage 2 plus the MLLM)."""
        if self.dist.main and self.cfg.export_dir:
            save_model_dir(self.cfg.export_dir, model, self.cfg, mllm, meta)
