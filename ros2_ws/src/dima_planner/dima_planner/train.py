"""Stage-1 training of the vision planner (VAD losses), plain loop.

    dima train --config params/train/tiny_cpu.yaml [--set optim.lr=1e-3 ...] [--resume]

AdamW + linear warmup + cosine decay, gradient clipping, tqdm (loss, samples/s),
TensorBoard scalars, periodic validation with VAD-convention planning metrics, and
checkpoints that resume exactly (model, optimiser, scheduler, data position, RNG states).

Temporal BEV in training follows VAD: each sample is paired with the previous keyframe
of its scene; the previous BEV is computed without gradients and aligned by prev2cur.
At validation the BEV is carried frame to frame as the deployed node does.

Distributed: launched with torchrun (WORLD_SIZE > 1 in the environment) the loop wraps
the model in DistributedDataParallel (gloo on CPU, nccl on CUDA) and shards every global
batch across ranks; `optim.shard_states: true` additionally shards the AdamW states across
ranks (ZeroRedundancyOptimizer, ZeRO stage 1) for large (7B LLM) stage-2 runs.
`precision: bf16` runs the forward under autocast.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, load_yaml, parse_overrides, to_dict
from .model.config import ModelConfig
from .model.joint import (MLLM_TERMS, DiMAJoint, LossBalancer, Stage2Config, encoder_grad_norms,
                          encoder_parameters, future_frames)
from .model.losses import LossWeights, planning_losses
from .model.mllm import LLMNotFoundError, MLLMConfig
from .model.planner import VisionPlanner, count_parameters

TRAIN_STATE = "train_state.pt"


# ------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    dataroot: str = "data/synth"
    version: str = "v1.0-dima"
    train_split: str = "train"
    val_split: str = "val"  # "" disables validation
    batch_size: int = 4
    num_workers: int = 0
    cache_images: bool = True  # keep decoded, resized images in memory (the worlds are small)


@dataclass
class OptimConfig:
    lr: float = 2e-4  # VAD
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 35.0  # VAD's max_norm
    backbone_lr_mult: float = 0.1  # VAD scales the image backbone's lr by 0.1
    # Distributed runs only (torchrun, world size > 1): wrap AdamW in
    # torch.distributed.optim.ZeroRedundancyOptimizer so that each rank keeps the AdamW states
    # (exp_avg, exp_avg_sq) of its shard of the parameters only -- about 1/world of the optimiser
    # memory, e.g. for the stage-2 LoRA / Q-Former / head parameters next to a 7B LLM. All param
    # groups (backbone lr multiplier, stage-2 MLLM group) are kept; updates equal plain AdamW's.
    # Checkpoints hold the full (consolidated) optimiser state, interchangeable with unsharded
    # runs. Ignored, with a note, in a single process.
    shard_states: bool = False


@dataclass
class ScheduleConfig:
    steps: int = 1000
    warmup_steps: int = 50
    min_lr_ratio: float = 1e-3
    val_every: int = 250  # 0: only at the end
    ckpt_every: int = 250  # 0: only at the end


@dataclass
class LoggingConfig:
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    out_dir: str = "runs/tiny_cpu"
    export_dir: str | None = None  # final model-only checkpoint (e.g. checkpoints/dima_tiny)
    device: str = "cpu"
    threads: int = 0  # torch.set_num_threads; 0 leaves torch's default
    precision: Literal["fp32", "bf16"] = "fp32"
    stage: int = 1  # 1: vision planner alone; 2: jointly with the MLLM branch (DiMA)
    # A planner checkpoint to start from (stage 2: the stage-1 result). Its model config
    # must equal `model`; training state (optimiser, schedule) starts fresh.
    init_from: str | None = None
    mllm: MLLMConfig | None = None  # the MLLM branch (stage 2 only)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 (vision planner) or 2 (joint with the MLLM), got {self.stage}")
        if self.stage == 1 and self.mllm is not None:
            raise ConfigError("an `mllm` section is only used by stage 2; remove it or set stage: 2")
        if self.stage == 2:
            if self.mllm is None:
                raise ConfigError("stage 2 needs an `mllm` section (dima_planner.model.mllm.MLLMConfig)")
            if not self.init_from:
                raise ConfigError("stage 2 needs init_from: the stage-1 planner checkpoint it starts from")
            c, hw = self.model.embed_dim, (self.model.bev_h, self.model.bev_w)
            m = self.mllm
            if m.token_dim != c or m.planner_dim != c or tuple(m.bev_hw) != hw:
                raise ConfigError(f"mllm.token_dim / planner_dim / bev_hw ({m.token_dim}, {m.planner_dim}, "
                                  f"{list(m.bev_hw)}) must equal the planner's embed_dim and BEV grid "
                                  f"({c}, {c}, {list(hw)})")
            if not 0.0 <= self.stage2.edit_fraction <= 1.0:
                raise ConfigError(f"stage2.edit_fraction must be in [0, 1], got {self.stage2.edit_fraction}")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return load_yaml(TrainConfig, path, parse_overrides(overrides or []))


# ------------------------------------------------------------------------------- data
class TemporalPairs(torch.utils.data.Dataset):
    """Each item: (sample, previous keyframe of the same scene or None); with
    `future_steps` not None also the list of up to that many next keyframes of the scene."""

    def __init__(self, dataset, cache_images: bool, future_steps: int | None = None):
        self.ds = dataset
        self.index = {tok: i for i, tok in enumerate(dataset.tokens)}
        self.prev = [self.index.get(r["prev_token"]) if r["prev_token"] else None for r in dataset.records]
        self.next: dict[int, int] = {p: i for i, p in enumerate(self.prev) if p is not None}
        self.future_steps = future_steps
        self.cache: dict[int, Any] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.ds)

    def _get(self, i: int):
        if self.cache is None:
            return self.ds[i]
        if i not in self.cache:
            self.cache[i] = self.ds[i]
        return self.cache[i]

    def __getitem__(self, i: int):
        p = self.prev[i]
        item = (self._get(i), (self._get(p) if p is not None else None))
        if self.future_steps is None:
            return item
        nxt, j = [], i
        while len(nxt) < self.future_steps and j in self.next:
            j = self.next[j]
            nxt.append(self._get(j))
        return (*item, nxt)


def collate_pairs(items) -> dict[str, Any]:
    from .data.nuscenes_dataset import collate

    cur = [it[0] for it in items]
    batch = collate(cur)
    prev = [it[1] if it[1] is not None else it[0] for it in items]
    batch["prev_images"] = torch.from_numpy(np.stack([s.images for s in prev])).permute(0, 1, 4, 2, 3)
    batch["prev_lidar2img"] = torch.from_numpy(np.stack([s.lidar2img for s in prev]))
    batch["has_prev"] = torch.tensor([it[1] is not None for it in items])
    if len(items[0]) == 3:  # stage 2: the Samples (QA, edits) and the future keyframes
        steps = max(1, max(len(it[2]) for it in items))
        batch["stage2"] = future_frames([(it[0], it[2]) for it in items], steps)
    return batch


class ResumableBatches(torch.utils.data.Sampler):
    """Global batches from a per-epoch permutation seeded by (seed, epoch), starting at
    any step: the data position is just the step number. Each rank takes its shard."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world: int = 1):
        if n < batch_size:
            raise ValueError(f"the training split has {n} samples, fewer than batch_size {batch_size}")
        self.n, self.bs, self.seed, self.start, self.total = n, batch_size, seed, start_step, total_steps
        self.rank, self.world = rank, world
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            batch = perm[k * self.bs:(k + 1) * self.bs].tolist()
            yield batch[self.rank::self.world]


def model_inputs(batch: dict[str, Any], device: torch.device, use_ego_status: bool) -> dict[str, torch.Tensor]:
    """Collated batch -> VisionPlanner.forward keyword arguments."""
    out = {
        "images": batch["images"].to(device).float() / 255.0,
        "lidar2img": batch["lidar2img"].to(device).float(),
        "command": batch["command"].to(device),
        "prev2cur": batch["prev2cur"].to(device).float(),
        "ego_status": batch["ego_status"].to(device).float() if use_ego_status else None,
    }
    if "prev_images" in batch:
        out["prev_images"] = batch["prev_images"].to(device).float() / 255.0
        out["prev_lidar2img"] = batch["prev_lidar2img"].to(device).float()
        out["has_prev"] = batch["has_prev"].to(device)
    return out


def targets(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and not k.endswith("images")}


def future_inputs(batch: dict[str, Any], device: torch.device, steps: int) -> dict[str, torch.Tensor] | None:
    """Stage 2: the next keyframes' images (float, [0, 1]) and validity for future BEV targets."""
    fut = batch["stage2"]
    if steps <= 0 or not bool(fut["mask"].any()):
        return None
    return {"images": fut["images"][:, :steps].to(device).float() / 255.0,
            "lidar2img": fut["lidar2img"][:, :steps].to(device).float(), "mask": fut["mask"][:, :steps].to(device)}


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_sequential(model: VisionPlanner, dataset, device: torch.device, progress: bool = False,
                       mllm: nn.Module | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(N, 6, 2) commanded trajectories, frames in dataset order, BEV carried within a scene.
    With `mllm`, also the MLLM planning head's (from the same BEAM tokens): (planner, mllm)."""
    from tqdm import tqdm

    from .data.nuscenes_dataset import collate

    model.eval()
    if mllm is not None:
        was_mllm = mllm.training
        mllm.eval()
    preds, mpreds, prev_bev, prev_token = [], [], None, None
    for i in tqdm(range(len(dataset)), desc="val", leave=False, disable=not progress):
        s = dataset[i]
        batch = collate([s])
        inp = model_inputs(batch, device, model.cfg.use_ego_status)
        chained = prev_bev is not None and s.prev_token is not None and s.prev_token == prev_token
        inp["prev_bev"] = prev_bev if chained else None
        inp["has_prev"] = torch.tensor([chained], device=device)
        out = model(**inp)
        preds.append(out["plan"][0].float().cpu().numpy())
        if mllm is not None:
            dt = mllm.dtype
            feat = mllm.dual_ego_feature({k: getattr(out["beam"], k).to(dt) for k in ("bev", "ego", "agent", "map")})
            mpreds.append(mllm.plan_from_feature(feat, inp["command"])[0].float().cpu().numpy())
        prev_bev, prev_token = out["bev"], s.token
    if mllm is None:
        return np.stack(preds)
    mllm.train(was_mllm)
    return np.stack(preds), np.stack(mpreds)


def evaluate(model: VisionPlanner, dataset, device: torch.device, progress: bool = False,
             mllm: nn.Module | None = None) -> dict[str, float]:
    """VAD-convention L2 / collision of the model on `dataset` (valid samples only); with
    `mllm` also the MLLM planning head's L2 as "teacher_l2_avg" (the distillation gate)."""
    from .eval.metrics import planning_metrics

    pred = predict_sequential(model, dataset, device, progress, mllm)
    mpred = None
    if mllm is not None:
        pred, mpred = pred
    gt = np.stack([r["ego_fut_traj"] for r in dataset.records])
    mask = np.stack([r["ego_fut_mask"] for r in dataset.records]) > 0
    from .data.nuscenes_dataset import occupancy_of

    occ = np.stack([occupancy_of(r) for r in dataset.records])
    out = planning_metrics(pred, gt, occ, valid=mask, convention="vad")
    if mpred is not None:
        out["teacher_l2_avg"] = planning_metrics(mpred, gt, occ, valid=mask, convention="vad")["l2_avg"]
    return out


# ------------------------------------------------------------------------------- helpers
def lr_lambda(cfg: ScheduleConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def build_optimizer(model: VisionPlanner, cfg: OptimConfig, extra_groups: list[dict[str, Any]] | None = None,
                    shard: bool = False) -> torch.optim.Optimizer:
    """AdamW over the planner (backbone at lr * backbone_lr_mult) plus `extra_groups` (stage 2:
    the MLLM branch's trainable parameters). shard: ZeroRedundancyOptimizer around AdamW, each
    rank holding the states of its shard only (needs an initialised process group)."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("image_encoder.trunk.")]
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult},
              *(extra_groups or [])]
    if shard:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=cfg.lr, betas=cfg.betas,
                                       weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def is_sharded(optim: torch.optim.Optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optim, ZeroRedundancyOptimizer)


MLLM_LOSSES = ("qa", "plan", "bev_recon", "bev_future", "edit_qa", "edit_plan", "distill", "dual_plan", "total")


def load_init(path: str | Path, expect: ModelConfig) -> VisionPlanner:
    """The planner of `init_from`, which must have been built with the same model config."""
    from .checkpoint import read_model_config

    theirs = read_model_config(path) if Path(path).is_dir() else None
    if theirs is not None and theirs != expect:
        diff = [f"{k} {getattr(theirs, k)!r} != {getattr(expect, k)!r}" for k in vars(expect)
                if getattr(theirs, k) != getattr(expect, k)]
        raise CheckpointError(f"init_from checkpoint {path} was made for another model config "
                              f"({', '.join(diff[:3])}): set `model` to match it or train stage 1 first")
    model, _ = load_checkpoint(path, "cpu", expect=expect)
    return model


def build_mllm(cfg: MLLMConfig, device: torch.device):
    """The MLLM branch (loads the LLM: LLMNotFoundError names a missing folder)."""
    from .model.mllm import MLLMBranch

    return MLLMBranch(cfg).to(device)


def read_mllm_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from .model.mllm.checkpoint import MLLM_WEIGHTS

    path = directory / MLLM_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"cannot resume stage 2: {path} does not exist")
    return load_file(str(path))


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


def save_model_dir(directory: str | Path, model: VisionPlanner, cfg: TrainConfig, mllm: nn.Module | None,
                   meta: dict[str, Any]) -> Path:
    """Planner checkpoint (checkpoint.py format); in stage 2 plus the MLLM branch's trainable
    weights in the format the ROS MLLM node loads (ros.reasoning.save_mllm_checkpoint)."""
    meta = {"stage": cfg.stage, **meta}
    if mllm is not None:
        from .checkpoint import sha256_file
        from .model.mllm.checkpoint import MLLM_WEIGHTS, save_mllm_checkpoint

        save_mllm_checkpoint(directory, mllm)
        meta["mllm_sha256"] = sha256_file(Path(directory) / MLLM_WEIGHTS)
        meta["mllm_trainable_parameters"] = sum(p.numel() for p in mllm.trainable_parameters())
    return save_checkpoint(directory, model, to_dict(cfg), meta)


def save_train_state(run_dir: Path, model: VisionPlanner, cfg: TrainConfig, optim, sched, step: int,
                     metrics: dict | None = None, mllm: nn.Module | None = None) -> None:
    ckpt = run_dir / "last"
    save_model_dir(ckpt, model, cfg, mllm, {"step": step, "val": metrics or {}})
    opt_state = optim.state_dict()  # sharded: needs optim.consolidate_state_dict(to=0) on every rank first
    if is_sharded(optim):  # drop the placeholders a sharded load leaves for other ranks' parameters
        opt_state["state"] = {k: v for k, v in opt_state["state"].items() if v is not None}
    state = {"step": step, "optimizer": opt_state, "scheduler": sched.state_dict(), "rng": rng_state()}
    tmp = ckpt / (TRAIN_STATE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt / TRAIN_STATE)


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
            torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, resume: bool = False, datasets: tuple | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) training. Returns {"step", "losses": [...], "val": metrics or {}, "model",
    "mllm", "optimizer"}.

    datasets: (train, val or None) instead of building them from cfg.data.
    stop_after: leave after this global step with a checkpoint, as if interrupted (tests)."""
    from tqdm import tqdm

    from .data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dist = Distributed(cfg.device)
    device = dist.device(cfg.device)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.out_dir)

    if datasets is None:
        size = list(cfg.model.image_size)
        mk = lambda split: NuScenesPlanningDataset(DatasetConfig(  # noqa: E731
            dataroot=cfg.data.dataroot, version=cfg.data.version, split=split, image_size=size))
        datasets = (mk(cfg.data.train_split), mk(cfg.data.val_split) if cfg.data.val_split else None)
    train_ds, val_ds = datasets

    model = VisionPlanner(cfg.model).to(device)
    if cfg.init_from and not resume:
        model.load_state_dict(load_init(cfg.init_from, cfg.model).state_dict())
    mllm = None
    if cfg.stage == 2:
        mllm = build_mllm(cfg.mllm, device)
    shard = cfg.optim.shard_states and dist.enabled
    if cfg.optim.shard_states and not dist.enabled:
        print("note: optim.shard_states ignored: not a distributed run (world size 1)", file=sys.stderr)
    if mllm is not None and cfg.mllm.llm.fsdp:
        if dist.enabled:
            from .model.mllm.llm import shard_llm

            shard_llm(mllm.llm)  # FSDP2 over the decoder layers; DDP below leaves the LLM alone
        else:
            print("note: mllm.llm.fsdp ignored: not a distributed run (world size 1)", file=sys.stderr)
    extra = None
    if mllm is not None:
        extra = [{"params": mllm.trainable_parameters(), "lr": cfg.optim.lr * cfg.stage2.mllm_lr_mult}]
    optim = build_optimizer(model, cfg.optim, extra, shard=shard)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(cfg.schedule))
    step = 0
    if resume:
        ckpt = run_dir / "last"
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
        step = int(state["step"])
    model.train()
    joint = balancer = None
    if mllm is not None:
        drivelm = None
        if cfg.stage2.drivelm_path:
            from .qa.drivelm import load_drivelm

            drivelm = load_drivelm(cfg.stage2.drivelm_path)
            covered = sum(t in drivelm for t in train_ds.tokens)
            if dist.main:
                print(f"DriveLM QA {cfg.stage2.drivelm_path}: {len(drivelm)} key frames, {covered} of "
                      f"{len(train_ds)} training samples covered", file=sys.stderr)
        joint = DiMAJoint(model, mllm.train(), drivelm)
        joint.distill_open = not cfg.stage2.distill_gate
        balancer = LossBalancer(vars(cfg.mllm.loss_weights) | {"dual_plan": cfg.stage2.dual_weight},
                                cfg.stage2.encoder_grad_fraction)
        if resume and (run_dir / "last" / "stage2_state.json").is_file():
            st = json.loads((run_dir / "last" / "stage2_state.json").read_text())
            balancer.weights, joint.distill_open = st["loss_weights"], st["distill_open"]
    trained: nn.Module = joint if joint is not None else model
    params = [p for p in trained.parameters() if p.requires_grad]
    # Clipped per group (Stage2Config.mllm_grad_clip): planner and MLLM branch.
    planner_params = [p for p in model.parameters() if p.requires_grad]
    mllm_params = mllm.trainable_parameters() if mllm is not None else []
    enc_params = encoder_parameters(model)
    ddp_model: nn.Module = trained
    if dist.enabled:
        if mllm is not None and cfg.mllm.llm.fsdp:
            # FSDP2 already reduces the LLM's (LoRA) gradients across ranks.
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                trained, [f"mllm.llm.{n}" for n, _ in mllm.llm.named_parameters()]
                + [f"mllm.llm.{n}" for n, _ in mllm.llm.named_buffers()])
        ddp_model = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    fut_steps = None
    if cfg.stage == 2:
        fut_steps = cfg.mllm.surrogate.future_steps if cfg.stage2.future_bev else 0
    pairs = TemporalPairs(train_ds, cfg.data.cache_images, fut_steps)
    sampler = ResumableBatches(len(pairs), cfg.data.batch_size, cfg.seed, step, cfg.schedule.steps,
                               dist.rank, dist.world)
    loader = torch.utils.data.DataLoader(pairs, batch_sampler=sampler, collate_fn=collate_pairs,
                                         num_workers=cfg.data.num_workers)
    writer = None
    if cfg.logging.tensorboard and dist.main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"))
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    losses: list[float] = []
    metrics: dict[str, Any] = {}
    if dist.main and cfg.logging.progress:
        extra = ""
        if mllm is not None:
            extra = (f" + MLLM {sum(p.numel() for p in mllm.trainable_parameters()):,} trainable of "
                     f"{count_parameters(mllm):,} (LLM loaded in {mllm.llm_load_seconds:.1f} s)")
        print(f"stage {cfg.stage}: planner {count_parameters(model):,} parameters{extra}; {len(pairs)} training "
              f"samples; steps {step}..{cfg.schedule.steps} at batch {cfg.data.batch_size}", file=sys.stderr)
    bar = tqdm(total=cfg.schedule.steps, initial=step, desc="train", unit="step",
               disable=not (cfg.logging.progress and dist.main))
    t0, seen = time.perf_counter(), 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    for batch in loader:
        inputs = model_inputs(batch, device, cfg.model.use_ego_status)
        mterms: dict[str, torch.Tensor] = {}
        with autocast:
            if joint is None:
                pred = ddp_model(**inputs)
            else:
                # QA subsets and edits drawn from (seed, step, rank): resume stays exact.
                rng = np.random.default_rng([cfg.seed, step, dist.rank])
                pred, mterms = ddp_model(inputs, batch["stage2"]["samples"], rng, cfg.stage2,
                                         future_inputs(batch, device, fut_steps or 0))
        terms = planning_losses({k: v.float() if torch.is_tensor(v) else v for k, v in pred.items()},
                                targets(batch, device), cfg.losses, (cfg.model.bev_range_x, cfg.model.bev_range_y))
        enc_norms: dict[str, float] = {}
        if joint is not None:
            terms["planner_loss"] = terms["loss"]
            if balancer.pending(mterms):
                enc_norms = balancer.calibrate(terms["planner_loss"], mterms, enc_params)
                if dist.main:
                    bar.write(f"step {step}: MLLM loss weights {', '.join(f'{k} {v:.3g}' for k, v in balancer.weights.items())}"
                              f" (encoder grad fraction {cfg.stage2.encoder_grad_fraction})")
            mterms["total"] = balancer.total(mterms)
            terms.update({f"mllm_{k}": v.float() for k, v in mterms.items() if k in MLLM_LOSSES})
            terms["loss"] = terms["loss"] + cfg.stage2.mllm_weight * mterms["total"].float()
            probe = cfg.stage2.grad_probe_every and (step + 1) % cfg.stage2.grad_probe_every == 0
            if probe and writer is not None and not enc_norms:
                enc_norms = encoder_grad_norms(
                    {"planner": terms["planner_loss"],
                     **{k: balancer.weights.get(k, 1.0) * mterms[k].float() for k in MLLM_TERMS if k in mterms}},
                    enc_params)
        optim.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if joint is None:
            gnorm = nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        else:
            gnorm = nn.utils.clip_grad_norm_(planner_params, cfg.optim.grad_clip)
            mnorm = nn.utils.clip_grad_norm_(mllm_params, cfg.stage2.mllm_grad_clip)
        optim.step()
        sched.step()
        step += 1
        loss = dist.all_mean(float(terms["loss"].detach()))
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {step}")
        losses.append(loss)
        seen += batch["images"].shape[0] * dist.world
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        post = {"loss": f"{loss:.3f}", "plan": f"{float(terms['plan'].detach()):.3f}"}
        if "mllm_total" in terms:
            post["mllm"] = f"{float(terms['mllm_total'].detach()):.3f}"
        bar.set_postfix(**post, sps=f"{rate:.1f}")
        if writer is not None and step % cfg.logging.log_every == 0:
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", float(v), step)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
            writer.add_scalar("train/grad_norm", float(gnorm), step)
            if joint is not None:
                writer.add_scalar("train/grad_norm_mllm", float(mnorm), step)
                for k, v in balancer.weights.items():
                    writer.add_scalar(f"loss_weight/{k}", v, step)
        if writer is not None and enc_norms:
            # Per-loss gradient norm on the shared encoder (weighted as in the total).
            for k, v in enc_norms.items():
                writer.add_scalar(f"grad_encoder/{k}", v, step)
            writer.add_scalar("train/samples_per_s", rate, step)
        last = step == cfg.schedule.steps
        interrupted = stop_after is not None and step >= stop_after and not last
        if val_ds is not None and dist.main and (last or (cfg.schedule.val_every and step % cfg.schedule.val_every == 0)):
            metrics = evaluate(model, val_ds, device, mllm=mllm)
            model.train()
            bar.write(f"step {step} val: L2 avg {metrics['l2_avg']:.3f} m, collision avg "
                      f"{100 * metrics['col_avg']:.2f} % over {metrics['num_samples']} samples")
            if joint is not None:
                was_open = joint.distill_open
                joint.distill_open = was_open or metrics["teacher_l2_avg"] < metrics["l2_avg"]
                metrics["distill_open"] = joint.distill_open
                bar.write(f"step {step} val: MLLM planning head (teacher) L2 avg {metrics['teacher_l2_avg']:.3f} m "
                          f"vs planner {metrics['l2_avg']:.3f} m: distillation "
                          f"{'on' if joint.distill_open else 'off'}{' (gate opened)' if joint.distill_open and not was_open else ''}")
            if writer is not None:
                for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg", "col_avg", "teacher_l2_avg"):
                    if k in metrics:
                        writer.add_scalar(f"val/{k}", metrics[k], step)
                if joint is not None:
                    writer.add_scalar("val/distill_open", float(joint.distill_open), step)
        save_now = last or interrupted or bool(cfg.schedule.ckpt_every and step % cfg.schedule.ckpt_every == 0)
        if save_now and shard:
            optim.consolidate_state_dict(to=0)  # a collective: every rank, before rank 0 saves
        if dist.main and save_now:
            save_train_state(run_dir, model, cfg, optim, sched, step, metrics, mllm)
            if joint is not None:
                (run_dir / "last" / "stage2_state.json").write_text(json.dumps(
                    {"loss_weights": balancer.weights, "distill_open": joint.distill_open}))
        if interrupted:
            break
    bar.close()
    if writer is not None:
        writer.close()
    extra_meta: dict[str, Any] = {}
    if joint is not None and dist.main and step == cfg.schedule.steps:
        extra_meta = {"loss_weights": balancer.weights, "distill_open": joint.distill_open}
        if cfg.stage2.qa_tune.steps > 0:
            extra_meta["qa_tune"] = qa_finetune(model, mllm, train_ds, cfg, device, run_dir)
    if dist.main and cfg.export_dir and step == cfg.schedule.steps:
        wall = time.perf_counter() - t0
        save_model_dir(cfg.export_dir, model, cfg, mllm, {"step": step, "val": metrics,
                                                          "train_wall_s": round(wall, 1), **extra_meta})
    dist.close()
    return {"step": step, "losses": losses, "val": metrics, "model": model, "mllm": mllm, "optimizer": optim}


def qa_finetune(model: VisionPlanner, mllm: nn.Module, train_ds, cfg: TrainConfig, device: torch.device,
                run_dir: Path) -> dict[str, Any]:
    """Stage 2's last phase (model/mllm/qa_tune.py): the MLLM branch learns QA on the
    trained planner's BEAM tokens of every training frame, made by the planner node's
    own path (inference.Planner); the planner is frozen. Returns what the run did."""
    from .inference import Planner
    from .model.mllm.qa_tune import tune_qa
    from .qa.evaluate import scene_frames

    t0 = time.perf_counter()
    frames = scene_frames(Planner(model, device), train_ds, progress=cfg.logging.progress)
    model.train()
    k = cfg.stage2.qa_tune.free_text_per_sample

    def qa_of(i: int, rng: np.random.Generator) -> list:
        free = frames[i].free_text
        pick = [free[j] for j in sorted(rng.choice(len(free), min(k, len(free)), replace=False))] if k > 0 else []
        return frames[i].factual + pick

    writer = None
    if cfg.logging.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"))
    log = (lambda st, loss: writer.add_scalar("qa_tune/loss", loss, st)) if writer is not None else None
    losses = tune_qa(mllm, [f.beam for f in frames], qa_of, cfg.stage2.qa_tune, seed=cfg.seed, log=log,
                     progress=cfg.logging.progress)
    if writer is not None:
        writer.close()
    return {"steps": len(losses), "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "wall_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="params/train/<name>.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/last")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="leave after this global step with a checkpoint in <out_dir>/last, as if "
                             "interrupted (the schedule stays that of schedule.steps); --resume continues")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, resume=args.resume, stop_after=args.stop_after)
    except LLMNotFoundError as e:
        print(f"error: the MLLM's LLM is missing: {e}", file=sys.stderr)
        return 1
    except (CheckpointError, ValueError, OSError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"trained {result['step']} steps; final loss {result['losses'][-1]:.4f}" if result["losses"]
          else f"nothing to do: already at step {result['step']}")
    if result["val"]:
        print(json.dumps({k: v for k, v in result["val"].items() if k != "convention"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
