"""`dima bag play`: replay a rosbag2 (MCAP) through rclpy with the recorded timing.

Messages are published as the recorded CDR bytes (`Publisher.publish(bytes)` ->
rcl_publish_serialized_message), so nothing is deserialised per message and six 1600x900
rgb8 cameras at 12 Hz replay at full rate. Publishers use the recorded offered QoS
(reliability and durability; /tf_static is transient local so late joiners get it).
`--clock HZ` publishes /clock (playback time) for nodes running with use_sim_time.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dima_planner.bags import bag_io
from dima_planner.ros.env import apply_ros_env_defaults, discovery_note
from ..bags.bag_salvage import BagDamagedError, open_bag, read_messages

DEFAULT_DEPTH = 10


def message_class(typename: str):
    """rclpy message class for 'pkg/msg/Type'."""
    pkg, kind, name = typename.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError):
        raise RuntimeError(f"message type {typename} is not available to rclpy "
                           f"(is the {pkg} package built and on the path?)") from None


def parse_remaps(remaps: list[str] | None) -> dict[str, str]:
    out = {}
    for r in remaps or []:
        if ":=" not in r:
            raise ValueError(f"bad --remap {r!r}: expected old:=new")
        old, new = r.split(":=", 1)
        if not old.startswith("/") or not new.startswith("/"):
            raise ValueError(f"bad --remap {r!r}: topic names must be absolute")
        out[old] = new
    return out


def qos_from_recorded(profiles, transient_depth: int, depth: int):
    """rclpy QoSProfile from the recorded offered profiles (rosbags Qos objects)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosbags.interfaces import QosDurability, QosReliability

    reliable = True
    transient = False
    if profiles:
        # Like rosbag2: reliable only if every recorded publisher offered reliable;
        # transient local only if every one offered it.
        reliable = all(p.reliability != QosReliability.BEST_EFFORT for p in profiles)
        transient = all(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(1, transient_depth if transient else depth),
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    bag_seconds: float = 0.0
    max_lateness: float = 0.0  # seconds a message went out after its scheduled wall time
    loops: int = 0

    def summary(self) -> str:
        lines = [f"played {sum(self.published.values())} messages in {self.wall_seconds:.2f} s wall "
                 f"({self.bag_seconds:.2f} s of bag, {self.loops} pass(es)), max lateness "
                 f"{self.max_lateness * 1e3:.1f} ms"]
        for topic, n in sorted(self.published.items()):
            rate = n / self.wall_seconds if self.wall_seconds > 0 else float("nan")
            lines.append(f"  {topic:40s} {n:7d}  {rate:8.2f} msg/s")
        return "\n".join(lines)


class BagPlayer:
    """Publishes a bag's messages on an rclpy node at recorded timing (scaled by `rate`)."""

    def __init__(self, node, bag: str | Path, topics: list[str] | None = None, remap: dict[str, str] | None = None,
                 rate: float = 1.0, start_offset: float = 0.0, loop: bool = False, clock_hz: float = 0.0,
                 depth: int = DEFAULT_DEPTH):
        if rate <= 0:
            raise ValueError(f"--rate must be > 0, got {rate}")
        if start_offset < 0:
            raise ValueError(f"--start-offset must be >= 0, got {start_offset}")
        self.node = node
        self.bag = Path(bag)
        if not (self.bag / "metadata.yaml").is_file():
            raise FileNotFoundError(f"{self.bag} is not a rosbag2 directory (no metadata.yaml)")
        self.reader = open_bag(self.bag)  # a damaged MCAP: its intact messages (play raises the damage after them)
        self.rate, self.start_offset, self.loop, self.clock_hz = rate, start_offset, loop, clock_hz
        remap = remap or {}
        available = {c.topic for c in self.reader.connections}
        if topics:
            unknown = sorted(set(topics) - available)
            if unknown:
                raise ValueError(f"topic(s) {unknown} not in {self.bag} (it has {sorted(available)})")
        self.connections = [c for c in self.reader.connections if not topics or c.topic in topics]
        self.publishers = {}
        self.out_topic = {}
        counts: dict[str, int] = {}
        for c in self.reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        for c in self.connections:
            out = remap.get(c.topic, c.topic)
            self.out_topic[c.id] = out
            if out not in self.publishers:
                qos = qos_from_recorded(c.ext.offered_qos_profiles, transient_depth=counts[c.topic], depth=depth)
                self.publishers[out] = node.create_publisher(message_class(c.msgtype), out, qos)
        self.clock_pub = None
        if clock_hz > 0:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            # /clock is renamed like a recorded topic (`--remap /clock:=/car1/clock`), as ros2 bag play does.
            self.clock_pub = node.create_publisher(Clock, remap.get(bag_io.CLOCK_TOPIC, bag_io.CLOCK_TOPIC),
                                                   QoSProfile(depth=1))
        self.stats = PlayStats()
        self._stop = threading.Event()
        self._play_time_ns: int | None = None
        # Pacing: `before_publish(topic, raw)` may block (e.g. until a node answered the
        # previous frame); playback time, and /clock with it, stands still meanwhile.
        self.before_publish = None
        self._held_s = 0.0  # wall seconds spent in before_publish, removed from the schedule
        self._hold_since: float | None = None

    def wait_for_subscribers(self, timeout: float) -> bool:
        """Block until every non-latched publisher has a subscriber (or timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self.publishers.values()):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()

    def _clock_loop(self) -> None:
        from rosgraph_msgs.msg import Clock

        period = 1.0 / self.clock_hz
        msg = Clock()
        while not self._stop.is_set():
            t = self._current_bag_time()
            if t is not None:
                msg.clock.sec, msg.clock.nanosec = bag_io.ns_to_sec_nanosec(t)
                self.clock_pub.publish(msg)
            self._stop.wait(period)

    def _current_bag_time(self) -> int | None:
        anchor = self._play_time_ns
        if anchor is None:
            return None
        bag0, wall0 = anchor
        return bag0 + int((self._wall() - wall0) * self.rate * 1e9)

    def _wall(self) -> float:
        """Monotonic time minus the time held by before_publish (frozen while holding)."""
        now = time.monotonic() if self._hold_since is None else self._hold_since
        return now - self._held_s

    def play(self) -> PlayStats:
        """Publish the bag (looping if asked); BagDamagedError after the intact messages of a damaged one."""

        clock_thread = None
        if self.clock_pub is not None:
            clock_thread = threading.Thread(target=self._clock_loop, daemon=True)
            clock_thread.start()
        t_begin = time.monotonic()
        start_ns = self.reader.start_time + int(self.start_offset * 1e9)
        last_ns = start_ns
        try:
            while not self._stop.is_set():
                self.stats.loops += 1
                # Latched topics recorded before the start offset still go out first.
                if self.start_offset > 0:
                    for c, _t, raw in read_messages(self.reader, self.bag, connections=self.connections,
                                                    stop=start_ns):
                        if self.publishers[self.out_topic[c.id]].qos_profile.durability.name == "TRANSIENT_LOCAL":
                            self._publish(c, raw)
                wall0 = self._wall()
                self._play_time_ns = (start_ns, wall0)
                for c, t, raw in read_messages(self.reader, self.bag, connections=self.connections, start=start_ns):
                    if self._stop.is_set():
                        break
                    due = wall0 + (t - start_ns) * 1e-9 / self.rate
                    delay = due - self._wall()
                    if delay > 0:
                        if self._stop.wait(delay):
                            break
                    else:
                        self.stats.max_lateness = max(self.stats.max_lateness, -delay)
                    self._publish(c, raw)
                    last_ns = max(last_ns, t)
                if not self.loop:
                    break
        finally:
            self.stats.wall_seconds = time.monotonic() - t_begin
            self.stats.bag_seconds = (last_ns - start_ns) * 1e-9
            self._stop.set()
            if clock_thread is not None:
                clock_thread.join(timeout=1.0)
        return self.stats

    def _publish(self, c, raw) -> None:
        topic = self.out_topic[c.id]
        if self.before_publish is not None:
            self._hold_since = time.monotonic()
            try:
                self.before_publish(topic, raw)
            finally:
                self._held_s += time.monotonic() - self._hold_since
                self._hold_since = None
        self.publishers[topic].publish(bytes(raw))
        self.stats.published[topic] = self.stats.published.get(topic, 0) + 1

    def drain(self, timeout: float = 5.0) -> None:
        """Give reliable subscribers time to acknowledge the last messages."""
        from rclpy.duration import Duration

        for p in self.publishers.values():
            try:
                p.wait_for_all_acked(Duration(seconds=timeout))
            except Exception:  # best-effort publishers have nothing to wait for
                pass

    def close(self) -> None:
        self.reader.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 directory (MCAP)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--start-offset", type=float, default=0.0, help="seconds into the bag to start at")
    parser.add_argument("--loop", action="store_true", help="replay until interrupted")
    parser.add_argument("--clock", type=float, nargs="?", const=100.0, default=0.0, metavar="HZ",
                        help="publish /clock at HZ (default 100 when given without a value)")
    parser.add_argument("--topics", nargs="+", default=None, help="only these recorded topics")
    parser.add_argument("--remap", nargs="+", default=None, metavar="OLD:=NEW", help="rename topics")
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help="history depth of volatile publishers")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SEC",
                        help="wait up to SEC for a subscriber on every played topic before starting")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to sleep before playing (discovery)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: the exported one)")


def run(args: argparse.Namespace) -> int:
    note = discovery_note()
    apply_ros_env_defaults(args.domain_id)
    if note:
        print(f"dima bag play: {note}", file=sys.stderr)
    import rclpy

    try:
        remap = parse_remaps(args.remap)
    except ValueError as exc:
        print(f"dima bag play: error: {exc}", file=sys.stderr)
        return 2
    # Not sys.argv: rcl would take the `--remap old:=new` words for (deprecated) node remap rules.
    rclpy.init(args=[])
    node = rclpy.create_node("dima_bag_player")
    player = None
    try:
        try:
            player = BagPlayer(node, args.bag, topics=args.topics, remap=remap, rate=args.rate,
                               start_offset=args.start_offset, loop=args.loop, clock_hz=args.clock,
                               depth=args.depth)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"dima bag play: error: {exc}", file=sys.stderr)
            return 2
        if args.wait_for_subscribers > 0 and not player.wait_for_subscribers(args.wait_for_subscribers):
            print("dima bag play: warning: not every topic has a subscriber; playing anyway", file=sys.stderr)
        if args.delay > 0:
            time.sleep(args.delay)
        damage = None
        try:
            stats = player.play()
        except KeyboardInterrupt:
            player.stop()
            stats = player.stats
        except BagDamagedError as exc:  # the intact messages before it went out
            damage, stats = exc, player.stats
        player.drain()
        print(stats.summary(), flush=True)
        if damage is not None:
            print(f"dima bag play: error: {damage}", file=sys.stderr)
            return 1
        return 0
    finally:
        if player is not None:
            player.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dima bag play", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
