"""dima_msgs (built by set-up into the venv) and tf2_msgs: import and CDR round trips."""
from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Pose, TransformStamped
from rclpy.serialization import deserialize_message, serialize_message

from dima_msgs.msg import DrivingCommand, PlannedTrajectory, Reasoning, SceneTokens
from dima_msgs.srv import AskScene
from tf2_msgs.msg import TFMessage


def _round_trip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


def test_planned_trajectory_round_trip():
    m = PlannedTrajectory()
    m.header.stamp = Time(sec=1533151603, nanosec=547590000)
    m.header.frame_id = "base_link"
    for i in range(6):
        p = Pose()
        p.position.x = 1.5 * (i + 1)
        p.orientation.w = 1.0
        m.poses.append(p)
        m.time_from_start.append(Duration(sec=(i + 1) // 2, nanosec=500_000_000 * ((i + 1) % 2)))
    m.velocity = [3.0] * 6
    m.command = DrivingCommand.GO_STRAIGHT
    m.planner_latency = 0.012
    m.model_id = "dima_tiny@abc123"
    r = _round_trip(m)
    assert r.header.stamp.nanosec == 547590000 and r.header.frame_id == "base_link"
    assert [p.position.x for p in r.poses] == [1.5 * (i + 1) for i in range(6)]
    assert r.time_from_start[-1].sec == 3 and r.time_from_start[0].nanosec == 500_000_000
    assert r.command == 2 and math.isclose(r.planner_latency, 0.012, rel_tol=1e-6)
    assert r.model_id == "dima_tiny@abc123"


def test_scene_tokens_round_trip_preserves_arrays():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, d)).astype(np.float32) for n, d in [(16, 8), (1, 8), (5, 8), (7, 8)]]
    m = SceneTokens()
    offsets, flat = [], []
    off = 0
    for a in arrays:
        offsets.append(off)
        flat.append(a.ravel())
        off += a.size
    m.data = np.concatenate(flat).tolist()
    m.types = [SceneTokens.TYPE_BEV, SceneTokens.TYPE_EGO, SceneTokens.TYPE_AGENT, SceneTokens.TYPE_MAP]
    m.offsets = offsets
    m.counts = [a.shape[0] for a in arrays]
    m.dims = [a.shape[1] for a in arrays]
    m.bev_h, m.bev_w = 4, 4
    r = _round_trip(m)
    data = np.asarray(r.data, dtype=np.float32)
    for a, o, c, d in zip(arrays, r.offsets, r.counts, r.dims):
        np.testing.assert_array_equal(data[o : o + c * d].reshape(c, d), a)


def test_reasoning_and_service_types():
    m = Reasoning(text="Slow down: a pedestrian is crossing ahead.", question="", latency=0.8, model_id="smollm2")
    m.input_stamp = Time(sec=5, nanosec=7)
    r = _round_trip(m)
    assert r.text.startswith("Slow down") and r.input_stamp.nanosec == 7
    req = AskScene.Request(question="What is ahead?", max_new_tokens=32)
    assert _round_trip(req).question == "What is ahead?"
    resp = AskScene.Response(success=False, text="no scene received yet")
    assert _round_trip(resp).text == "no scene received yet"


def test_tf_message_round_trip():
    t = TransformStamped()
    t.header.frame_id = "base_link"
    t.child_frame_id = "cam_front_optical"
    t.transform.translation.x = 1.70079
    t.transform.rotation.w = 1.0
    r = _round_trip(TFMessage(transforms=[t]))
    assert r.transforms[0].child_frame_id == "cam_front_optical"
    assert math.isclose(r.transforms[0].transform.translation.x, 1.70079)
