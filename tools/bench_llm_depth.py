"""Cost of the MLLM branch's QA step (forward + backward) against the LLM depth.

    python tools/bench_llm_depth.py --layers 4 30 --rows 8 --repeat 3

One QA training step of `MLLMBranch.answer_loss` on random BEAM tokens shaped like the
tiny_cpu planner's (64-wide, 24x24 BEV) and the four factual questions, with SmolLM2-135M
truncated to each depth. Prints seconds per step (median of --repeat after one warm-up),
threads and the load average, so the number can be read against a shared machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[4, 30])
    p.add_argument("--rows", type=int, default=8, help="QA rows per step (4 per frame)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", default="params/train/tiny_cpu_stage2.yaml")
    args = p.parse_args(argv)

    import torch
    from dataclasses import replace

    from dima_planner.model.mllm import MLLMBranch
    from dima_planner.model.mllm.batch import QABatch
    from dima_planner.qa.factual import QTYPES, TEMPLATES, answer_text
    from dima_planner.train import load_config

    torch.set_num_threads(args.threads)
    base = load_config(args.config).mllm
    frames = max(1, args.rows // len(QTYPES))
    answers = {"vehicles_ahead": "2", "lead_distance": "15", "ego_action": "keeping its speed", "ped_crossing": "No"}
    qa = QABatch([TEMPLATES[t].question for _ in range(frames) for t in QTYPES],
                 [answer_text(t, answers[t]) for _ in range(frames) for t in QTYPES],
                 [i for i in range(frames) for _ in QTYPES])
    g = torch.Generator().manual_seed(0)
    c, (h, w) = base.token_dim, base.bev_hw
    beam = {"bev": torch.randn(frames, h * w, c, generator=g), "ego": torch.randn(frames, 1, c, generator=g),
            "agent": torch.randn(frames, 24, c, generator=g), "map": torch.randn(frames, 16, c, generator=g)}
    for n in args.layers:
        cfg = replace(base, llm=replace(base.llm, num_layers=n))
        branch = MLLMBranch(cfg).train()
        times = []
        for k in range(args.repeat + 1):
            t0 = time.perf_counter()
            branch.answer_loss(beam, qa).backward()
            branch.zero_grad(set_to_none=True)
            if k:
                times.append(time.perf_counter() - t0)
        print(f"layers {n:>2}: {statistics.median(times):.2f} s per QA step of {len(qa)} rows "
              f"({args.threads} thread(s), load average {os.getloadavg()[0]:.1f})", flush=True)
        del branch
    return 0


if __name__ == "__main__":
    sys.exit(main())
