"""`dima demo`: the main job, end to end through real ROS 2 processes.

1. generate the embedded nuScenes-format world (or reuse it);
2. convert each validation scene to a rosbag2 (MCAP, JPEG cameras at 12 Hz, GT topics);
3. start `dima_planner_node` as its own process with the default checkpoint;
4. replay the bags into it with original timing and `/clock`, recording what it publishes;
   the replay is paced on the node: before the next front image goes out, the node has
   planned the previous one or said (in /diagnostics) why not, so every keyframe is planned
   however slow the machine; a keyframe without a plan is listed with the node's reason
   and fails the demo;
5. score the node's plans (VAD convention) next to the constant-velocity and ego-status
   MLP baselines on the same keyframes, print the table and write PNG figures.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .config import add_set_argument, load_yaml, parse_overrides
from .node_process import node_command, start_node, stop_node

REPO = Path(__file__).resolve().parents[4]
REASONING_TOPIC = "/dima/reasoning"
# The demo is the project's own self-contained run: where the user exported no ROS_DOMAIN_ID
# it keeps to this one, away from the default domain (0) of the user's other ROS work.
DEMO_DOMAIN_ID = 42


@dataclass
class DemoConfig:
    synth_config: str = "params/synth.yaml"
    world: str = "data/world"
    checkpoint: str = "checkpoints/dima_tiny_stage2"
    out: str = "out/demo"
    split: str = "val"
    max_scenes: int = 3  # validation scenes replayed through the node
    rate: float = 1.0  # playback speed
    # Keyframes only (2 Hz cameras): every replayed front image has ground truth. On a
    # 2-core CPU the node plans at ~4 Hz, so at 12 Hz it would skip most keyframes;
    # BENCHMARKS.md measures the 12 Hz load. Set false on a GPU machine.
    keyframes_only: bool = True
    node_params: list[str] = field(default_factory=lambda: [
        "params/ros/planner.yaml", "params/ros/replay.yaml", "params/ros/demo.yaml"])
    node_ready_timeout: float = 180.0
    frame_timeout: float = 20.0  # longest wait for the node's answer to one front image (s)
    domain_id: int | None = None  # None: the user's ROS_DOMAIN_ID, else DEMO_DOMAIN_ID; a number forces it
    with_mllm: bool = True  # start dima_mllm_node beside the planner and print its reasoning
    mllm_params: list[str] = field(default_factory=lambda: ["params/ros/mllm.yaml"])
    mllm_checkpoint: str = ""  # MLLM branch (Q-Formers, LoRA, heads); "" = the untrained branch
    num_reasoning: int = 3
    num_plots: int = 4
    mlp_config: str = "params/eval_mlp.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="params/demo.yaml", help="DemoConfig YAML")
    add_set_argument(parser)


def _path(p: str) -> Path:
    """Config paths are relative to the repository (the demo runs from anywhere)."""
    q = Path(p)
    return q if q.is_absolute() else REPO / q


class NodeProcess:
    """A ROS 2 node's console entry point in its own process, logging to a file."""

    def __init__(self, executable: str, params: list[str], overrides: dict[str, str], log: Path):
        cmd = node_command("", [_path(p) for p in params], overrides,
                           executable=Path(sys.executable).with_name(executable))
        self.name = executable
        self.log = log
        self.proc = start_node(cmd, os.environ, log=log, new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        stop_node(self.proc, 15.0)
        return self.proc.returncode


def _wait_ready(node, procs: dict[str, NodeProcess], timeout: float) -> None:
    """Until every node (by ROS name) reports its model loaded on /diagnostics.

    The planner says "loaded (active)" once configured and activated; the MLLM node says
    "loaded <model id>" once its LLM is in memory.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    waiting = set(procs)

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            name, _, part = st.name.partition(": ")  # fully qualified node name: "/dima_planner: model"
            name = name.lstrip("/")
            if part == "model" and st.level == DiagnosticStatus.OK and st.message.startswith("loaded") \
                    and (name != "dima_planner" or "active" in st.message):
                waiting.discard(name)

    sub = node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    deadline = time.monotonic() + timeout
    while waiting:
        for name in waiting:
            if not procs[name].alive():
                raise RuntimeError(f"{procs[name].name} exited during start-up; see {procs[name].log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(sorted(waiting))} not ready within {timeout:.0f} s; "
                               f"see the logs in {_path('out')}")
        rclpy.spin_once(node, timeout_sec=0.2)
    node.destroy_subscription(sub)


class FrameOutcomes:
    """The planner node's answer to each replayed front image: a plan (/dima/trajectory with
    its stamp) or a skip (a rejected.* counter of /diagnostics going up, with last_rejection
    as the reason). `before_publish` is BagPlayer's pacing hook: the next front image waits
    until the previous one was answered, with playback time (and /clock) standing still."""

    def __init__(self, node, front_topic: str, timeout: float):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from dima_msgs.msg import PlannedTrajectory

        from .ros import bag_io

        self.front_topic, self.timeout = front_topic, timeout
        self.planned: set[int] = set()
        self.skipped: dict[int, str] = {}  # front stamp -> the node's reason
        self._cond = threading.Condition()
        self._rejected = 0  # sum of the planning status' rejected.* counters
        self._last_rejection = ""
        self._pending: tuple[int, int] | None = None  # (front stamp, rejected count before it)
        node.create_subscription(PlannedTrajectory, bag_io.TRAJECTORY_TOPIC, self._on_plan,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_plan(self, msg) -> None:
        with self._cond:
            self.planned.add(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
            self._cond.notify_all()

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.name == "/dima_planner: planning":
                values = {kv.key: kv.value for kv in st.values}
                with self._cond:
                    self._rejected = sum(int(v) for k, v in values.items() if k.startswith("rejected."))
                    self._last_rejection = values.get("last_rejection", "")
                    self._cond.notify_all()

    def before_publish(self, topic: str, raw) -> None:
        if topic != self.front_topic:
            return
        from .ros.bag_io import cdr_stamp_ns

        self.settle()
        with self._cond:
            self._pending = (cdr_stamp_ns(raw), self._rejected)

    def settle(self) -> None:
        """Wait for the answer to the front image in flight (if any)."""
        with self._cond:
            if self._pending is None:
                return
            stamp, before = self._pending
            self._cond.wait_for(lambda: stamp in self.planned or self._rejected > before, self.timeout)
            if stamp not in self.planned:
                self.skipped[stamp] = (self._last_rejection if self._rejected > before else
                                       f"no answer from the node within {self.timeout:.0f} s")
            self._pending = None


def _replay(cfg: DemoConfig, bags: list[Path], run_bag: Path, console: Console) -> dict:
    """Replay the scene bags into the running nodes and record their outputs into `run_bag`."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .ros import bag_io
    from .ros.bag_play import BagPlayer
    from .ros.bag_record import TopicRecorder

    out = _path(cfg.out)
    rclpy.init()
    node = rclpy.create_node("dima_demo")
    procs: dict[str, NodeProcess] = {}
    try:
        procs["dima_planner"] = NodeProcess("dima_planner_node", cfg.node_params,
                                            {"checkpoint": _path(cfg.checkpoint)}, out / "planner_node.log")
        if cfg.with_mllm:
            overrides = {"checkpoint": _path(cfg.mllm_checkpoint)} if cfg.mllm_checkpoint else {}
            procs["dima_mllm"] = NodeProcess("dima_mllm_node", cfg.mllm_params, overrides, out / "mllm_node.log")
        with console.status(f"starting {', '.join(p.name for p in procs.values())} (loading the models)"):
            _wait_ready(node, procs, cfg.node_ready_timeout)
        topics = {bag_io.TRAJECTORY_TOPIC: "dima_msgs/msg/PlannedTrajectory", bag_io.PATH_TOPIC: "nav_msgs/msg/Path"}
        if cfg.with_mllm:
            topics[REASONING_TOPIC] = "dima_msgs/msg/Reasoning"
        recorder = TopicRecorder(node, run_bag, topics)
        outcomes = FrameOutcomes(node, bag_io.image_topic(bag_io.CAMERAS_ORDER[0], compressed=True),
                                 cfg.frame_timeout)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        played: dict[str, int] = {}
        for bag in bags:
            player = BagPlayer(node, bag, rate=cfg.rate, clock_hz=100.0)
            player.before_publish = outcomes.before_publish
            player.wait_for_subscribers(10.0)
            console.print(f"  replaying [bold]{bag.name}[/] ({player.reader.duration * 1e-9:.1f} s of data)")
            stats = player.play()
            outcomes.settle()  # the last front image of the bag
            player.drain(5.0)
            player.close()
            for k, v in stats.published.items():
                played[k] = played.get(k, 0) + v
            time.sleep(1.0)  # the node's last plans are still on the wire
        executor.shutdown()
        spinner.join(timeout=5)
        recorded = recorder.close()
        return {"played": played, "recorded": recorded, "skipped": outcomes.skipped}
    finally:
        for p in procs.values():
            code = p.stop()
            if code not in (0, -signal.SIGINT, None):
                console.print(f"[yellow]{p.name} exited with code {code}; log: {p.log}[/]")
        node.destroy_node()
        rclpy.try_shutdown()


def _reasoning(run_bag: Path, limit: int) -> list[dict]:
    """The MLLM node's reasoning messages recorded in `run_bag`."""
    from rosbags.rosbag2 import Reader

    from .ros import bag_io

    store = bag_io.make_typestore()
    out = []
    with Reader(run_bag) as reader:
        conns = [c for c in reader.connections if c.topic == REASONING_TOPIC]
        for c, _t, raw in reader.messages(connections=conns):
            m = store.deserialize_cdr(raw, c.msgtype)
            out.append({"input_stamp": m.input_stamp.sec + m.input_stamp.nanosec * 1e-9,
                        "latency": float(m.latency), "text": m.text, "model_id": m.model_id})
    return out[:limit] if limit else out


def _ego_mlp(cfg: DemoConfig, world: Path, data_cfg: dict, out: Path, console: Console):
    """The ego-status MLP baseline, fitted on the train split once per world and cached."""
    from .eval.baselines import EgoMLPConfig, world_ego_mlp

    return world_ego_mlp(world, out, load_yaml(EgoMLPConfig, _path(cfg.mlp_config)),
                         on_fit=lambda: console.print("  fitting the ego-status MLP baseline on the train split"))


def run(args: argparse.Namespace) -> int:
    from .ros.env import apply_ros_env_defaults

    console = Console(width=max(Console().width, 100))
    cfg = load_yaml(DemoConfig, _path(args.config), parse_overrides(args.set))
    apply_ros_env_defaults(cfg.domain_id, DEMO_DOMAIN_ID)  # loopback-only DDS, own domain, before any rclpy
    out = _path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    # 1. The world.
    from .synth import SynthConfig, generate

    console.rule("[bold]1. embedded nuScenes-format world")
    world = generate(load_yaml(SynthConfig, _path(cfg.synth_config)), _path(cfg.world), progress=True)
    console.print(f"  dataroot {world}")

    # 2. Bags of the validation scenes, one per scene (scenes lie hours apart in time).
    from .data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset
    from .ros.bag_convert import GT_FORMAT, convert, load_nuscenes, select_scenes

    console.rule("[bold]2. validation scenes -> rosbag2 (MCAP)")
    nusc = load_nuscenes(world, None)
    scenes = [s["name"] for s in select_scenes(nusc, world, nusc.version, None, cfg.split)][: cfg.max_scenes]
    bags = []
    for name in scenes:
        bag = out / "bags" / name
        stamp = bag / ".world"
        # Rebuilt when the world, the replay mode or the GT layout changed.
        meta = (world / "dima_meta.json").read_text() + repr((cfg.keyframes_only, GT_FORMAT))
        if not (stamp.exists() and stamp.read_text() == meta):
            convert(world, bag, scenes=[name], compressed=True, keyframes_only=cfg.keyframes_only,
                    overwrite=True, progress=True)
            stamp.write_text(meta)
        bags.append(bag)
    console.print(f"  {len(bags)} bag(s) under {out / 'bags'}: {', '.join(scenes)}")

    # 3-4. The planner node in its own process, fed by the bags.
    console.rule("[bold]3. dima_planner_node" + (" + dima_mllm_node" if cfg.with_mllm else "")
                 + " <- bag replay (real DDS, loopback)")
    run_bag = out / "node_outputs"
    if run_bag.exists():
        import shutil

        shutil.rmtree(run_bag)
    try:
        counts = _replay(cfg, bags, run_bag, console)
    except RuntimeError as e:  # a node failed to start: its log says why
        console.print(f"[red]dima demo: {e}[/]")
        return 1
    console.print(f"  recorded {counts['recorded']} from the node")

    # 5. Scores on the same keyframes.
    console.rule("[bold]4. open-loop planning metrics (VAD convention)")
    from .eval.baselines import ConstantVelocity
    from .eval.evaluate import evaluate
    from .eval.plots import plot_bev, plot_method_bars
    from .ros import bag_eval

    gts, preds = bag_eval.read_bags([*bags, run_bag], bag_eval.bag_io.TRAJECTORY_TOPIC)
    pairs = bag_eval.match(gts, preds, int(1e6))
    node_plans = {g.token: g.lidar_xy(p[:6]) for g, p in pairs if len(p) >= 6}
    if not node_plans:
        console.print(f"[red]the node published no plan matching a keyframe; see {out / 'planner_node.log'}[/]")
        return 1
    data_cfg = dict(dataroot=str(world), version=nusc.version, load_images=False)
    val = NuScenesPlanningDataset(DatasetConfig(split=cfg.split, **data_cfg))
    index = [i for i, t in enumerate(val.tokens) if t in node_plans]
    from torch.utils.data import Subset

    subset = Subset(val, index)
    mlp = _ego_mlp(cfg, world, data_cfg, out, console)
    methods = {
        "DiMA (node)": lambda b: np.stack([node_plans[t] for t in b["token"]]),
        "const. velocity": ConstantVelocity().predict,
        "ego-status MLP": mlp.predict,
    }
    results = {name: evaluate(fn, subset, ("vad", "uniad"), keep_predictions=True) for name, fn in methods.items()}
    bag_check = bag_eval.evaluate([*bags, run_bag])

    console.print(f"  {len(index)} of {len(gts)} keyframes planned by the node, {len(scenes)} val scene(s)")
    planned_stamps = {g.stamp_ns for g, p in pairs if len(p) >= 6}
    unplanned = {stamp: counts["skipped"].get(stamp, "planned, but the plan was not recorded")
                 for stamp in sorted(gts) if stamp not in planned_stamps}
    for stamp, reason in unplanned.items():
        console.print(f"  [red]keyframe {stamp / 1e9:.3f} s ({gts[stamp].token}) not planned: {reason}[/]")
    table = Table(title="open-loop planning, VAD convention")
    for col in ("method", "L2 1s", "L2 2s", "L2 3s", "L2 avg (m)", "col 1s", "col 2s", "col 3s", "col avg (%)"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, res in results.items():
        r = res["vad"]
        table.add_row(name, *[f"{r[k]:.3f}" for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg")],
                      *[f"{100 * r[k]:.2f}" for k in ("col_1s", "col_2s", "col_3s", "col_avg")])
    console.print(table)
    console.print(f"  cross-check, `dima bag eval` on the recorded bag alone: L2 avg {bag_check['l2_avg']:.3f} m, "
                  f"col avg {100 * bag_check['col_avg']:.2f} % over {bag_check['matched']} keyframes")

    reasoning = _reasoning(run_bag, 0) if cfg.with_mllm else []
    if cfg.with_mllm:
        console.rule("[bold]5. dima_mllm_node reasoning (/dima/reasoning)")
        if not reasoning:
            console.print(f"[yellow]  no reasoning was published; see {out / 'mllm_node.log'}[/]")
        for r in reasoning[: cfg.num_reasoning]:
            console.print(f"  [dim]input stamp {r['input_stamp']:.3f} s, latency {r['latency']:.2f} s, "
                          f"{r['model_id']}[/]\n  {r['text'].strip()}")

    preds_by_method = {name: res.pop("predictions") for name, res in results.items()}
    (out / "metrics.json").write_text(json.dumps(
        {"methods": results, "bag_eval": bag_check, "scenes": scenes, "keyframes": len(gts),
         "planned_keyframes": len(index), "unplanned": {str(k): v for k, v in unplanned.items()},
         "replay": {k: v for k, v in counts.items() if k != "skipped"}, "reasoning": reasoning},
        indent=2, default=float))
    plot_method_bars(results, out / "bars_vad.png", "vad")
    shown = 0
    for i in index:
        s = val[i]
        if s.valid and shown < cfg.num_plots:
            plot_bev(s, {n: np.asarray(p[s.token]) for n, p in preds_by_method.items()}, out / f"bev_{shown}.png")
            shown += 1
    console.print(f"  wrote {out / 'metrics.json'}, {out / 'bars_vad.png'} and {shown} BEV figure(s) "
                  f"in {time.monotonic() - t_start:.0f} s")

    from .sim.demo_step import closed_loop_demo

    closed_loop_demo(out, _path(cfg.checkpoint), world, console)
    if unplanned:
        console.print(f"[red]dima demo: {len(unplanned)} of {len(gts)} replayed keyframes were not planned "
                      f"(listed above with the node's reasons)[/]")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima demo", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
