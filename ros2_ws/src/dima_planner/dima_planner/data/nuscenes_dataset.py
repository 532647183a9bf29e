"""nuScenes-format dataroot -> `Sample` objects with VAD's conventions (docs/METHOD.md section 2).

Works on real nuScenes (v1.0-mini / v1.0-trainval) and on the project's generated world
(same tables, plus `dima_meta.json` and `maps/dima_vectors/`). All table access goes
through the official devkit. Per-sample annotations (everything but images and the
occupancy raster, which is cheap to redraw) are computed once and cached in a pickle
keyed by dataroot, version, split, config and the table files' size/mtime.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyquaternion import Quaternion
from torch.utils.data import Dataset
from tqdm import tqdm

from .ego_motion import can_bus_override, can_bus_vector, ego_status_vector
from .geometry import scale_intrinsics, sensor_to_global
from .inputs import ImageDecodeError, decode_image, lidar2img, prepare_frame
from .map_vectors import MAP_RANGE, MapSource, local_map_vectors
from .occupancy import occupancy_from_boxes
from .sample import (
    AGENT_CLASSES,
    CAMERAS,
    FUTURE_STEPS,
    HISTORY_STEPS,
    MAP_POINTS,
    OCCUPANCY_CLASSES,
    Sample,
    route_command,
)
from .splits import META_FILE, incomplete_world, load_meta, scene_meta, scenes_in_split

# mmdet3d NuScenesDataset.NameMapping: nuScenes category -> detection class. Categories not
# listed (emergency vehicles, strollers, wheelchairs, animals, debris...) are not agents.
NAME_MAPPING: dict[str, str] = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}
TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
          "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")
CACHE_FORMAT = 2  # bump when the cached record layout or its computation changes
_OCC_IDX = np.array([AGENT_CLASSES.index(c) for c in sorted(OCCUPANCY_CLASSES)])


class DataRootError(ValueError):
    """The dataroot is missing a file or holds an unreadable one (the message names it)."""


class ImageLoadError(OSError):
    """One camera image of one sample is missing or corrupt (a trainer may skip the sample)."""


@dataclass
class DatasetConfig:
    dataroot: str = "data/nuscenes"
    version: str = "v1.0-mini"
    split: str = "train"  # train / val / test / all (mini: train, val map to mini_train / mini_val)
    image_size: list[int] | None = field(default_factory=lambda: [360, 640])  # [H, W]; None = original
    image_fit: str = "stretch"  # "pad": keep the aspect ratio, zero-pad (the model's image_fit)
    load_images: bool = True  # False: Sample.images is an empty (6, 0, 0, 3) array (metrics, baselines)
    check_images: bool = True  # verify every camera file of the split exists before starting
    cache: bool = True
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/dima or ~/.cache/dima
    agent_range: list[float] = field(default_factory=lambda: [-15.0, -30.0, 15.0, 30.0])  # VAD's x/y range
    min_points: int = 1  # VAD's valid_flag: num_lidar_pts + num_radar_pts >= min_points; 0 keeps all
    ego_status_min_dt: float = 0.2  # s; finite-difference baseline for ego velocity/acceleration

    def __post_init__(self):
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) <= 0):
            raise ValueError(f"DatasetConfig.image_size must be [H, W] with positive values, got {self.image_size}")
        if len(self.agent_range) != 4:
            raise ValueError(f"DatasetConfig.agent_range must be [x_min, y_min, x_max, y_max], got {self.agent_range}")


# --------------------------------------------------------------------------- validation


def validate_dataroot(dataroot: str | Path, version: str):
    """Open the devkit on `dataroot`, raising DataRootError that names any missing/bad file."""
    from nuscenes.nuscenes import NuScenes

    root = Path(dataroot)
    if not root.is_dir():
        raise DataRootError(f"dataroot {root} does not exist or is not a directory")
    if reason := incomplete_world(root):
        raise DataRootError(reason)
    table_root = root / version
    if not table_root.is_dir():
        raise DataRootError(f"dataroot {root} has no table folder {table_root} (wrong --version?)")
    for name in TABLES:
        if not (table_root / f"{name}.json").is_file():
            raise DataRootError(f"nuScenes table {table_root / (name + '.json')} is missing")
    meta = root / META_FILE
    if meta.exists():
        load_meta(root)  # raises naming the file when it is not JSON
    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except json.JSONDecodeError:
        for name in TABLES:  # find which table broke (the devkit does not say)
            path = table_root / f"{name}.json"
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise DataRootError(f"nuScenes table {path} is not valid JSON: {e}") from None
        raise
    except (KeyError, AssertionError) as e:
        raise DataRootError(f"nuScenes tables under {table_root} are inconsistent: {e!r}") from None


# --------------------------------------------------------------------------- annotation records


def _chain(nusc, table: str, token: str, key: str, n: int) -> list[dict]:
    """Up to n records following `key` ("next"/"prev") from `token` (excluded)."""
    out, cur = [], nusc.get(table, token)
    while len(out) < n and cur[key]:
        cur = nusc.get(table, cur[key])
        out.append(cur)
    return out


def _neighbour_sd(nusc, sd: dict, key: str, min_dt_us: float) -> dict | None:
    """The first sample_data along `key` at least min_dt away (else the farthest one there is)."""
    cur = sd
    while cur[key]:
        cur = nusc.get("sample_data", cur[key])
        if abs(cur["timestamp"] - sd["timestamp"]) >= min_dt_us:
            return cur
    return None if cur is sd else cur


def _ego_status(nusc, lidar_sd: dict, global2lidar: np.ndarray, min_dt: float) -> np.ndarray:
    """vx, vy, ax, ay, yaw_rate, speed in the current LiDAR frame from LIDAR_TOP poses.

    Causal, as a vehicle (and the node's odometry) can know it at this instant: backward
    differences over the previous LIDAR_TOP sample_data (sweeps or keyframes) at least
    `min_dt` earlier, acceleration from the interval before that; zero at a log's start.
    (Central differences would read the pose of the next keyframe, i.e. the first future
    waypoint the planner is scored on, whenever the LiDAR has no sweeps.) The arithmetic is
    data.ego_motion.ego_status_vector, which the closed-loop baselines are fed through.
    """
    poses = []
    p = lidar_sd
    for _ in range(2):
        p = _neighbour_sd(nusc, p, "prev", min_dt * 1e6)
        if p is None:
            break
        poses.append((sensor_to_global(nusc, p["token"]), p["timestamp"] * 1e-6))
    poses += [(None, None)] * (2 - len(poses))
    return ego_status_vector(np.linalg.inv(global2lidar), lidar_sd["timestamp"] * 1e-6, *poses[0], *poses[1])


class CanBusSource:
    """The nuScenes CAN bus expansion (<dataroot>/can_bus) through the devkit's NuScenesCanBus.

    Speed, acceleration and yaw rate of the ego motion input come from the vehicle's own
    `pose` messages (50 Hz: vel, accel, rotation_rate in the ego frame) at or just before the
    keyframe; the displacement since the previous frame stays pose-derived (as VAD's
    delta). Scenes without CAN data (the devkit's blacklist, a missing file) keep the
    pose-derived vector."""

    MAX_AGE_US = 100_000  # a pose message older than this at the keyframe is not used

    def __init__(self, dataroot: str | Path):
        from nuscenes.can_bus.can_bus_api import NuScenesCanBus

        self.api = NuScenesCanBus(dataroot=str(dataroot))
        self._msgs: dict[str, list[dict] | None] = {}

    @classmethod
    def find(cls, dataroot: str | Path) -> "CanBusSource | None":
        return cls(dataroot) if (Path(dataroot) / "can_bus").is_dir() else None

    def _pose_messages(self, scene_name: str) -> list[dict] | None:
        if scene_name not in self._msgs:
            try:
                msgs = self.api.get_messages(scene_name, "pose", print_warnings=False)
                self._msgs[scene_name] = sorted(msgs, key=lambda m: m["utime"]) or None
            except (Exception, AssertionError):  # the devkit raises bare Exception for missing data
                self._msgs[scene_name] = None
        return self._msgs[scene_name]

    def override(self, vector: np.ndarray, scene_name: str, t_us: int, lidar2ego: np.ndarray) -> np.ndarray:
        msgs = self._pose_messages(scene_name)
        if not msgs or vector[9] == 0:  # no CAN data, or a scene start (the vector stays zero there)
            return vector
        stamps = np.fromiter((m["utime"] for m in msgs), np.int64, len(msgs))
        k = int(np.searchsorted(stamps, t_us, side="right")) - 1
        if k < 0 or t_us - stamps[k] > self.MAX_AGE_US:
            return vector
        m = msgs[k]
        return can_bus_override(vector, float(m["vel"][0]), m["accel"][:2], float(m["rotation_rate"][2]), lidar2ego)


PLAN_LABELS_FILE = "dima_plan_labels.json"


def load_plan_labels(dataroot: str | Path) -> dict[str, np.ndarray] | None:
    """A world's labelled plans (<dataroot>/dima_plan_labels.json: sample token -> the 6
    future LiDAR-frame positions, the format of ego_fut_traj), or None where it has none.

    On-policy worlds (dima_planner.dagger) are driven by the learner, so their recorded ego
    future is not a demonstration: each keyframe's target is the privileged expert's plan from
    the state the learner reached. The file replaces the recorded future as the ground truth
    (and the command follows it by the one rule, route_command); everything else of the
    sample (cameras, poses, agents, map) is read as for any other world."""
    path = Path(dataroot) / PLAN_LABELS_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise DataRootError(f"{path}: not JSON ({e})") from None
    out = {}
    for tok, xy in raw.items():
        a = np.asarray(xy, np.float32)
        if a.shape != (FUTURE_STEPS, 2) or not np.isfinite(a).all():
            raise DataRootError(f"{path}: the label of sample {tok} must be {FUTURE_STEPS} finite (x, y) "
                                f"positions, got shape {a.shape}")
        out[tok] = a
    return out


def _box_in_lidar(nusc, ann_token: str, global2lidar: np.ndarray):
    box = nusc.get_box(ann_token)
    box.rotate(Quaternion(matrix=global2lidar[:3, :3], atol=1e-6))
    box.translate(global2lidar[:3, 3])
    return box


def _build_record(nusc, sample: dict, cfg: DatasetConfig, maps: MapSource, scene_tags: dict,
                  canbus: "CanBusSource | None" = None, plan_labels: dict[str, np.ndarray] | None = None) -> dict:
    scene = nusc.get("scene", sample["scene_token"])
    location = nusc.get("log", scene["log_token"])["location"]
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar_cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    lidar2ego = np.eye(4)
    lidar2ego[:3, :3] = Quaternion(lidar_cs["rotation"]).rotation_matrix
    lidar2ego[:3, 3] = lidar_cs["translation"]
    lidar2global = sensor_to_global(nusc, lidar_sd["token"])
    ego2global = lidar2global @ np.linalg.inv(lidar2ego)
    global2lidar = np.linalg.inv(lidar2global)

    def rel_xy(s: dict) -> np.ndarray:
        return (global2lidar @ sensor_to_global(nusc, s["data"]["LIDAR_TOP"]))[:2, 3]

    # Ego future / history: LIDAR_TOP positions of neighbouring keyframes, last pose repeated.
    fut = [rel_xy(s) for s in _chain(nusc, "sample", sample["token"], "next", FUTURE_STEPS)]
    fut_mask = np.zeros(FUTURE_STEPS, np.float32)
    fut_mask[: len(fut)] = 1.0
    last = fut[-1] if fut else np.zeros(2)
    ego_fut = np.array(fut + [last] * (FUTURE_STEPS - len(fut)), np.float32).reshape(FUTURE_STEPS, 2)
    if plan_labels is not None:
        if sample["token"] not in plan_labels:
            raise DataRootError(f"{PLAN_LABELS_FILE} of {cfg.dataroot} has no label for sample {sample['token']}")
        ego_fut = plan_labels[sample["token"]].copy()
        fut_mask[:] = 1.0
    hist = [rel_xy(s) for s in _chain(nusc, "sample", sample["token"], "prev", HISTORY_STEPS)]
    hist_mask = np.zeros(HISTORY_STEPS, np.float32)
    hist_mask[: len(hist)] = 1.0
    first = hist[-1] if hist else np.zeros(2)
    ego_hist = np.array(hist + [first] * (HISTORY_STEPS - len(hist)), np.float32).reshape(HISTORY_STEPS, 2)

    # Agents: VAD's classes, valid flag and x/y range; futures along the annotation chain.
    x0, y0, x1, y1 = cfg.agent_range
    boxes, labels, vels, futs, fut_yaws, fut_masks, tokens = [], [], [], [], [], [], []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        cls = NAME_MAPPING.get(ann["category_name"])
        if cls is None:
            continue
        if ann.get("num_lidar_pts", 0) + ann.get("num_radar_pts", 0) < cfg.min_points:
            continue
        box = _box_in_lidar(nusc, ann_token, global2lidar)
        if not (x0 <= box.center[0] <= x1 and y0 <= box.center[1] <= y1):
            continue
        w, l, h = box.wlh
        boxes.append([*box.center, l, w, h, box.orientation.yaw_pitch_roll[0]])
        labels.append(AGENT_CLASSES.index(cls))
        vel = nusc.box_velocity(ann_token)[:2]
        vel = np.nan_to_num(vel)  # NaN: single annotation or a long gap -> unknown, VAD uses 0
        vels.append(global2lidar[:2, :2] @ vel)
        f_xy = np.zeros((FUTURE_STEPS, 2))
        f_yaw = np.zeros(FUTURE_STEPS)
        f_mask = np.zeros(FUTURE_STEPS)
        for t, nxt in enumerate(_chain(nusc, "sample_annotation", ann_token, "next", FUTURE_STEPS)):
            fb = _box_in_lidar(nusc, nxt["token"], global2lidar)
            f_xy[t], f_yaw[t], f_mask[t] = fb.center[:2], fb.orientation.yaw_pitch_roll[0], 1.0
        futs.append(f_xy)
        fut_yaws.append(f_yaw)
        fut_masks.append(f_mask)
        tokens.append(ann_token)
    k = len(boxes)

    map_vec, map_lab = local_map_vectors(maps, location, global2lidar, lidar2global, MAP_RANGE)

    # Cameras: each camera's own ego pose (they fire at different times), as VAD does.
    cam_paths, cam_k, cam_size, cam2lidar = [], [], [], []
    for cam in CAMERAS:
        if cam not in sample["data"]:
            raise DataRootError(f"sample {sample['token']} has no {cam} sample_data")
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        cam_paths.append(sd["filename"])
        cam_k.append(np.asarray(cs["camera_intrinsic"], np.float64))
        cam_size.append((sd["width"], sd["height"]))
        cam2lidar.append(global2lidar @ sensor_to_global(nusc, sd["token"]))

    prev2cur = np.eye(4)
    # Ego motion input from the previous keyframes' LiDAR poses (data/ego_motion.py, the rule
    # the node applies to odometry), or the CAN bus expansion where the dataroot has it.
    hist_sd = [nusc.get("sample_data", s["data"]["LIDAR_TOP"])
               for s in _chain(nusc, "sample", sample["token"], "prev", 2)]
    poses = [(sensor_to_global(nusc, sd["token"]), sd["timestamp"] * 1e-6) for sd in hist_sd]
    poses += [(None, None)] * (2 - len(poses))
    can_bus = can_bus_vector(lidar2global, lidar_sd["timestamp"] * 1e-6, *poses[0], *poses[1])
    if canbus is not None:
        can_bus = canbus.override(can_bus, scene["name"], lidar_sd["timestamp"], lidar2ego)
    if sample["prev"]:
        prev2cur = global2lidar @ poses[0][0]

    return {
        "token": sample["token"],
        "scene_token": scene["token"],
        "scene_name": scene["name"],
        "timestamp": int(lidar_sd["timestamp"]),
        "location": location,
        "tags": list(scene_tags.get(scene["name"], [])),
        "cam_paths": cam_paths,
        "cam_k": np.asarray(cam_k, np.float64),
        "cam_size": np.asarray(cam_size, np.int64),
        "cam2lidar": np.asarray(cam2lidar, np.float64),
        "lidar2ego": lidar2ego,
        "ego2global": ego2global,
        "ego_fut_traj": ego_fut,
        "ego_fut_mask": fut_mask,
        "ego_hist_traj": ego_hist,
        "ego_hist_mask": hist_mask,
        "command": route_command(ego_fut),
        "ego_status": _ego_status(nusc, lidar_sd, global2lidar, cfg.ego_status_min_dt),
        "agent_boxes": np.asarray(boxes, np.float32).reshape(k, 7),
        "agent_labels": np.asarray(labels, np.int64).reshape(k),
        "agent_vel": np.asarray(vels, np.float32).reshape(k, 2),
        "agent_fut_traj": np.asarray(futs, np.float32).reshape(k, FUTURE_STEPS, 2),
        "agent_fut_yaw": np.asarray(fut_yaws, np.float32).reshape(k, FUTURE_STEPS),
        "agent_fut_mask": np.asarray(fut_masks, np.float32).reshape(k, FUTURE_STEPS),
        "agent_tokens": tokens,
        "map_vectors": map_vec,
        "map_labels": map_lab,
        "prev_token": sample["prev"] or None,
        "prev2cur": prev2cur.astype(np.float32),
        "can_bus": can_bus,
    }


def occupancy_boxes(rec: dict) -> tuple[np.ndarray, np.ndarray]:
    """The record's future agent boxes (6, K, 5) = x, y, yaw, length, width and mask (6, K).

    Only OCCUPANCY_CLASSES count. This is the one definition of what the collision metric
    sees: the dataset, the bag converter (GT for `dima bag eval`) and the demo all use it.
    """
    boxes = rec["agent_boxes"]
    k = boxes.shape[0]
    fut = np.zeros((FUTURE_STEPS, k, 5))
    fut[:, :, :2] = rec["agent_fut_traj"].transpose(1, 0, 2)
    fut[:, :, 2] = rec["agent_fut_yaw"].T
    fut[:, :, 3] = boxes[None, :, 3]
    fut[:, :, 4] = boxes[None, :, 4]
    mask = (rec["agent_fut_mask"].T > 0) & np.isin(rec["agent_labels"], _OCC_IDX)[None, :]
    return fut, mask


def occupancy_of(rec: dict) -> np.ndarray:
    """VAD collision occupancy (6, 200, 200) from the record's agent futures (OCCUPANCY_CLASSES)."""
    return occupancy_from_boxes(*occupancy_boxes(rec))


# --------------------------------------------------------------------------- cache


def _cache_key(cfg: DatasetConfig) -> str:
    root = Path(cfg.dataroot).resolve()
    stats = {}
    watched = [root / cfg.version / f"{t}.json" for t in TABLES] + [root / META_FILE, root / PLAN_LABELS_FILE]
    vec_dir = root / "maps" / "dima_vectors"
    if vec_dir.is_dir():
        watched += sorted(vec_dir.glob("*.json"))
    for p in watched:
        if p.exists():
            st = p.stat()
            stats[str(p.relative_to(root))] = [st.st_size, st.st_mtime_ns]
    payload = {
        "format": CACHE_FORMAT, "dataroot": str(root), "version": cfg.version, "split": cfg.split,
        "agent_range": list(cfg.agent_range), "min_points": cfg.min_points,
        "min_dt": cfg.ego_status_min_dt, "map_range": list(MAP_RANGE), "files": stats,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cfg: DatasetConfig) -> Path:
    base = cfg.cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dima")
    return Path(base) / f"nuscenes_{cfg.version}_{cfg.split}_{_cache_key(cfg)}.pkl"


def build_records(cfg: DatasetConfig, nusc=None) -> list[dict]:
    """Annotation records of every keyframe in the split, scene by scene in time order."""
    if nusc is None:
        nusc = validate_dataroot(cfg.dataroot, cfg.version)
    meta = load_meta(cfg.dataroot)
    names = [s["name"] for s in nusc.scene]
    chosen = scenes_in_split(cfg.split, cfg.version, names, [s["token"] for s in nusc.scene], meta,
                             [nusc.get("log", s["log_token"])["location"] for s in nusc.scene])
    tags = {name: rec.get("tags", []) for name, rec in scene_meta(meta).items()}
    maps = MapSource(cfg.dataroot)
    canbus = CanBusSource.find(cfg.dataroot)
    labels = load_plan_labels(cfg.dataroot)
    samples = []
    for scene in nusc.scene:
        if scene["name"] not in chosen:
            continue
        tok = scene["first_sample_token"]
        while tok:
            s = nusc.get("sample", tok)
            samples.append(s)
            tok = s["next"]
    return [_build_record(nusc, s, cfg, maps, tags, canbus, labels)
            for s in tqdm(samples, desc=f"annotations {cfg.split}", unit="sample", leave=False)]


def scene_records(nusc, scene: dict, cfg: DatasetConfig, maps: MapSource | None = None) -> list[dict]:
    """Annotation records of one scene's keyframes in time order (no cache, no images)."""
    maps = maps or MapSource(cfg.dataroot)
    tags = {name: rec.get("tags", []) for name, rec in scene_meta(load_meta(cfg.dataroot)).items()}
    records, tok = [], scene["first_sample_token"]
    labels = load_plan_labels(cfg.dataroot)
    while tok:
        s = nusc.get("sample", tok)
        records.append(_build_record(nusc, s, cfg, maps, tags, CanBusSource.find(cfg.dataroot), labels))
        tok = s["next"]
    return records


def load_records(cfg: DatasetConfig, nusc=None) -> list[dict]:
    """Records from the cache when it matches the config and tables, else built and cached."""
    path = cache_path(cfg) if cfg.cache else None
    if path is not None and path.exists():
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            path.unlink(missing_ok=True)  # stale or truncated cache: rebuild it
    records = build_records(cfg, nusc)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)  # atomic: concurrent runs never read half a file
    return records


# --------------------------------------------------------------------------- dataset


def load_image(path: Path, image_size, sample_token: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) at image_size through the one model-input path (data.inputs);
    ImageLoadError naming the file otherwise."""
    try:
        return decode_image(path, image_size)
    except ImageDecodeError as e:
        raise ImageLoadError(f"cannot read camera image {path} of sample {sample_token}: {e}") from None


class NuScenesPlanningDataset(Dataset):
    """Samples of one split. `records` are cached annotations; images are read per item."""

    def __init__(self, cfg: DatasetConfig, nusc=None):
        self.cfg = cfg
        self.root = Path(cfg.dataroot)
        self.records = load_records(cfg, nusc)
        if cfg.load_images and cfg.check_images:
            for rec in self.records:
                for rel in rec["cam_paths"]:
                    if not (self.root / rel).is_file():
                        raise DataRootError(f"camera image {self.root / rel} of sample {rec['token']} is missing")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def tokens(self) -> list[str]:
        return [r["token"] for r in self.records]

    def tags(self) -> dict[str, list[str]]:
        """Scenario tags per sample token (from dima_meta.json; empty for real nuScenes)."""
        return {r["token"]: list(r["tags"]) for r in self.records}

    def __getitem__(self, i: int) -> Sample:
        rec = self.records[i]
        size = self.cfg.image_size
        hw0 = [(int(h), int(w)) for w, h in rec["cam_size"]]  # the tables store (width, height)
        if self.cfg.load_images:
            paths = [self.root / p for p in rec["cam_paths"]]
            try:
                images, ks, l2i = prepare_frame(paths, rec["cam_k"], rec["cam2lidar"], size, hw0, self.cfg.image_fit)
            except ImageDecodeError as e:
                raise ImageLoadError(f"cannot read a camera image of sample {rec['token']}: {e}") from None
        else:
            images = np.zeros((len(CAMERAS), 0, 0, 3), np.uint8)
            ks = np.stack([scale_intrinsics(k, s, size, self.cfg.image_fit) for k, s in zip(rec["cam_k"], hw0)])
            l2i = lidar2img(ks, rec["cam2lidar"])
        return Sample(
            token=rec["token"], scene_token=rec["scene_token"], scene_name=rec["scene_name"],
            timestamp=rec["timestamp"], images=images,
            intrinsics=ks.astype(np.float32), cam2lidar=rec["cam2lidar"].astype(np.float32),
            lidar2img=l2i.astype(np.float32), lidar2ego=rec["lidar2ego"].astype(np.float32),
            ego2global=rec["ego2global"].astype(np.float32),
            ego_fut_traj=rec["ego_fut_traj"], ego_fut_mask=rec["ego_fut_mask"],
            ego_hist_traj=rec["ego_hist_traj"], ego_hist_mask=rec["ego_hist_mask"],
            command=int(rec["command"]), ego_status=rec["ego_status"],
            agent_boxes=rec["agent_boxes"], agent_labels=rec["agent_labels"], agent_vel=rec["agent_vel"],
            agent_fut_traj=rec["agent_fut_traj"], agent_fut_yaw=rec["agent_fut_yaw"],
            agent_fut_mask=rec["agent_fut_mask"],
            map_vectors=rec["map_vectors"], map_labels=rec["map_labels"],
            occupancy=occupancy_of(rec),
            prev_token=rec["prev_token"], prev2cur=rec["prev2cur"], can_bus=rec["can_bus"],
            extras={"tags": list(rec["tags"]), "location": rec["location"], "agent_tokens": list(rec["agent_tokens"])},
        )


# --------------------------------------------------------------------------- batching

_FIXED = ("intrinsics", "cam2lidar", "lidar2img", "lidar2ego", "ego2global", "ego_fut_traj", "ego_fut_mask",
          "ego_hist_traj", "ego_hist_mask", "ego_status", "occupancy", "prev2cur", "can_bus")
_AGENT = ("agent_boxes", "agent_vel", "agent_fut_traj", "agent_fut_yaw", "agent_fut_mask")


def _pad(arrays: list[np.ndarray], fill) -> tuple[torch.Tensor, torch.Tensor]:
    n = max([a.shape[0] for a in arrays] + [0])
    out = np.full((len(arrays), n, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    mask = np.zeros((len(arrays), n), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
        mask[i, : a.shape[0]] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def collate(samples: list[Sample]) -> dict[str, Any]:
    """Batch Samples into tensors. K agents / M map elements are padded to the batch max.

    images: uint8 (B, 6, 3, H, W) (channels first); agent_* padded with 0 and labels with -1,
    `agent_mask` (B, K) / `map_mask` (B, M) True for real entries; `valid` (B,) is
    Sample.valid; `command` (B,) int64; tokens, scene names and tags as lists.
    """
    if not samples:
        raise ValueError("collate: empty batch")
    batch: dict[str, Any] = {
        "token": [s.token for s in samples],
        "scene_token": [s.scene_token for s in samples],
        "scene_name": [s.scene_name for s in samples],
        "timestamp": torch.tensor([s.timestamp for s in samples], dtype=torch.int64),
        "tags": [s.extras.get("tags", []) for s in samples],
        "images": torch.from_numpy(np.stack([s.images for s in samples])).permute(0, 1, 4, 2, 3),
        "command": torch.tensor([s.command for s in samples], dtype=torch.int64),
        "valid": torch.tensor([s.valid for s in samples], dtype=torch.bool),
    }
    for key in _FIXED:
        batch[key] = torch.from_numpy(np.stack([getattr(s, key) for s in samples]))
    for key in _AGENT:
        batch[key], batch["agent_mask"] = _pad([getattr(s, key) for s in samples], 0)
    batch["agent_labels"], _ = _pad([s.agent_labels for s in samples], -1)
    batch["map_vectors"], batch["map_mask"] = _pad([s.map_vectors for s in samples], 0)
    batch["map_labels"], _ = _pad([s.map_labels for s in samples], -1)
    return batch


def dataset_from_args(dataroot: str, version: str, split: str, **overrides) -> NuScenesPlanningDataset:
    """Convenience for CLIs: a dataset with default config and a few overrides."""
    return NuScenesPlanningDataset(DatasetConfig(dataroot=dataroot, version=version, split=split, **overrides))


__all__ = [
    "AGENT_CLASSES", "MAP_POINTS", "NAME_MAPPING", "DataRootError", "DatasetConfig", "ImageLoadError",
    "NuScenesPlanningDataset", "build_records", "cache_path", "collate", "load_records", "occupancy_boxes",
    "occupancy_of", "scene_records",
    "validate_dataroot",
]
