"""Data pipeline tests on a tiny hand-built nuScenes-format dataroot.

World: ego drives along global +x at 5 m/s (yaw 0), real nuScenes rig (LIDAR_TOP x = ego
right, y = ego forward). A car 10 m ahead drives along at the same speed; a pedestrian
stands 6 m ahead, 4 m to the left. Scene A (8 keyframes, train) is straight; scene B
(3 keyframes, val) drifts 1 m to the right per step. A divider runs 1.75 m left of the ego.
"""
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from nuscenes.utils.geometry_utils import view_points
from PIL import Image

from dima_planner.data.nuscenes_dataset import (
    DataRootError,
    DatasetConfig,
    ImageLoadError,
    NuScenesPlanningDataset,
    collate,
    validate_dataroot,
)
from dima_planner.data.sample import AGENT_CLASSES, CAMERAS, CMD_RIGHT, CMD_STRAIGHT, MAP_CLASSES

RIG = json.loads((Path(__file__).resolve().parents[1] / "ros2_ws/src/dima_planner/dima_planner/data/nuscenes_rig_n015.json").read_text())
IMG_W, IMG_H = 160, 90  # tiny images; intrinsics scaled from the 1600x900 rig
VERSION = "v1.0-test"


def _tok():
    return uuid.uuid4().hex


def build_fixture(root: Path) -> Path:
    tables = {t: [] for t in ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
                              "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")}
    log = {"token": _tok(), "logfile": "l", "vehicle": "v", "date_captured": "2024-01-01", "location": "test-town"}
    tables["log"].append(log)
    tables["map"].append({"token": _tok(), "log_tokens": [log["token"]], "category": "semantic_prior",
                          "filename": "maps/none.png"})
    cats = {}
    for name in ("vehicle.car", "human.pedestrian.adult"):
        cats[name] = {"token": _tok(), "name": name, "description": ""}
        tables["category"].append(cats[name])
    tables["visibility"].append({"token": "4", "level": "v80-100", "description": ""})
    calib = {}
    for ch in ("LIDAR_TOP", *CAMERAS):
        sensor = {"token": _tok(), "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else "camera"}
        tables["sensor"].append(sensor)
        rec = {"token": _tok(), "sensor_token": sensor["token"], "translation": RIG[ch]["translation"],
               "rotation": RIG[ch]["rotation"], "camera_intrinsic": []}
        if ch != "LIDAR_TOP":
            k = np.array(RIG[ch]["camera_intrinsic"])
            k[:2] *= IMG_W / 1600
            rec["camera_intrinsic"] = k.tolist()
        tables["calibrated_sensor"].append(rec)
        calib[ch] = rec
    (root / "samples").mkdir(parents=True)
    rng = np.random.default_rng(0)

    def add_scene(name, n, drift):
        scene = {"token": _tok(), "log_token": log["token"], "name": name, "description": "", "nbr_samples": n}
        samples = [{"token": _tok(), "scene_token": scene["token"], "timestamp": 1_000_000 + 500_000 * i,
                    "prev": "", "next": "", "data": {}, "anns": []} for i in range(n)]
        for i in range(n):
            samples[i]["prev"] = samples[i - 1]["token"] if i else ""
            samples[i]["next"] = samples[i + 1]["token"] if i < n - 1 else ""
        scene["first_sample_token"], scene["last_sample_token"] = samples[0]["token"], samples[-1]["token"]
        prev_sd = {ch: None for ch in calib}
        for i, s in enumerate(samples):
            ego = {"token": _tok(), "timestamp": s["timestamp"], "rotation": [1, 0, 0, 0],
                   "translation": [100 + 2.5 * i, 200 - drift * i, 0.0]}
            tables["ego_pose"].append(ego)
            for ch, cs in calib.items():
                fn = f"samples/{name}_{ch}_{i}.jpg" if ch != "LIDAR_TOP" else f"samples/{name}_{i}.pcd.bin"
                sd = {"token": _tok(), "sample_token": s["token"], "ego_pose_token": ego["token"],
                      "calibrated_sensor_token": cs["token"], "timestamp": s["timestamp"], "fileformat": "jpg",
                      "is_key_frame": True, "height": IMG_H if ch != "LIDAR_TOP" else 0,
                      "width": IMG_W if ch != "LIDAR_TOP" else 0, "filename": fn, "prev": "", "next": ""}
                if prev_sd[ch] is not None:
                    sd["prev"], prev_sd[ch]["next"] = prev_sd[ch]["token"], sd["token"]
                prev_sd[ch] = sd
                tables["sample_data"].append(sd)
                s["data"][ch] = sd["token"]
                if ch != "LIDAR_TOP":
                    Image.fromarray(rng.integers(0, 255, (IMG_H, IMG_W, 3), dtype=np.uint8)).save(root / fn)
        for cat, offset, speed in (("vehicle.car", (10.0, 0.0), 5.0), ("human.pedestrian.adult", (6.0, 4.0), 0.0)):
            inst = {"token": _tok(), "category_token": cats[cat]["token"], "nbr_annotations": n}
            anns = []
            for i, s in enumerate(samples):
                x = 100 + offset[0] + speed * 0.5 * i if speed else 100 + offset[0]
                ann = {"token": _tok(), "sample_token": s["token"], "instance_token": inst["token"],
                       "visibility_token": "4", "attribute_tokens": [], "translation": [x, 200 + offset[1], 1.0],
                       "size": [1.9, 4.5, 1.6] if speed else [0.6, 0.6, 1.7], "rotation": [1, 0, 0, 0],
                       "prev": anns[-1]["token"] if anns else "", "next": "", "num_lidar_pts": 10,
                       "num_radar_pts": 0, "category_name": cat}
                if anns:
                    anns[-1]["next"] = ann["token"]
                anns.append(ann)
                s["anns"].append(ann["token"])
            inst["first_annotation_token"], inst["last_annotation_token"] = anns[0]["token"], anns[-1]["token"]
            tables["instance"].append(inst)
            tables["sample_annotation"].extend(anns)
        for s in samples:
            s.pop("data"), s.pop("anns")  # not table fields (the devkit rebuilds them)
        tables["scene"].append(scene)
        tables["sample"].extend(samples)
        return samples

    add_scene("scene-A", 8, 0.0)
    add_scene("scene-B", 3, 1.0)
    (root / "maps").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "maps" / "none.png")
    (root / VERSION).mkdir()
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows))
    (root / "dima_meta.json").write_text(json.dumps({"scenes": {
        "scene-A": {"split": "train", "tags": ["overtake"]}, "scene-B": {"split": "val", "tags": []}}}))
    (root / "maps" / "dima_vectors").mkdir()
    (root / "maps" / "dima_vectors" / "test-town.json").write_text(json.dumps({"location": "test-town", "elements": [
        {"type": "divider", "points": [[0, 201.75], [400, 201.75]]},
        {"type": "boundary", "points": [[0, 196.0], [400, 196.0]]}]}))
    return root


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    return build_fixture(tmp_path_factory.mktemp("nusc"))


def _cfg(root, tmp_path, **kw):
    return DatasetConfig(dataroot=str(root), version=VERSION, image_size=[45, 80], cache_dir=str(tmp_path), **kw)


@pytest.fixture(scope="module")
def train(dataroot, tmp_path_factory):
    return NuScenesPlanningDataset(_cfg(dataroot, tmp_path_factory.mktemp("cache"), split="train"))


def test_split_and_shapes(train, dataroot, tmp_path):
    assert len(train) == 8 and {train[i].scene_name for i in range(8)} == {"scene-A"}
    val = NuScenesPlanningDataset(_cfg(dataroot, tmp_path, split="val"))
    assert len(val) == 3 and val[0].scene_name == "scene-B"
    s = train[0]
    assert s.images.shape == (6, 45, 80, 3) and s.images.dtype == np.uint8
    assert s.intrinsics.shape == (6, 3, 3) and s.lidar2img.shape == (6, 4, 4)
    assert s.ego_fut_traj.shape == (6, 2) and s.ego_hist_traj.shape == (2, 2) and s.ego_status.shape == (6,)
    assert s.agent_boxes.shape == (2, 7) and s.agent_fut_traj.shape == (2, 6, 2)
    assert s.map_vectors.shape[1:] == (20, 2) and s.occupancy.shape == (6, 200, 200)
    assert s.extras["tags"] == ["overtake"]


def test_frames_agent_ahead_and_ego_future(train):
    s = train[1]
    car = s.agent_boxes[AGENT_CLASSES.index("car") == s.agent_labels][0]
    ped = s.agent_boxes[AGENT_CLASSES.index("pedestrian") == s.agent_labels][0]
    # LIDAR_TOP sits 0.94 m ahead of the ego origin: the car is ~9.06 m ahead, centred.
    assert car[1] == pytest.approx(10 - 0.9437, abs=0.05) and abs(car[0]) < 0.05
    assert car[6] == pytest.approx(np.pi / 2, abs=0.03)  # heading forward
    assert car[3] == pytest.approx(4.5) and car[4] == pytest.approx(1.9)
    assert ped[0] == pytest.approx(-4.0, abs=0.05)  # left is negative x
    np.testing.assert_allclose(s.ego_fut_traj, np.stack([np.zeros(6), 2.5 * np.arange(1, 7)], 1), atol=0.05)
    np.testing.assert_allclose(s.ego_hist_traj[0], [0, -2.5], atol=0.05)
    assert s.ego_hist_mask.tolist() == [1.0, 0.0]  # only one past keyframe at index 1
    assert s.command == CMD_STRAIGHT
    assert s.ego_status[1] == pytest.approx(5.0, abs=0.05) and s.ego_status[5] == pytest.approx(5.0, abs=0.05)
    assert abs(s.ego_status[0]) < 0.05 and abs(s.ego_status[4]) < 1e-3
    # Agent future: the car keeps 10 m ahead of a moving ego -> +2.5 m per step in this frame.
    k = int(np.flatnonzero(s.agent_labels == AGENT_CLASSES.index("car"))[0])
    np.testing.assert_allclose(s.agent_fut_traj[k, :, 1], car[1] + 2.5 * np.arange(1, 7), atol=0.05)
    assert s.agent_vel[k] == pytest.approx([0.0, 5.0], abs=0.05)


def test_future_masks_at_scene_end(train):
    s = train[4]  # 3 future keyframes left in scene-A
    assert s.ego_fut_mask.tolist() == [1, 1, 1, 0, 0, 0] and not s.valid
    np.testing.assert_allclose(s.ego_fut_traj[3:], np.repeat(s.ego_fut_traj[2:3], 3, 0))
    assert train[1].valid and train[7].ego_fut_mask.sum() == 0
    k = int(np.flatnonzero(s.agent_labels == AGENT_CLASSES.index("car"))[0])
    assert s.agent_fut_mask[k].tolist() == [1, 1, 1, 0, 0, 0]


def test_command_rule_turn_right(dataroot, tmp_path):
    s = NuScenesPlanningDataset(_cfg(dataroot, tmp_path, split="val"))[0]
    # Drifting 1 m right per step; two future steps, the last one repeated: x = 2 -> turn right.
    assert s.ego_fut_traj[-1, 0] == pytest.approx(2.0, abs=0.05)
    assert s.command == CMD_RIGHT


def test_projection_matches_devkit(train, dataroot):
    nusc = validate_dataroot(dataroot, VERSION)
    s = train[2]
    car_k = int(np.flatnonzero(s.agent_labels == AGENT_CLASSES.index("car"))[0])
    ann_token = s.extras["agent_tokens"][car_k]
    sample = nusc.get("sample", s.token)
    _, boxes, k = nusc.get_sample_data(sample["data"]["CAM_FRONT"], selected_anntokens=[ann_token])
    expected = view_points(boxes[0].center[:, None], k, normalize=True)[:2, 0] * (80 / IMG_W)
    p = s.lidar2img[CAMERAS.index("CAM_FRONT")] @ np.array([*s.agent_boxes[car_k, :3], 1.0])
    np.testing.assert_allclose(p[:2] / p[2], expected, atol=1e-2)
    # Intrinsics scaled to the 80x45 images.
    assert s.intrinsics[0, 0, 2] == pytest.approx(816.267 * IMG_W / 1600 * 80 / IMG_W, rel=1e-4)


def test_map_vectors_and_occupancy(train):
    s = train[1]
    div = s.map_vectors[s.map_labels == MAP_CLASSES.index("divider")]
    assert len(div) == 1 and np.allclose(div[0, :, 0], -1.75, atol=0.1)  # rig LiDAR yaw is ~0.1 deg off
    assert div[0, :, 1].min() == pytest.approx(-30, abs=1e-3) and div[0, :, 1].max() == pytest.approx(30, abs=1e-3)
    bnd = s.map_vectors[s.map_labels == MAP_CLASSES.index("boundary")]
    assert np.allclose(bnd[0, :, 0], 4.0, atol=0.1)
    # Step 1: the car is ~11.56 m ahead -> occupied rows around (50 - 11.56) / 0.5 = 77.
    rows, cols = np.nonzero(s.occupancy[0, :, 96:])
    assert 70 <= rows.min() and rows.max() <= 83 and set(cols + 96) == set(range(98, 103))
    assert s.occupancy[0, 77, 100] and not s.occupancy[0, 100, 100]
    # The standing pedestrian (a human: drawn too) is 4 m left -> column round(46 / 0.5) = 92.
    assert s.occupancy[0, :, 92].any() and not s.occupancy[0, :, 80].any()


def test_cache_is_reused(dataroot, tmp_path, monkeypatch):
    cfg = _cfg(dataroot, tmp_path, split="train", load_images=False)
    first = NuScenesPlanningDataset(cfg)
    import dima_planner.data.nuscenes_dataset as mod

    monkeypatch.setattr(mod, "build_records", lambda *a, **k: pytest.fail("cache not used"))
    again = NuScenesPlanningDataset(cfg)
    assert again.tokens == first.tokens and again[0].images.shape == (6, 0, 0, 3)


def test_collate_pads_agents_and_map(train):
    a, b = train[0], train[1]
    b.agent_boxes, b.agent_labels = b.agent_boxes[:1], b.agent_labels[:1]
    for key in ("agent_vel", "agent_fut_traj", "agent_fut_yaw", "agent_fut_mask"):
        setattr(b, key, getattr(b, key)[:1])
    batch = collate([a, b])
    assert batch["images"].shape == (2, 6, 3, 45, 80)
    assert batch["agent_boxes"].shape == (2, 2, 7) and batch["agent_mask"].tolist() == [[True, True], [True, False]]
    assert batch["agent_labels"][1, 1] == -1 and batch["occupancy"].shape == (2, 6, 200, 200)
    assert batch["map_vectors"].shape[2:] == (20, 2) and batch["valid"].tolist() == [True, True]


def test_bad_dataroots(dataroot, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataroot, bad)
    (bad / VERSION / "sample.json").write_text("{not json")
    with pytest.raises(DataRootError, match="sample.json"):
        validate_dataroot(bad, VERSION)
    (bad / VERSION / "sample.json").unlink()
    with pytest.raises(DataRootError, match="sample.json is missing"):
        validate_dataroot(bad, VERSION)
    with pytest.raises(DataRootError, match="does not exist"):
        validate_dataroot(tmp_path / "nowhere", VERSION)


def test_missing_and_corrupt_images(dataroot, tmp_path):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(dataroot, root)
    victim = root / "samples" / "scene-A_CAM_BACK_3.jpg"
    victim.write_bytes(b"not a jpeg")
    ds = NuScenesPlanningDataset(_cfg(root, tmp_path, split="train"))
    with pytest.raises(ImageLoadError, match="scene-A_CAM_BACK_3.jpg"):
        ds[3]
    ds[2]  # other samples still load
    victim.unlink()
    with pytest.raises(DataRootError, match="scene-A_CAM_BACK_3.jpg"):
        NuScenesPlanningDataset(_cfg(root, tmp_path, split="train"))


def test_generated_world_invariants(tmp_path):
    """On the project's generated world (skipped until dima_planner.synth.generate exists)."""
    synth = pytest.importorskip("dima_planner.synth")
    if not hasattr(synth, "generate"):
        pytest.skip("dima_planner.synth.generate is not available yet")
    from dima_planner.config import load_yaml
    from dima_planner.data.sample import route_command

    cfg = load_yaml(synth.SynthConfig, Path(__file__).resolve().parents[1] / "params" / "synth_tiny.yaml")
    root = Path(synth.generate(cfg, tmp_path / "world") or tmp_path / "world")
    version = next(p.name for p in root.iterdir() if p.is_dir() and (p / "sample.json").exists())
    sets = {sp: NuScenesPlanningDataset(DatasetConfig(dataroot=str(root), version=version, split=sp,
                                                      image_size=[90, 160], cache_dir=str(tmp_path / "c")))
            for sp in ("train", "val")}
    assert len(sets["train"]) and len(sets["val"])
    assert not {r["scene_name"] for r in sets["train"].records} & {r["scene_name"] for r in sets["val"].records}
    # Location-disjoint: no validation keyframe is in a town a training keyframe is in.
    assert not {r["location"] for r in sets["train"].records} & {r["location"] for r in sets["val"].records}
    s = sets["val"][0]
    assert s.images.shape == (6, 90, 160, 3) and s.occupancy.shape == (6, 200, 200)
    for rec in sets["train"].records:
        assert rec["command"] == route_command(rec["ego_fut_traj"])
        m = rec["ego_fut_mask"]
        assert np.all(np.diff(m) <= 0)  # masks only switch off, at the scene end
        if len(rec["map_vectors"]):
            assert np.abs(rec["map_vectors"][..., 0]).max() <= 15 + 1e-3
            assert np.abs(rec["map_vectors"][..., 1]).max() <= 30 + 1e-3
