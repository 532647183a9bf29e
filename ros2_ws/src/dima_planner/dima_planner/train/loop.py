"""The training loop, top to bottom: plain, one objective, resumable (model, optimiser,
scheduler, data position, RNG states), DDP under torchrun (gloo on CPU, nccl on CUDA).
The parts: trainer.Trainer (train_step), checkpoint.Checkpointer, validate.Validator,
logger.Logger, parallel (FSDP / DDP), data.batches."""
from __future__ import annotations

from typing import Any

import torch

from ..distributed import Distributed
from ..model.planner import count_parameters
from .checkpoint import Checkpointer, seed_everything
from .config import TrainConfig
from .data import batches, build_datasets
from .logger import Logger
from .parallel import apply_ddp
from .trainer import Trainer
from .validate import Validator


def train(cfg: TrainConfig, resume: bool = False, datasets: tuple | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) training. Returns {"step", "losses": [...], "val": metrics or {}, "model",
    "mllm", "optimizer"}.

    datasets: (train, val or None) instead of building them from cfg.data.
    stop_after: leave after this global step with a checkpoint, as if interrupted (tests)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dist = Distributed(cfg.device)
    device = dist.device(cfg.device)
    seed_everything(cfg.seed)
    train_ds, val_ds = datasets if datasets is not None else build_datasets(cfg)
    total = cfg.schedule.total_steps(len(train_ds), cfg.data.batch_size, dist.world)

    trainer = Trainer(cfg, dist, device, total, resume, getattr(train_ds, "tokens", None))
    model, objective = trainer.model, trainer.objective
    ckpt = Checkpointer(cfg, dist, stop_after)
    metrics: dict[str, Any] = {}
    if resume:
        trainer.step, metrics = ckpt.resume(model, trainer.optim, trainer.sched, objective, device)
    model.train()
    apply_ddp(objective, cfg, dist, device)
    pairs, loader = batches(train_ds, cfg, getattr(objective, "future_steps", None), trainer.step, total,
                            dist.rank, dist.world)
    validator = Validator(val_ds, cfg, dist.main)
    logger = Logger(cfg, dist.main, dist.world, trainer.step, total)
    ckpt.write_config()
    logger.start(f"stage {cfg.stage}: planner {count_parameters(model):,} parameters{objective.describe()}; "
                 f"{len(pairs)} training samples; steps {trainer.step}..{total} at batch {cfg.data.batch_size} x "
                 f"{dist.world} process(es), queue {cfg.data.queue_length}")

    losses: list[float] = []
    for batch in loader:
        loss, terms, norms = trainer.train_step(batch)
        step = trainer.step
        losses.append(loss)
        logger.train_step(step, batch["inputs"]["images"].shape[0], loss, terms, norms, trainer.lr,
                          objective.scalars())
        if validator.due(step, total):
            metrics = validator(model, objective, device, step, logger)
        ckpt.maybe_save(step, total, model, trainer.optim, trainer.sched, objective, metrics)
        if ckpt.interrupted(step, total):
            break
    logger.close()

    if dist.main and trainer.step == total:
        extra_meta = objective.finish(train_ds, ckpt.run_dir)
        ckpt.export(model, objective.mllm, {"step": trainer.step, "val": metrics,
                                            "train_wall_s": round(logger.wall(), 1), **extra_meta})
    # Rank 0 writes the checkpoint and the export after the last step; without this barrier
    # another rank could leave, start a resumed run and read `last` before it exists (then
    # the ranks disagree on the step and hang in a collective).
    dist.barrier()
    dist.close()
    return {"step": trainer.step, "losses": losses, "val": metrics, "model": model, "mllm": objective.mllm,
            "optimizer": trainer.optim}
