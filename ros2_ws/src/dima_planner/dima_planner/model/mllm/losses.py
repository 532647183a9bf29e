"""Distillation between the MLLM (teacher) and the planning transformer (student)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import DistillConfig


def distillation_loss(teacher: torch.Tensor, student: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """Loss between two (B, C) ego features, averaged over the batch.

    "kl" (the paper): each feature is softmax-normalised over its channels at
    temperature T and KL(teacher || student) is scaled by T^2 (Hinton) so the gradient
    size does not depend on T. "cosine" and "l2" are the usual alternatives when the
    channel-softmax view is too weak a constraint (it ignores a shift of all channels).
    All three are exactly zero for identical features.
    """
    if teacher.shape != student.shape or teacher.dim() != 2:
        raise ValueError(
            f"distillation needs two (B, C) features of equal shape, got {tuple(teacher.shape)} "
            f"and {tuple(student.shape)}"
        )
    if cfg.detach_teacher:
        teacher = teacher.detach()
    if cfg.kind == "kl":
        t = cfg.temperature
        log_p_t = F.log_softmax(teacher / t, dim=-1)
        log_p_s = F.log_softmax(student / t, dim=-1)
        return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * t * t
    if cfg.kind == "cosine":
        return (1.0 - F.cosine_similarity(teacher, student, dim=-1)).mean()
    if cfg.kind == "l2":
        return F.mse_loss(student, teacher)
    raise ValueError(f"unknown distillation kind {cfg.kind!r}")


def masked_trajectory_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean L1 over valid steps; pred/target (B, T, 2), mask (B, T) (1 = valid)."""
    err = (pred - target).abs().sum(-1)
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp(min=1.0)
