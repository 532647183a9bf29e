#!/usr/bin/env python3
"""Cost of the closed-loop simulator: a frame's parts, and wall time per simulated second.

Experiment behind BENCHMARKS.md section 8, "Earlier measurements (previous controller and
scoring)": the step-cost and lockstep tables there. Not a maintained benchmark: `dima sim`
prints its own wall time per simulated second, and tools/bench_sim_cpu.py measures the
simulator's CPU time per frame.

    .venv/bin/python tools/experiments/bench_sim.py [--frames 48] [--loop-seconds 8] [--json out/bench/sim.json]

1. Step cost, per frame of route turn_left:101 driven by the expert (in-process, no ROS):
     render6   the six cameras by the generator's renderer (CameraRig.render), at 400x225
               and at 1600x900;
     physics   one frame of simulation at 12 Hz (2 substeps: controller, bicycle, IDM
               traffic, infraction checks) plus the expert's plan;
     rgb8/jpeg building the six sensor_msgs Image (rgb8) or CompressedImage (JPEG q90)
               messages from the rendered arrays (conversions.rgb_to_image/_compressed).
   Mean with a 95 % confidence interval (t), median and p90 over --frames frames.
2. Wall time per simulated second with dima_planner_node in the loop (lockstep over DDS,
   default checkpoint, the planner at torch's default threads), for --loop-seconds of the
   same route at 12 Hz and at 4 Hz frames, 400x225 raw images. Load average printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def stats(xs) -> dict:
    x = np.asarray(xs) * 1e3
    from scipy import stats as st

    half = float(st.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean_ms": round(float(x.mean()), 2), "ci95_ms": round(half, 2), "median_ms": round(float(np.median(x)), 2),
            "p90_ms": round(float(np.percentile(x, 90)), 2), "n": len(x)}


def step_cost(frames: int) -> dict:
    from builtin_interfaces.msg import Time

    from dima_planner.ros import conversions as conv
    from dima_planner.sim import RouteSpec, SimConfig, Simulator, build_scenario
    from dima_planner.sim.cameras import CameraRig
    from dima_planner.sim.planners import Expert

    cfg = SimConfig(world=str(REPO / "data" / "world"))
    out = {}
    for scale, label in ((0.25, "400x225"), (1.0, "1600x900")):
        sc = build_scenario(RouteSpec(kind="turn_left", index=101), cfg.world)
        sim, rig, expert = Simulator(sc, cfg), CameraRig(sc, scale), Expert()
        rig.render(sim)  # the first frame cuts the ground window: not a steady-state cost
        t_render, t_phys, t_raw, t_jpeg = [], [], [], []
        for _ in range(frames):
            t0 = time.perf_counter()
            imgs = rig.render(sim)
            t1 = time.perf_counter()
            sim.advance(expert.plan(sim))
            t2 = time.perf_counter()
            for im in imgs.values():
                conv.rgb_to_image(im, Time(), "cam")
            t3 = time.perf_counter()
            for im in imgs.values():
                conv.rgb_to_compressed(im, Time(), "cam", 90)
            t4 = time.perf_counter()
            t_render.append(t1 - t0), t_phys.append(t2 - t1), t_raw.append(t3 - t2), t_jpeg.append(t4 - t3)
        out[label] = {"render6": stats(t_render), "physics+expert": stats(t_phys), "rgb8_msgs": stats(t_raw),
                      "jpeg_msgs": stats(t_jpeg)}
    return out


def loop_cost(seconds: float) -> dict:
    from dataclasses import replace

    from rich.console import Console

    from dima_planner.config import load_yaml
    from dima_planner.ros.env import apply_ros_env_defaults, pid_domain_id
    from dima_planner.ros.in_the_loop import DimaInTheLoop
    from dima_planner.sim.config import BenchConfig, RouteSpec

    apply_ros_env_defaults(pid_domain_id(21))
    out = {}
    for hz, substeps in ((12.0, 2), (4.0, 6)):
        cfg = load_yaml(BenchConfig, REPO / "params" / "sim" / "bench.yaml")
        cfg = replace(cfg, sim=replace(cfg.sim, world=str(REPO / "data" / "world"), frame_hz=hz, substeps=substeps,
                                       timeout_slack=0.0), checkpoint=str(REPO / cfg.checkpoint))
        bench_out = REPO / "out" / "bench"
        bench_out.mkdir(parents=True, exist_ok=True)
        dima = DimaInTheLoop(cfg, bench_out, Console(), lambda p: REPO / p)
        try:
            t0 = time.monotonic()
            sim = dima.drive(RouteSpec(kind="turn_left", index=101, seconds=seconds))
            wall = time.monotonic() - t0
        finally:
            dima.close()
        out[f"{hz:g} Hz"] = {"wall_s": round(wall, 2), "sim_s": round(sim.t, 2),
                             "wall_per_sim_s": round(wall / sim.t, 2), "frames": sim.plans + sim.missed,
                             "missed": sim.missed, "load_avg_after": os.getloadavg()[0]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--loop-seconds", type=float, default=8.0)
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = {"load_avg_before": os.getloadavg(), "cpus": os.cpu_count()}
    res["step"] = step_cost(args.frames)
    for res_label, parts in res["step"].items():
        for part, s in parts.items():
            print(f"{res_label:9s} {part:15s} mean {s['mean_ms']:7.1f} ± {s['ci95_ms']:5.1f} ms  median "
                  f"{s['median_ms']:7.1f}  p90 {s['p90_ms']:7.1f}  (n={s['n']})")
    if not args.skip_loop:
        res["loop"] = loop_cost(args.loop_seconds)
        for k, v in res["loop"].items():
            print(f"dima in the loop, {k} lockstep: {v['wall_s']:.1f} s wall for {v['sim_s']:.1f} s simulated = "
                  f"{v['wall_per_sim_s']:.2f} s wall per sim s ({v['frames']} frames, {v['missed']} missed; "
                  f"load avg {v['load_avg_after']:.1f})")
    res["load_avg_after"] = os.getloadavg()
    print(f"load average before {res['load_avg_before']}, after {res['load_avg_after']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
