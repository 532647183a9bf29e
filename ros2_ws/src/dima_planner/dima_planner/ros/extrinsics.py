"""The /tf_static tree for the planner node (no rclpy: the node feeds it messages).

Per camera the node needs cam2ego (optical frame -> base_link) and lidar2ego, from which
cam2lidar = inv(lidar2ego) . cam2ego; from /tf_static here, or from the rig JSON
(data.geometry.load_rig). A static tree must be a tree: a transform that would close a
cycle (a frame its own parent, or a loop through others) or that places a sensor
implausibly far away is rejected on arrival with the reason, so a lookup always ends.
"""
from __future__ import annotations

import threading

import numpy as np

from ..data.geometry import RIG_HW, RIG_SIZE, Rig, load_rig, transform_from_msg
from .errors import InputError

__all__ = ["RIG_HW", "RIG_SIZE", "Rig", "StaticTransforms", "load_rig"]

MAX_DEPTH = 64  # longer chains are refused on arrival; no real vehicle comes close


class StaticTransforms:
    """child -> (parent, T_parent<-child), kept acyclic. Thread-safe."""

    def __init__(self) -> None:
        self._edges: dict[str, tuple[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def add(self, tf_msg, max_translation: float = float("inf")) -> list[str]:
        """Add a tf2_msgs/TFMessage; returns the reasons of the transforms it rejected."""
        bad = []
        for t in tf_msg.transforms:
            child, parent = t.child_frame_id.lstrip("/"), t.header.frame_id.lstrip("/")
            what = f"/tf_static {parent} -> {child}"
            try:
                if not child or not parent:
                    raise ValueError(f"{what}: empty frame id")
                m = transform_from_msg(t.transform, what)
                if np.linalg.norm(m[:3, 3]) > max_translation:
                    raise ValueError(f"{what}: translation {np.linalg.norm(m[:3, 3]):.3g} m exceeds "
                                     f"max_extrinsic_translation {max_translation:g} m")
            except ValueError as e:
                bad.append(str(e))
                continue
            with self._lock:
                chain = self._chain_locked(parent)
                if child in chain:
                    bad.append(f"{what}: would close a cycle ({' -> '.join([child, *chain[:chain.index(child) + 1]])}); "
                               f"rejected")
                    continue
                if len(chain) >= MAX_DEPTH:
                    bad.append(f"{what}: chain deeper than {MAX_DEPTH} frames; rejected")
                    continue
                self._edges[child] = (parent, m)
        return bad

    def _chain_locked(self, frame: str) -> list[str]:
        """frame and its ancestors, root last (the tree is acyclic by construction)."""
        chain = [frame]
        while chain[-1] in self._edges and len(chain) <= MAX_DEPTH:
            chain.append(self._edges[chain[-1]][0])
        return chain

    def lookup(self, target: str, source: str) -> np.ndarray:
        """T_target<-source (maps points in `source` to `target`), or InputError."""
        target, source = target.lstrip("/"), source.lstrip("/")
        with self._lock:
            edges = dict(self._edges)

        def to_root(frame: str) -> dict[str, np.ndarray]:
            chain, m = {frame: np.eye(4)}, np.eye(4)
            while frame in edges and len(chain) <= MAX_DEPTH:
                frame, t = edges[frame]
                if frame in chain:  # cannot happen (add keeps the tree acyclic); never loop anyway
                    break
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
