#!/usr/bin/env python3
"""Forward latency (batch 1) of the LLM-free planner: eager vs torch.compile vs TensorRT.

    .venv/bin/python tools/bench_forward.py --device cuda --configs tiny_cpu,vad_tiny \
        --modes eager,compiled,tensorrt --precision fp16 [--dual-checkpoint checkpoints/dima_tiny_stage2]

Weights are freshly initialised (latency does not depend on them); the temporal input is
always on (a previous BEV), as in a running node. One forward = encode + plan, timed with
CUDA synchronisation on a GPU. `compiled` is torch.compile(mode="reduce-overhead"): CUDA
graphs on a GPU, Inductor C++ on a CPU. A mode that cannot run here is reported with its
reason, not skipped silently. Prints one table; --json writes the rows.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ros2_ws" / "src" / "dima_planner"))

from dima_planner import accel  # noqa: E402
from dima_planner.model import config as model_config  # noqa: E402
from dima_planner.model.planner import VisionPlanner  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--configs", default="tiny_cpu,vad_tiny", help="model.config functions")
    p.add_argument("--modes", default="eager,compiled,tensorrt")
    p.add_argument("--precision", default="fp32", choices=tuple(DTYPES), help="autocast dtype (fp32 = none)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--dual-checkpoint", default="", help="also time Dual inference (stage-2 checkpoint) eagerly")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, device: str, iters: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 99))


def autocast(device: str, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def bench_config(name: str, args) -> list[dict]:
    cfg = getattr(model_config, name)()
    torch.manual_seed(0)
    model = VisionPlanner(cfg).to(args.device).eval()
    graph = accel.PlannerGraph(model).eval()
    inputs = accel.example_inputs(model, args.device)
    rows = []
    for mode in args.modes.split(","):
        row = {"config": name, "mode": mode, "device": args.device, "precision": args.precision,
               "image_size": list(cfg.image_size), "bev": [cfg.bev_h, cfg.bev_w]}
        try:
            if mode == "eager":
                fn = graph
            elif mode == "compiled":
                fn = torch.compile(graph, mode="reduce-overhead" if args.device.startswith("cuda") else "default")
            elif mode == "tensorrt":
                fn = accel.build_tensorrt(model, args.precision)
            else:
                raise ValueError(f"unknown mode {mode}")

            def run():
                with torch.inference_mode(), autocast(args.device, args.precision):
                    return fn(*inputs)

            row["p50_ms"], row["p99_ms"] = time_fn(run, args.device, args.iters, args.warmup)
            row["fps"] = 1e3 / row["p50_ms"]
        except Exception as e:  # noqa: BLE001 - the table says why a mode did not run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def bench_dual(args) -> dict:
    from dima_planner.inference import load_planner

    row = {"config": f"Dual ({Path(args.dual_checkpoint).name})", "mode": "eager", "device": args.device,
           "precision": args.precision}
    try:
        planner = load_planner(args.dual_checkpoint, args.device, dual=True)
        model = planner.model
        images, l2i, prev_bev, p2c, has_prev, cmd, can_bus = accel.example_inputs(model.planner, args.device)
        can_bus = can_bus if getattr(model.cfg, "can_bus", False) else None

        def run():
            with torch.inference_mode(), autocast(args.device, args.precision):
                enc = model.encode(images, l2i, prev_bev, p2c, has_prev, None, can_bus)
                return model.plan(enc, cmd)

        row["p50_ms"], row["p99_ms"] = time_fn(run, args.device, max(args.iters // 5, 5), 3)
        row["fps"] = 1e3 / row["p50_ms"]
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    print(_line(row), flush=True)
    return row


def _line(r: dict) -> str:
    if "error" in r:
        return f"{r['config']:<24} {r['mode']:<9} {r['device']:<6} {r['precision']:<5} not run: {r['error']}"
    return (f"{r['config']:<24} {r['mode']:<9} {r['device']:<6} {r['precision']:<5} p50 {r['p50_ms']:8.2f} ms  "
            f"p99 {r['p99_ms']:8.2f} ms  {r['fps']:8.1f} FPS")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_forward: no CUDA device", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    print(f"device {args.device} ({gpu}), torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    rows = []
    for name in args.configs.split(","):
        rows += bench_config(name.strip(), args)
    if args.dual_checkpoint:
        rows.append(bench_dual(args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": gpu, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0 if any("p50_ms" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
