"""`dima train --config params/train/<name>.yaml [--set KEY=VALUE ...] [--resume]`."""
from __future__ import annotations

import argparse
import json
import sys

from ..checkpoint import CheckpointError
from ..config import ConfigError
from .config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="params/train/<name>.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/last")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="leave after this global step with a checkpoint in <out_dir>/last, as if "
                             "interrupted (the schedule stays that of schedule.steps); --resume continues")


def run(args: argparse.Namespace) -> int:
    from ..model.mllm import LLMNotFoundError
    from .loop import train

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, resume=args.resume, stop_after=args.stop_after)
    except LLMNotFoundError as e:
        print(f"error: the MLLM's LLM is missing: {e}", file=sys.stderr)
        return 1
    except (CheckpointError, ValueError, OSError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"trained {result['step']} steps; final loss {result['losses'][-1]:.4f}" if result["losses"]
          else f"nothing to do: already at step {result['step']}")
    if result["val"]:
        print(json.dumps({k: v for k, v in result["val"].items() if k != "convention"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima train", description="Train the planner (stage 1) or DiMA (stage 2).")
    add_arguments(parser)
    return run(parser.parse_args(argv))
