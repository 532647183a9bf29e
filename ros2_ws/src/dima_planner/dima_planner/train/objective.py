"""What a training step optimises. The loop calls `objective(batch, step)` and backpropagates
terms["loss"]; stage 1 and stage 2 differ only here, not in the loop.

    PlannerObjective  stage 1: VAD's planner losses (model/losses.py)
    DiMAObjective     stage 2: the same plus the MLLM branch's losses (model/joint.py)
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..model.augment import augment_inputs
from ..model.losses import planning_losses
from ..model.planner import VisionPlanner
from .data import future_inputs, model_inputs, targets

MLLM_LOSSES = ("qa", "plan", "bev_recon", "bev_future", "edit_qa", "edit_plan", "distill", "dual_plan", "total")


class PlannerObjective:
    """Stage 1: the vision planner alone."""

    def __init__(self, model: VisionPlanner, cfg, device: torch.device, rank: int = 0):
        self.model, self.cfg, self.device, self.rank = model, cfg, device, rank
        self.module: nn.Module = model  # what DDP wraps and the optimiser's extra groups come from
        self.forward_module: nn.Module = model  # replaced by the DDP wrapper when distributed
        self.mllm = None

    def extra_param_groups(self) -> list[dict[str, Any]]:
        return []

    def inputs(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        """Model inputs, augmented (cfg.augment) with draws from (seed, step, rank): resume stays exact."""
        m = self.cfg.model
        inp = model_inputs(batch, self.device, m.use_ego_status, m.can_bus)
        if self.cfg.augment.enabled:
            g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 64 + self.rank)
            inp = augment_inputs(inp, self.cfg.augment, g)
        return inp

    def predict(self, batch: dict[str, Any], step: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return self.forward_module(**self.inputs(batch, step)), {}

    def __call__(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        with autocast:
            pred, extra = self.predict(batch, step)
        cfg = self.cfg
        terms = planning_losses({k: v.float() if torch.is_tensor(v) else v for k, v in pred.items()},
                                targets(batch, self.device), cfg.losses, (cfg.model.bev_range_x, cfg.model.bev_range_y))
        return self.combine(terms, extra)

    def combine(self, terms: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return terms

    def describe(self) -> str:
        return ""


class DiMAObjective(PlannerObjective):
    """Stage 2: planner + MLLM branch trained jointly (DiMA); the MLLM's losses are added
    with weight stage2.mllm_weight."""

    def __init__(self, model: VisionPlanner, mllm, cfg, device: torch.device, rank: int = 0):
        super().__init__(model, cfg, device, rank)
        from ..model.joint import DiMAJoint

        self.mllm = mllm
        self.module = DiMAJoint(model, mllm.train())
        self.forward_module = self.module
        self.future_steps = cfg.mllm.surrogate.future_steps if cfg.stage2.future_bev else 0

    def extra_param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.mllm.trainable_parameters(), "lr": self.cfg.optim.lr * self.cfg.stage2.mllm_lr_mult}]

    def predict(self, batch: dict[str, Any], step: int):
        # QA subsets and edits drawn from (seed, step, rank): resume stays exact.
        rng = np.random.default_rng([self.cfg.seed, step, self.rank])
        return self.forward_module(self.inputs(batch, step),
                                   batch["stage2"]["samples"], rng, self.cfg.stage2,
                                   future_inputs(batch, self.device, self.future_steps))

    def combine(self, terms, mterms):
        terms["planner_loss"] = terms["loss"]
        terms.update({f"mllm_{k}": v.float() for k, v in mterms.items() if k in MLLM_LOSSES})
        terms["loss"] = terms["loss"] + self.cfg.stage2.mllm_weight * mterms["total"].float()
        return terms

    def describe(self) -> str:
        m = self.mllm
        from ..model.planner import count_parameters

        return (f" + MLLM {sum(p.numel() for p in m.trainable_parameters()):,} trainable of "
                f"{count_parameters(m):,} (LLM loaded in {m.llm_load_seconds:.1f} s)")


def build_mllm(cfg, device: torch.device):
    """The MLLM branch (loads the LLM: LLMNotFoundError names a missing folder)."""
    from ..model.mllm import MLLMBranch

    return MLLMBranch(cfg).to(device)


def make_objective(model: VisionPlanner, cfg, device: torch.device, rank: int = 0) -> PlannerObjective:
    if cfg.stage == 2:
        return DiMAObjective(model, build_mllm(cfg.mllm, device), cfg, device, rank)
    return PlannerObjective(model, cfg, device, rank)
