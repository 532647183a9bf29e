"""Pose and camera geometry: the one place for 4x4 pose matrices and intrinsics scaling.

Conventions: a pose is the 4x4 float64 child -> parent transform; quaternions are
(w, x, y, z) in nuScenes records and (x, y, z, w) in ROS messages (both spelled out in the
function names). Intrinsics of a resized image: scale_intrinsics (pixel-corner
convention, (H, W) axis order, as data/inputs.py resizes).
Used by the dataset, the world generator, the bag tools and the planner node alike.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import transforms3d


# ---- poses -----------------------------------------------------------------------------------------
def pose_from_quat(translation, rotation_wxyz) -> np.ndarray:
    """4x4 child -> parent transform from a translation and a (w, x, y, z) quaternion
    (normalised here, as pyquaternion does)."""
    m = np.eye(4)
    m[:3, :3] = transforms3d.quaternions.quat2mat(np.asarray(rotation_wxyz, dtype=np.float64))
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def pose_matrix(record: dict) -> np.ndarray:
    """4x4 transform of an ego_pose / calibrated_sensor record (child frame -> parent frame)."""
    return pose_from_quat(record["translation"], record["rotation"])


def checked_pose(translation, rotation_wxyz, what: str = "pose", unit_tolerance: float = 1e-3) -> np.ndarray:
    """pose_from_quat for data from outside (messages): ValueError unless the quaternion is
    finite and unit length and the translation finite."""
    q = np.asarray(rotation_wxyz, dtype=np.float64)
    t = np.asarray(translation, dtype=np.float64)
    if not np.all(np.isfinite(q)) or abs(np.linalg.norm(q) - 1.0) > unit_tolerance:
        raise ValueError(f"{what} has a non-unit or non-finite quaternion {q.tolist()}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{what} has a non-finite translation {t.tolist()}")
    return pose_from_quat(t, q / np.linalg.norm(q))


def pose_from_msg(pose, what: str = "pose") -> np.ndarray:
    """geometry_msgs/Pose (read by attribute) -> checked 4x4."""
    p, r = pose.position, pose.orientation
    return checked_pose((p.x, p.y, p.z), (r.w, r.x, r.y, r.z), what)


def transform_from_msg(tf, what: str = "transform") -> np.ndarray:
    """geometry_msgs/Transform (child -> parent, read by attribute) -> checked 4x4."""
    t, r = tf.translation, tf.rotation
    return checked_pose((t.x, t.y, t.z), (r.w, r.x, r.y, r.z), what)


def matrix_to_quat_wxyz(matrix: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation part of a 3x3/4x4 as a (w, x, y, z) quaternion with w >= 0 (equal rotations,
    equal quaternions)."""
    w, x, y, z = transforms3d.quaternions.mat2quat(np.asarray(matrix, dtype=np.float64)[:3, :3])
    if w < 0:
        w, x, y, z = -w, -x, -y, -z
    return float(w), float(x), float(y), float(z)


def matrix_to_quat_xyzw(matrix: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation part of a 3x3/4x4 as a ROS (x, y, z, w) quaternion."""
    w, x, y, z = matrix_to_quat_wxyz(matrix)
    return x, y, z, w


def quat_xyzw_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    return transforms3d.quaternions.quat2mat((w, x, y, z))


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def sensor_to_global(nusc, sample_data_token: str) -> np.ndarray:
    """sensor -> global at that sample_data's own timestamp: ego_pose x calibrated_sensor."""
    sd = nusc.get("sample_data", sample_data_token)
    ego2global = pose_matrix(nusc.get("ego_pose", sd["ego_pose_token"]))
    sensor2ego = pose_matrix(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
    return ego2global @ sensor2ego


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (..., 3) points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:3, :3].T + matrix[:3, 3]


def yaw_of(matrix: np.ndarray) -> float:
    """Heading of a frame's +x axis in its parent's xy plane (ccw, radians)."""
    return float(np.arctan2(matrix[1, 0], matrix[0, 0]))


def ego_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 planar pose (x, y, heading) -> its frame-to-parent transform (z = 0)."""
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:2, 3] = (x, y)
    return m


STANDING_STEP_M = 0.05  # a track step shorter than this is standing still: it keeps the heading


def travel_headings(points, start_xy, start_heading: float) -> np.ndarray:
    """The heading (rad) at each point of a planar track: the direction of travel from the
    previous point (start_xy before the first), kept from the step before while a step is
    under STANDING_STEP_M (standing still has no direction). The orientation of every
    published plan pose, the simulator's plan tracking and Autoware's predicted paths."""
    out = np.empty(len(points))
    heading, prev = float(start_heading), np.asarray(start_xy, np.float64)[:2]
    for i, p in enumerate(np.asarray(points, np.float64)):
        d = p[:2] - prev
        if math.hypot(d[0], d[1]) > STANDING_STEP_M:
            heading = math.atan2(d[1], d[0])
        out[i] = heading
        prev = p[:2]
    return out


def yaw_to_quat_xyzw(yaw: float) -> tuple[float, float, float, float]:
    return 0.0, 0.0, float(np.sin(yaw / 2.0)), float(np.cos(yaw / 2.0))


def wrap_angle(a):
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


# ---- images resized for the model: the (H, W) order of data/inputs.py -----------------------------
def fitted_size(h0: int, w0: int, size: Sequence[int], fit: str = "stretch") -> tuple[int, int]:
    """(H, W) the image content is resized to: `size` itself ("stretch"), or the largest
    aspect-preserving size inside it ("pad": VAD scales and pads the rest with zeros)."""
    if fit == "stretch":
        return int(size[0]), int(size[1])
    if fit != "pad":
        raise ValueError(f"image fit must be 'stretch' or 'pad', got {fit!r}")
    s = min(size[0] / h0, size[1] / w0)
    return min(int(size[0]), int(round(h0 * s))), min(int(size[1]), int(round(w0 * s)))


def scale_intrinsics(k: np.ndarray, from_hw: Sequence[int], to_hw: Sequence[int] | None,
                     fit: str = "stretch") -> np.ndarray:
    """Intrinsics of an image resized from (H0, W0) to (H, W): fx, cx scale by W/W0; fy, cy by H/H0
    (fit="pad": both by the aspect-preserving factor; the padding at the bottom / right does
    not move the origin).

    Axis order is (H, W), as in data/inputs.py (the model's image_size order)."""
    k = np.asarray(k, np.float64)
    if to_hw is None:
        return k.copy()
    to_hw = fitted_size(int(from_hw[0]), int(from_hw[1]), to_hw, fit)
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return np.diag([sx, sy, 1.0]) @ k


# ---- camera rig --------------------------------------------------------------------------------------
RIG_SIZE = (1600, 900)  # (width, height) the packaged rig's intrinsics are for
RIG_HW = (900, 1600)  # the same as (height, width), data/inputs.py's axis order


@dataclass(frozen=True)
class Rig:
    cam2ego: dict[str, np.ndarray]  # 4x4 per camera name
    intrinsics: dict[str, np.ndarray]  # 3x3 per camera name, for RIG_SIZE images
    lidar2ego: np.ndarray


def rig_records(path: str | Path | None = None) -> dict[str, dict]:
    """The rig JSON (nuscenes_rig_n015.json format: per sensor its calibrated_sensor record,
    translation, rotation (w, x, y, z), camera_intrinsic) as read; None or '' = the packaged
    nuScenes rig. The generator writes these records into the world it makes; load_rig
    gives them as matrices."""
    if not path:
        from importlib import resources

        text = resources.files("dima_planner.data").joinpath("nuscenes_rig_n015.json").read_text()
        where = "packaged nuscenes_rig_n015.json"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"rig file {p} does not exist")
        text, where = p.read_text(), str(p)
    doc = json.loads(text)
    if "LIDAR_TOP" not in doc:
        raise ValueError(f"{where}: no LIDAR_TOP entry")
    return doc


def load_rig(path: str | Path | None = None) -> Rig:
    """The rig of rig_records(path) as matrices; None or '' = the packaged nuScenes rig."""
    doc = rig_records(path)
    cams = {k: v for k, v in doc.items() if k.startswith("CAM_")}
    return Rig(cam2ego={k: pose_matrix(v) for k, v in cams.items()},
               intrinsics={k: np.asarray(v["camera_intrinsic"], dtype=np.float64) for k, v in cams.items()},
               lidar2ego=pose_matrix(doc["LIDAR_TOP"]))
