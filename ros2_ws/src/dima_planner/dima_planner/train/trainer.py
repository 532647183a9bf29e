"""The trainer: the planner, its objective (stage 1 or 2), the optimiser and the learning-rate
schedule of one process, and `train_step`, one optimisation step."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..distributed import Distributed
from ..model.planner import VisionPlanner
from .checkpoint import load_init
from .config import OptimConfig, ScheduleConfig, TrainConfig
from .objective import make_objective
from .parallel import apply_fsdp, shard_states


def lr_lambda(cfg: ScheduleConfig, total: int):
    """Linear warmup, then cosine decay to min_lr_ratio at step `total`."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def build_optimizer(model: VisionPlanner, cfg: OptimConfig, extra_groups: list[dict[str, Any]] | None = None,
                    shard: bool = False) -> torch.optim.Optimizer:
    """AdamW over the planner (backbone at lr * backbone_lr_mult) plus `extra_groups` (stage 2:
    the MLLM branch's trainable parameters). shard: ZeroRedundancyOptimizer around AdamW, each
    rank holding the states of its shard only (needs an initialised process group)."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("image_encoder.trunk.") and p.requires_grad]
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult},
              *(extra_groups or [])]
    if shard:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=cfg.lr, betas=cfg.betas,
                                       weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


RESNET50_WEIGHTS = ("torchvision's ImageNet ResNet-50, https://download.pytorch.org/models/resnet50-0676ba61.pth "
                    "(or resnet50-19c8e357.pth, the weights VAD starts from)")


def check_backbone_weights(m) -> None:
    """VAD freezes the ResNet stem and BatchNorm on ImageNet weights: refuse to freeze random ones."""
    if not m.backbone.startswith("resnet") or (m.frozen_stages < 0 and not m.norm_eval):
        return
    if not m.pretrained_path or not Path(m.pretrained_path).expanduser().is_file():
        raise FileNotFoundError(
            f"model.backbone {m.backbone} with frozen_stages {m.frozen_stages} / norm_eval {m.norm_eval} needs "
            f"ImageNet weights at model.pretrained_path (now {m.pretrained_path!r}): download "
            f"{RESNET50_WEIGHTS if m.backbone == 'resnet50' else 'torchvision ' + m.backbone + ' weights'} "
            "and point model.pretrained_path at the file (or set frozen_stages: -1, norm_eval: false "
            "to train the backbone from scratch)")


class Trainer:
    """Model, objective, optimiser and schedule, built in this order (the RNG draws of a run
    depend on it). `fresh`: a new run, neither resumed nor initialised from a checkpoint."""

    def __init__(self, cfg: TrainConfig, dist: Distributed, device: torch.device, total: int, resume: bool,
                 train_tokens: list[str] | None = None):
        self.cfg, self.dist, self.device, self.total = cfg, dist, device, total
        if not (resume or cfg.init_from):
            check_backbone_weights(cfg.model)
        self.model = VisionPlanner(cfg.model).to(device)
        if cfg.init_from and not resume:
            self.model.load_state_dict(load_init(cfg.init_from, cfg.model).state_dict())
        self.objective = make_objective(self.model, cfg, device, dist.rank, train_tokens)
        apply_fsdp(self.objective, cfg, dist)
        self.optim = build_optimizer(self.model, cfg.optim, self.objective.extra_param_groups(),
                                     shard=shard_states(cfg, dist))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lr_lambda(cfg.schedule, total))
        self.step = 0

    def train_step(self, batch: dict[str, Any]) -> tuple[float, dict[str, torch.Tensor], dict[str, float]]:
        """Forward, backward, clipping, optimiser and schedule step. Returns the loss averaged
        over the processes, the objective's loss terms and the gradient norms."""
        terms = self.objective(batch, self.step)
        self.optim.zero_grad(set_to_none=True)
        terms["loss"].backward()
        norms = self.objective.clip_gradients()
        self.optim.step()
        self.sched.step()
        self.step += 1
        loss = self.dist.all_mean(float(terms["loss"].detach()))
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {self.step}")
        return loss, terms, norms

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]
