#!/usr/bin/env python3
"""Soak test of dima_planner_node: N minutes of six 1600x900 JPEG cameras at 12 Hz.

    nice .venv/bin/python tools/soak_planner.py --minutes 30 --json runs/soak/soak.json

Starts dima_planner_node as its own process (params/ros/planner.yaml: live best-effort
sensor QoS, the default checkpoint, JPEG CompressedImage on every camera, extrinsics from
the packaged rig) and publishes from this process, on this script's own ROS_DOMAIN_ID over
loopback: six CompressedImage streams (four different 1600x900 JPEG frames per camera,
encoded once, re-stamped with wall time), CameraInfo and odometry, all at --hz.
Every --sample-s seconds it samples the node process from /proc: resident memory (VmRSS),
threads, open file descriptors, the /dev/shm segments it has mapped (Fast DDS transport
and data sharing: count and bytes); Paths received; the machine's load average. The report compares
the end of the run with the end of the first minute (the warm-up: allocator pools, DDS
history buffers and the decode pool fill during it):
    RSS growth %, plan rate of the last minute vs the first, the node's CPU time per plan
    (first vs last minute: on a shared machine the plan rate follows the other jobs' load,
    the CPU spent per plan much less), thread / fd / shm deltas.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from dima_planner.node_process import cpu_seconds, node_command, start_node, stop_node
from dima_planner.ros.env import apply_ros_env_defaults, pid_domain_id

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--hz", type=float, default=12.0)
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "dima_tiny"))
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--warmup-min", type=float, default=1.0, help="the reference: the end of this first period")
    p.add_argument("--json", default=None, help="write samples and summary here")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: derived from the pid)")
    return p.parse_args(argv)


def jpeg_frames(width: int, height: int, n: int, seed: int) -> list[bytes]:
    """n camera-like JPEGs (a sky/road gradient, boxes, sensor noise) of about nuScenes' size."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    y = np.linspace(0, 1, height)[:, None, None]
    for _ in range(n):
        base = (np.array([120, 160, 220]) * (1 - y) + np.array([70, 70, 75]) * y) * np.ones((1, width, 1))
        img = Image.fromarray(np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, width - 200)), int(rng.integers(height // 3, height - 150))
            draw.rectangle([x0, y0, x0 + int(rng.integers(60, 200)), y0 + int(rng.integers(40, 150))],
                           fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def proc_status(pid: int) -> dict[str, int]:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "Threads"):
            vals[key] = int(rest.split()[0])
    return {"rss_kib": vals["VmRSS"], "threads": vals["Threads"], "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def shm_usage(pid: int) -> dict[str, int]:
    """Shared-memory segments the node has mapped (/dev/shm entries in /proc/PID/maps: Fast
    DDS ports and data-sharing pools; other processes' segments are not counted)."""
    spans: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            spans[parts[5]] = spans.get(parts[5], 0) + hi - lo
    return {"shm_files": len(spans), "shm_bytes": sum(spans.values())}


def main(argv=None) -> int:
    args = parse_args(argv)
    domain = args.domain_id if args.domain_id is not None else pid_domain_id(17)
    env = apply_ros_env_defaults(domain_id=domain)
    import rclpy
    from nav_msgs.msg import Odometry, Path as PathMsg
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage
    from std_msgs.msg import Header
    from tqdm import tqdm

    from dima_planner.data.geometry import RIG_HW, load_rig, scale_intrinsics
    from dima_planner.data.sample import CAMERAS
    from dima_planner.bags.bag_io import COMPRESSED_FORMATS
    from dima_planner.ros.conversions import ns_to_stamp

    overrides = {"checkpoint": args.checkpoint, "extrinsics_source": "rig", "warmup_width": args.width,
                 "warmup_height": args.height}
    for c in CAMERAS:
        overrides |= {f"cameras.{c}.transport": "compressed", f"cameras.{c}.topic": f"/{c.lower()}/image_raw/compressed"}
    cmd = node_command("dima_planner.ros.planner_node", [REPO / "params" / "ros" / "planner.yaml"], overrides)
    log = Path(args.json).with_suffix(".node.log") if args.json else Path(os.devnull)
    log.parent.mkdir(parents=True, exist_ok=True)
    node_proc = start_node(cmd, dict(os.environ, **env, PYTHONUNBUFFERED="1"), cwd=REPO, log=log)

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("dima_soak", context=context)
    sensor = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    img_pub = {c: node.create_publisher(CompressedImage, f"/{c.lower()}/image_raw/compressed", sensor) for c in CAMERAS}
    info_pub = {c: node.create_publisher(CameraInfo, f"/{c.lower()}/camera_info", sensor) for c in CAMERAS}
    odom_pub = node.create_publisher(Odometry, "/odom", sensor)
    lock = threading.Lock()
    paths = [0]

    def on_path(_msg) -> None:
        with lock:
            paths[0] += 1

    node.create_subscription(PathMsg, "/dima/path", on_path, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    print(f"encoding {len(CAMERAS)}x4 {args.width}x{args.height} JPEG frames ...", flush=True)
    frames = {c: jpeg_frames(args.width, args.height, 4, i) for i, c in enumerate(CAMERAS)}
    print(f"JPEG sizes: {np.mean([len(b) for v in frames.values() for b in v]) / 1024:.0f} KiB mean", flush=True)
    rig = load_rig()
    msgs = {c: [CompressedImage(format=COMPRESSED_FORMATS["jpeg"], data=b) for b in frames[c]] for c in CAMERAS}
    infos = {c: CameraInfo(height=args.height, width=args.width, distortion_model="plumb_bob",
                           k=scale_intrinsics(rig.intrinsics[c], RIG_HW, (args.height, args.width)).ravel().tolist())
             for c in CAMERAS}

    stop = threading.Event()
    sent = [0]
    late = [0]

    def publish() -> None:
        period = 1.0 / args.hz
        nxt = time.monotonic()
        i = 0
        odom = Odometry(child_frame_id="base_link")
        odom.pose.pose.orientation.w = 1.0
        odom.twist.twist.linear.x = 5.0
        while not stop.is_set():
            t = time.time_ns()
            odom.header = Header(stamp=ns_to_stamp(t), frame_id="odom")
            odom.pose.pose.position.x = (5.0 * t / 1e9) % 1000.0
            odom_pub.publish(odom)
            for k, c in enumerate(CAMERAS):
                s = ns_to_stamp(t + k * 5_000_000)
                frame = f"{c.lower()}_optical"
                infos[c].header = Header(stamp=s, frame_id=frame)
                info_pub[c].publish(infos[c])
                m = msgs[c][i % 4]
                m.header = Header(stamp=s, frame_id=frame)
                img_pub[c].publish(m)
            sent[0] += 1
            i += 1
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                late[0] += 1
                nxt = time.monotonic()  # behind schedule: do not burst to catch up

    # wait for the node to plan before the clock starts (model load + warm-up)
    pub_thread = threading.Thread(target=publish, daemon=True)
    pub_thread.start()
    t_wait = time.monotonic()
    while paths[0] == 0:
        if node_proc.poll() is not None:
            print(f"the node exited with {node_proc.returncode}; see {log}", file=sys.stderr)
            return 1
        if time.monotonic() - t_wait > 300:
            print("no plan within 300 s", file=sys.stderr)
            return 1
        time.sleep(0.2)

    samples = []
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    last_paths, last_sent, last_t, last_cpu = paths[0], sent[0], t0, cpu_seconds(node_proc.pid)
    bar = tqdm(total=int(args.minutes * 60), unit="s", desc="soak")
    try:
        while time.monotonic() < end:
            time.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))
            if node_proc.poll() is not None:
                print(f"the node exited with {node_proc.returncode} during the soak; see {log}", file=sys.stderr)
                return 1
            now = time.monotonic()
            with lock:
                n = paths[0]
            cpu = cpu_seconds(node_proc.pid)
            s = {"t_s": round(now - t0, 1), **proc_status(node_proc.pid), **shm_usage(node_proc.pid),
                 "plans": n - last_paths, "frames_sent": sent[0] - last_sent,
                 "plan_hz": (n - last_paths) / (now - last_t), "cpu_s": cpu - last_cpu,
                 "load1": os.getloadavg()[0]}
            samples.append(s)
            last_paths, last_sent, last_t, last_cpu = n, sent[0], now, cpu
            bar.update(int(round(now - t0)) - bar.n)
            bar.set_postfix(rss_mib=f"{s['rss_kib'] / 1024:.0f}", plan_hz=f"{s['plan_hz']:.2f}", thr=s["threads"],
                            fds=s["fds"], load=f"{s['load1']:.1f}")
    finally:
        bar.close()
        stop.set()
        pub_thread.join(5)
        stop_node(node_proc, 30.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)

    summary = summarise(samples, args)
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "samples": samples}, indent=1))
    return 0


def summarise(samples: list[dict], args) -> dict:
    warm = args.warmup_min * 60
    ref = [s for s in samples if s["t_s"] <= warm + 1e-6] or samples[:1]
    last_min = [s for s in samples if s["t_s"] > samples[-1]["t_s"] - 60 - 1e-6]

    def hz(group):  # plans over the group's span (samples are consecutive)
        span = group[-1]["t_s"] - (group[0]["t_s"] - args.sample_s)
        return sum(s["plans"] for s in group) / span

    def cpu_ms_per_plan(group):  # the node's own cost per plan: what machine load does not change much
        return 1e3 * sum(s["cpu_s"] for s in group) / max(1, sum(s["plans"] for s in group))

    r0, r1 = ref[-1], samples[-1]
    return {
        "minutes": round(samples[-1]["t_s"] / 60, 2), "camera_hz": args.hz, "image_wh": [args.width, args.height],
        "rss_mib_after_warmup": round(r0["rss_kib"] / 1024, 1), "rss_mib_end": round(r1["rss_kib"] / 1024, 1),
        "rss_mib_max_after_warmup": round(max(s["rss_kib"] for s in samples if s["t_s"] >= r0["t_s"]) / 1024, 1),
        "rss_growth_pct": round(100 * (r1["rss_kib"] - r0["rss_kib"]) / r0["rss_kib"], 2),
        "plan_hz_first_min": round(hz(ref), 3), "plan_hz_last_min": round(hz(last_min), 3),
        "plan_rate_change_pct": round(100 * (hz(last_min) - hz(ref)) / max(hz(ref), 1e-9), 2),
        "cpu_ms_per_plan_first_min": round(cpu_ms_per_plan(ref), 1),
        "cpu_ms_per_plan_last_min": round(cpu_ms_per_plan(last_min), 1),
        "threads": [r0["threads"], r1["threads"]], "fds": [r0["fds"], r1["fds"]],
        "shm_files": [r0["shm_files"], r1["shm_files"]], "shm_mib": [round(r0["shm_bytes"] / 2**20, 1),
                                                                      round(r1["shm_bytes"] / 2**20, 1)],
        "load1_mean": round(float(np.mean([s["load1"] for s in samples])), 2),
        "frames_sent_hz": round(sum(s["frames_sent"] for s in samples) / samples[-1]["t_s"], 2),
    }


if __name__ == "__main__":
    sys.exit(main())
