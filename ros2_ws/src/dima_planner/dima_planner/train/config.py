"""Typed training config (YAML under params/train/, strict: typos are errors)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import ConfigError, load_yaml, parse_overrides
from ..model.augment import AugmentConfig
from ..model.config import ModelConfig
from ..model.joint import Stage2Config
from ..model.losses import PlannerLossWeights
from ..model.mllm import MLLMConfig


@dataclass
class DataConfig:
    dataroot: str = "data/synth"
    version: str = "v1.0-dima"
    train_split: str = "train"
    val_split: str = "val"  # "" disables validation
    batch_size: int = 4  # per process: a torchrun job of N processes steps on N * batch_size samples
    num_workers: int = 0
    cache_images: bool = True  # keep decoded, resized images in memory (the worlds are small)
    # VAD's temporal queue: the current frame and the queue_length - 1 keyframes before it;
    # their BEVs are chained without gradients (VAD-Tiny 3, VAD-Base 4; 1 = no temporal input).
    queue_length: int = 3

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1 (per process), got {self.batch_size}")
        if self.queue_length < 1:
            raise ConfigError(f"data.queue_length must be >= 1 (the current frame), got {self.queue_length}")


@dataclass
class OptimConfig:
    lr: float = 2e-4  # VAD
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 35.0  # VAD's max_norm
    backbone_lr_mult: float = 0.1  # VAD scales the image backbone's lr by 0.1
    # Distributed runs only (torchrun, world size > 1): wrap AdamW in
    # torch.distributed.optim.ZeroRedundancyOptimizer so that each rank keeps the AdamW states
    # of its shard of the parameters only (ZeRO stage 1). Checkpoints hold the full
    # (consolidated) optimiser state, interchangeable with unsharded runs. Ignored, with a
    # note, in a single process.
    shard_states: bool = False


@dataclass
class ScheduleConfig:
    steps: int = 1000  # used when epochs is unset
    # Epochs over the training split: steps = ceil(epochs * samples / (batch_size * world size)),
    # so a VAD schedule means the same on 1 or 8 processes. Overrides `steps` when set.
    epochs: float | None = None
    warmup_steps: int = 50
    min_lr_ratio: float = 1e-3
    val_every: int = 250  # 0: only at the end
    ckpt_every: int = 250  # 0: only at the end

    def total_steps(self, num_samples: int, batch_size: int, world: int) -> int:
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * num_samples / (batch_size * world)))


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
    losses: PlannerLossWeights = field(default_factory=PlannerLossWeights)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training images only (VAD)
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
            if self.stage2.edit_fraction > 0 and m.qformer.num_queries["agent"] == 0:
                raise ConfigError("scene editing removes and inserts agent tokens, so it needs "
                                  "mllm.qformer.num_queries.agent >= 1 (or stage2.edit_fraction: 0)")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return load_yaml(TrainConfig, path, parse_overrides(overrides or []))
