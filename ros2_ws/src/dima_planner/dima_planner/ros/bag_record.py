"""`dima bag record` / TopicRecorder: subscribe with rclpy and write a rosbag2 (MCAP) with rosbags.

Subscriptions are raw (`create_subscription(..., raw=True)`): the serialized CDR bytes go
straight into the bag, nothing is deserialised. Record time is the node clock at
reception (sim time when the node uses /clock). Used by the demo to record the planner
node's outputs for `dima bag eval`.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from dima_planner.bags import bag_io
from dima_planner.ros.env import apply_ros_env_defaults, discovery_note


class TopicRecorder:
    """Records `topics` ({name: 'pkg/msg/Type'}, or names resolved from the graph) into `out`.

    Writes happen in the subscription callbacks; spin the node with a single-threaded
    executor (rosbags' Writer is not thread-safe). Call close() to finish the bag.
    """

    def __init__(self, node, out: str | Path, topics: dict[str, str] | list[str], discovery_timeout: float = 5.0,
                 depth: int = 100, compression: str = "zstd"):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from dima_planner.ros.bag_play import message_class

        self.node = node
        self.out = Path(out)
        if self.out.exists():
            raise FileExistsError(f"output {self.out} already exists")
        if not isinstance(topics, dict):
            topics = self._resolve_types(list(topics), discovery_timeout)
        self.store = bag_io.make_typestore()
        unknown = [t for t in topics.values() if t not in self.store.types]
        if unknown:
            raise ValueError(f"no message definition for {unknown} (not in the ROS store or dima_msgs)")
        self.writer = bag_io.open_writer(self.out, compression)
        self.writer.open()
        self._lock = threading.Lock()
        self.failed: OSError | None = None  # the write error that stopped the recording
        self.counts: dict[str, int] = {}
        self._subs = []
        for topic, typename in topics.items():
            latched = topic == bag_io.TF_STATIC_TOPIC
            conn = self.writer.add_connection(topic, typename, typestore=self.store,
                                              offered_qos_profiles=[bag_io.recorded_qos(transient_local=latched)])
            qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
            self.counts[topic] = 0
            self._subs.append(node.create_subscription(
                message_class(typename), topic, lambda raw, c=conn, t=topic: self._on_msg(c, t, raw), qos, raw=True))

    def _resolve_types(self, topics: list[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            graph = dict(self.node.get_topic_names_and_types())
            missing = [t for t in topics if t not in graph]
            if not missing:
                return {t: graph[t][0] for t in topics}
            if time.monotonic() > deadline:
                raise ValueError(f"cannot resolve the type of {missing}: no publisher seen within {timeout} s; "
                                 "pass TOPIC:=pkg/msg/Type")
            time.sleep(0.1)

    def _on_msg(self, conn, topic: str, raw: bytes) -> None:
        t = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self.writer is None or self.failed is not None:
                return
            try:
                self.writer.write(conn, t, raw)
            except OSError as exc:  # disk full (ENOSPC), file size limit (EFBIG), I/O error
                self.failed = exc
                self.node.get_logger().error(f"recording stopped: cannot write {self.out}: {exc}")
                return
            self.counts[topic] += 1

    def close(self) -> dict[str, int]:
        with self._lock:
            for s in self._subs:
                self.node.destroy_subscription(s)
            self._subs = []
            if self.writer is not None:
                try:
                    self.writer.close()
                except OSError as exc:
                    self.failed = self.failed or exc
                    self._close_unfinished()
                self.writer = None
        return dict(self.counts)

    def _close_unfinished(self) -> None:
        """The MCAP file cannot take its summary and footer (the disk is full): leave it as it is,
        complete up to its last whole chunk, and still write metadata.yaml (a small file beside
        it) so that the readers find the bag; they read it up to the damage (bag_salvage)."""
        storage = self.writer.storage
        if storage is None:  # the storage was finished; only metadata.yaml failed
            return

        class Unfinished:  # stands in for the storage rosbags would finish
            path = storage.path

            def close(self, version, metadata) -> None:
                pass

        self.writer.storage = Unfinished()
        try:
            self.writer.close()
        except OSError as exc:
            self.node.get_logger().error(f"cannot write {self.out / 'metadata.yaml'} either: {exc}")


def parse_topics(items: list[str]) -> dict[str, str] | list[str]:
    """['/a', '/b:=pkg/msg/T'] -> list of names, or {name: type} when every type is given."""
    typed = {}
    names = []
    for it in items:
        if ":=" in it:
            name, typename = it.split(":=", 1)
            typed[name] = typename
        names.append(it.split(":=", 1)[0])
    return typed if len(typed) == len(names) else names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="rosbag2 directory to create")
    parser.add_argument("--topics", nargs="+", required=True, metavar="TOPIC[:=pkg/msg/Type]")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to record (0: until Ctrl-C)")
    parser.add_argument("--use-sim-time", action="store_true", help="stamp record times with /clock")
    parser.add_argument("--compression", choices=bag_io.COMPRESSIONS, default="zstd",
                        help="MCAP chunk compression (default zstd, as ros2 bag record)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: the exported one)")


def run(args: argparse.Namespace) -> int:
    note = discovery_note()
    apply_ros_env_defaults(args.domain_id)
    if note:
        print(f"dima bag record: {note}", file=sys.stderr)
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.parameter import Parameter

    # Not sys.argv: rcl would take the TOPIC:=pkg/msg/Type arguments for remap rules.
    rclpy.init(args=[sys.argv[0]])
    node = rclpy.create_node("dima_bag_recorder",
                             parameter_overrides=[Parameter("use_sim_time", value=bool(args.use_sim_time))])
    rec = None
    try:
        try:
            rec = TopicRecorder(node, args.out, parse_topics(args.topics), compression=args.compression)
        except (FileExistsError, ValueError, RuntimeError) as exc:
            print(f"dima bag record: error: {exc}", file=sys.stderr)
            return 2
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        end = time.monotonic() + args.duration if args.duration > 0 else None
        try:
            while rclpy.ok() and (end is None or time.monotonic() < end) and rec.failed is None:
                ex.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass  # Ctrl-C (rclpy's signal handler shuts the context down first): finish the bag
        counts = rec.close()
        print(f"recorded {sum(counts.values())} messages into {args.out}")
        for topic, n in sorted(counts.items()):
            print(f"  {topic:40s} {n}")
        if rec.failed is not None:
            print(f"dima bag record: error: recording stopped, cannot write {args.out}: {rec.failed}; the bag is "
                  "readable up to its last complete chunk", file=sys.stderr)
            return 1
        return 0
    finally:
        if rec is not None and rec.writer is not None:
            rec.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dima bag record", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
