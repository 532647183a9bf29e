"""Damaged bags: `dima bag info/play/eval` on a truncated MCAP give one error naming the file
and the byte offset, play and eval process the intact messages before it; `dima bag record`
stopped by a full disk (RLIMIT_FSIZE on its process) exits cleanly and leaves a bag the
readers read up to its last complete chunk."""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dima_planner.bags import bag_io
from dima_planner.bags.bag_salvage import SalvageReader
from dima_planner.ros.env import apply_ros_env_defaults, pid_domain_id
from test_bag_play_eval import one_scene_bag  # noqa: F401 - a module fixture

pytestmark = pytest.mark.timeout(180)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
OFFSET = re.compile(r"(\S+\.mcap) is truncated or corrupt at byte offset (\d+) of (\d+)")


def truncated_copy(bag: Path, out: Path, fraction: float) -> Path:
    shutil.copytree(bag, out)
    (mcap,) = out.glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * fraction)])
    return out


def one_error(stderr: str) -> re.Match:
    lines = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, stderr
    m = OFFSET.search(lines[0])
    assert m, lines[0]
    return m


def prediction_bag(gt_bag: Path, out: Path) -> None:
    """The GT future of every keyframe as a PlannedTrajectory 1 m to the left (L2 = 1 m)."""
    import numpy as np
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    store = bag_io.make_typestore()
    T = store.types
    with Reader(gt_bag) as r, Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection(bag_io.TRAJECTORY_TOPIC, bag_io.TYPES["trajectory"], typestore=store)
        for c, t, raw in r.messages(connections=[c for c in r.connections if c.topic == bag_io.GT_FUTURE_TOPIC]):
            path = store.deserialize_cdr(raw, c.msgtype)
            if len(path.poses) < 6:
                continue
            poses = [T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](
                x=p.pose.position.x, y=p.pose.position.y + 1.0, z=0.0), orientation=p.pose.orientation)
                for p in path.poses]
            msg = T[bag_io.TYPES["trajectory"]](
                header=path.header, poses=poses, velocity=np.zeros(6, dtype=np.float32), command=2,
                time_from_start=[T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0) for _ in range(6)],
                planner_latency=0.0, model_latency=0.0, model_id="test")
            w.write(conn, t, store.serialize_cdr(msg, bag_io.TYPES["trajectory"]))


def test_info_and_eval_on_a_truncated_bag(one_scene_bag, tmp_path):  # noqa: F811
    bag = truncated_copy(one_scene_bag, tmp_path / "cut", 0.6)
    info = subprocess.run([sys.executable, "-m", "dima_planner.bags.bag_info", str(bag)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 2
    m = one_error(info.stderr)
    assert Path(m[1]) == next(bag.glob("*.mcap")) and 0 < int(m[2]) < int(m[3]) == next(bag.glob("*.mcap")).stat().st_size

    salvage = SalvageReader(bag)
    intact_gt = sum(c.msgcount for c in salvage.connections if c.topic == bag_io.GT_SAMPLE_TOPIC)
    full_gt = sum(c.msgcount for c in SalvageReader(one_scene_bag).connections if c.topic == bag_io.GT_SAMPLE_TOPIC)
    assert 0 < intact_gt < full_gt
    prediction_bag(one_scene_bag, tmp_path / "pred")
    ev = subprocess.run([sys.executable, "-m", "dima_planner.bags.bag_eval", str(bag), str(tmp_path / "pred"),
                         "--json", str(tmp_path / "m.json")], env=ENV, capture_output=True, text=True, timeout=120)
    assert ev.returncode == 1, ev.stderr
    assert one_error(ev.stderr)[2] == m[2]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["gt_keyframes"] == intact_gt  # every intact keyframe, none after the damage
    assert metrics["num_samples"] > 0 and metrics["l2_avg"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.ros
def test_play_publishes_the_intact_messages_then_reports(one_scene_bag, tmp_path):  # noqa: F811
    bag = truncated_copy(one_scene_bag, tmp_path / "cut", 0.5)
    intact = {c.topic: c.msgcount for c in SalvageReader(bag).connections}
    assert 0 < intact["/odom"]
    domain = pid_domain_id(93)
    apply_ros_env_defaults(domain)
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from dima_planner.ros.bag_play import message_class

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("bag_fault_sub", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    got = {"/odom": 0, "/dima/gt/sample": 0}
    rel = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    for t, typ in (("/odom", "nav_msgs/msg/Odometry"), ("/dima/gt/sample", "std_msgs/msg/String")):
        node.create_subscription(message_class(typ), t, lambda _m, t=t: got.__setitem__(t, got[t] + 1), rel)
    cmd = [sys.executable, "-m", "dima_planner.ros.bag_play", str(bag), "--domain-id", str(domain),
           "--topics", *got, "--wait-for-subscribers", "20", "--rate", "4.0", "--depth", "1000"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == 1, out + err
    m = one_error(err)
    assert Path(m[1]).name == next(bag.glob("*.mcap")).name
    assert got == {t: intact[t] for t in got}, (got, intact)


@pytest.mark.ros
def test_record_stops_cleanly_when_the_disk_fills(tmp_path):
    """A 3 MiB file size limit (as a full disk: EFBIG instead of ENOSPC) on the recorder, 64 KiB
    messages at 100 Hz: it stops, exits 1 with one error, and the bag reads up to its last chunk."""
    domain = pid_domain_id(97)
    apply_ros_env_defaults(domain)
    import rclpy
    from rclpy.context import Context
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    limit = 3 * 2**20
    out = tmp_path / "rec"

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "dima_planner.ros.bag_record", "--out", str(out), "--domain-id", str(domain),
           "--compression", "none", "--topics", "/fill:=std_msgs/msg/String"]
    # Fast DDS shared-memory segments are files too: loopback UDP keeps the limit on the bag alone.
    env = dict(ENV, RMW_FASTRTPS_USE_QOS_FROM_XML="0", FASTDDS_BUILTIN_TRANSPORTS="UDPv4")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit_files)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("bag_fill_pub", context=ctx)
    pub = node.create_publisher(String, "/fill", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    sent = 0
    try:
        deadline = time.monotonic() + 120
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        while proc.poll() is None and time.monotonic() < deadline:
            pub.publish(String(data=f"{sent:08d}" + "x" * (64 * 1024)))
            sent += 1
            time.sleep(0.01)
        out_text, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == 1, out_text + err
    errors = [ln for ln in err.splitlines() if "dima bag record: error" in ln]
    assert len(errors) == 1 and "recording stopped" in errors[0], err
    assert (out / "metadata.yaml").is_file()
    (mcap,) = out.glob("*.mcap")
    assert mcap.stat().st_size <= limit
    info = subprocess.run([sys.executable, "-m", "dima_planner.bags.bag_info", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 2 and one_error(info.stderr)[1] == str(mcap)
    # the readers get every message of the complete chunks, in order, intact
    store = bag_io.make_typestore()
    reader = SalvageReader(out)
    seqs = [int(store.deserialize_cdr(raw, c.msgtype).data[:8]) for c, _t, raw in reader.messages()]
    assert reader.damage is not None and len(seqs) >= 8
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
