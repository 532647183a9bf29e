"""Loader for DriveLM-nuScenes QA JSON (when a user has it; it is not redistributed).

Public format (v1.1 train/val files):
    {scene_token: {"scene_description": str,
                   "key_frames": {sample_token: {"key_object_infos": {...},
                                                 "QA": {"perception": [{"Q": str, "A": str, ...}],
                                                        "prediction": [...],
                                                        "planning": [...],
                                                        "behavior": [...]}}}}}
Object references such as "<c1,CAM_FRONT,1088.3,497.5>" are kept verbatim (they are
part of the answers the model learns). Extra keys per QA (C, con_up, tag...) are ignored.
"""
from __future__ import annotations

import json
from pathlib import Path

from .types import QA_CATEGORIES, QAPair


class DriveLMFormatError(ValueError):
    """The file is not DriveLM-nuScenes QA JSON."""


def load_drivelm(path: str | Path, categories: tuple[str, ...] = QA_CATEGORIES) -> dict[str, list[QAPair]]:
    """{nuScenes sample token: QA pairs in file order, grouped perception..behavior}."""
    path = Path(path)
    bad = [c for c in categories if c not in QA_CATEGORIES]
    if bad:
        raise ValueError(f"unknown DriveLM categories {bad}; known: {list(QA_CATEGORIES)}")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"DriveLM QA file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DriveLMFormatError(f"DriveLM QA file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DriveLMFormatError(f"{path}: top level must map scene tokens to scenes")
    out: dict[str, list[QAPair]] = {}
    for scene_token, scene in data.items():
        frames = scene.get("key_frames") if isinstance(scene, dict) else None
        if not isinstance(frames, dict):
            raise DriveLMFormatError(f"{path}: scene {scene_token} has no 'key_frames' mapping")
        for sample_token, frame in frames.items():
            qa = frame.get("QA") if isinstance(frame, dict) else None
            if not isinstance(qa, dict):
                raise DriveLMFormatError(f"{path}: key frame {sample_token} has no 'QA' mapping")
            pairs = []
            for cat in categories:
                items = qa.get(cat, [])
                if not isinstance(items, list):
                    raise DriveLMFormatError(f"{path}: {sample_token}.QA.{cat} must be a list")
                for k, item in enumerate(items):
                    if not (isinstance(item, dict) and isinstance(item.get("Q"), str)
                            and isinstance(item.get("A"), str)):
                        raise DriveLMFormatError(
                            f"{path}: {sample_token}.QA.{cat}[{k}] needs string fields 'Q' and 'A'")
                    pairs.append(QAPair(item["Q"].strip(), item["A"].strip(), cat))
            if sample_token in out:
                raise DriveLMFormatError(f"{path}: sample {sample_token} appears in two scenes")
            out[sample_token] = pairs
    return out
