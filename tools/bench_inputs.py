"""Decode + resize cost of one camera frame through data/inputs.py (the one input path).

    .venv/bin/python tools/bench_inputs.py [--size 900 1600] [--target 96 160] [--repeat 50]

Compares decode_image on JPEG bytes (libjpeg DCT scaling to the largest reduction >= the
target, then INTER_AREA) with a full decode followed by INTER_AREA, and prints ms per frame.
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from dima_planner.data.inputs import _reduction, decode_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", nargs=2, type=int, default=[900, 1600], metavar=("H", "W"))
    ap.add_argument("--target", nargs=2, type=int, default=[96, 160], metavar=("H", "W"))
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    h, w = args.size
    img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (15, 15), 4)
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    target = tuple(args.target)

    def full():
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return cv2.resize(rgb, target[::-1], interpolation=cv2.INTER_AREA)

    for name, fn in (("decode_image (DCT-reduced)", lambda: decode_image(jpg, target)), ("full decode + INTER_AREA", full)):
        fn()
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            out = fn()
        ms = (time.perf_counter() - t0) / args.repeat * 1e3
        print(f"{name:28s} {w}x{h} -> {target[1]}x{target[0]}: {ms:6.2f} ms/frame  (out {out.shape})")
    print(f"reduction factor: {_reduction(h, w, target)}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
