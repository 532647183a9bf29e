"""nuScenes v1.0 table records: tokens, static tables, file naming, JSON output."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

CAMERA_CHANNELS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
# Trigger offsets of each camera relative to the LIDAR_TOP keyframe stamp, seconds, as in
# nuScenes (cameras fire as the spinning lidar sweeps across their field of view).
CAMERA_OFFSETS = {"CAM_FRONT_LEFT": -0.043, "CAM_FRONT": -0.035, "CAM_FRONT_RIGHT": -0.027,
                  "CAM_BACK_RIGHT": -0.020, "CAM_BACK": -0.010, "CAM_BACK_LEFT": -0.0005}

# nuScenes category names in the lidarseg index order (the index field of category.json).
CATEGORIES = [
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
    "movable_object.barrier", "movable_object.debris", "movable_object.pushable_pullable",
    "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego",
]
KIND_CATEGORY = {"car": "vehicle.car", "truck": "vehicle.truck", "bicycle": "vehicle.bicycle",
                 "pedestrian": "human.pedestrian.adult"}
ATTRIBUTES = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}
VISIBILITY = [
    {"description": "visibility of whole object is between 0 and 40%", "token": "1", "level": "v0-40"},
    {"description": "visibility of whole object is between 40 and 60%", "token": "2", "level": "v40-60"},
    {"description": "visibility of whole object is between 60 and 80%", "token": "3", "level": "v60-80"},
    {"description": "visibility of whole object is between 80 and 100%", "token": "4", "level": "v80-100"},
]
TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
          "log", "scene", "sample", "sample_data", "sample_annotation", "map")


class Tokens:
    """Deterministic 32-hex tokens: same seed and key, same token."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, *key) -> str:
        return hashlib.md5("/".join(map(str, (self.seed, *key))).encode()).hexdigest()


def yaw_quat(yaw: float) -> list[float]:
    """Quaternion w, x, y, z of a rotation about +z."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def static_tables(tok: Tokens) -> dict[str, list[dict]]:
    cats = [{"token": tok("category", n), "name": n, "description": f"nuScenes category {n}.", "index": i}
            for i, n in enumerate(CATEGORIES)]
    attrs = [{"token": tok("attribute", n), "name": n, "description": d} for n, d in ATTRIBUTES.items()]
    sensors = [{"token": tok("sensor", c), "channel": c, "modality": "camera"} for c in CAMERA_CHANNELS]
    sensors.append({"token": tok("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"})
    return {"category": cats, "attribute": attrs, "visibility": [dict(v) for v in VISIBILITY], "sensor": sensors}


def calibrated_sensors(tok: Tokens, log_token: str, rig: dict, intrinsics: dict[str, np.ndarray]) -> list[dict]:
    recs = []
    for ch in (*CAMERA_CHANNELS, "LIDAR_TOP"):
        r = rig[ch]
        recs.append({
            "token": tok("calibrated_sensor", log_token, ch),
            "sensor_token": tok("sensor", ch),
            "translation": [float(x) for x in r["translation"]],
            "rotation": [float(x) for x in r["rotation"]],
            "camera_intrinsic": intrinsics[ch].tolist() if ch in intrinsics else [],
        })
    return recs


def data_filename(folder: str, logfile: str, channel: str, timestamp: int, ext: str) -> str:
    return f"{folder}/{channel}/{logfile}__{channel}__{timestamp}.{ext}"


def write_tables(table_dir: Path, tables: dict[str, list[dict]]) -> None:
    table_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        with open(table_dir / f"{name}.json", "w") as f:
            json.dump(tables[name], f, indent=0, sort_keys=True)
