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
batch across ranks. `precision: bf16` runs the forward under autocast.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from .model.losses import LossWeights, planning_losses
from .model.planner import VisionPlanner, count_parameters

TRAIN_STATE = "train_state.pt"


# ------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    dataroot: str = "data/synth"
    version: str = "v1.0-dima"
    train_split: str = "train"
    val_split: str = "val"
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
    stage: int = 1  # 1: vision planner alone; 2 (joint with the MLLM) comes later

    def __post_init__(self) -> None:
        if self.stage != 1:
            raise ConfigError(f"stage {self.stage} is not implemented yet; train.py runs stage 1")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return load_yaml(TrainConfig, path, parse_overrides(overrides or []))


# ------------------------------------------------------------------------------- data
class TemporalPairs(torch.utils.data.Dataset):
    """Each item: (sample, previous keyframe of the same scene or None)."""

    def __init__(self, dataset, cache_images: bool):
        self.ds = dataset
        self.index = {tok: i for i, tok in enumerate(dataset.tokens)}
        self.prev = [self.index.get(r["prev_token"]) if r["prev_token"] else None for r in dataset.records]
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
        return self._get(i), (self._get(p) if p is not None else None)


def collate_pairs(items) -> dict[str, Any]:
    from .data.nuscenes_dataset import collate

    cur = [c for c, _ in items]
    batch = collate(cur)
    prev = [p if p is not None else c for c, p in items]
    batch["prev_images"] = torch.from_numpy(np.stack([s.images for s in prev])).permute(0, 1, 4, 2, 3)
    batch["prev_lidar2img"] = torch.from_numpy(np.stack([s.lidar2img for s in prev]))
    batch["has_prev"] = torch.tensor([p is not None for _, p in items])
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


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_sequential(model: VisionPlanner, dataset, device: torch.device, progress: bool = False) -> np.ndarray:
    """(N, 6, 2) commanded trajectories, frames in dataset order, BEV carried within a scene."""
    from tqdm import tqdm

    from .data.nuscenes_dataset import collate

    model.eval()
    preds, prev_bev, prev_token = [], None, None
    for i in tqdm(range(len(dataset)), desc="val", leave=False, disable=not progress):
        s = dataset[i]
        batch = collate([s])
        inp = model_inputs(batch, device, model.cfg.use_ego_status)
        chained = prev_bev is not None and s.prev_token is not None and s.prev_token == prev_token
        inp["prev_bev"] = prev_bev if chained else None
        inp["has_prev"] = torch.tensor([chained], device=device)
        out = model(**inp)
        preds.append(out["plan"][0].float().cpu().numpy())
        prev_bev, prev_token = out["bev"], s.token
    return np.stack(preds)


def evaluate(model: VisionPlanner, dataset, device: torch.device, progress: bool = False) -> dict[str, float]:
    """VAD-convention L2 / collision of the model on `dataset` (valid samples only)."""
    from .eval.metrics import planning_metrics

    pred = predict_sequential(model, dataset, device, progress)
    gt = np.stack([r["ego_fut_traj"] for r in dataset.records])
    mask = np.stack([r["ego_fut_mask"] for r in dataset.records]) > 0
    from .data.nuscenes_dataset import occupancy_of

    occ = np.stack([occupancy_of(r) for r in dataset.records])
    return planning_metrics(pred, gt, occ, valid=mask, convention="vad")


# ------------------------------------------------------------------------------- helpers
def lr_lambda(cfg: ScheduleConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def build_optimizer(model: VisionPlanner, cfg: OptimConfig) -> torch.optim.Optimizer:
    backbone = [p for n, p in model.named_parameters() if n.startswith("image_encoder.trunk.")]
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


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


def save_train_state(run_dir: Path, model: VisionPlanner, cfg: TrainConfig, optim, sched, step: int,
                     metrics: dict | None = None) -> None:
    ckpt = run_dir / "last"
    save_checkpoint(ckpt, model, to_dict(cfg), {"step": step, "val": metrics or {}})
    state = {"step": step, "optimizer": optim.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state()}
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
    """Run (or resume) training. Returns {"step", "losses": [...], "val": metrics or {}, "model"}.

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
    optim = build_optimizer(model, cfg.optim)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(cfg.schedule))
    step = 0
    if resume:
        ckpt = run_dir / "last"
        if not (ckpt / TRAIN_STATE).is_file():
            raise CheckpointError(f"cannot resume: {ckpt / TRAIN_STATE} does not exist")
        loaded, _ = load_checkpoint(ckpt, device, expect=cfg.model)
        model.load_state_dict(loaded.state_dict())
        state = torch.load(ckpt / TRAIN_STATE, map_location=device, weights_only=False)
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = int(state["step"])
    model.train()
    ddp_model: nn.Module = model
    if dist.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    pairs = TemporalPairs(train_ds, cfg.data.cache_images)
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
    bar = tqdm(total=cfg.schedule.steps, initial=step, desc="train", unit="step",
               disable=not (cfg.logging.progress and dist.main))
    t0, seen = time.perf_counter(), 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    for batch in loader:
        with autocast:
            pred = ddp_model(**model_inputs(batch, device, cfg.model.use_ego_status))
        terms = planning_losses({k: v.float() if torch.is_tensor(v) else v for k, v in pred.items()},
                                targets(batch, device), cfg.losses, (cfg.model.bev_range_x, cfg.model.bev_range_y))
        optim.zero_grad(set_to_none=True)
        terms["loss"].backward()
        gnorm = nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
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
        bar.set_postfix(loss=f"{loss:.3f}", plan=f"{float(terms['plan'].detach()):.3f}", sps=f"{rate:.1f}")
        if writer is not None and step % cfg.logging.log_every == 0:
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", float(v), step)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
            writer.add_scalar("train/grad_norm", float(gnorm), step)
            writer.add_scalar("train/samples_per_s", rate, step)
        last = step == cfg.schedule.steps
        interrupted = stop_after is not None and step >= stop_after and not last
        if val_ds is not None and dist.main and (last or (cfg.schedule.val_every and step % cfg.schedule.val_every == 0)):
            metrics = evaluate(model, val_ds, device)
            model.train()
            bar.write(f"step {step} val: L2 avg {metrics['l2_avg']:.3f} m, collision avg "
                      f"{100 * metrics['col_avg']:.2f} % over {metrics['num_samples']} samples")
            if writer is not None:
                for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg", "col_avg"):
                    writer.add_scalar(f"val/{k}", metrics[k], step)
        if dist.main and (last or interrupted or (cfg.schedule.ckpt_every and step % cfg.schedule.ckpt_every == 0)):
            save_train_state(run_dir, model, cfg, optim, sched, step, metrics)
        if interrupted:
            break
    bar.close()
    if writer is not None:
        writer.close()
    if dist.main and cfg.export_dir and step == cfg.schedule.steps:
        wall = time.perf_counter() - t0
        save_checkpoint(cfg.export_dir, model, to_dict(cfg), {"step": step, "val": metrics,
                                                              "train_wall_s": round(wall, 1)})
    dist.close()
    return {"step": step, "losses": losses, "val": metrics, "model": model}


# ------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="params/train/<name>.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/last")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, resume=args.resume)
    except (CheckpointError, ValueError, OSError) as e:
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
