"""`dima synth`: generate (or reuse) the synthetic nuScenes-format world."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dima_planner.config import ConfigError, load_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="params/synth.yaml", help="SynthConfig YAML")
    parser.add_argument("--out", default="data/world", help="dataroot to write (nuScenes layout)")
    parser.add_argument("--scenes", type=int, default=None, help="override num_scenes")
    parser.add_argument("--scale", type=float, default=None, help="override image scale (1.0 = 1600x900)")
    parser.add_argument("--seed", type=int, default=None, help="override seed")
    parser.add_argument("--workers", type=int, default=None, help="override worker processes")
    parser.add_argument("--force", action="store_true", help="regenerate even if the dataroot matches")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from . import SynthConfig, generate
    from .generate import META_NAME, GenerationError
    from .validate import DatarootError

    overrides = {k: v for k, v in (("num_scenes", args.scenes), ("scale", args.scale), ("seed", args.seed),
                                   ("workers", args.workers)) if v is not None}
    try:
        cfg = load_yaml(SynthConfig, args.config, overrides)
    except ConfigError as e:
        print(f"dima synth: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    start = time.time()
    try:
        root = generate(cfg, out, progress=not args.quiet, force=args.force)
    except (GenerationError, DatarootError) as e:
        print(f"dima synth: {e}", file=sys.stderr)
        return 1
    took = time.time() - start
    print(f"dima synth: world at {root} (version {cfg.version}, {cfg.num_scenes} scenes, "
          f"{cfg.image_size[0]}x{cfg.image_size[1]}, meta {root / META_NAME}, {took:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima synth", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
