"""Vectorised map elements around the ego, VAD-style (docs/METHOD.md section 2).

Sources, in order: the generated world's `maps/dima_vectors/<location>.json`
({"location", "elements": [{"type", "points"}]}, global metres), the nuScenes map
expansion (`maps/expansion/<location>.json`, via the devkit's NuScenesMap), else no map
(one warning per location). Elements are moved into the current LiDAR frame, clipped to
the perception range with shapely, and resampled to MAP_POINTS equally spaced points.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from shapely.geometry import LineString, MultiLineString, Polygon, box
from shapely.ops import unary_union

from .sample import MAP_CLASSES, MAP_POINTS

# VAD's map perception range: x (right) in [-15, 15], y (forward) in [-30, 30] metres.
MAP_RANGE = (-15.0, -30.0, 15.0, 30.0)


class MapSource:
    """Global-frame polylines per location, loaded once per location."""

    def __init__(self, dataroot: str | Path):
        self.dataroot = Path(dataroot)
        self._elements: dict[str, list[tuple[int, np.ndarray]]] = {}
        self._expansion: dict[str, object] = {}
        self.kind: dict[str, str] = {}

    def elements(self, location: str) -> list[tuple[int, np.ndarray]]:
        """[(label, (P, 2) global points)] for a location whose whole map fits in memory."""
        if location not in self._elements:
            self._elements[location] = self._load(location)
        return self._elements[location]

    def _load(self, location: str) -> list[tuple[int, np.ndarray]]:
        path = self.dataroot / "maps" / "dima_vectors" / f"{location}.json"
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"map vector file {path} is not valid JSON: {e}") from None
            out = []
            for i, el in enumerate(data.get("elements", [])):
                if el.get("type") not in MAP_CLASSES:
                    raise ValueError(f"{path}: element {i} has type {el.get('type')!r}, not one of {MAP_CLASSES}")
                pts = np.asarray(el["points"], dtype=np.float64)
                if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] < 2:
                    raise ValueError(f"{path}: element {i} needs at least 2 points of (x, y), got {pts.shape}")
                out.append((MAP_CLASSES.index(el["type"]), pts[:, :2]))
            self.kind[location] = "dima_vectors"
            return out
        if (self.dataroot / "maps" / "expansion" / f"{location}.json").exists():
            self.kind[location] = "expansion"
            return []  # queried per patch, see expansion_elements
        warnings.warn(
            f"no map vectors for location {location!r} (neither maps/dima_vectors/{location}.json nor "
            f"maps/expansion/{location}.json under {self.dataroot}); samples there get an empty map",
            stacklevel=2,
        )
        self.kind[location] = "none"
        return []

    def expansion_elements(self, location: str, center: np.ndarray, radius: float) -> list[tuple[int, np.ndarray]]:
        """Elements of the nuScenes map expansion near `center` (global xy)."""
        from nuscenes.map_expansion.map_api import NuScenesMap

        if location not in self._expansion:
            self._expansion[location] = NuScenesMap(dataroot=str(self.dataroot), map_name=location)
        nmap = self._expansion[location]
        patch = (center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius)
        recs = nmap.get_records_in_patch(patch, ["lane_divider", "road_divider", "ped_crossing", "road_segment", "lane"])
        out: list[tuple[int, np.ndarray]] = []
        for layer in ("lane_divider", "road_divider"):
            for tok in recs[layer]:
                line = nmap.extract_line(nmap.get(layer, tok)["line_token"])
                if not line.is_empty:
                    out.append((MAP_CLASSES.index("divider"), np.asarray(line.coords)[:, :2]))
        for tok in recs["ped_crossing"]:
            poly = nmap.extract_polygon(nmap.get("ped_crossing", tok)["polygon_token"])
            out.append((MAP_CLASSES.index("ped_crossing"), np.asarray(poly.exterior.coords)[:, :2]))
        # Road boundary = outline of the union of drivable road segments and lanes (as VAD).
        polys = [nmap.extract_polygon(nmap.get(layer, tok)["polygon_token"])
                 for layer in ("road_segment", "lane") for tok in recs[layer]]
        if polys:
            union = unary_union([p.buffer(0) for p in polys])
            for geom in getattr(union, "geoms", [union]):
                if isinstance(geom, Polygon):
                    for ring in [geom.exterior, *geom.interiors]:
                        out.append((MAP_CLASSES.index("boundary"), np.asarray(ring.coords)[:, :2]))
        return out


def _resample(line: LineString, n: int = MAP_POINTS) -> np.ndarray:
    dist = np.linspace(0.0, line.length, n)
    return np.array([line.interpolate(d).coords[0][:2] for d in dist])


def local_map_vectors(source: MapSource, location: str, global2lidar: np.ndarray,
                      lidar2global: np.ndarray, map_range=MAP_RANGE) -> tuple[np.ndarray, np.ndarray]:
    """Map elements in the LiDAR frame: float32 (M, MAP_POINTS, 2) and int64 labels (M,)."""
    elements = source.elements(location)
    if source.kind.get(location) == "expansion":
        radius = float(np.hypot(max(abs(map_range[0]), map_range[2]), max(abs(map_range[1]), map_range[3]))) + 5.0
        elements = source.expansion_elements(location, lidar2global[:2, 3], radius)
    clip = box(*map_range)
    vecs, labels = [], []
    r, t = global2lidar[:3, :3], global2lidar[:3, 3]
    centre = lidar2global[:2, 3]
    reach = float(np.hypot(max(abs(map_range[0]), map_range[2]), max(abs(map_range[1]), map_range[3])))
    for label, pts in elements:
        # Cheap bounding-box rejection before the shapely clip (whole-city maps are long).
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        if np.any(lo > centre + reach) or np.any(hi < centre - reach):
            continue
        # Map polylines are 2D; put them at the sensor's height so only the planar pose matters.
        p3 = np.concatenate([pts, np.full((len(pts), 1), lidar2global[2, 3])], axis=1)
        local = (p3 @ r.T + t)[:, :2]
        piece = LineString(local).intersection(clip)
        if piece.is_empty:
            continue
        parts = piece.geoms if isinstance(piece, MultiLineString) or hasattr(piece, "geoms") else [piece]
        for part in parts:
            if isinstance(part, LineString) and part.length > 1e-3:
                vecs.append(_resample(part))
                labels.append(label)
    if not vecs:
        return np.zeros((0, MAP_POINTS, 2), np.float32), np.zeros((0,), np.int64)
    return np.asarray(vecs, np.float32), np.asarray(labels, np.int64)
