"""QA fine-tuning of the MLLM branch on frozen scene tokens (the end of stage 2).

Why a separate phase (our choice; the paper trains QA only jointly, with a 7B LLM and
all of DriveLM): on CPU, joint stage 2 affords a few hundred steps, in which a small LLM
learns the answers' templates but not to read the numbers out of the scene tokens
(teacher-forced accuracy with another scene's tokens equals that with its own). Once the
planner is trained, its BEAM tokens of every training frame are computed once, exactly
as the planner node publishes them (inference.Planner, temporal BEV carried within a
scene), and the Q-Formers, LoRA adapters and read-out token are trained on QA alone for
many cheap steps. The planner is not touched, so the LLM-free planner is the one joint
training produced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .batch import QABatch


@dataclass
class QATuneConfig:
    steps: int = 0  # 0: no QA fine-tuning
    batch_scenes: int = 8  # frames per step (every QA pair of each frame is a row)
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    free_text_per_sample: int = 1  # free-text QA rows per frame besides the factual ones


def stack_beams(beams: Sequence[dict[str, np.ndarray]], idx: Sequence[int], device: torch.device,
                dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Batch of numpy BEAM token dicts ((count, C) arrays) -> {type: (B, count, C)}."""
    return {k: torch.from_numpy(np.stack([beams[i][k] for i in idx])).to(device, dtype)
            for k in ("bev", "ego", "agent", "map")}


def tune_qa(branch, beams: Sequence[dict[str, np.ndarray]], qa_of: Callable[[int, np.random.Generator], list],
            cfg: QATuneConfig, seed: int = 0, log: Callable[[int, float], None] | None = None,
            progress: bool = True) -> list[float]:
    """Train `branch` (its trainable parameters) on QA of frames `beams`; qa_of(i, rng)
    returns frame i's QA pairs for one step. Returns the loss of every step."""
    from tqdm import tqdm

    if cfg.steps <= 0:
        return []
    rng = np.random.default_rng(seed)
    params = branch.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, cfg.steps // 20)) * 0.5 * (1 + np.cos(np.pi * s / cfg.steps)))
    dt = branch.dtype
    was = branch.training
    branch.train()
    losses = []
    order = rng.permutation(len(beams))
    pos = 0
    bar = tqdm(range(cfg.steps), desc="QA fine-tuning", disable=not progress)
    for step in bar:
        if pos + cfg.batch_scenes > len(order):
            order, pos = rng.permutation(len(beams)), 0
        idx = order[pos: pos + cfg.batch_scenes]
        pos += cfg.batch_scenes
        qa = QABatch.from_pairs([qa_of(int(i), rng) for i in idx])
        loss = branch.answer_loss(stack_beams(beams, idx, branch.device, dt), qa)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    branch.train(was)
    return losses
