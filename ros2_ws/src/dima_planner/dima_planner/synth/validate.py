"""validate_dataroot: fail early, in one clear sentence, on a broken nuScenes-format dataroot."""
from __future__ import annotations

import json
from pathlib import Path

from .nuscenes_writer import TABLES


class DatarootError(ValueError):
    """A dataroot's tables are missing, unreadable, inconsistent or point at missing files."""


def validate_dataroot(dataroot: str | Path, version: str, check_files: bool = True) -> dict[str, int]:
    """Check a nuScenes-layout dataroot (real or synthetic); returns row counts per table.

    Checks: every table exists and parses as a list of records with tokens; references
    between tables resolve; files named by sample_data and map exist (and are non-empty).
    """
    root = Path(dataroot)
    tdir = root / version
    if not tdir.is_dir():
        raise DatarootError(f"{root}: no table folder {version}/ (is --version right? "
                            f"found: {sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else 'no dataroot'})")
    tables: dict[str, list[dict]] = {}
    for name in TABLES:
        path = tdir / f"{name}.json"
        if not path.exists():
            raise DatarootError(f"{path}: table missing")
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatarootError(f"{path}: not valid JSON ({e}); the file is corrupt or truncated") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "token" in r for r in rows):
            raise DatarootError(f"{path}: expected a JSON list of records that each have a 'token'")
        tables[name] = rows
    tokens = {name: {r["token"] for r in rows} for name, rows in tables.items()}

    def ref(table: str, field: str, target: str, allow_empty: bool = False) -> None:
        for r in tables[table]:
            v = r.get(field)
            if allow_empty and v == "":
                continue
            if v not in tokens[target]:
                raise DatarootError(f"{tdir / table}.json: record {r['token']} has {field}={v!r} "
                                    f"which is not a token of {target}")

    ref("sample", "scene_token", "scene")
    ref("sample", "prev", "sample", True)
    ref("sample", "next", "sample", True)
    ref("sample_data", "sample_token", "sample")
    ref("sample_data", "ego_pose_token", "ego_pose")
    ref("sample_data", "calibrated_sensor_token", "calibrated_sensor")
    ref("sample_data", "prev", "sample_data", True)
    ref("sample_data", "next", "sample_data", True)
    ref("sample_annotation", "sample_token", "sample")
    ref("sample_annotation", "instance_token", "instance")
    ref("instance", "category_token", "category")
    ref("calibrated_sensor", "sensor_token", "sensor")
    ref("scene", "log_token", "log")
    ref("scene", "first_sample_token", "sample")
    ref("scene", "last_sample_token", "sample")
    if not tables["map"]:
        raise DatarootError(f"{tdir}/map.json: no map records (the devkit needs one per location)")
    logs_with_map = {t for m in tables["map"] for t in m.get("log_tokens", [])}
    missing = tokens["log"] - logs_with_map
    if missing:
        raise DatarootError(f"{tdir}/map.json: logs {sorted(missing)[:3]} have no map record")
    if check_files:
        for m in tables["map"]:
            if not (root / m["filename"]).exists():
                raise DatarootError(f"{root}: map file {m['filename']} is missing")
        for r in tables["sample_data"]:
            p = root / r["filename"]
            if not p.exists():
                raise DatarootError(f"{root}: sample_data {r['token']} names {r['filename']}, which is missing")
    return {name: len(rows) for name, rows in tables.items()}
