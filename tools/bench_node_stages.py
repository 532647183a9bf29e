#!/usr/bin/env python3
"""Where a planner-node frame spends its time, stage by stage, in one process (no DDS).

    .venv/bin/python tools/bench_node_stages.py [--frames 30]

On the six 1600x900 JPEGs of one frame of the bench world (tools/bench_planner_replay.py
makes it under out/bench/world; a synthetic JPEG rig otherwise):
  decode full      cv2.imdecode at full size + INTER_AREA to 160x96 (what the node did)
  decode reduced   data/inputs.decode_image: libjpeg DCT scaling, then INTER_AREA (the node now)
  forward tN       inference.Planner.plan on the decoded frame with N torch threads,
                   under torch.no_grad and torch.inference_mode (interleaved)
Medians over --frames repetitions, with the load average: on a shared machine compare the
rows of one run (ratios), not runs.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dima_planner.data.geometry import RIG_HW, load_rig, scale_intrinsics
from dima_planner.data.inputs import decode_image
from dima_planner.data.sample import CAMERAS
from dima_planner.inference import load_planner

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, n: int) -> float:
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def frame_jpegs() -> list[bytes]:
    world = REPO / "out" / "bench" / "world" / "samples"
    files = [sorted(glob.glob(str(world / cam / "*.jpg")))[:1] for cam in CAMERAS]
    if all(files):
        return [Path(f[0]).read_bytes() for f in files]
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8), (31, 31), 8)
    return [cv2.imencode(".jpg", img)[1].tobytes()] * 6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "dima_tiny"))
    p.add_argument("--threads", default="1,2", help="torch thread counts to time plan() with")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    jpegs = frame_jpegs()
    size = (96, 160)
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}; six {len(jpegs[0]) // 1000} KB JPEGs")

    def full():
        for b in jpegs:
            bgr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
            cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size[::-1], interpolation=cv2.INTER_AREA)

    def reduced():
        return [decode_image(b, size) for b in jpegs]

    t_full, t_red = median_ms(full, args.frames), median_ms(reduced, args.frames)
    print(f"decode full + resize, 6 cameras     {t_full:7.1f} ms")
    print(f"decode reduced + resize, 6 cameras  {t_red:7.1f} ms   ({t_full / t_red:.1f}x less)")
    rig = load_rig()
    imgs = reduced()
    ks = np.stack([scale_intrinsics(rig.intrinsics[c], RIG_HW, size) for c in CAMERAS])
    c2l = np.stack([np.linalg.inv(rig.lidar2ego) @ rig.cam2ego[c] for c in CAMERAS])
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        planner = load_planner(args.checkpoint, "cpu")
        modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
        times: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(args.frames + 1):  # interleaved, so that load drift hits both modes alike
            for mode, ctx in modes.items():
                t = time.perf_counter()
                with ctx():
                    planner.plan(imgs, ks, c2l, 2, stamp_ns=(i + 1) * 83_333_333, lidar2world=np.eye(4))
                if i:  # the first round is warm-up
                    times[mode].append(time.perf_counter() - t)
        for mode, ts in times.items():
            print(f"plan() {threads} thread(s), {mode:<15} {np.median(ts) * 1e3:7.1f} ms")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
