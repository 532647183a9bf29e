"""How a run spreads over processes (torchrun): FSDP2 over the LLM's decoder layers, DDP
around the rest, ZeroRedundancyOptimizer for sharded optimiser states. No-ops (with a
note where the config asked for sharding) in a single process."""
from __future__ import annotations

import sys

from torch import nn

from ..distributed import Distributed
from ..model.mllm.llm import shard_llm


def shard_states(cfg, dist: Distributed) -> bool:
    """optim.shard_states where it applies (a distributed run)."""
    if cfg.optim.shard_states and not dist.enabled:
        print("note: optim.shard_states ignored: not a distributed run (world size 1)", file=sys.stderr)
    return cfg.optim.shard_states and dist.enabled


def apply_fsdp(objective, cfg, dist: Distributed) -> None:
    """mllm.llm.fsdp: FSDP2 over the LLM's decoder layers (before the optimiser is built)."""
    if objective.mllm is None or not cfg.mllm.llm.fsdp:
        return
    if not dist.enabled:
        print("note: mllm.llm.fsdp ignored: not a distributed run (world size 1)", file=sys.stderr)
        return
    shard_llm(objective.mllm.llm)  # DDP (apply_ddp) leaves the LLM alone


def apply_ddp(objective, cfg, dist: Distributed, device) -> None:
    """DDP around the objective's module (after a resume: it broadcasts rank 0's weights)."""
    if not dist.enabled:
        return
    if objective.mllm is not None and cfg.mllm.llm.fsdp:
        # FSDP2 already reduces the LLM's (LoRA) gradients across ranks.
        llm = objective.mllm.llm
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            objective.module, [f"mllm.llm.{n}" for n, _ in llm.named_parameters()]
            + [f"mllm.llm.{n}" for n, _ in llm.named_buffers()])
    objective.forward_module = nn.parallel.DistributedDataParallel(
        objective.module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True)
