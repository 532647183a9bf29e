"""Training of the vision planner (stage 1, VAD losses) and of DiMA (stage 2), as a small package:

    config.py     typed YAML config (TrainConfig and its sections)
    data.py       temporal queue per sample, per-process resumable batches, model inputs
    objective.py  what a step optimises: PlannerObjective (stage 1), DiMAObjective (stage 2)
    state.py      checkpoints, optimiser/scheduler/RNG state, torchrun detection
    validate.py   validation through inference.Planner (the eval/node temporal rule)
    loop.py       the plain loop: AdamW + warmup/cosine, clipping, tqdm, TensorBoard, DDP
    cli.py        `dima train --config params/train/<name>.yaml [--set k=v] [--resume]`

Temporal BEV in training follows VAD: each sample comes with its queue of earlier keyframes
(data.queue_length, VAD-Tiny 3), whose BEVs are chained without gradients, the same chaining
`dima eval` and the node apply frame after frame.
"""
from .cli import add_arguments, main, run
from .config import DataConfig, LoggingConfig, OptimConfig, ScheduleConfig, TrainConfig, load_config
from .data import ResumableBatches, TemporalPairs, collate_pairs, future_inputs, model_inputs, targets
from .loop import build_optimizer, lr_lambda, train
from .objective import MLLM_LOSSES, DiMAObjective, PlannerObjective, build_mllm
from .state import TRAIN_STATE, Distributed, load_init, rng_state, seed_everything, set_rng_state
from .validate import evaluate, predict_sequential

__all__ = [
    "DataConfig", "DiMAObjective", "Distributed", "LoggingConfig", "MLLM_LOSSES", "OptimConfig", "PlannerObjective",
    "ResumableBatches", "ScheduleConfig", "TRAIN_STATE", "TemporalPairs", "TrainConfig", "add_arguments",
    "build_mllm", "build_optimizer", "collate_pairs", "evaluate", "future_inputs", "load_config", "load_init",
    "lr_lambda", "main", "model_inputs", "predict_sequential", "rng_state", "run", "seed_everything",
    "set_rng_state", "targets", "train",
]
