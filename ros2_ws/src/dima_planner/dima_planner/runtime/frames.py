"""Frame conventions shared by the bag tools and the planner node (no rclpy here).

* LiDAR frame (VAD planning frame, `Sample` contract): LIDAR_TOP of the keyframe,
  x to the right, y forward, z up.
* base_link (REP-103): x forward, y left, z up; nuScenes' "ego" frame.
* Camera optical frames (REP-103): z forward, x right, y down. nuScenes camera
  calibrated_sensor records are already optical, so base_link -> cam_*_optical is the
  calibrated_sensor transform itself.

Planar waypoints: a planning waypoint (x, y) in the LiDAR frame is the point (x, y, 0)
(the future LiDAR positions expressed in the current LiDAR frame have z ~ 0). Going back
from base_link, the height in the message is ignored and the point is placed on the
plane z_lidar = 0, so LiDAR -> base_link -> LiDAR round-trips exactly whatever height a
publisher writes (the LIDAR_TOP mount is tilted by a few milliradians).

Pose matrices and quaternions: data/geometry.py.
"""
from __future__ import annotations

import math

import numpy as np

from ..data.geometry import travel_headings

LIDAR_FRAME = "lidar_top"
BASE_FRAME = "base_link"
MAP_FRAME = "map"
# REP-105: map -> odom -> base_link. The bags carry the nuScenes ego pose (smooth and
# globally consistent) as odom -> base_link, with an identity map -> odom on /tf_static.
ODOM_FRAME = "odom"


def optical_frame(camera: str) -> str:
    """CAM_FRONT -> cam_front_optical."""
    return f"{camera.lower()}_optical"


def lidar_xy_to_base_link(xy: np.ndarray, lidar2ego: np.ndarray) -> np.ndarray:
    """(N, 2) LiDAR-frame planar points -> (N, 3) base_link points."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    pts = np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)
    return pts @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]


def base_link_to_lidar_xy(points: np.ndarray, lidar2ego: np.ndarray) -> np.ndarray:
    """(N, 2|3) base_link points -> (N, 2) LiDAR-frame planar points.

    Only x, y of the input are used; the height is chosen so that the point lies on the
    LiDAR's z = 0 plane (see the module docstring).
    """
    pts = np.asarray(points, dtype=np.float64)
    pts = pts.reshape(-1, pts.shape[-1])[:, :2]
    r, t = lidar2ego[:3, :3], lidar2ego[:3, 3]
    n = r[:, 2]  # LiDAR z axis in base_link: the plane normal
    if abs(n[2]) < 1e-6:
        raise ValueError("base_link_to_lidar_xy: LiDAR z axis is horizontal; planar conversion undefined")
    z = t[2] - (n[0] * (pts[:, 0] - t[0]) + n[1] * (pts[:, 1] - t[1])) / n[2]
    full = np.concatenate([pts, z[:, None]], axis=1)
    return ((full - t) @ r)[:, :2]


def lidar_points_to_base(points: np.ndarray, lidar2ego: np.ndarray) -> np.ndarray:
    """(..., 2) planar LiDAR-frame points -> (..., 3) base_link points (the point (x, y, 0)
    of the LiDAR frame, so bag_eval's inverse round-trips exactly)."""
    pts = np.asarray(points, dtype=np.float64)
    return lidar_xy_to_base_link(pts.reshape(-1, 2), lidar2ego).reshape(pts.shape[:-1] + (3,))


def trajectory_lidar_to_base(traj: np.ndarray, lidar2ego: np.ndarray) -> np.ndarray:
    """LiDAR-frame waypoints (6, 2) -> base_link poses (6, 4, 4).

    Positions are the predicted LiDAR-origin track (the nuScenes/VAD target) expressed in
    base_link by lidar_xy_to_base_link, the convention bag_eval inverts. The orientation is
    the direction of travel (from the previous waypoint; the current heading while the step
    is under 5 cm, i.e. standing still), as a yaw about base_link z.
    """
    traj = np.asarray(traj, dtype=np.float64)
    pos = lidar_points_to_base(traj, lidar2ego)
    yaw_l2e = math.atan2(lidar2ego[1, 0], lidar2ego[0, 0])
    out = np.tile(np.eye(4), (len(traj), 1, 1))
    headings = travel_headings(traj, (0.0, 0.0), math.pi / 2)  # from the LiDAR origin, straight ahead
    for i, heading in enumerate(headings):
        yaw = heading + yaw_l2e
        out[i, :2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
        out[i, :3, 3] = pos[i]
    return out
