#!/usr/bin/env python3
"""End-to-end latency of dima_planner_node on a replayed full-resolution rosbag2.

    .venv/bin/python tools/bench_planner_replay.py [--seconds 10] [--compressed] [--phases alone,mllm]

1. Generates a one-scene world at nuScenes' full 1600x900 (params/synth_tiny.yaml with
   scale 1.0, `--seconds` long; reused when it exists with the same config) under --out.
2. Converts it with `dima bag convert` (raw rgb8 images, or JPEG CompressedImage with
   --compressed; keyframes and sweeps, so the six cameras run at 12 Hz).
3. Per phase, starts dima_planner_node as its own process (params/ros/planner.yaml +
   params/ros/replay.yaml: sim time, reliable sensor QoS) with the default checkpoint
   (checkpoints/dima_tiny; if missing, a freshly initialised tiny_cpu checkpoint of the same
   architecture, reported as such), and in phase "mllm" also dima_mllm_node
   (params/ros/mllm.yaml, Dual mode on), then replays the bag with BagPlayer (/clock at
   --clock-hz) at the recorded timing.
4. Measures, per front-camera image:
     e2e latency   wall time the Path for that stamp is received here minus the wall time
                   this process handed the front image with that stamp to DDS.
   Why so: under use_sim_time the stamps and the node clock are bag time, which only
   advances with /clock (published every 1/clock_hz s) and says nothing about wall delay;
   and the player itself may run late on a busy machine. Both events are taken from the
   same monotonic clock in this one process (the publisher and the Path subscriber), keyed
   by the header stamp (identical in the image and in the Path: the node stamps every
   output with the front-camera stamp), so the number is exactly "camera message out ->
   plan back", including DDS transport both ways, sync wait, decode, model and publishing.
   Player lateness (scheduled vs actual publish time) is reported separately.
     rate          Paths received / seconds between the first and last front image.
     drops         front images without a Path, with the node's own reasons from its
                   /diagnostics (dropped.busy = a newer frame replaced an unprocessed one;
                   rejected.* = unusable input).
     model / node  from each PlannedTrajectory: model_latency (forward pass alone) and
                   planner_latency (last input arrival -> publish); node overhead =
                   planner_latency - model_latency (decode, resize/normalise, checks,
                   message building). The node's own node_overhead (its /diagnostics:
                   everything it does minus plan() and the sync wait) is printed too.
Every process uses loopback-only discovery and this script's own ROS_DOMAIN_ID.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dima_planner.node_process import cpu_seconds, node_command, start_node, stop_node, wait_while_running
from dima_planner.bags.bag_io import cdr_stamp_ns
from dima_planner.ros.env import apply_ros_env_defaults, pid_domain_id

REPO = Path(__file__).resolve().parents[1]

FRONT_TOPICS = ("/cam_front/image_raw", "/cam_front/image_raw/compressed")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "out" / "bench"), help="world, bags and logs go here")
    p.add_argument("--seconds", type=float, default=10.0, help="scene length (s)")
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "dima_tiny"))
    p.add_argument("--compressed", action="store_true", help="replay JPEG CompressedImage instead of raw rgb8")
    p.add_argument("--phases", default="alone,mllm", help="comma list of: alone, mllm")
    p.add_argument("--rate", type=float, default=1.0, help="replay rate (1 = recorded timing)")
    p.add_argument("--clock-hz", type=float, default=100.0)
    p.add_argument("--planner-threads", type=int, default=1, help="planner num_threads (0 = torch default)")
    p.add_argument("--device", default="cpu", help="planner device (cpu, cuda, ...)")
    p.add_argument("--precision", default="fp32", help="planner precision (fp32, fp16, bf16)")
    p.add_argument("--backend", default="torch", help="planner backend (torch, onnxruntime, tensorrt): the "
                   "checkpoint must hold the exported graph (dima export --onnx / --tensorrt)")
    p.add_argument("--mllm-min-period", type=float, default=None, help="override mllm.yaml min_period")
    p.add_argument("--domain-id", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--node-repo", default=None, help="run the planner node of another checkout (its .venv and "
                   "source), e.g. main, for an A/B in one sitting")
    return p.parse_args(argv)


def make_world(out: Path, seconds: float) -> tuple[Path, str]:
    from dima_planner.config import load_yaml
    from dima_planner.synth.config import SynthConfig
    from dima_planner.synth.generate import generate

    cfg = load_yaml(SynthConfig, REPO / "params" / "synth_tiny.yaml")
    cfg = dataclasses.replace(cfg, scale=1.0, num_scenes=1, scene_seconds=seconds, scenarios=("turn_left",),
                              val_fraction=0.0)
    root = generate(cfg, out / "world", progress=True)
    scenes = json.loads((root / cfg.version / "scene.json").read_text())
    return root, scenes[0]["name"]


def make_bag(world: Path, scene: str, out: Path, compressed: bool) -> Path:
    from dima_planner.bags import bag_convert

    bag = out / ("bag_compressed" if compressed else "bag_raw")
    stamp = out / (bag.name + ".source")
    source = f"{(world / 'dima_meta.json').read_text()}|{scene}"
    if (bag / "metadata.yaml").is_file() and stamp.is_file() and stamp.read_text() == source:
        return bag
    bag_convert.convert(world, bag, scenes=[scene], compressed=compressed, overwrite=True, progress=True)
    stamp.write_text(source)
    return bag


def checkpoint_for(path: str, tmp_root: Path) -> tuple[Path, str]:
    ckpt = Path(path)
    if (ckpt / "model.safetensors").is_file():
        return ckpt.resolve(), f"{ckpt} (trained)"
    import torch

    from dima_planner.checkpoint import save_checkpoint
    from dima_planner.model.config import preset
    from dima_planner.model.planner import VisionPlanner

    torch.manual_seed(0)
    made = save_checkpoint(tmp_root / "dima_tiny_init", VisionPlanner(preset("tiny_cpu")))
    return made, f"{ckpt} missing: freshly initialised tiny_cpu checkpoint (same architecture)"


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run_phase(name: str, args, bag: Path, ckpt: Path, domain: int, logs: Path) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Path as PathMsg
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from dima_msgs.msg import PlannedTrajectory, Reasoning
    from dima_planner.ros.bag_play import BagPlayer
    from dima_planner.ros.conversions import stamp_to_ns

    node_repo = Path(args.node_repo).resolve() if args.node_repo else REPO
    python = node_repo / ".venv" / "bin" / "python" if args.node_repo else Path(sys.executable)
    env = dict(os.environ, PYTHONUNBUFFERED="1", ROS_DOMAIN_ID=str(domain),
               PYTHONPATH=str(node_repo / "ros2_ws" / "src" / "dima_planner"))
    ros = node_repo / "params" / "ros"
    over = {"checkpoint": ckpt, "num_threads": args.planner_threads}
    if args.device != "cpu":  # only when asked: an older node may not know these parameters
        over["device"] = args.device
    if args.precision != "fp32":
        over["precision"] = args.precision
    if args.backend != "torch":
        over["backend"] = args.backend
    if args.compressed:
        from dima_planner.data.sample import CAMERAS

        for c in CAMERAS:
            over |= {f"cameras.{c}.transport": "compressed", f"cameras.{c}.topic": f"/{c.lower()}/image_raw/compressed"}
    pcmd = node_command("dima_planner.ros.planner_node", [ros / "planner.yaml", ros / "replay.yaml"], over, python)
    procs = {"planner": start_node(pcmd, env, cwd=node_repo, log=logs / f"{name}_planner.log")}
    if name == "mllm":
        mover = {"dual_mode": "true"}
        if args.mllm_min_period is not None:
            mover["min_period"] = args.mllm_min_period
        mcmd = node_command("dima_planner.ros.mllm_node", [ros / "mllm.yaml"], mover)
        procs["mllm"] = start_node(mcmd, dict(env, OMP_NUM_THREADS="1"), cwd=REPO, log=logs / f"{name}_mllm.log")

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node(f"dima_bench_replay_{name}", context=context)
    rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    lock = threading.Lock()
    path_recv: dict[int, float] = {}
    trajs: dict[int, tuple[float, float]] = {}
    diag: dict[str, dict[str, str]] = {}
    diag_msg: dict[str, str] = {}
    reasonings: list[float] = []
    mllm_trajs: list[int] = []

    def on_path(msg):
        t = time.monotonic()
        with lock:
            path_recv.setdefault(stamp_to_ns(msg.header.stamp), t)

    def on_traj(msg):
        with lock:
            trajs[stamp_to_ns(msg.header.stamp)] = (float(msg.planner_latency), float(msg.model_latency))

    def on_diag(msg):
        with lock:
            for s in msg.status:
                diag[s.name] = {kv.key: kv.value for kv in s.values}
                diag_msg[s.name] = s.message

    node.create_subscription(PathMsg, "/dima/path", on_path, rel)
    node.create_subscription(PlannedTrajectory, "/dima/trajectory", on_traj, rel)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, rel)
    node.create_subscription(Reasoning, "/dima/reasoning", lambda m: reasonings.append(time.monotonic()), rel)
    node.create_subscription(PlannedTrajectory, "/dima/mllm/trajectory",
                             lambda m: mllm_trajs.append(stamp_to_ns(m.header.stamp)), rel)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    def wait_for(pred, timeout: float, what: str) -> None:
        wait_while_running(pred, procs, timeout, what, lock, logs)

    pub_wall: dict[int, float] = {}
    try:
        wait_for(lambda: diag_msg.get("/dima_planner: model", "").startswith("loaded (active)"), 240,
                 "the planner to load and activate")
        if name == "mllm":
            wait_for(lambda: diag.get("/dima_mllm: model", {}).get("loaded") == "True", 240, "the MLLM to load")

        from rosbags.rosbag2 import Reader

        with Reader(bag) as r:
            topics = sorted({c.topic for c in r.connections if not c.topic.startswith("/dima/gt/")})

        class TimedPlayer(BagPlayer):
            def _publish(self, c, raw) -> None:
                topic = self.out_topic[c.id]
                if topic in FRONT_TOPICS:
                    pub_wall[cdr_stamp_ns(raw)] = time.monotonic()
                super()._publish(c, raw)

        player = TimedPlayer(node, bag, topics=topics, rate=args.rate, clock_hz=args.clock_hz)
        # /tf and the like have no subscriber in this setup: wait only for what the planner reads.
        needed = [pub for t, pub in player.publishers.items() if t != "/tf"]
        deadline = time.monotonic() + 30.0
        while not all(pub.get_subscription_count() > 0 for pub in needed) and time.monotonic() < deadline:
            time.sleep(0.05)
        if time.monotonic() >= deadline:
            print("  warning: a replayed topic the planner reads has no subscriber after 30 s", flush=True)
        time.sleep(1.0)  # let the planner's reliable readers match every writer
        with lock:
            diag_before = dict(diag.get("/dima_planner: planning", {}))
        cpu_before = cpu_seconds(procs["planner"].pid)
        stats = player.play()
        player.drain(5.0)
        # Plans for the last frames: wait until no Path arrived for 3 s.
        last = -1
        while True:
            time.sleep(3.0)
            with lock:
                n = len(path_recv)
            if n == last:
                break
            last = n
        cpu_used = cpu_seconds(procs["planner"].pid) - cpu_before  # replay + the last plans
        time.sleep(1.5)  # one more /diagnostics period
        player.close()
        with lock:
            planning = dict(diag.get("/dima_planner: planning", {}))
            mllm_diag = dict(diag.get("dima_mllm: reasoning", {}))
            recv = dict(path_recv)
            traj = dict(trajs)
    finally:
        for p in procs.values():
            stop_node(p, 20.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    stamps = sorted(pub_wall)
    lat = np.array([(recv[s] - pub_wall[s]) * 1e3 for s in stamps if s in recv])
    span = pub_wall[stamps[-1]] - pub_wall[stamps[0]] if len(stamps) > 1 else float("nan")
    tr = [traj[s] for s in stamps if s in traj]
    planner_ms = np.array([t[0] * 1e3 for t in tr])
    model_ms = np.array([t[1] * 1e3 for t in tr])
    drops = {k: int(v) - int(diag_before.get(k, 0)) for k, v in planning.items()
             if k.startswith(("dropped.", "rejected.", "degraded.")) and int(v) - int(diag_before.get(k, 0))}
    return {
        "phase": name, "node_repo": str(node_repo), "front_images": len(stamps), "paths": int(len(lat)), "rate_hz": len(lat) / span,
        "input_hz": (len(stamps) - 1) / span, "e2e_p50_ms": pct(lat, 50), "e2e_p99_ms": pct(lat, 99),
        "e2e_max_ms": float(lat.max()) if len(lat) else float("nan"),
        "model_p50_ms": pct(model_ms, 50), "model_p99_ms": pct(model_ms, 99),
        "planner_p50_ms": pct(planner_ms, 50), "planner_p99_ms": pct(planner_ms, 99),
        "overhead_p50_ms": pct(planner_ms - model_ms, 50), "overhead_p99_ms": pct(planner_ms - model_ms, 99),
        "node_overhead_diag_p50_ms": planning.get("node_overhead_p50_ms"),
        "node_overhead_diag_p99_ms": planning.get("node_overhead_p99_ms"),
        "drops": len(stamps) - int(len(lat)), "drop_reasons": drops,
        # CPU seconds the node process used while the bag played (all its threads), per front
        # image and as cores: a load-robust cost measure on a shared machine
        "node_cpu_s": cpu_used, "node_cpu_ms_per_front": 1e3 * cpu_used / max(len(stamps), 1),
        "node_cpu_cores": cpu_used / max(stats.wall_seconds, 1e-9),
        "player_max_lateness_ms": stats.max_lateness * 1e3, "player_wall_s": stats.wall_seconds,
        "reasonings": len(reasonings), "mllm_trajectories": len(mllm_trajs),
        "mllm_generation_p50_ms": mllm_diag.get("generation_latency_p50_ms"),
        "mllm_dual_pooled": mllm_diag.get("dual.pooled_with_planner"),
        "mllm_dropped_busy": mllm_diag.get("dropped.busy"),
        "mllm_skipped_min_period": mllm_diag.get("skipped.min_period"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    domain = args.domain_id if args.domain_id is not None else pid_domain_id(31)
    apply_ros_env_defaults(domain_id=domain)  # before any rclpy.init: loopback only, own domain
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [p for p in phases if p not in ("alone", "mllm")]
    if bad:
        print(f"unknown phase(s) {bad}; use alone, mllm", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="logs_", dir=out))
    tmp = tempfile.TemporaryDirectory(prefix="bench_ckpt_")
    world, scene = make_world(out, args.seconds)
    bag = make_bag(world, scene, out, args.compressed)
    ckpt, note = checkpoint_for(args.checkpoint, Path(tmp.name))
    load = os.getloadavg()
    print(f"world {world} ({scene}, 1600x900), bag {bag} ({'compressed' if args.compressed else 'rgb8'})\n"
          f"planner checkpoint: {note}\nROS_DOMAIN_ID={domain}, loopback only; {os.cpu_count()} CPU cores, "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows = []
    try:
        for ph in phases:
            print(f"phase {ph} ...", flush=True)
            rows.append(run_phase(ph, args, bag, ckpt, domain, logs))
            r = rows[-1]
            print(f"  {r['paths']}/{r['front_images']} planned, e2e p50 {r['e2e_p50_ms']:.0f} ms", flush=True)
    finally:
        tmp.cleanup()
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; logs: {logs}")
    hdr = (f"{'phase':<6} {'in Hz':>6} {'fronts':>6} {'paths':>5} {'plan Hz':>7} {'drops':>5} {'e2e p50':>8} "
           f"{'e2e p99':>8} {'model p50':>9} {'model p99':>9} {'ovh p50':>8} {'ovh p99':>8} {'late max':>8}")
    print(hdr)
    for r in rows:
        print(f"{r['phase']:<6} {r['input_hz']:>6.1f} {r['front_images']:>6} {r['paths']:>5} {r['rate_hz']:>7.2f} "
              f"{r['drops']:>5} {r['e2e_p50_ms']:>8.0f} {r['e2e_p99_ms']:>8.0f} {r['model_p50_ms']:>9.0f} "
              f"{r['model_p99_ms']:>9.0f} {r['overhead_p50_ms']:>8.0f} {r['overhead_p99_ms']:>8.0f} "
              f"{r['player_max_lateness_ms']:>8.0f}")
    for r in rows:
        print(f"{r['phase']}: drop reasons {r['drop_reasons'] or 'none'}; node_overhead (diagnostics) p50 "
              f"{r['node_overhead_diag_p50_ms']} ms p99 {r['node_overhead_diag_p99_ms']} ms; node CPU "
              f"{r['node_cpu_ms_per_front']:.0f} ms per front image ({r['node_cpu_cores']:.2f} cores)")
        if r["phase"] == "mllm":
            print(f"mllm: {r['reasonings']} reasonings, {r['mllm_trajectories']} Dual trajectories "
                  f"({r['mllm_dual_pooled']} pooled with the planner feature), generation p50 "
                  f"{r['mllm_generation_p50_ms']} ms, dropped busy {r['mllm_dropped_busy']}, skipped by "
                  f"min_period {r['mllm_skipped_min_period']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "checkpoint": note, "bag": str(bag)}, indent=2))
    return 0 if rows and all(r["paths"] > 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
