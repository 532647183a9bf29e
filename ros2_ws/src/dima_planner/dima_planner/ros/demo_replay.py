"""`dima demo`'s replay: the scene bags played into the running planner (and MLLM) node with
original timing and /clock, paced on the node's answers, and the node's outputs recorded."""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from dima_msgs.msg import PlannedTrajectory

from ..bags import bag_io
from .bag_play import BagPlayer
from .bag_record import TopicRecorder
from .node_process import NodeProcess, wait_ready


class FrameOutcomes:
    """The planner node's answer to each replayed front image: a plan (/dima/trajectory with
    its stamp) or a skip (a rejected.* counter of /diagnostics going up, with last_rejection
    as the reason). `before_publish` is BagPlayer's pacing hook: the next front image waits
    until the previous one was answered, with playback time (and /clock) standing still."""

    def __init__(self, node, front_topic: str, timeout: float):
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
        self.settle()
        with self._cond:
            self._pending = (bag_io.cdr_stamp_ns(raw), self._rejected)

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


def replay_into_nodes(cfg, bags: list[Path], run_bag: Path, console, path: Callable[[str], Path]) -> dict:
    """Start the nodes of `cfg` (dima demo's DemoConfig), replay the scene bags into them and
    record their outputs into `run_bag`. `path` resolves the config's relative paths."""
    out = path(cfg.out)
    rclpy.init()
    node = rclpy.create_node("dima_demo")
    procs: dict[str, NodeProcess] = {}
    try:
        procs["dima_planner"] = NodeProcess("dima_planner_node", [path(p) for p in cfg.node_params],
                                            {"checkpoint": path(cfg.checkpoint)}, out / "planner_node.log")
        if cfg.with_mllm:
            overrides = {"checkpoint": path(cfg.mllm_checkpoint)} if cfg.mllm_checkpoint else {}
            procs["dima_mllm"] = NodeProcess("dima_mllm_node", [path(p) for p in cfg.mllm_params], overrides,
                                             out / "mllm_node.log")
        with console.status(f"starting {', '.join(p.name for p in procs.values())} (loading the models)"):
            wait_ready(node, procs, cfg.node_ready_timeout)
        topics = {bag_io.TRAJECTORY_TOPIC: "dima_msgs/msg/PlannedTrajectory", bag_io.PATH_TOPIC: "nav_msgs/msg/Path"}
        if cfg.with_mllm:
            topics[bag_io.REASONING_TOPIC] = "dima_msgs/msg/Reasoning"
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
