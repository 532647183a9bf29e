"""Train/val splits: the generated world's dima_meta.json, else the devkit's.

A generated world records its towns and their roles (train | val | heldout) beside each
scene's split. Its split is location-disjoint: every scene's split is the role of the town
its log was recorded in (log.location), and held-out towns have no scene. A world whose
records say otherwise is refused (SplitError), so training and validation never share a
road. `lane_overlap` measures what the split promises: how much of one set of drives runs on
lanes another set drives.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.utils.splits import create_splits_scenes

META_FILE = "dima_meta.json"


class SplitError(ValueError):
    """The requested split cannot be resolved for this dataroot."""


def load_meta(dataroot: str | Path) -> dict[str, Any] | None:
    """The generated world's metadata, or None for real nuScenes (no dima_meta.json)."""
    path = Path(dataroot) / META_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SplitError(f"{path} is not valid JSON: {e}") from None


def scene_meta(meta: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per-scene metadata keyed by scene name (and token, when given)."""
    if not meta:
        return {}
    scenes = meta.get("scenes")
    if scenes is None:  # also accept a bare {scene_name: {"split": ...}} mapping
        scenes = {k: v for k, v in meta.items() if isinstance(v, dict) and "split" in v}
    out: dict[str, dict[str, Any]] = {}
    if isinstance(scenes, dict):
        for key, rec in scenes.items():
            rec = rec if isinstance(rec, dict) else {"split": rec}
            out[key] = rec
            for alias in ("name", "token", "scene_name", "scene_token"):
                if isinstance(rec.get(alias), str):
                    out[rec[alias]] = rec
    elif isinstance(scenes, list):
        for rec in scenes:
            for alias in ("name", "token", "scene_name", "scene_token"):
                if isinstance(rec.get(alias), str):
                    out[rec[alias]] = rec
    else:
        raise SplitError(f"{META_FILE}: 'scenes' must be a mapping or a list, got {type(scenes).__name__}")
    return out


def town_roles(meta: dict[str, Any] | None) -> dict[str, str]:
    """{town (log.location): role} of a generated world with towns; {} for one without."""
    towns = (meta or {}).get("towns") or []
    if not isinstance(towns, list) or not all(isinstance(t, dict) and "name" in t and "role" in t for t in towns):
        raise SplitError(f"{META_FILE}: 'towns' must be a list of {{name, role}} records")
    return {t["name"]: t["role"] for t in towns}


def scenes_in_split(split: str, version: str, scene_names: list[str], scene_tokens: list[str],
                    meta: dict[str, Any] | None, scene_locations: list[str] | None = None) -> set[str]:
    """Names of the scenes of `split` ("train", "val", "test", "all", or a devkit split name).

    With a generated world's towns, each scene's location (log.location, from
    `scene_locations`, else the scene's recorded town) must be a town whose role is the
    scene's split: the split is location-disjoint or refused."""
    if split == "all":
        return set(scene_names)
    per_scene = scene_meta(meta)
    if per_scene:
        roles = town_roles(meta)
        locations = scene_locations if scene_locations is not None else [None] * len(scene_names)
        chosen = set()
        for name, token, location in zip(scene_names, scene_tokens, locations):
            rec = per_scene.get(name) or per_scene.get(token)
            if rec is None:
                raise SplitError(f"{META_FILE} has no entry for scene {name!r}")
            if roles:
                town = location if location is not None else rec.get("town")
                if town not in roles:
                    raise SplitError(f"scene {name!r} was recorded in {town!r}, which is none of the world's towns "
                                     f"({', '.join(roles)}) in {META_FILE}")
                if roles[town] != rec.get("split"):
                    raise SplitError(f"scene {name!r} is in the {rec.get('split')} split but drives {town!r}, a "
                                     f"{roles[town]} town: the world's split is not location-disjoint; "
                                     f"generate the world again (dima synth)")
            if rec.get("split") == split:
                chosen.add(name)
        return chosen
    splits = create_splits_scenes()
    key = split
    if "mini" in version and split in ("train", "val"):
        key = f"mini_{split}"
    if key not in splits:
        raise SplitError(f"unknown split {split!r} for {version} (known: all, {', '.join(sorted(splits))})")
    return set(splits[key]) & set(scene_names)


def ego_tracks(nusc, scene_names: set[str] | list[str]) -> list[np.ndarray]:
    """(K, 3) x, y, yaw of the ego at each LIDAR_TOP keyframe, per named scene (global frame)."""
    from pyquaternion import Quaternion

    out = []
    for scene in nusc.scene:
        if scene["name"] not in scene_names:
            continue
        rows, tok = [], scene["first_sample_token"]
        while tok:
            sample = nusc.get("sample", tok)
            pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
            rows.append([*pose["translation"][:2], Quaternion(pose["rotation"]).yaw_pitch_roll[0]])
            tok = sample["next"]
        out.append(np.array(rows, float).reshape(-1, 3))
    return out


def _densify(tracks: list[np.ndarray], step: float) -> np.ndarray:
    """(N, 3) points every <= `step` metres along each track, with the heading of travel."""
    pts = []
    for tr in tracks:
        for p, q in zip(tr[:-1], tr[1:]):
            d = float(np.hypot(*(q[:2] - p[:2])))
            if d < 0.05:  # standing: the pose's own heading
                pts.append(p[None])
                continue
            n = max(1, int(np.ceil(d / step)))
            t = np.arange(n)[:, None] / n
            xy = p[:2] + t * (q[:2] - p[:2])
            pts.append(np.concatenate([xy, np.full((n, 1), np.arctan2(q[1] - p[1], q[0] - p[0]))], 1))
        if len(tr):
            pts.append(tr[-1:])
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def lane_overlap(query: list[np.ndarray], reference: list[np.ndarray], lateral: float = 1.75,
                 heading_deg: float = 30.0, step: float = 0.5) -> float:
    """Share of the query drives (tracks of x, y, yaw; by length) that run on a lane the
    reference drives run on: within `lateral` metres (half a 3.5-m lane) of a reference drive,
    heading within `heading_deg`. Purely geometric, blind to location names: two towns that
    were one network under two names would overlap fully. 0.0 when the query is empty."""
    from scipy.spatial import cKDTree

    q, r = _densify(query, step), _densify(reference, step)
    if not len(q):
        return 0.0
    if not len(r):
        return 0.0
    tree = cKDTree(r[:, :2])
    near = tree.query_ball_point(q[:, :2], lateral + step / 2)
    cos_max = np.cos(np.radians(heading_deg))
    on = np.array([bool(idx) and bool(np.any(np.cos(r[idx, 2] - h) >= cos_max)) for idx, h in zip(near, q[:, 2])])
    return float(on.mean())
