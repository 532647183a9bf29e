"""Latency of the reasoning node's commentary: held to its answer grammar vs decoded freely.

    .venv/bin/python tools/bench_commentary.py --repeat 5

The MLLM node's engine (`runtime.reasoning.MLLMEngine`) with the stage-2 checkpoint answers the
planning question (the node's periodic commentary) about scene tokens of the checkpoint's
shapes (seeded random: the cost does not depend on what the tokens say), `--repeat` times
each way after one warm-up of each (the warm-up also builds the grammar's token table).
Prints the median seconds, the generated tokens and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/dima_tiny_stage2")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=96)
    args = p.parse_args(argv)

    from dima_planner.qa.generate import PLANNING_QUESTION
    from dima_planner.runtime.reasoning import MLLMEngine

    engine = MLLMEngine(checkpoint=args.checkpoint, num_threads=args.threads)
    cfg = engine.cfg
    h, w = cfg.bev_hw
    rng = np.random.default_rng(0)
    tokens = {name: rng.normal(size=(n, cfg.token_dim)).astype(np.float32)
              for name, n in (("bev", h * w), ("ego", 1), ("agent", 30), ("map", 20))}
    print(f"load average before: {os.getloadavg()[0]:.2f}, {args.threads} thread(s), {args.checkpoint}")
    for held in (True, False):
        engine.generate(tokens, (h, w), PLANNING_QUESTION, args.max_new_tokens, grammar=held)  # warm-up
        times, text = [], ""
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            text = engine.generate(tokens, (h, w), PLANNING_QUESTION, args.max_new_tokens, grammar=held)
            times.append(time.perf_counter() - t0)
        n = len(engine.tokenizer(text, add_special_tokens=False).input_ids)
        print(f"{'held to the grammar' if held else 'free':<20} median {statistics.median(times):.2f} s "
              f"({n} tokens, {1e3 * statistics.median(times) / max(n, 1):.0f} ms/token): {text!r}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
