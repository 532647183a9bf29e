"""Pure-module tests of the node's conversions and message building (no ROS spinning)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import CameraInfo, CompressedImage
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker

from dima_planner.ros import conversions as conv
from dima_planner.ros.conversions import InputError
from dima_planner.data.geometry import RIG_HW, RIG_SIZE, load_rig, matrix_to_quat_xyzw, scale_intrinsics
from dima_planner.runtime.extrinsics import StaticTransforms
from dima_planner.runtime.frames import base_link_to_lidar_xy
from dima_planner.runtime.reasoning import decode_scene_tokens_msg

RNG = np.random.default_rng(0)


def rgb(h=5, w=7):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_image_round_trip(encoding):
    a = rgb()
    msg = conv.rgb_to_image(a, Time(sec=3, nanosec=4), "cam", encoding)
    assert msg.step == 21 and msg.encoding == encoding
    np.testing.assert_array_equal(conv.image_to_rgb(msg), a)


def test_image_with_row_padding_and_other_encodings():
    a = rgb(4, 6)
    msg = conv.rgb_to_image(a, Time(), "cam")
    padded = np.zeros((4, 6 * 3 + 5), np.uint8)  # step larger than width * 3 (aligned rows)
    padded[:, :18] = a.reshape(4, 18)
    msg.step, msg.data = 23, padded.tobytes()
    np.testing.assert_array_equal(conv.image_to_rgb(msg), a)
    mono = conv.rgb_to_image(a, Time(), "cam")
    mono.encoding, mono.step, mono.data = "mono8", 6, a[:, :, 0].tobytes()
    out = conv.image_to_rgb(mono)
    assert out.shape == (4, 6, 3) and np.all(out[:, :, 2] == a[:, :, 0])
    rgba = conv.rgb_to_image(a, Time(), "cam")
    rgba.encoding, rgba.step = "bgra8", 24
    rgba.data = np.concatenate([a[:, :, ::-1], np.full((4, 6, 1), 255, np.uint8)], 2).tobytes()
    np.testing.assert_array_equal(conv.image_to_rgb(rgba), a)


def test_bad_images_are_rejected_with_a_reason():
    msg = conv.rgb_to_image(rgb(), Time(), "cam")
    msg.encoding = "16UC1"
    with pytest.raises(InputError, match="16UC1") as e:
        conv.image_to_rgb(msg)
    assert e.value.category == "bad_encoding"
    msg = conv.rgb_to_image(rgb(), Time(), "cam")
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(InputError, match="truncated"):
        conv.image_to_rgb(msg)
    msg = conv.rgb_to_image(rgb(), Time(), "cam")
    msg.data = bytes(msg.data) + b"\0" * 21
    with pytest.raises(InputError, match="oversized"):
        conv.image_to_rgb(msg)
    msg = conv.rgb_to_image(rgb(), Time(), "cam")
    msg.step = 20  # less than 7 * 3
    with pytest.raises(InputError, match="step"):
        conv.image_to_rgb(msg)


def test_compressed_decode():
    a = np.zeros((32, 48, 3), np.uint8)
    a[:, :24] = (200, 30, 10)  # a red left half survives JPEG
    msg = conv.rgb_to_compressed(a, Time(), "cam", quality=95)
    out = conv.decode_image(msg)
    assert out.shape == a.shape
    assert np.abs(out.astype(int) - a).mean() < 4
    assert out[16, 5, 0] > 150 and out[16, 5, 2] < 60  # channel order is RGB
    with pytest.raises(InputError) as e:
        conv.decode_image(CompressedImage(format="jpeg", data=b"not a jpeg"))
    assert e.value.category == "bad_compressed"


def test_stamps():
    assert conv.stamp_to_ns(conv.ns_to_stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    d = conv.seconds_to_duration(2.5)
    assert (d.sec, d.nanosec) == (2, 500_000_000)


def test_lidar_to_base_link_straight_and_turning():
    rig = load_rig()
    l2e = rig.lidar2ego
    straight = np.stack([np.zeros(6), np.arange(1, 7) * 2.0], 1)  # LiDAR y forward, 4 m/s
    poses = conv.trajectory_lidar_to_base(straight, l2e)
    # base_link x forward: positions advance along +x from the LiDAR mount, heading 0
    np.testing.assert_allclose(np.diff(poses[:, 0, 3]), 2.0, atol=0.02)
    np.testing.assert_allclose(poses[:, 1, 3], poses[0, 1, 3], atol=0.05)  # the mount is ~0.1 deg off -90
    assert abs(poses[0, 0, 3] - (l2e[0, 3] + 2.0)) < 0.02
    yaws = np.arctan2(poses[:, 1, 0], poses[:, 0, 0])
    np.testing.assert_allclose(yaws, 0.0, atol=0.02)
    # a left turn in the LiDAR frame (x to the right: negative x) ends left (+y) in base_link
    left = np.stack([-0.1 * np.arange(1, 7) ** 2, np.arange(1, 7) * 2.0], 1)
    lp = conv.trajectory_lidar_to_base(left, l2e)
    assert lp[-1, 1, 3] > 3.0 and np.arctan2(lp[-1, 1, 0], lp[-1, 0, 0]) > 0.2
    # exact inverse with the bag evaluator's convention
    np.testing.assert_allclose(base_link_to_lidar_xy(lp[:, :3, 3], l2e), left, atol=1e-9)
    v = conv.speeds(poses, conv.lidar_points_to_base(np.zeros(2), l2e))
    np.testing.assert_allclose(v, 4.0, atol=0.05)


def test_path_and_trajectory_messages():
    rig = load_rig()
    traj = np.stack([np.zeros(6), np.arange(1, 7) * 1.0], 1)
    poses = conv.trajectory_lidar_to_base(traj, rig.lidar2ego)
    stamp = 1_000_000_000_500
    path = conv.build_path(poses, stamp, "base_link")
    assert path.header.frame_id == "base_link" and conv.stamp_to_ns(path.header.stamp) == stamp
    assert [conv.stamp_to_ns(p.header.stamp) - stamp for p in path.poses] == [int(i * 5e8) for i in range(1, 7)]
    assert path.poses[2].pose.position.x == pytest.approx(poses[2, 0, 3])
    q = path.poses[0].pose.orientation
    assert q.w == pytest.approx(1.0, abs=1e-3)
    msg = conv.build_trajectory(poses, conv.lidar_points_to_base(np.zeros(2), rig.lidar2ego), stamp, "base_link",
                                1, 0.08, 0.05, "dima_tiny:abc")
    assert len(msg.poses) == 6 and len(msg.time_from_start) == 6 and msg.command == 1
    assert msg.time_from_start[-1].sec == 3 and msg.model_id == "dima_tiny:abc"
    np.testing.assert_allclose(msg.velocity, 2.0, atol=0.05)


def test_scene_tokens_round_trip():
    tokens = {"bev": RNG.normal(size=(12, 4)), "ego": RNG.normal(size=(1, 4)), "agent": RNG.normal(size=(3, 4)),
              "map": RNG.normal(size=(2, 4))}
    feat = RNG.normal(size=8)
    msg = conv.build_scene_tokens(tokens, (3, 4), 5, "base_link", 2, np.tile(np.eye(4), (6, 1, 1)), "m", feat)
    assert (msg.bev_h, msg.bev_w) == (3, 4) and list(msg.counts) == [12, 1, 3, 2]
    back, ego_feature = decode_scene_tokens_msg(msg)  # the one decoder (the MLLM node's)
    for k in tokens:
        np.testing.assert_allclose(back[k], tokens[k], rtol=1e-6)
    np.testing.assert_allclose(ego_feature, feat, rtol=1e-6)
    without = conv.build_scene_tokens(tokens, (3, 4), 5, "base_link", 2, np.tile(np.eye(4), (6, 1, 1)), "m")
    assert len(without.ego_feature) == 0 and decode_scene_tokens_msg(without)[1] is None
    with pytest.raises(ValueError, match="grid"):
        conv.build_scene_tokens(tokens, (5, 5), 5, "base_link", 2, np.tile(np.eye(4), (6, 1, 1)), "m")


def test_markers():
    rig = load_rig()
    poses = conv.trajectory_lidar_to_base(np.stack([np.zeros(6), np.arange(1, 7.0)], 1), rig.lidar2ego)
    agents = {"boxes": np.array([[0.0, 10.0, 0.0, 4.0, 2.0, 1.5, math.pi / 2]]), "labels": np.array([0]),
              "motion": np.stack([np.zeros(6), 10.0 + np.arange(1, 7.0)], 1)[None]}
    maps = {"points": np.stack([np.full(20, 3.0), np.linspace(0, 20, 20)], 1)[None], "labels": np.array([2])}
    out = conv.build_markers(poses, rig.lidar2ego, 7, "base_link", agents, maps)
    kinds = [(m.ns, m.type) for m in out.markers]
    assert out.markers[0].action == Marker.DELETEALL
    assert ("trajectory", Marker.LINE_STRIP) in kinds and ("agents", Marker.CUBE) in kinds
    assert ("agent_motion", Marker.LINE_STRIP) in kinds and ("map_boundary", Marker.LINE_STRIP) in kinds
    box = next(m for m in out.markers if m.ns == "agents")
    assert box.pose.position.x > 10.0 and abs(box.pose.position.y) < 0.5  # ahead of the car in base_link
    # an agent heading straight ahead (yaw pi/2 in the LiDAR frame) heads along base_link x
    assert abs(2 * math.atan2(box.pose.orientation.z, box.pose.orientation.w)) < 0.05


def test_static_transforms_chain_and_rig():
    rig = load_rig()
    tf = StaticTransforms()
    msg = TFMessage()

    def add(parent, child, m):
        t = TransformStamped(header=Header(frame_id=parent), child_frame_id=child)
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = map(float, m[:3, 3])
        x, y, z, w = matrix_to_quat_xyzw(m)
        t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = x, y, z, w
        msg.transforms.append(t)

    mount = np.eye(4)
    mount[:3, 3] = (1.0, 0.0, 1.5)
    add("base_link", "camera_link", mount)
    add("camera_link", "cam_front_optical", np.linalg.inv(mount) @ rig.cam2ego["CAM_FRONT"])
    add("base_link", "lidar_top", rig.lidar2ego)
    nan = np.eye(4)
    nan[0, 3] = float("nan")
    add("base_link", "broken", nan)
    bad = tf.add(msg)
    assert len(bad) == 1 and "broken" in bad[0]
    np.testing.assert_allclose(tf.lookup("base_link", "cam_front_optical"), rig.cam2ego["CAM_FRONT"], atol=1e-9)
    c2l = tf.lookup("lidar_top", "cam_front_optical")
    np.testing.assert_allclose(c2l, np.linalg.inv(rig.lidar2ego) @ rig.cam2ego["CAM_FRONT"], atol=1e-9)
    with pytest.raises(InputError, match="no /tf_static or /tf chain"):
        tf.lookup("base_link", "cam_back_optical")
    # the packaged rig: the front camera looks along base_link +x, intrinsics for 1600x900
    assert rig.cam2ego["CAM_FRONT"][0, 2] > 0.99 and RIG_SIZE == (1600, 900)
    k = scale_intrinsics(rig.intrinsics["CAM_FRONT"], RIG_HW, (450, 800))
    assert k[0, 0] == pytest.approx(rig.intrinsics["CAM_FRONT"][0, 0] / 2)


def _tf_msg(*edges) -> TFMessage:
    """TFMessage of (parent, child, 4x4, stamp_ns) edges."""
    msg = TFMessage()
    for parent, child, m, stamp_ns in edges:
        t = TransformStamped(header=Header(frame_id=parent), child_frame_id=child)
        t.header.stamp.sec, t.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = map(float, m[:3, 3])
        x, y, z, w = matrix_to_quat_xyzw(m)
        t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = x, y, z, w
        msg.transforms.append(t)
    return msg


def test_tf_sensor_poses_are_stamped_bounded_in_age_and_cycle_free():
    """carla-ros-bridge style: sensor poses on /tf every tick next to a moving map -> ego pose."""
    rig = load_rig()
    sec = 1_000_000_000
    tf = StaticTransforms()
    moved = rig.cam2ego["CAM_FRONT"].copy()
    moved[0, 3] += 0.5  # the mount as re-published 1 s later (a calibration update)
    far = np.eye(4)
    far[:3, 3] = (3000.0, -200.0, 0.0)  # map -> ego: far from the origin, fine on /tf
    assert tf.add(_tf_msg(("map", "ego", far, 10 * sec), ("ego", "ego/rgb_front", rig.cam2ego["CAM_FRONT"], 10 * sec)),
                  max_translation=50.0, static=False) == []
    assert tf.add(_tf_msg(("ego", "ego/rgb_front", moved, 11 * sec)), static=False) == []
    # the sample nearest the image stamp, within max_age
    np.testing.assert_allclose(tf.lookup("ego", "ego/rgb_front", 10 * sec + 100, sec // 2), rig.cam2ego["CAM_FRONT"],
                               atol=1e-9)
    np.testing.assert_allclose(tf.lookup("ego", "ego/rgb_front", 11 * sec - 100, sec // 2), moved, atol=1e-9)
    with pytest.raises(InputError, match="nearest sample is 2.000 s") as e:
        tf.lookup("ego", "ego/rgb_front", 13 * sec, sec // 2)
    assert e.value.category == "stale_extrinsics"
    # a /tf_static mount below a /tf frame composes; static edges never go stale
    assert tf.add(_tf_msg(("ego/rgb_front", "ego/rgb_front_optical", np.eye(4), 0))) == []
    np.testing.assert_allclose(tf.lookup("ego", "ego/rgb_front_optical", 11 * sec, sec // 2), moved, atol=1e-9)
    # a loop through /tf and /tf_static is refused on arrival, from either side
    bad = tf.add(_tf_msg(("ego/rgb_front_optical", "map", np.eye(4), 11 * sec)), static=False)
    assert len(bad) == 1 and "cycle" in bad[0]
    bad = tf.add(_tf_msg(("ego/rgb_front", "ego", np.eye(4), 0)))
    assert len(bad) == 1 and "cycle" in bad[0]
    np.testing.assert_allclose(tf.lookup("map", "ego/rgb_front", 11 * sec, 2 * sec), far @ moved, atol=1e-6)


def test_autoware_trajectory_profile_of_a_known_motion():
    """A plan along a circle at constant speed: velocity v, heading rate v / r, acceleration 0
    at every point (second-order differences are exact for it up to the arc's curvature)."""
    from dima_planner.ros.autoware import _planar, trajectory_profile

    v, r, dt = 8.0, 40.0, 0.5
    w = v / r
    poses = np.stack([_planar(r * math.sin(w * t), r * (1 - math.cos(w * t)), 0.0, w * t)
                      for t in np.arange(7) * dt])
    out, speed, accel, yaw_rate = trajectory_profile(poses[1:], poses[0], dt)
    assert out.shape == (7, 4, 4)
    assert np.allclose(speed, v, rtol=5e-3) and np.allclose(accel, 0.0, atol=0.05)
    assert np.allclose(yaw_rate, w, atol=1e-9)
