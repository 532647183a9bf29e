#!/usr/bin/env python3
"""CPU time (not wall) of the simulator's side of a closed-loop frame, at 4 Hz and 400x225.

    .venv/bin/python tools/bench_sim_cpu.py [--world data/bench] [--route scene-0016] [--frames 40]

Per frame: `render` = the six cameras (CameraRig.render), `physics` = one 4-Hz frame (6 substeps:
controller, bicycle, IDM traffic, collision/off-road/route checks) on a plan along the route at
8 m/s. Process CPU time, so other jobs on the machine inflate it less than wall time; the
planner node's own cost comes on top (the bench's "wall s / sim s" column has both).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from dima_planner.sim import RouteSpec, SimConfig, Simulator, build_scenario
    from dima_planner.sim.cameras import CameraRig
    from dima_planner.sim.engine import Plan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default=str(REPO / "data" / "bench"))
    ap.add_argument("--route", default="scene-0016", help="scene-000N or KIND:INDEX")
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()
    kind, _, index = args.route.partition(":")
    spec = RouteSpec(kind=kind, index=int(index)) if index else RouteSpec(scene=args.route)
    cfg = SimConfig(world=args.world, frame_hz=4.0, substeps=6)
    sc = build_scenario(spec, cfg.world)
    sim, rig = Simulator(sc, cfg), CameraRig(sc, 0.25)
    rig.render(sim)  # the first frame cuts the ground window: not a steady-state cost
    times = np.arange(1, 7) * 0.5
    render = physics = 0.0
    for _ in range(args.frames):
        a = time.process_time()
        rig.render(sim)
        b = time.process_time()
        xy, _ = sc.route.at(sim.s_route + 8.0 * times)
        sim.advance(Plan(sim.t, times, xy))
        physics += time.process_time() - b
        render += b - a
    n = args.frames
    print(f"CPU per frame: render {render / n * 1e3:.1f} ms, physics {physics / n * 1e3:.1f} ms -> "
          f"{cfg.frame_hz * (render + physics) / n:.2f} CPU s per simulated second at {cfg.frame_hz:g} Hz "
          f"(load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
