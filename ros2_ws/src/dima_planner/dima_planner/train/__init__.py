"""Training of the vision planner (stage 1, VAD losses) and of DiMA (stage 2), as a small package:

    config.py     typed YAML config (TrainConfig and its sections)
    data.py       temporal queue per sample, per-process resumable batches; collate emits
                  the model's keyword arguments and the loss targets
    objective.py  what a step optimises: PlannerObjective (stage 1), DiMAObjective (stage 2)
    trainer.py    Trainer: model, objective, AdamW + warmup/cosine; train_step
    checkpoint.py Checkpointer: resume, atomic saves of model/optimiser/scheduler/RNG, export
    validate.py   Validator: validation through inference.Planner (the eval/node temporal rule)
    logger.py     Logger: tqdm bar, console lines, TensorBoard
    parallel.py   FSDP2 over the LLM, DDP, sharded optimiser states (torchrun)
    loop.py       train(): the loop, top to bottom
    cli.py        `dima train --config params/train/<name>.yaml [--set k=v] [--resume]`

Temporal BEV in training follows VAD: each sample comes with its queue of earlier keyframes
(data.queue_length, VAD-Tiny 3), whose BEVs are chained without gradients, the same chaining
`dima eval` and the node apply frame after frame.
"""
from ..distributed import Distributed
from .cli import add_arguments, main, run
from .config import DataConfig, LoggingConfig, OptimConfig, ScheduleConfig, TrainConfig, load_config
from .checkpoint import TRAIN_STATE, Checkpointer, load_init, rng_state, seed_everything, set_rng_state
from .data import ResumableBatches, TemporalPairs, collate_pairs, to_device
from .logger import Logger
from .loop import train
from .objective import MLLM_LOSSES, DiMAObjective, PlannerObjective, build_mllm
from .trainer import Trainer, build_optimizer, lr_lambda
from .validate import Validator, evaluate, predict_sequential

__all__ = [
    "Checkpointer", "DataConfig", "DiMAObjective", "Distributed", "Logger", "LoggingConfig", "MLLM_LOSSES",
    "OptimConfig", "PlannerObjective", "ResumableBatches", "ScheduleConfig", "TRAIN_STATE", "TemporalPairs",
    "TrainConfig", "Trainer", "Validator", "add_arguments", "build_mllm", "build_optimizer", "collate_pairs",
    "evaluate", "load_config", "load_init", "lr_lambda", "main", "predict_sequential", "rng_state", "run",
    "seed_everything", "set_rng_state", "to_device", "train",
]
