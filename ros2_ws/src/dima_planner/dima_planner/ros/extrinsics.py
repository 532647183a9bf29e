"""Camera rig geometry for the node: the rig JSON and a static-transform graph from /tf_static.

Both give, per camera, cam2ego (optical frame -> base_link) and lidar2ego, from which the
planner's cam2lidar = inv(lidar2ego) . cam2ego. No rclpy here: the node feeds it messages.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from transforms3d.quaternions import quat2mat

from .conversions import InputError, transform_to_matrix

RIG_SIZE = (1600, 900)  # (width, height) the rig intrinsics are for


@dataclass(frozen=True)
class Rig:
    cam2ego: dict[str, np.ndarray]  # 4x4 per camera name
    intrinsics: dict[str, np.ndarray]  # 3x3 per camera name, for RIG_SIZE images
    lidar2ego: np.ndarray


def _pose(rec: dict) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = quat2mat(np.asarray(rec["rotation"], dtype=np.float64))
    m[:3, 3] = rec["translation"]
    return m


def load_rig(path: str | Path | None = None) -> Rig:
    """The rig JSON (nuscenes_rig_n015.json format); None or '' = the packaged nuScenes rig."""
    if not path:
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
    cams = {k: v for k, v in doc.items() if k.startswith("CAM_")}
    return Rig(cam2ego={k: _pose(v) for k, v in cams.items()},
               intrinsics={k: np.asarray(v["camera_intrinsic"], dtype=np.float64) for k, v in cams.items()},
               lidar2ego=_pose(doc["LIDAR_TOP"]))


class StaticTransforms:
    """The /tf_static tree: child -> (parent, T_parent<-child). Thread-safe; chains are composed."""

    def __init__(self) -> None:
        self._edges: dict[str, tuple[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def add(self, tf_msg) -> list[str]:
        """Add a tf2_msgs/TFMessage; returns the reasons of transforms it had to skip."""
        bad = []
        for t in tf_msg.transforms:
            child, parent = t.child_frame_id.lstrip("/"), t.header.frame_id.lstrip("/")
            try:
                m = transform_to_matrix(t.transform, f"/tf_static {parent} -> {child}")
            except InputError as e:
                bad.append(e.reason)
                continue
            with self._lock:
                self._edges[child] = (parent, m)
        return bad

    def lookup(self, target: str, source: str) -> np.ndarray:
        """T_target<-source (maps points in `source` to `target`), or InputError."""
        target, source = target.lstrip("/"), source.lstrip("/")
        with self._lock:
            edges = dict(self._edges)

        def to_root(frame: str) -> dict[str, np.ndarray]:
            chain, m = {frame: np.eye(4)}, np.eye(4)
            while frame in edges and len(chain) < 64:
                frame, t = edges[frame][0], edges[frame][1]
                m = t @ m
                chain[frame] = m
            return chain

        a, b = to_root(source), to_root(target)
        common = next((f for f in a if f in b), None)
        if common is None:
            raise InputError("no_extrinsics", f"no /tf_static chain from {source!r} to {target!r}")
        return np.linalg.inv(b[common]) @ a[common]

    def __len__(self) -> int:
        with self._lock:
            return len(self._edges)
