"""Synthetic world generator: real nuScenes format, loadable by the official devkit."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dima_planner.config import ConfigError, from_dict, load_yaml
from dima_planner.synth import DatarootError, GenerationError, SynthConfig, generate, validate_dataroot

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "params" / "synth_tiny.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = load_yaml(SynthConfig, TINY)
    root = generate(cfg, tmp_path_factory.mktemp("synth") / "world", progress=False)
    return cfg, root


@pytest.fixture(scope="module")
def nusc(world):
    from nuscenes.nuscenes import NuScenes

    cfg, root = world
    return NuScenes(version=cfg.version, dataroot=str(root), verbose=False)


def test_devkit_loads_and_every_keyframe_has_all_sensors(world, nusc):
    cfg, _ = world
    assert len(nusc.scene) == cfg.num_scenes
    channels = {"CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                "CAM_BACK_RIGHT", "LIDAR_TOP"}
    for scene in nusc.scene:
        assert scene["name"].startswith("scene-") and scene["nbr_samples"] == int(cfg.scene_seconds * 2)
        tok, n = scene["first_sample_token"], 0
        while tok:
            s = nusc.get("sample", tok)
            assert set(s["data"]) == channels
            n += 1
            tok = s["next"]
        assert n == scene["nbr_samples"]
    tokens = [rec["token"] for rec in nusc.sample_data]
    assert len(set(tokens)) == len(tokens), "sample_data tokens repeat"
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in tokens), "a sample_data token is not 32 hex digits"
    for s in nusc.sample:  # every keyframe's channels point back at it
        for channel, sd_token in s["data"].items():
            sd = nusc.get("sample_data", sd_token)
            assert sd["sample_token"] == s["token"] and sd["is_key_frame"], (channel, sd_token)
    log = nusc.log[0]
    assert nusc.get("map", log["map_token"])["filename"].endswith(".png")


def test_images_match_sample_data_and_scaled_intrinsics(world, nusc):
    cfg, root = world
    w, h = cfg.image_size
    sample = nusc.sample[3]
    path, _, K = nusc.get_sample_data(sample["data"]["CAM_FRONT"])
    with Image.open(path) as im:
        assert im.size == (w, h) == (nusc.get("sample_data", sample["data"]["CAM_FRONT"])["width"],
                                    nusc.get("sample_data", sample["data"]["CAM_FRONT"])["height"])
    assert K[0, 0] == pytest.approx(1266.417203046554 * w / 1600)
    sweeps = [r for r in nusc.sample_data if not r["is_key_frame"] and r["channel"] == "CAM_FRONT"]
    assert sweeps and all(r["filename"].startswith("sweeps/CAM_FRONT/") for r in sweeps)
    for r in sweeps[:5]:
        with Image.open(root / r["filename"]) as im:
            assert im.size == (r["width"], r["height"])


def test_lidar_loads_and_cameras_are_staggered(nusc):
    from nuscenes.utils.data_classes import LidarPointCloud

    sample = nusc.sample[5]
    path, boxes, K = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    assert K is None
    pc = LidarPointCloud.from_file(path)
    assert pc.points.shape[0] == 4 and pc.points.shape[1] > 1000
    # Ground returns lie ~1.84 m below the sensor (LIDAR_TOP height in the rig).
    assert np.median(pc.points[2]) == pytest.approx(-1.84, abs=0.4)
    stamps = {ch: nusc.get("sample_data", t)["timestamp"] for ch, t in sample["data"].items()}
    offsets = [stamps[ch] - stamps["LIDAR_TOP"] for ch in stamps if ch != "LIDAR_TOP"]
    assert all(-60_000 < o < 5_000 for o in offsets) and len(set(offsets)) == 6


def test_annotation_in_front_projects_into_front_camera(nusc):
    from nuscenes.utils.geometry_utils import view_points

    hits = 0
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
        _, boxes, K = nusc.get_sample_data(sd["token"])
        for box in boxes:
            x, y, z = box.center
            if z > 5.0 and abs(x) < 0.3 * z:  # clearly in front, near the optical axis
                u, v, _ = view_points(box.center[:, None], K, normalize=True)[:, 0]
                assert 0 <= u < sd["width"] and 0 <= v < sd["height"]
                # The ego drives on flat ground: the box centre is below the camera height.
                assert -1.0 < y < 2.0
                hits += 1
    assert hits > 0


def test_chains_time_ordered_and_annotation_fields(nusc):
    for rec in nusc.sample_data:
        if rec["next"]:
            nxt = nusc.get("sample_data", rec["next"])
            assert nxt["timestamp"] > rec["timestamp"] and nxt["channel"] == rec["channel"]
        pose = nusc.get("ego_pose", rec["ego_pose_token"])
        assert pose["timestamp"] == rec["timestamp"]
    for inst in nusc.instance:
        n, tok = 0, inst["first_annotation_token"]
        while tok:
            ann = nusc.get("sample_annotation", tok)
            assert ann["instance_token"] == inst["token"]
            last = tok
            tok = ann["next"]
            n += 1
        assert n == inst["nbr_annotations"] and last == inst["last_annotation_token"]
    cats = {a["category_name"] for a in nusc.sample_annotation}
    assert "vehicle.car" in cats and "human.pedestrian.adult" in cats
    assert any(a["num_lidar_pts"] > 0 for a in nusc.sample_annotation)
    ann = nusc.sample_annotation[0]
    assert len(ann["size"]) == 3 and len(ann["rotation"]) == 4 and ann["visibility_token"] in "1234"
    assert nusc.get("attribute", ann["attribute_tokens"][0])["name"].split(".")[0] in ("vehicle", "pedestrian", "cycle")


def test_ego_kinematics_plausible(nusc):
    for scene in nusc.scene:
        poses = []
        tok = scene["first_sample_token"]
        while tok:
            s = nusc.get("sample", tok)
            lid = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
            poses.append((lid["timestamp"] * 1e-6, *nusc.get("ego_pose", lid["ego_pose_token"])["translation"][:2]))
            tok = s["next"]
        p = np.array(poses)
        v = np.linalg.norm(np.diff(p[:, 1:], axis=0), axis=1) / np.diff(p[:, 0])
        assert v.max() < 15.0 and np.abs(np.diff(v)).max() / 0.5 < 8.0


def test_map_vectors_and_meta(world):
    cfg, root = world
    meta = json.loads((root / "dima_meta.json").read_text())
    assert meta["seed"] == cfg.seed and meta["scale"] == cfg.scale
    assert {s["split"] for s in meta["scenes"]} == {"train", "val"}
    assert meta["scenes"][0]["tags"] and "turn_left" in meta["scenes"][0]["tags"]
    for town in meta["towns"]:
        vec = json.loads((root / town["map_vectors"]).read_text())
        assert vec["location"] == town["name"] and (root / town["map_mask"]).stat().st_size > 0
        types = {e["type"] for e in vec["elements"]}
        assert types == {"divider", "ped_crossing", "boundary"}
        for e in vec["elements"]:
            pts = np.array(e["points"])
            assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 2
            if e["type"] == "ped_crossing":
                assert np.allclose(pts[0], pts[-1])


def test_scenes_are_in_towns_the_devkit_sees_and_splits_share_none(world, nusc):
    """Each scene's town is its log.location; training and validation towns are disjoint and the
    held-out town, recorded in the world with its map, has no scene."""
    cfg, root = world
    meta = json.loads((root / "dima_meta.json").read_text())
    roles = {t["name"]: t["role"] for t in meta["towns"]}
    assert sorted(roles.values()) == ["heldout", "train", "val"]
    by_name = {s["name"]: s for s in meta["scenes"]}
    locations = {"train": set(), "val": set()}
    for scene in nusc.scene:
        location = nusc.get("log", scene["log_token"])["location"]
        rec = by_name[scene["name"]]
        assert rec["town"] == location and roles[location] == rec["split"]
        locations[rec["split"]].add(location)
    assert locations["train"] and locations["val"] and not locations["train"] & locations["val"]
    heldout = [t for t in meta["towns"] if t["role"] == "heldout"]
    assert all(t["scenes"] == 0 for t in heldout)
    # One map record per town (the devkit's map table), holding exactly its logs.
    maps = {m["filename"]: m for m in nusc.map}
    for t in meta["towns"]:
        logs = {nusc.get("log", tok)["location"] for tok in maps[t["map_mask"]]["log_tokens"]}
        assert logs == ({t["name"]} if t["scenes"] else set())


def test_same_seed_byte_identical_and_reuse(world, tmp_path):
    cfg, root = world
    again = generate(cfg, tmp_path / "again", progress=False)
    for name in ("sample.json", "sample_data.json", "sample_annotation.json", "ego_pose.json"):
        assert (root / cfg.version / name).read_bytes() == (again / cfg.version / name).read_bytes()
    a = sorted((root / "samples" / "CAM_FRONT").iterdir())[2]
    assert a.read_bytes() == (again / "samples" / "CAM_FRONT" / a.name).read_bytes()
    # Reuse: same config -> nothing rewritten.
    stamp = (again / "dima_meta.json").stat().st_mtime_ns
    generate(cfg, again, progress=False)
    assert (again / "dima_meta.json").stat().st_mtime_ns == stamp


def test_validate_reports_corrupt_and_missing(world, tmp_path):
    cfg, root = world
    assert validate_dataroot(root, cfg.version)["sample"] == cfg.num_scenes * int(cfg.scene_seconds * 2)
    bad = tmp_path / "bad"
    shutil.copytree(root / cfg.version, bad / cfg.version)
    shutil.copytree(root / "maps", bad / "maps")
    with pytest.raises(DatarootError, match="sample_data .* missing"):
        validate_dataroot(bad, cfg.version)
    text = (bad / cfg.version / "sample.json").read_text()
    (bad / cfg.version / "sample.json").write_text(text[: len(text) // 2])
    with pytest.raises(DatarootError, match="sample.json: not valid JSON"):
        validate_dataroot(bad, cfg.version, check_files=False)
    with pytest.raises(DatarootError, match="no table folder"):
        validate_dataroot(bad, "v1.0-trainval")


def test_refuses_foreign_directory_and_bad_config(tmp_path):
    (tmp_path / "samples").mkdir()
    with pytest.raises(GenerationError, match="refusing to overwrite"):
        generate(SynthConfig(num_scenes=1, scene_seconds=2.0), tmp_path, progress=False, force=True)
    with pytest.raises(ConfigError, match="scale"):
        from_dict(SynthConfig, {"scale": 3.0})
    with pytest.raises(ConfigError, match="unknown scenario"):
        from_dict(SynthConfig, {"scenarios": ["fly"]})
