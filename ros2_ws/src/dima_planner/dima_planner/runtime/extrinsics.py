"""The transform tree for the planner node's extrinsics (no rclpy: the node feeds it messages).

Per camera the node needs cam2ego (optical frame -> base_link) and lidar2ego, from which
cam2lidar = inv(lidar2ego) . cam2ego; from /tf_static and, with extrinsics_source: tf,
also /tf (carla-ros-bridge publishes its sensor poses there), or from the rig JSON
(data.geometry.load_rig). A tree must be a tree: a transform that would close a cycle (a
frame its own parent, or a loop through others, across /tf and /tf_static alike) is
rejected on arrival with the reason, so a lookup always ends; a /tf_static transform that
places a sensor implausibly far away is rejected on arrival too (a /tf edge may be a moving
map -> base_link pose, so there the limit applies to the extrinsic a lookup composes).

/tf transforms are stamped: each edge keeps its recent samples, and a lookup for an image
at stamp t uses the sample nearest t, which must lie within max_age of t (a sensor pose
nobody has re-published for longer is stale, not eternal). /tf_static edges hold for all
time. A child frame has one parent; a message naming another parent replaces the edge
(tf2 does the same, with a warning).
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

from ..data.geometry import RIG_HW, RIG_SIZE, Rig, load_rig, transform_from_msg
from .errors import InputError
from .sync import stamp_to_ns

__all__ = ["RIG_HW", "RIG_SIZE", "Rig", "StaticTransforms", "load_rig"]

MAX_DEPTH = 64  # longer chains are refused on arrival; no real vehicle comes close
SAMPLES = 64  # /tf samples kept per edge (a few seconds at CARLA's 20 Hz)


class _Edge:
    __slots__ = ("parent", "static", "matrix", "samples")

    def __init__(self, parent: str, static: bool, matrix: np.ndarray | None = None):
        self.parent, self.static, self.matrix = parent, static, matrix
        self.samples: deque[tuple[int, np.ndarray]] = deque(maxlen=SAMPLES)

    def at(self, stamp_ns: int | None, max_age_ns: int, child: str) -> np.ndarray:
        if self.static:
            return self.matrix
        if stamp_ns is None:
            return self.samples[-1][1]
        best = min(self.samples, key=lambda s: abs(s[0] - stamp_ns))
        age = abs(best[0] - stamp_ns)
        if age > max_age_ns:
            raise InputError("stale_extrinsics", f"/tf {self.parent} -> {child}: nearest sample is {age / 1e9:.3f} s "
                                                 f"from the image stamp (tf_max_age {max_age_ns / 1e9:g} s)")
        return best[1]


class StaticTransforms:
    """child -> edge (parent, static matrix or stamped /tf samples), kept acyclic. Thread-safe."""

    def __init__(self) -> None:
        self._edges: dict[str, _Edge] = {}
        self._lock = threading.Lock()

    def add(self, tf_msg, max_translation: float = float("inf"), static: bool = True) -> list[str]:
        """Add a tf2_msgs/TFMessage from /tf_static (static=True) or /tf; returns the reasons
        of the transforms it rejected."""
        bad = []
        topic = "/tf_static" if static else "/tf"
        for t in tf_msg.transforms:
            child, parent = t.child_frame_id.lstrip("/"), t.header.frame_id.lstrip("/")
            what = f"{topic} {parent} -> {child}"
            try:
                if not child or not parent:
                    raise ValueError(f"{what}: empty frame id")
                m = transform_from_msg(t.transform, what)
                if static and np.linalg.norm(m[:3, 3]) > max_translation:
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
                edge = self._edges.get(child)
                if static:
                    self._edges[child] = _Edge(parent, True, m)
                    continue
                if edge is None or edge.static or edge.parent != parent:
                    edge = self._edges[child] = _Edge(parent, False)
                edge.samples.append((stamp_to_ns(t.header.stamp), m))
        return bad

    def _chain_locked(self, frame: str) -> list[str]:
        """frame and its ancestors, root last (the tree is acyclic by construction)."""
        chain = [frame]
        while chain[-1] in self._edges and len(chain) <= MAX_DEPTH:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def lookup(self, target: str, source: str, stamp_ns: int | None = None, max_age_ns: int = 0) -> np.ndarray:
        """T_target<-source (maps points in `source` to `target`), or InputError. /tf edges on
        the way are taken at stamp_ns (within max_age_ns; None = their newest sample)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        with self._lock:
            edges = {c: (e.parent, e.static, e.matrix, list(e.samples)) for c, e in self._edges.items()}

        def chain(frame: str) -> list[str]:
            out = [frame]
            while out[-1] in edges and len(out) <= MAX_DEPTH:
                nxt = edges[out[-1]][0]
                if nxt in out:  # cannot happen (add keeps the tree acyclic); never loop anyway
                    break
                out.append(nxt)
            return out

        a, b = chain(source), chain(target)
        common = next((f for f in a if f in b), None)
        if common is None:
            raise InputError("no_extrinsics", f"no /tf_static or /tf chain from {source!r} to {target!r}")

        def to_common(path: list[str]) -> np.ndarray:
            m = np.eye(4)
            for child in path[:path.index(common)]:
                parent, static, matrix, samples = edges[child]
                edge = _Edge(parent, static, matrix)
                edge.samples.extend(samples)
                m = edge.at(stamp_ns, max_age_ns, child) @ m
            return m

        return np.linalg.inv(to_common(b)) @ to_common(a)

    def __len__(self) -> int:
        with self._lock:
            return len(self._edges)
