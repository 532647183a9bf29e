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
"""
from __future__ import annotations

import numpy as np
import transforms3d

LIDAR_FRAME = "lidar_top"
BASE_FRAME = "base_link"
MAP_FRAME = "map"
# REP-105: map -> odom -> base_link. The bags carry the nuScenes ego pose (smooth and
# globally consistent) as odom -> base_link, with an identity map -> odom on /tf_static.
ODOM_FRAME = "odom"


def optical_frame(camera: str) -> str:
    """CAM_FRONT -> cam_front_optical."""
    return f"{camera.lower()}_optical"


def pose_to_matrix(translation, rotation_wxyz) -> np.ndarray:
    """4x4 child -> parent transform from a nuScenes-style translation + (w, x, y, z) quaternion."""
    m = np.eye(4)
    m[:3, :3] = transforms3d.quaternions.quat2mat(np.asarray(rotation_wxyz, dtype=np.float64))
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def record_matrix(record: dict) -> np.ndarray:
    """4x4 of an ego_pose / calibrated_sensor record (child frame -> parent frame)."""
    return pose_to_matrix(record["translation"], record["rotation"])


def matrix_to_quat_xyzw(matrix: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation part of a 3x3/4x4 as a ROS (x, y, z, w) quaternion."""
    w, x, y, z = transforms3d.quaternions.mat2quat(np.asarray(matrix, dtype=np.float64)[:3, :3])
    if w < 0:  # canonical sign, so equal rotations give equal messages
        w, x, y, z = -w, -x, -y, -z
    return float(x), float(y), float(z), float(w)


def quat_xyzw_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    return transforms3d.quaternions.quat2mat((w, x, y, z))


def yaw_of(matrix: np.ndarray) -> float:
    """Heading of a frame's +x axis in its parent's xy plane (ccw, radians)."""
    return float(np.arctan2(matrix[1, 0], matrix[0, 0]))


def yaw_to_quat_xyzw(yaw: float) -> tuple[float, float, float, float]:
    return 0.0, 0.0, float(np.sin(yaw / 2.0)), float(np.cos(yaw / 2.0))


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
