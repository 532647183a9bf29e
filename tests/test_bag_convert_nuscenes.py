"""`dima bag convert` on the real nuScenes layout: no dima_meta.json (splits come from the
devkit's create_splits_scenes), a v1.0-mini table directory, real mini scene names, and
camera sweeps (non-keyframe sample_data under sweeps/) between the 2 Hz keyframes.

The dataroot is tests/test_data.py's hand-built nuScenes-format fixture, copied and turned
into that layout here (sweeps added, dima_meta.json removed, scenes renamed)."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dima_planner.data.sample import CAMERAS
from dima_planner.bags import bag_convert, bag_io
from test_data import IMG_H, IMG_W, VERSION, build_fixture

MINI = "v1.0-mini"
# scene-A -> a mini_train scene, scene-B -> a mini_val scene (nuscenes.utils.splits)
RENAME = {"scene-A": "scene-0061", "scene-B": "scene-0103"}
SWEEPS_PER_GAP = 2  # nuScenes cameras: 12 Hz, i.e. 5 sweeps between keyframes; 2 keep it small


def add_camera_sweeps(root: Path, version: str) -> int:
    """Insert SWEEPS_PER_GAP camera sweeps between consecutive keyframes of every camera
    chain (own ego poses, JPEGs under sweeps/CHANNEL/), as in a real nuScenes dataroot."""
    tdir = root / version
    sd = json.loads((tdir / "sample_data.json").read_text())
    poses = {p["token"]: p for p in json.loads((tdir / "ego_pose.json").read_text())}
    calib = {c["token"]: c for c in json.loads((tdir / "calibrated_sensor.json").read_text())}
    sensor = {s["token"]: s["channel"] for s in json.loads((tdir / "sensor.json").read_text())}
    by_token = {r["token"]: r for r in sd}
    rng = np.random.default_rng(1)
    added = 0
    new_rows, new_poses = [], []
    for rec in list(sd):
        ch = sensor[calib[rec["calibrated_sensor_token"]]["sensor_token"]]
        if ch not in CAMERAS or not rec["next"]:
            continue
        nxt = by_token[rec["next"]]
        p0, p1 = poses[rec["ego_pose_token"]], poses[nxt["ego_pose_token"]]
        prev = rec
        for k in range(1, SWEEPS_PER_GAP + 1):
            a = k / (SWEEPS_PER_GAP + 1)
            ts = int(rec["timestamp"] + a * (nxt["timestamp"] - rec["timestamp"]))
            pose = {"token": uuid.uuid4().hex, "timestamp": ts, "rotation": p0["rotation"],
                    "translation": (np.array(p0["translation"]) * (1 - a) + np.array(p1["translation"]) * a).tolist()}
            fn = f"sweeps/{ch}/{ch}_{ts}.jpg"
            (root / fn).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (IMG_H, IMG_W, 3), dtype=np.uint8)).save(root / fn)
            row = dict(rec, token=uuid.uuid4().hex, ego_pose_token=pose["token"], timestamp=ts, is_key_frame=False,
                       filename=fn, prev=prev["token"], next="", sample_token=nxt["sample_token"])
            prev["next"] = row["token"]
            new_rows.append(row)
            new_poses.append(pose)
            prev = row
            added += 1
        prev["next"] = nxt["token"]
        nxt["prev"] = prev["token"]
    (tdir / "sample_data.json").write_text(json.dumps(sd + new_rows))
    (tdir / "ego_pose.json").write_text(json.dumps(list(poses.values()) + new_poses))
    return added


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory) -> Path:
    root = build_fixture(tmp_path_factory.mktemp("nuscenes") / "nuscenes")
    (root / "dima_meta.json").unlink()
    (root / VERSION).rename(root / MINI)
    scenes = json.loads((root / MINI / "scene.json").read_text())
    for s in scenes:
        s["name"] = RENAME[s["name"]]
    (root / MINI / "scene.json").write_text(json.dumps(scenes))
    assert add_camera_sweeps(root, MINI) > 0
    return root


def _read(bag: Path) -> dict[str, list[tuple[int, object]]]:
    from rosbags.rosbag2 import Reader

    store = bag_io.make_typestore()
    out: dict[str, list] = {}
    with Reader(bag) as r:
        for c, t, raw in r.messages():
            out.setdefault(c.topic, []).append((t, store.deserialize_cdr(raw, c.msgtype)))
    return out


def test_convert_real_nuscenes_layout_with_sweeps(real_layout, tmp_path):
    from nuscenes.nuscenes import NuScenes

    assert not (real_layout / "dima_meta.json").exists()
    nusc = NuScenes(version=MINI, dataroot=str(real_layout), verbose=False)
    val = next(s for s in nusc.scene if s["name"] == "scene-0103")
    n_key = val["nbr_samples"]
    n_cam = n_key + (n_key - 1) * SWEEPS_PER_GAP

    out = tmp_path / "val_bag"
    summary = bag_convert.convert(real_layout, out, split="val", progress=False)  # devkit mini_val, version detected
    assert summary["scenes"] == ["scene-0103"]
    msgs = _read(out)
    for cam in CAMERAS:
        images = msgs[bag_io.image_topic(cam, False)]
        assert len(images) == n_cam, cam
        assert len(msgs[bag_io.camera_info_topic(cam)]) == n_cam
        stamps = [t for t, _ in images]
        assert stamps == sorted(stamps) and len(set(stamps)) == n_cam
        for t, m in images:  # header stamp = log time, full image decoded at the recorded size
            assert m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == t
            assert (m.height, m.width, m.encoding) == (IMG_H, IMG_W, "rgb8") and len(m.data) == IMG_H * IMG_W * 3
    # keyframes only at 2 Hz: the sweeps are skipped, GT stays one per keyframe
    assert len(msgs[bag_io.GT_SAMPLE_TOPIC]) == n_key and len(msgs[bag_io.COMMAND_TOPIC]) == n_key
    assert len(msgs[bag_io.TF_STATIC_TOPIC]) == 1
    # sweep images are the sweeps/ files: a camera's middle stamps are the fixture's sweep times
    sweep_ts = sorted(r["timestamp"] for r in nusc.sample_data
                      if not r["is_key_frame"] and r["channel"] == "CAM_FRONT"
                      and nusc.get("sample", r["sample_token"])["scene_token"] == val["token"])
    front_ts = [t // 1000 for t, _ in msgs[bag_io.image_topic("CAM_FRONT", False)]]
    assert set(sweep_ts) <= set(front_ts) and len(sweep_ts) == (n_key - 1) * SWEEPS_PER_GAP

    key = tmp_path / "val_keyframes"
    bag_convert.convert(real_layout, key, split="val", keyframes_only=True, progress=False)
    assert len(_read(key)[bag_io.image_topic("CAM_FRONT", False)]) == n_key

    train = tmp_path / "train_bag"
    assert bag_convert.convert(real_layout, train, version=MINI, split="train", progress=False)["scenes"] == \
        ["scene-0061"]
    with pytest.raises(bag_convert.BagConvertError, match="unknown split"):
        bag_convert.convert(real_layout, tmp_path / "nope", split="mini_nothing", progress=False)
