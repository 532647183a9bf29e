"""Pose helpers for nuScenes records (4x4 homogeneous matrices, float64)."""
from __future__ import annotations

import numpy as np
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion


def pose_matrix(record: dict) -> np.ndarray:
    """4x4 transform of an ego_pose / calibrated_sensor record (child frame -> parent frame)."""
    return transform_matrix(record["translation"], Quaternion(record["rotation"]), inverse=False)


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


def wrap_angle(a):
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi
