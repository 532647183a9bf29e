#!/usr/bin/env python3
"""Does the optional MLLM node change the planner's rate or latency?

Starts dima_planner_node (checkpoint: checkpoints/dima_tiny when it exists, else a freshly
initialised tiny_cpu checkpoint of the same architecture, reported as such), feeds it six
synthetic cameras + odometry at a fixed rate over real DDS (loopback only, own domain id),
and measures the /dima/path output rate and the camera-stamp -> Path-received latency in
four phases:
    alone      the planner only
    running    + dima_mllm_node (loaded, generating back to back: min_period 0 by default,
               the worst case; it subscribes to /dima/scene_tokens, so the planner now
               also builds and publishes the tokens every cycle)
    stalled    the MLLM process frozen with SIGSTOP (a reliable subscriber that stops reading)
    killed     the MLLM process after SIGKILL
and prints a table plus the MLLM's own generation latency from its /diagnostics.

    .venv/bin/python tools/bench_mllm_isolation.py [--rate 4 --seconds 20]
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dima_planner.node_process import node_command, start_node, stop_node, wait_while_running
from dima_planner.ros.env import apply_ros_env_defaults, pid_domain_id

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "dima_tiny"))
    p.add_argument("--rate", type=float, default=4.0, help="camera frame rate (Hz)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase (s)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--planner-threads", type=int, default=0, help="planner num_threads (0 = torch default)")
    p.add_argument("--mllm-min-period", type=float, default=0.0)
    p.add_argument("--mllm-max-new-tokens", type=int, default=48)
    p.add_argument("--mllm-threads", type=int, default=1)
    p.add_argument("--mllm-nice", type=int, default=10, help="MLLM generation-thread niceness (0 = none)")
    p.add_argument("--domain-id", type=int, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    domain = args.domain_id if args.domain_id is not None else pid_domain_id(21)
    apply_ros_env_defaults(domain_id=domain)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry, Path as PathMsg
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from dima_msgs.msg import Reasoning
    from dima_planner.data.sample import CAMERAS
    from dima_planner.ros.conversions import ns_to_stamp, rgb_to_image, stamp_to_ns

    ckpt = Path(args.checkpoint)
    tmp = None
    if (ckpt / "model.safetensors").is_file():
        ckpt_note = f"{ckpt} (trained)"
    else:
        import torch

        from dima_planner.checkpoint import save_checkpoint
        from dima_planner.model.config import preset
        from dima_planner.model.planner import VisionPlanner

        tmp = tempfile.TemporaryDirectory(prefix="bench_mllm_")
        torch.manual_seed(0)
        ckpt = save_checkpoint(Path(tmp.name) / "dima_tiny_init", VisionPlanner(preset("tiny_cpu")))
        ckpt_note = f"{args.checkpoint} missing: freshly initialised tiny_cpu checkpoint (same architecture)"
    print(f"planner checkpoint: {ckpt_note}\nROS_DOMAIN_ID={domain}, loopback only", flush=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    logs = Path(tempfile.mkdtemp(prefix="bench_mllm_logs_"))
    planner = start_node(node_command(
        "dima_planner.ros.planner_node", [REPO / "params" / "ros" / "planner.yaml"],
        {"checkpoint": ckpt, "num_threads": args.planner_threads, "warmup_width": args.width,
         "warmup_height": args.height, "extrinsics_source": "rig", "intrinsics_source": "rig"}),
        env, cwd=REPO, log=logs / "planner.log")
    mllm = None

    rclpy.init(domain_id=domain)
    node = rclpy.create_node("dima_bench_mllm_isolation")
    rel = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    img_pub = {c: node.create_publisher(Image, f"/{c.lower()}/image_raw", rel) for c in CAMERAS}
    odom_pub = node.create_publisher(Odometry, "/odom", rel)
    lock = threading.Lock()
    paths: list[tuple[int, int]] = []  # (received wall ns, camera stamp ns)
    reasonings: list[int] = []
    mllm_diag: dict[str, str] = {}

    def on_path(msg):
        with lock:
            paths.append((time.time_ns(), stamp_to_ns(msg.header.stamp)))

    def on_reasoning(msg):
        with lock:
            reasonings.append(time.time_ns())

    def on_diag(msg):
        for s in msg.status:
            if s.name.startswith("dima_mllm"):
                with lock:
                    mllm_diag.update({kv.key: kv.value for kv in s.values})

    node.create_subscription(PathMsg, "/dima/path", on_path, rel)
    node.create_subscription(Reasoning, "/dima/reasoning", on_reasoning, rel)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, rel)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8) for c in CAMERAS}
    sent: list[int] = []
    stop = threading.Event()

    def feed():
        period = 1.0 / args.rate
        nxt = time.monotonic()
        while not stop.is_set():
            stamp = time.time_ns()
            odom = Odometry(header=Header(stamp=ns_to_stamp(stamp), frame_id="map"), child_frame_id="base_link")
            odom.pose.pose.position.x = 5.0 * (stamp / 1e9 % 100.0)
            odom.pose.pose.orientation.w = 1.0
            odom.twist.twist.linear.x = 5.0
            odom_pub.publish(odom)
            for c in CAMERAS:
                img_pub[c].publish(rgb_to_image(images[c], ns_to_stamp(stamp), f"{c.lower()}_optical"))
            with lock:
                sent.append(stamp)
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()

    def wait_for(pred, timeout: float, what: str) -> None:
        wait_while_running(pred, {"the planner": planner}, timeout, what, lock, logs)

    def measure(name: str) -> dict:
        with lock:
            t0 = time.time_ns()
            n_paths0 = len(paths)
            n_sent0 = len(sent)
            n_reason0 = len(reasonings)
        time.sleep(args.seconds)
        with lock:
            t1 = time.time_ns()
            got = [(r, s) for r, s in paths[n_paths0:] if s >= t0]
            n_sent = len(sent) - n_sent0
            n_reason = len(reasonings) - n_reason0
        lat = np.array([(r - s) / 1e6 for r, s in got])
        dur = (t1 - t0) / 1e9
        row = {"phase": name, "sent": n_sent, "paths": len(got), "rate": len(got) / dur,
               "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
               "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
               "max": float(lat.max()) if len(lat) else float("nan"), "reasoning": n_reason}
        print(f"  {name}: {row['paths']} paths / {n_sent} frames, p50 {row['p50']:.1f} ms", flush=True)
        return row

    rows = []
    try:
        wait_for(lambda: len(paths) >= 3, 180, "the planner's first paths")
        time.sleep(3.0)
        rows.append(measure("alone"))

        menv = dict(env, OMP_NUM_THREADS=str(max(args.mllm_threads, 1)))
        mllm = start_node(node_command(
            "dima_planner.ros.mllm_node", [REPO / "params" / "ros" / "mllm.yaml"],
            {"min_period": args.mllm_min_period, "max_new_tokens": args.mllm_max_new_tokens,
             "num_threads": args.mllm_threads, "nice": args.mllm_nice}), menv, cwd=REPO, log=logs / "mllm.log")
        wait_for(lambda: len(reasonings) >= 1, 180, "the MLLM node's first reasoning")
        rows.append(measure("running"))
        with lock:
            gen = (mllm_diag.get("generation_latency_p50_ms"), mllm_diag.get("generation_latency_p99_ms"),
                   mllm_diag.get("generations"), mllm_diag.get("dropped.busy"), mllm_diag.get("scenes_received"))

        os.kill(mllm.pid, signal.SIGSTOP)
        time.sleep(1.0)
        rows.append(measure("stalled"))
        os.kill(mllm.pid, signal.SIGKILL)
        mllm.wait(10)
        time.sleep(1.0)
        rows.append(measure("killed"))
    finally:
        stop.set()
        feeder.join(2)
        if mllm is not None and mllm.poll() is None:
            os.kill(mllm.pid, signal.SIGCONT)
            mllm.kill()
        planner_alive = planner.poll() is None
        stop_node(planner, 15.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        if tmp is not None:
            tmp.cleanup()

    print(f"\nplanner /dima/path at {args.rate:g} Hz input, {args.width}x{args.height} images, "
          f"{args.seconds:g} s per phase ({os.cpu_count()} CPU cores); latency = camera stamp -> Path received")
    print(f"{'phase':<9} {'frames':>6} {'paths':>6} {'rate Hz':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'reasoning':>9}")
    for r in rows:
        print(f"{r['phase']:<9} {r['sent']:>6} {r['paths']:>6} {r['rate']:>8.2f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
              f"{r['max']:>8.1f} {r['reasoning']:>9}")
    if len(rows) >= 2:
        print(f"\nMLLM generation ({args.mllm_max_new_tokens} new tokens, {args.mllm_threads} torch thread(s), nice "
              f"{args.mllm_nice}): "
              f"p50 {gen[0]} ms, p99 {gen[1]} ms; {gen[2]} generations, {gen[3]} scenes dropped while busy "
              f"of {gen[4]} received")
    print(f"planner still running at the end: {planner_alive}; logs: {logs}")
    return 0 if planner_alive and len(rows) == 4 else 1


if __name__ == "__main__":
    sys.exit(main())
