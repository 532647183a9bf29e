#!/usr/bin/env python3
"""Forward latency (batch 1) of the LLM-free planner: eager vs torch.compile vs ONNX Runtime vs TensorRT.

    .venv/bin/python tools/bench_forward.py --device cuda --configs tiny_cpu,vad_tiny \
        --modes eager,compiled,tensorrt --precision fp16 [--dual-checkpoint checkpoints/dima_tiny_stage2]
    .venv/bin/python tools/bench_forward.py --device cpu --threads 2 --modes eager,onnxruntime \
        --checkpoint checkpoints/dima_tiny --rounds 5

Weights are freshly initialised (latency does not depend on them); the temporal input is
always on (a previous BEV), as in a running node. One forward = encode + plan, timed with
CUDA synchronisation on a GPU. `compiled` is torch.compile(mode="reduce-overhead"): CUDA
graphs on a GPU, Inductor C++ on a CPU. `onnxruntime` exports the same graph
(backends.PlannerGraph) to ONNX and runs it with --threads intra-op threads (CPU provider).
--rounds N interleaves the modes N times (eager, onnxruntime, eager, ...) so that a
machine whose load changes affects each mode alike; the table gives the median of the
round medians and their range. A mode that cannot run here is reported with its
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

from dima_planner import accel
from dima_planner.model import config as model_config
from dima_planner.model.planner import VisionPlanner

REPO = Path(__file__).resolve().parents[1]

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
    p.add_argument("--checkpoint", default="", help="time this checkpoint's model instead of fresh --configs weights")
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of all modes")
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


def _model(name: str, args):
    if args.checkpoint:
        from dima_planner.checkpoint import load_checkpoint

        return load_checkpoint(args.checkpoint, args.device)[0]
    torch.manual_seed(0)
    return VisionPlanner(getattr(model_config, name)()).to(args.device).eval()


def _runner(mode: str, model, graph, inputs, args, tmp: Path):
    if mode == "eager":
        fn = graph
    elif mode == "compiled":
        fn = torch.compile(graph, mode="reduce-overhead" if args.device.startswith("cuda") else "default")
    elif mode == "tensorrt":
        fn = accel.build_tensorrt(model, args.precision)
    elif mode == "onnxruntime":
        import onnxruntime as ort

        from dima_planner import backends

        path = backends.export_onnx(model, tmp / "planner.onnx", "bench")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {n: t.cpu().numpy() for n, t in zip(graph.input_names, inputs)}
        return lambda: session.run(None, feed)
    else:
        raise ValueError(f"unknown mode {mode}")

    def run():
        with torch.inference_mode(), autocast(args.device, args.precision):
            return fn(*inputs)

    return run


def bench_config(name: str, args) -> list[dict]:
    import tempfile

    model = _model(name, args)
    cfg = model.cfg
    label = Path(args.checkpoint).name if args.checkpoint else name
    graph = accel.PlannerGraph(model).eval()
    inputs = accel.example_inputs(model, args.device)
    rows, runners = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_forward_"))
    modes = args.modes.split(",")
    for mode in modes:
        rows[mode] = {"config": label, "mode": mode, "device": args.device, "precision": args.precision,
                      "threads": args.threads, "image_size": list(cfg.image_size), "bev": [cfg.bev_h, cfg.bev_w],
                      "rounds": []}
        try:
            runners[mode] = _runner(mode, model, graph, inputs, args, tmp)
        except Exception as e:  # noqa: BLE001 - the table says why a mode did not run
            rows[mode]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    for _ in range(max(args.rounds, 1)):
        for mode, run in runners.items():
            try:
                rows[mode]["rounds"].append(time_fn(run, args.device, args.iters, args.warmup))
            except Exception as e:  # noqa: BLE001
                rows[mode]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    out = []
    for mode in modes:
        row = rows[mode]
        if "error" not in row:
            p50s = [r[0] for r in row["rounds"]]
            row["p50_ms"] = float(np.median(p50s))
            row["p99_ms"] = float(np.median([r[1] for r in row["rounds"]]))
            row["p50_range_ms"] = [float(min(p50s)), float(max(p50s))]
            row["fps"] = 1e3 / row["p50_ms"]
        out.append(row)
        print(_line(row), flush=True)
    base = rows.get("eager", {}).get("rounds")
    for mode in modes:
        other = rows[mode].get("rounds")
        if mode != "eager" and base and other and "error" not in rows[mode]:
            ratios = [b[0] / o[0] for b, o in zip(base, other)]
            rows[mode]["speedup_vs_eager"] = float(np.median(ratios))
            print(f"{label}: {mode} vs eager: {np.median(ratios):.2f}x faster (per-round ratios "
                  f"{', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    return out


def bench_dual(args) -> dict:
    from dima_planner.inference import load_planner

    row = {"config": f"Dual ({Path(args.dual_checkpoint).name})", "mode": "eager", "device": args.device,
           "precision": args.precision}
    try:
        planner = load_planner(args.dual_checkpoint, args.device, dual=True)
        model = planner.model
        x = dict(zip(accel.PlannerGraph(model.planner).input_names, accel.example_inputs(model.planner, args.device)))
        images, l2i, prev_bev, p2c, has_prev = (x[k] for k in ("images", "lidar2img", "prev_bev", "prev2cur",
                                                                "has_prev"))
        can_bus, cmd = x.get("can_bus"), torch.tensor([2], device=args.device)

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
        return f"{r['config']:<24} {r['mode']:<11} {r['device']:<6} {r['precision']:<5} not run: {r['error']}"
    spread = (f"  (round p50 {r['p50_range_ms'][0]:.2f}-{r['p50_range_ms'][1]:.2f})"
              if len(r.get("rounds", [])) > 1 else "")
    return (f"{r['config']:<24} {r['mode']:<11} {r['device']:<6} {r['precision']:<5} p50 {r['p50_ms']:8.2f} ms  "
            f"p99 {r['p99_ms']:8.2f} ms  {r['fps']:8.1f} FPS{spread}")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_forward: no CUDA device", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    print(f"device {args.device} ({gpu}), torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    rows = []
    for name in (["checkpoint"] if args.checkpoint else args.configs.split(",")):
        rows += bench_config(name.strip(), args)
    print(f"load average at the end {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    if args.dual_checkpoint:
        rows.append(bench_dual(args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": gpu, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0 if any("p50_ms" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
