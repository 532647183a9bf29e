"""Dual calibration: the MLLM's ego projection re-fitted to the max-pool it feeds (the very
end of stage 2, after QA fine-tuning).

DiMA's Dual inference feeds max(planner ego feature, MLLM ego feature) to the planner's
trajectory layer (VisionPlanner.plan(extra_ego_feat=...)). The paper does not say how that
pooled input is trained. Joint training does teach the planner's head to plan from it
(Stage2Config.dual_weight). But QA fine-tuning then moves the LoRA adapters and Q-Formers
under the MLLM feature, and the shipped Dual plan was 0.5 m worse than the LLM-free one.
The fix here is our choice:

- The LLM, Q-Formers and the whole planner stay frozen. The LLM's read-out hidden state
  of every training frame is computed once.
- Only `ego_proj` learns, on the masked L1 of the Dual plan (max-pool, then the planner's
  own trajectory layer).
- The MLLM's planning head (the teacher, and the MLLM node's /dima/mllm/trajectory) is
  re-fitted to the new feature, with that feature detached.

The projection's learning rate is deliberately small. At 1e-3 the projection learns within
250 steps to go negative everywhere. The max-pool then always picks the planner's feature,
and Dual becomes the LLM-free planner under another name. At 2e-5 (the shipped 8000 steps)
it stays near the solution joint training found: on the training frames it ends below the
LLM-free error while the MLLM feature still wins 16 % of the pooled channels (measured;
README, "Stage 2"). `mllm_share`, the fraction of pooled channels the MLLM feature wins,
is reported so that such a collapse cannot go unseen.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .heads import TrajectoryHead
from .losses import masked_trajectory_l1


@dataclass
class DualTuneConfig:
    steps: int = 0  # 0: no Dual calibration
    batch_size: int = 64  # frames per step
    lr: float = 2.0e-5  # ego_proj (the shipped run); 1e-3 switches the MLLM feature off (see the module docstring)
    head_lr: float = 1.0e-3  # the MLLM planning head, re-fitted on the detached new feature
    weight_decay: float = 0.01


@dataclass
class DualTuneData:
    """Every training frame, as serving computes it (inference.Planner)."""

    readout: torch.Tensor  # (N, llm_dim) LLM hidden state at the read-out token (ego_proj's input)
    planner_feat: torch.Tensor  # (N, C) planner's post-ReLU ego feature
    command: torch.Tensor  # (N,) navigation command
    target: torch.Tensor  # (N, T, 2) future ego positions, LiDAR frame
    mask: torch.Tensor  # (N, T) 1 = valid step


@contextmanager
def requires_grad(params: Iterable[torch.nn.Parameter], enabled: bool) -> Iterator[None]:
    """Set requires_grad on `params` for the block, then restore each one's own flag."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(enabled)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def dual_metrics(branch, trajectories: Callable[[torch.Tensor], torch.Tensor], d: DualTuneData) -> dict[str, float]:
    """Masked L1 of the LLM-free, Dual and teacher plans, and the MLLM feature's share of
    the max-pool, over all of `d`."""
    with torch.no_grad():
        mllm = branch.ego_proj(d.readout)
        plan = lambda f: TrajectoryHead.select(trajectories(f), d.command)  # noqa: E731
        return {"llm_free_l1": float(masked_trajectory_l1(plan(d.planner_feat), d.target, d.mask)),
                "dual_l1": float(masked_trajectory_l1(plan(torch.maximum(d.planner_feat, mllm)), d.target, d.mask)),
                "teacher_l1": float(masked_trajectory_l1(branch.plan_from_feature(mllm, d.command), d.target, d.mask)),
                "mllm_share": float((mllm > d.planner_feat).float().mean())}


def tune_dual(branch, trajectories: Callable[[torch.Tensor], torch.Tensor], data: DualTuneData,
              cfg: DualTuneConfig, seed: int = 0, log: Callable[[int, float], None] | None = None,
              progress: bool = True) -> dict[str, object]:
    """Fit branch.ego_proj (Dual plan L1) and branch.plan_head (its own plan L1) on `data`;
    `trajectories` is the frozen planner's PlanningHead.trajectories (the caller freezes
    its parameters). Returns the metrics on `data` before and after."""
    from tqdm import tqdm

    before = dual_metrics(branch, trajectories, data)
    if cfg.steps <= 0:
        return {"steps": 0, "before": before, "after": before}
    proj, head = branch.ego_proj, branch.plan_head
    opt = torch.optim.AdamW([{"params": list(proj.parameters()), "lr": cfg.lr},
                             {"params": list(head.parameters()), "lr": cfg.head_lr}], weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / cfg.steps)))
    gen = torch.Generator().manual_seed(seed)
    n = data.command.shape[0]
    with requires_grad([*proj.parameters(), *head.parameters()], True):
        for step in tqdm(range(cfg.steps), desc="Dual calibration", disable=not progress):
            idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
            cmd, target, mask = data.command[idx], data.target[idx], data.mask[idx]
            feat = proj(data.readout[idx])
            dual = TrajectoryHead.select(trajectories(torch.maximum(data.planner_feat[idx], feat)), cmd)
            own = branch.plan_from_feature(feat.detach(), cmd)
            loss = masked_trajectory_l1(dual, target, mask) + masked_trajectory_l1(own, target, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log is not None:
                log(step, float(loss.detach()))
    return {"steps": cfg.steps, "before": before, "after": dual_metrics(branch, trajectories, data)}
