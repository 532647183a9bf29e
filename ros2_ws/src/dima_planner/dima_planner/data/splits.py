"""Scene-level train/val splits: the generated world's dima_meta.json, else the devkit's."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nuscenes.utils.splits import create_splits_scenes

META_FILE = "dima_meta.json"


# Written by `dima synth` before it touches a dataroot and removed after dima_meta.json:
# while it exists the world is partial (generation interrupted) and nothing may use it.
INCOMPLETE_FILE = ".dima_synth_incomplete"


class SplitError(ValueError):
    """The requested split cannot be resolved for this dataroot."""


def incomplete_world(dataroot: str | Path) -> str | None:
    """Why `dataroot` must not be trained or evaluated on (an interrupted generation), or None."""
    if (Path(dataroot) / INCOMPLETE_FILE).exists():
        return (f"{dataroot} is a partially generated world (generation was interrupted): run `dima synth` "
                f"(or `make demo`) again to regenerate it")
    return None


def load_meta(dataroot: str | Path) -> dict[str, Any] | None:
    """The generated world's metadata, or None for real nuScenes (no dima_meta.json)."""
    reason = incomplete_world(dataroot)
    if reason:
        raise SplitError(reason)
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


def scenes_in_split(split: str, version: str, scene_names: list[str], scene_tokens: list[str],
                    meta: dict[str, Any] | None) -> set[str]:
    """Names of the scenes of `split` ("train", "val", "test", "all", or a devkit split name)."""
    if split == "all":
        return set(scene_names)
    per_scene = scene_meta(meta)
    if per_scene:
        chosen = set()
        for name, token in zip(scene_names, scene_tokens):
            rec = per_scene.get(name) or per_scene.get(token)
            if rec is None:
                raise SplitError(f"{META_FILE} has no entry for scene {name!r}")
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
