"""CAN-bus-style ego motion input (VAD/BEVFormer's `can_bus`), ROS-free and causal.

VAD adds an MLP of the CAN bus vector (ego translation and rotation since the previous
frame, velocity, acceleration, yaw rate) to every BEV query. Here the vector is computed by
ONE function from the LiDAR poses of the current frame and of the frames 0.5 s and 1 s
earlier (the keyframe interval: the previous BEV is that of the frame 0.5 s ago), so that

  * the dataset (data/nuscenes_dataset.py) calls it on the previous keyframes' poses,
  * inference.Planner calls it on the odometry it was given (`PoseHistory`), and
  * the ROS node only hands odometry to the Planner,

and all three see the same numbers for the same drive. Only the past is used (a node
cannot see the future). Everything is in the current LiDAR frame: x right, y forward.

On real nuScenes with the CAN bus expansion, `can_bus_override` replaces speed,
acceleration and yaw rate by the vehicle's own sensors (nuscenes-devkit NuScenesCanBus).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .sample import CAN_BUS_DIM, CAN_BUS_FIELDS, STEP_SECONDS

def _yaw(m: np.ndarray) -> float:
    return float(np.arctan2(m[1, 0], m[0, 0]))

def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)

def can_bus_vector(cur: np.ndarray, t_cur: float, prev: np.ndarray | None = None, t_prev: float | None = None,
                   prev2: np.ndarray | None = None, t_prev2: float | None = None) -> np.ndarray:
    """float32 (CAN_BUS_DIM,) from LiDAR-to-world poses (4, 4) and their times (s).

    prev / prev2: the poses about 0.5 s and 1 s before `cur` (None at a scene start)."""
    out = np.zeros(CAN_BUS_DIM, np.float64)
    if prev is None or t_prev is None or not t_cur > t_prev:
        return out.astype(np.float32)
    cur, prev = np.asarray(cur, np.float64), np.asarray(prev, np.float64)
    prev2cur = np.linalg.inv(cur) @ prev
    disp = -prev2cur[:2, 3]  # the previous origin seen from here, negated: how far we came
    dyaw = _wrap(-_yaw(prev2cur))
    dt = t_cur - t_prev
    v = disp / dt
    out[:9] = [disp[0], disp[1], dyaw, v[0], v[1], np.hypot(*v), 0.0, 0.0, dyaw / dt]
    out[9] = 1.0
    if prev2 is not None and t_prev2 is not None and t_prev > t_prev2:
        p2p = np.linalg.inv(prev) @ np.asarray(prev2, np.float64)
        v_prev = prev2cur[:2, :2] @ (-p2p[:2, 3] / (t_prev - t_prev2))  # rotated into the current frame
        a = (v - v_prev) / ((t_cur - t_prev2) / 2)  # between the two intervals' midpoints
        out[6:8] = a
        out[10] = 1.0
    return out.astype(np.float32)

def ego_status_vector(cur: np.ndarray, t_cur: float, prev: np.ndarray | None = None, t_prev: float | None = None,
                      prev2: np.ndarray | None = None, t_prev2: float | None = None) -> np.ndarray:
    """float32 EGO_STATUS_FIELDS (vx, vy, ax, ay, yaw_rate, speed) by can_bus_vector's backward
    differences: what the dataset computes per keyframe, and what a closed-loop baseline must
    be fed to see the features it was fitted on."""
    v = can_bus_vector(cur, t_cur, prev, t_prev, prev2, t_prev2)
    return v[[_CB["vx"], _CB["vy"], _CB["ax"], _CB["ay"], _CB["yaw_rate"], _CB["speed"]]].astype(np.float32)


_CB = {name: i for i, name in enumerate(CAN_BUS_FIELDS)}


def can_bus_override(vector: np.ndarray, speed: float, accel_xy_ego: Sequence[float], yaw_rate: float,
                    lidar2ego: np.ndarray) -> np.ndarray:
    """Replace speed, acceleration and yaw rate by CAN bus readings (ego frame: x forward,
    y left) rotated into the LiDAR frame; velocity keeps its pose-derived direction."""
    out = np.array(vector, np.float64)
    ego2lidar = np.linalg.inv(np.asarray(lidar2ego, np.float64))[:2, :2]
    out[6:8] = ego2lidar @ np.asarray(accel_xy_ego[:2], np.float64)
    v = out[3:5]
    n = np.hypot(*v)
    out[3:5] = v / n * speed if n > 1e-6 else ego2lidar @ np.array([speed, 0.0])
    out[5] = speed
    out[8] = yaw_rate
    return out.astype(np.float32)

@dataclass
class PoseHistory:
    """Recent (stamp, LiDAR-to-world pose) pairs: the odometry a Planner has seen.

    `at(stamp)` is the pose nearest `stamp` within `tolerance_s`; `can_bus(stamp)` applies
    the one rule (poses 0.5 s and 1 s before the current one) to it."""

    interval_s: float = STEP_SECONDS
    tolerance_s: float = 0.25
    horizon_s: float = 2.0

    def __post_init__(self) -> None:
        self._stamps: list[int] = []
        self._poses: list[np.ndarray] = []

    def clear(self) -> None:
        self._stamps.clear()
        self._poses.clear()

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp_ns: int, lidar2world: np.ndarray) -> None:
        """Remember a pose (older than the horizon before the newest stamp is forgotten)."""
        pose = np.asarray(lidar2world, np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"a pose must be a finite 4x4 matrix, got shape {pose.shape}")
        stamp_ns = int(stamp_ns)
        if stamp_ns in self._stamps:
            self._poses[self._stamps.index(stamp_ns)] = pose
        else:
            i = int(np.searchsorted(self._stamps, stamp_ns))
            self._stamps.insert(i, stamp_ns)
            self._poses.insert(i, pose)
        newest = self._stamps[-1]
        keep = [k for k, s in enumerate(self._stamps) if newest - s <= self.horizon_s * 1e9]
        self._stamps = [self._stamps[k] for k in keep]
        self._poses = [self._poses[k] for k in keep]

    def at(self, stamp_ns: int) -> tuple[int, np.ndarray] | None:
        if not self._stamps:
            return None
        k = int(np.argmin([abs(s - stamp_ns) for s in self._stamps]))
        if abs(self._stamps[k] - stamp_ns) > self.tolerance_s * 1e9:
            return None
        return self._stamps[k], self._poses[k]

    def can_bus(self, stamp_ns: int, lidar2world: np.ndarray) -> np.ndarray:
        """The CAN bus vector of the frame at `stamp_ns` with pose `lidar2world`."""
        step = int(self.interval_s * 1e9)
        prev = self.at(stamp_ns - step)
        prev2 = self.at(stamp_ns - 2 * step) if prev is not None else None
        if prev is not None and prev[0] >= stamp_ns:
            prev = prev2 = None
        if prev2 is not None and prev2[0] >= prev[0]:
            prev2 = None
        return can_bus_vector(lidar2world, stamp_ns * 1e-9,
                              None if prev is None else prev[1], None if prev is None else prev[0] * 1e-9,
                              None if prev2 is None else prev2[1], None if prev2 is None else prev2[0] * 1e-9)

__all__ = ["CAN_BUS_DIM", "CAN_BUS_FIELDS", "PoseHistory", "can_bus_override", "can_bus_vector"]
