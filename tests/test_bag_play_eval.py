"""`dima bag play` in a subprocess over real DDS, TopicRecorder and `dima bag eval`."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dima_planner.bags import bag_convert, bag_eval, bag_io
from dima_planner.ros.env import apply_ros_env_defaults, pid_domain_id

from test_bag_convert import make_world

TOPICS = ["/cam_front/image_raw", "/cam_front/camera_info", "/odom", "/dima/gt/sample", "/tf_static"]


@pytest.fixture(scope="module")
def one_scene_bag(tmp_path_factory) -> Path:
    world = make_world(tmp_path_factory.mktemp("world") / "world")
    out = tmp_path_factory.mktemp("bags") / "one"
    bag_convert.convert(world, out, scenes=["scene-0001"], progress=False)
    return out


def _counts(bag: Path) -> dict[str, int]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as r:
        return {c.topic: c.msgcount for c in r.connections}


@pytest.mark.ros
def test_play_delivers_everything_and_latches_tf_static(one_scene_bag, tmp_path):
    domain = pid_domain_id(3)
    apply_ros_env_defaults(domain)
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from dima_planner.ros.bag_play import message_class
    from dima_planner.ros.bag_record import TopicRecorder

    expected = _counts(one_scene_bag)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("bag_test_sub", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    got: dict[str, int] = {t: 0 for t in TOPICS}
    late: list = []
    types = {"/cam_front/image_raw": "sensor_msgs/msg/Image", "/cam_front/camera_info": "sensor_msgs/msg/CameraInfo",
             "/odom": "nav_msgs/msg/Odometry", "/dima/gt/sample": "std_msgs/msg/String",
             "/tf_static": "tf2_msgs/msg/TFMessage"}
    rel = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    for t in TOPICS:
        node.create_subscription(message_class(types[t]), t, lambda m, t=t: got.__setitem__(t, got[t] + 1),
                                 latched if t == "/tf_static" else rel)
    # The GT future path replayed under the prediction topic: "prediction == GT".
    rec = TopicRecorder(node, tmp_path / "rec", {"/dima/path": "nav_msgs/msg/Path"})

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "dima_planner.ros.bag_play", str(one_scene_bag), "--domain-id", str(domain),
           "--topics", *TOPICS, "/dima/gt/ego_future", "--remap", "/dima/gt/ego_future:=/dima/path",
           "--wait-for-subscribers", "20", "--rate", "2.0", "--depth", "200"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while got["/odom"] < 5 and time.monotonic() < deadline and proc.poll() is None:
            ex.spin_once(timeout_sec=0.05)
        # A subscriber that joins after /tf_static went out still receives it (transient local).
        node.create_subscription(message_class(types["/tf_static"]), "/tf_static", late.append, latched)
        while proc.poll() is None and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        out = proc.communicate(timeout=10)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        rec_counts = rec.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert proc.returncode == 0, out
    for t in TOPICS:
        assert got[t] == expected[t], f"{t}: got {got[t]} of {expected[t]}\n{out}"
    assert len(late) == 1 and len(late[0].transforms) == 8  # map -> odom, 6 cameras, lidar_top
    assert rec_counts["/dima/path"] == expected["/dima/gt/ego_future"]
    assert "/dima/path" in out  # the summary names the remapped topic

    m = bag_eval.evaluate([one_scene_bag, tmp_path / "rec"], pred_topic="/dima/path")
    assert 0 < m["matched"] <= expected["/dima/gt/sample"]
    assert m["num_samples"] > 0
    assert m["l2_avg"] == pytest.approx(0.0, abs=1e-6)
    assert m["col_avg"] == 0.0


def test_eval_offset_prediction(one_scene_bag, tmp_path):
    """PlannedTrajectory 1 m to the left of the GT in base_link -> L2 exactly 1 m."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    store = bag_io.make_typestore()
    T = store.types
    out = tmp_path / "pred"
    with Reader(one_scene_bag) as r, Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection(bag_io.TRAJECTORY_TOPIC, bag_io.TYPES["trajectory"], typestore=store)
        c = [c for c in r.connections if c.topic == bag_io.GT_FUTURE_TOPIC]
        for _c, t, raw in r.messages(connections=c):
            path = store.deserialize_cdr(raw, _c.msgtype)
            if len(path.poses) < 6:
                continue
            poses = []
            for p in path.poses:
                q = p.pose
                poses.append(T["geometry_msgs/msg/Pose"](
                    position=T["geometry_msgs/msg/Point"](x=q.position.x, y=q.position.y + 1.0, z=0.0),
                    orientation=q.orientation))
            msg = T[bag_io.TYPES["trajectory"]](
                header=path.header, poses=poses,
                time_from_start=[T["builtin_interfaces/msg/Duration"](sec=0, nanosec=500_000_000 * (i + 1) % 10**9)
                                 for i in range(6)],
                velocity=np.zeros(6, dtype=np.float32), command=2, planner_latency=0.0, model_latency=0.0,
                model_id="test")
            w.write(conn, t, store.serialize_cdr(msg, bag_io.TYPES["trajectory"]))
    m = bag_eval.evaluate([one_scene_bag, out])
    assert m["num_samples"] > 0
    for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg"):
        # 1 m in base_link's xy is 1/cos(tilt) on the slightly tilted LiDAR plane.
        assert m[k] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(bag_eval.BagEvalError, match="no /dima/trajectory"):
        bag_eval.evaluate([one_scene_bag])
