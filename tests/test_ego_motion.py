"""The CAN-bus-style ego motion input: one causal rule for the dataset and the node's odometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dima_planner.data.sample import CAN_BUS_DIM, CAN_BUS_FIELDS
from dima_planner.data.ego_motion import PoseHistory, can_bus_override, can_bus_vector


def pose(x: float, y: float, yaw: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    m[:2, 3] = x, y
    return m


F = {k: i for i, k in enumerate(CAN_BUS_FIELDS)}


def test_straight_acceleration_in_the_lidar_frame():
    # LiDAR frame: y forward. World heading +x: the LiDAR's +y axis points along world +x.
    yaw = -np.pi / 2
    v = can_bus_vector(pose(10.0, 0, yaw), 1.0, pose(5.0, 0, yaw), 0.5, pose(1.0, 0, yaw), 0.0)
    assert v.shape == (CAN_BUS_DIM,)
    np.testing.assert_allclose(v[[F["dx"], F["dy"], F["dyaw"]]], [0, 5, 0], atol=1e-6)
    np.testing.assert_allclose(v[[F["vx"], F["vy"], F["speed"]]], [0, 10, 10], atol=1e-5)
    np.testing.assert_allclose(v[[F["ax"], F["ay"]]], [0, 4], atol=1e-5)  # 8 m/s -> 10 m/s in 0.5 s
    assert v[F["has_prev"]] == 1 and v[F["has_prev2"]] == 1 and v[F["yaw_rate"]] == 0


def test_turning_and_scene_start():
    v = can_bus_vector(pose(0, 0, 0.2), 0.5, pose(0, 0, 0.0), 0.0)
    assert v[F["dyaw"]] == pytest.approx(0.2) and v[F["yaw_rate"]] == pytest.approx(0.4)
    assert v[F["has_prev2"]] == 0 and v[F["ax"]] == 0
    assert not can_bus_vector(pose(3, 4, 1), 0.0).any()  # no history: all zero


def test_pose_history_applies_the_rule_to_dense_odometry():
    h = PoseHistory()
    yaw = -np.pi / 2
    for k in range(0, 21):  # 20 Hz odometry at 6 m/s for 1 s
        t = k * 50_000_000
        h.add(t, pose(6.0 * t * 1e-9, 0, yaw))
    v = h.can_bus(10**9, pose(6.0, 0, yaw))
    np.testing.assert_allclose(v[F["speed"]], 6.0, atol=1e-5)
    assert v[F["has_prev2"]] == 1 and abs(v[F["ay"]]) < 1e-4
    with pytest.raises(ValueError):
        h.add(0, np.full((4, 4), np.nan))


def test_canbus_override_rotates_ego_readings_into_the_lidar_frame():
    lidar2ego = pose(0, 0, -np.pi / 2)  # nuScenes: LiDAR y forward = ego x forward
    base = can_bus_vector(pose(0, 5, 0), 0.5, pose(0, 0, 0), 0.0)
    v = can_bus_override(base, 9.0, [1.0, 0.0], 0.1, lidar2ego)
    assert v[F["speed"]] == pytest.approx(9.0) and v[F["yaw_rate"]] == pytest.approx(0.1)
    np.testing.assert_allclose(v[[F["ax"], F["ay"]]], [0, 1], atol=1e-6)  # forward accel -> LiDAR +y


def test_can_bus_mlp_changes_the_bev_and_camera_only_ignores_it():
    from dima_planner.model import preset
    from dima_planner.model.bev_encoder import BEVEncoder

    cfg = preset("tiny_cpu")
    torch.manual_seed(0)
    enc = BEVEncoder(cfg).eval()
    feats, l2i = torch.zeros(1, 6, cfg.embed_dim, 12, 20), torch.eye(4).repeat(1, 6, 1, 1)
    slow, fast = torch.zeros(1, CAN_BUS_DIM), torch.zeros(1, CAN_BUS_DIM)
    fast[0, F["speed"]] = 12.0
    assert not torch.allclose(enc(feats, l2i, can_bus=slow), enc(feats, l2i, can_bus=fast))
    with pytest.raises(ValueError, match="ego motion"):
        enc(feats, l2i)
    cfg.can_bus = False
    cam = BEVEncoder(cfg).eval()
    assert cam.can_bus_mlp is None
    assert torch.equal(cam(feats, l2i, can_bus=slow), cam(feats, l2i, can_bus=fast))


def test_nuscenes_can_bus_expansion_through_the_devkit(tmp_path):
    """<dataroot>/can_bus read by nuscenes-devkit's NuScenesCanBus: the vehicle's own speed,
    acceleration and yaw rate replace the pose-derived ones (scenes without data keep them)."""
    import json

    from dima_planner.data.nuscenes_dataset import CanBusSource

    (tmp_path / "can_bus").mkdir()
    msgs = [{"utime": 1_000_000 + 20_000 * k, "vel": [7.5, 0.0, 0.0], "accel": [0.8, 0.1, 9.8],
             "rotation_rate": [0.0, 0.0, 0.05], "pos": [0, 0, 0], "orientation": [1, 0, 0, 0]} for k in range(60)]
    (tmp_path / "can_bus" / "scene-0001_pose.json").write_text(json.dumps(msgs))
    src = CanBusSource.find(tmp_path)
    assert src is not None and CanBusSource.find(tmp_path / "none") is None
    lidar2ego = pose(0, 0, -np.pi / 2)
    base = can_bus_vector(pose(0, 3.5, 0), 1.5, pose(0, 0, 0), 1.0)
    v = src.override(base, "scene-0001", 1_500_000, lidar2ego)
    assert v[F["speed"]] == pytest.approx(7.5) and v[F["yaw_rate"]] == pytest.approx(0.05)
    np.testing.assert_allclose(v[[F["ax"], F["ay"]]], [-0.1, 0.8], atol=1e-6)
    np.testing.assert_array_equal(src.override(base, "scene-0002", 1_500_000, lidar2ego), base)  # no data
    np.testing.assert_array_equal(src.override(base, "scene-0001", 9_000_000, lidar2ego), base)  # too old
