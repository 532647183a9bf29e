"""`dima dagger`: on-policy training with the privileged expert as labeller (DAgger).

    dima dagger --config params/dagger/tiny_cpu.yaml        # make checkpoint-dagger
    dima dagger --config ... --set iterations=1 betas=[0.5]       # fewer iterations

Rerunning the same command resumes at the first unfinished stage (drive, fine-tune, score).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import add_set_argument, load_yaml, parse_overrides
from .config import DaggerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="params/dagger/tiny_cpu.yaml", help="DaggerConfig YAML")
    add_set_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..sim.scenario import world_config
    from .loop import run_dagger

    cfg = load_yaml(DaggerConfig, Path(args.config), parse_overrides(args.set))
    world_config(cfg.sim.world)  # a clear error, with the command that makes it, for a missing world
    log = run_dagger(cfg)
    print(json.dumps(log, indent=1))
    return 0
