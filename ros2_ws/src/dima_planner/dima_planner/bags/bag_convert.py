"""`dima bag convert`: a nuScenes-format dataroot -> rosbag2 (MCAP, CDR) for the planner node.

Reads any nuScenes-format dataroot through the official devkit (real v1.0-mini/trainval
or the generated world) and writes, per scene in time order:

  /cam_*/image_raw[/compressed]  sensor_msgs/Image rgb8 | CompressedImage (JPEG file bytes)
  /cam_*/camera_info             sensor_msgs/CameraInfo, K/P scaled to the image size
  /tf_static                     map -> odom (identity), base_link -> cam_*_optical, lidar_top
                                 (transient local)
  /tf, /odom                     odom -> base_link at every ego pose of the written sensors
                                 (REP-105: map -> odom -> base_link; /odom is in odom)
  /dima/command                  dima_msgs/DrivingCommand from the GT future (VAD rule)
                                 (transient local, as the planner subscribes to it)
  /dima/gt/ego_future            nav_msgs/Path in base_link: the valid GT future steps only
  /dima/gt/sample                std_msgs/String JSON: sample token, stamps, LiDAR-frame GT
                                 future + mask, lidar2ego and the occupancy agent boxes

Header stamps and record times are the sample_data timestamps (us -> ns). The command
and GT messages of a keyframe carry its CAM_FRONT stamp (the planner node stamps its
output with the front image it used, so `dima bag eval` matches on it).
Scenes follow each other `scene_gap` seconds apart (default 3 s: more than the node's
max_scene_gap, so it starts a new scene; far less than nuScenes' real gaps between scenes,
hours apart, which `ros2 bag play` would sit through). Each scene's shift is written into
/dima/gt/sample as `time_offset_ns`. `keep_time` keeps the recorded times (only scenes that
overlap in time are moved); `per_scene` writes one bag per scene under the output directory.
Chunks are zstd-compressed like `ros2 bag record`'s default (compression='none': plain).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage
from tqdm import tqdm

from dima_planner.bags import bag_io
from dima_planner.data.geometry import matrix_to_quat_xyzw, pose_matrix, scale_intrinsics, yaw_of
from dima_planner.data.nuscenes_dataset import DatasetConfig, occupancy_boxes, scene_records
from dima_planner.data.sample import CAMERAS, FUTURE_STEPS, STEP_SECONDS
from dima_planner.data.splits import SplitError, load_meta, scenes_in_split
from dima_planner.runtime.frames import BASE_FRAME, LIDAR_FRAME, MAP_FRAME, ODOM_FRAME, lidar_xy_to_base_link, optical_frame

LIDAR = "LIDAR_TOP"
SCENE_GAP_S = 3.0
# Version of the /dima/gt/sample content; bump when it changes (2: front_lidar2lidar).
GT_FORMAT = 2


class BagConvertError(RuntimeError):
    """Bad input for the converter (missing file, corrupt table, unknown scene...)."""


# ---- dataset access ----------------------------------------------------------------------


def _detect_version(dataroot: Path) -> str:
    found = sorted(p.name for p in dataroot.iterdir() if p.is_dir() and (p / "sample.json").is_file())
    if len(found) != 1:
        raise BagConvertError(
            f"cannot pick a dataset version in {dataroot}: found {found or 'none'}; pass --version")
    return found[0]


def load_nuscenes(dataroot: str | Path, version: str | None):
    """NuScenes devkit instance; a corrupt or missing table is reported by file name."""
    from nuscenes.nuscenes import NuScenes

    dataroot = Path(dataroot)
    if not dataroot.is_dir():
        raise BagConvertError(f"dataroot {dataroot} does not exist")
    version = version or _detect_version(dataroot)
    table_dir = dataroot / version
    if not table_dir.is_dir():
        raise BagConvertError(f"dataset version directory {table_dir} does not exist")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except Exception as exc:  # the devkit raises bare JSON/Key/Assertion errors
        for table in sorted(table_dir.glob("*.json")):
            try:
                json.loads(table.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as jexc:
                raise BagConvertError(f"corrupt table {table}: {jexc}") from None
        raise BagConvertError(f"cannot load nuScenes tables from {table_dir}: "
                              f"{type(exc).__name__}: {exc}") from None


def select_scenes(nusc, dataroot: Path, version: str, scenes: list[str] | None, split: str | None) -> list[dict]:
    by_name = {s["name"]: s for s in nusc.scene}
    if scenes:
        unknown = [n for n in scenes if n not in by_name]
        if unknown:
            raise BagConvertError(f"unknown scene(s) {unknown}; the dataroot has {sorted(by_name)[:10]}...")
        chosen = [by_name[n] for n in scenes]
    elif split:
        try:
            names = scenes_in_split(split, version, list(by_name), [s["token"] for s in nusc.scene],
                                    load_meta(dataroot),
                                    [nusc.get("log", s["log_token"])["location"] for s in nusc.scene])
        except SplitError as exc:
            raise BagConvertError(str(exc)) from None
        chosen = [s for s in nusc.scene if s["name"] in names]
        if not chosen:
            raise BagConvertError(f"split {split!r} has no scenes in {dataroot} ({version})")
    else:
        chosen = list(nusc.scene)
    first_ts = {s["token"]: nusc.get("sample", s["first_sample_token"])["timestamp"] for s in chosen}
    return sorted(chosen, key=lambda s: (first_ts[s["token"]], s["name"]))


def channel_chain(nusc, first_sd_token: str, keyframes_only: bool) -> list[dict]:
    """The sample_data records of one channel from the scene's first keyframe to its end."""
    out = []
    tok = first_sd_token
    while tok:
        sd = nusc.get("sample_data", tok)
        if sd["is_key_frame"] or not keyframes_only:
            out.append(sd)
        tok = sd["next"]
    return out


# ---- per-scene plan ----------------------------------------------------------------------


@dataclass
class ScenePlan:
    scene: dict
    cams: dict[str, list[dict]]  # camera -> sample_data records (time order)
    lidar: list[dict]
    samples: list[dict]
    static: dict[str, np.ndarray]  # child frame -> base_link <- child 4x4
    lidar2ego: np.ndarray
    image_size: dict[str, tuple[int, int]] = field(default_factory=dict)  # camera -> (w, h)
    offset_ns: int = 0

    @property
    def start_ns(self) -> int:
        return min(bag_io.us_to_ns(c[0]["timestamp"]) for c in [*self.cams.values(), self.lidar] if c)

    @property
    def end_ns(self) -> int:
        return max(bag_io.us_to_ns(c[-1]["timestamp"]) for c in [*self.cams.values(), self.lidar] if c)


def plan_scene(nusc, scene: dict, keyframes_only: bool) -> ScenePlan:
    samples = []
    tok = scene["first_sample_token"]
    while tok:
        s = nusc.get("sample", tok)
        samples.append(s)
        tok = s["next"]
    first = samples[0]
    missing = [c for c in (*CAMERAS, LIDAR) if c not in first["data"]]
    if missing:
        raise BagConvertError(f"scene {scene['name']}: first sample has no {missing} data")
    cams = {c: channel_chain(nusc, first["data"][c], keyframes_only) for c in CAMERAS}
    lidar = channel_chain(nusc, first["data"][LIDAR], keyframes_only)
    static = {}
    for c in CAMERAS:
        cs = nusc.get("calibrated_sensor", nusc.get("sample_data", first["data"][c])["calibrated_sensor_token"])
        static[optical_frame(c)] = pose_matrix(cs)
    lidar_cs = nusc.get("calibrated_sensor", nusc.get("sample_data", first["data"][LIDAR])["calibrated_sensor_token"])
    static[LIDAR_FRAME] = pose_matrix(lidar_cs)
    return ScenePlan(scene, cams, lidar, samples, static, static[LIDAR_FRAME])


def check_files(nusc, plans: list[ScenePlan]) -> None:
    """Fail before writing anything if an image file is missing."""
    missing = []
    for plan in plans:
        for recs in plan.cams.values():
            for sd in recs:
                p = Path(nusc.dataroot) / sd["filename"]
                if not p.is_file():
                    missing.append(str(p))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise BagConvertError(f"missing image file {missing[0]}{more}")


def image_size(path: Path) -> tuple[int, int]:
    try:
        with PILImage.open(path) as im:
            return im.size
    except Exception as exc:
        raise BagConvertError(f"cannot read image {path}: {exc}") from None


# ---- GT ----------------------------------------------------------------------------------


def lidar_pose(nusc, sample: dict) -> np.ndarray:
    """LIDAR_TOP -> global at the keyframe's LiDAR timestamp."""
    sd = nusc.get("sample_data", sample["data"][LIDAR])
    return pose_matrix(nusc.get("ego_pose", sd["ego_pose_token"])) @ pose_matrix(
        nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))


# ---- message builders (rosbags types) ----------------------------------------------------


class Builder:
    def __init__(self, store):
        self.s = store
        t = store.types
        self.Time = t["builtin_interfaces/msg/Time"]
        self.Duration = t["builtin_interfaces/msg/Duration"]
        self.Header = t["std_msgs/msg/Header"]
        self.Vector3 = t["geometry_msgs/msg/Vector3"]
        self.Point = t["geometry_msgs/msg/Point"]
        self.Quaternion = t["geometry_msgs/msg/Quaternion"]
        self.Pose = t["geometry_msgs/msg/Pose"]
        self.Transform = t["geometry_msgs/msg/Transform"]
        self.TransformStamped = t["geometry_msgs/msg/TransformStamped"]
        self.TFMessage = t["tf2_msgs/msg/TFMessage"]

    def header(self, ns: int, frame: str):
        sec, nsec = bag_io.ns_to_sec_nanosec(ns)
        return self.Header(stamp=self.Time(sec=sec, nanosec=nsec), frame_id=frame)

    def quat(self, m: np.ndarray):
        x, y, z, w = matrix_to_quat_xyzw(m)
        return self.Quaternion(x=x, y=y, z=z, w=w)

    def pose(self, m: np.ndarray):
        return self.Pose(position=self.Point(x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3])),
                         orientation=self.quat(m))

    def transform(self, ns: int, parent: str, child: str, m: np.ndarray):
        return self.TransformStamped(
            header=self.header(ns, parent), child_frame_id=child,
            transform=self.Transform(
                translation=self.Vector3(x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3])),
                rotation=self.quat(m)))

    def tf(self, transforms: list):
        return self.TFMessage(transforms=transforms)

    def ser(self, msg, typename: str) -> bytes:
        return self.s.serialize_cdr(msg, typename)


def camera_info(b: Builder, ns: int, cam: str, intrinsic: np.ndarray, size: tuple[int, int],
                ref_size: tuple[int, int]):
    """CameraInfo for undistorted images; K scaled from the calibration's image size to `size`."""
    w, h = size
    k = scale_intrinsics(np.asarray(intrinsic, dtype=np.float64).reshape(3, 3), ref_size[::-1], size[::-1])
    p = np.zeros((3, 4))
    p[:, :3] = k
    Roi = b.s.types["sensor_msgs/msg/RegionOfInterest"]
    return b.s.types["sensor_msgs/msg/CameraInfo"](
        header=b.header(ns, optical_frame(cam)), height=h, width=w, distortion_model="plumb_bob",
        d=np.zeros(5), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1),
        binning_x=0, binning_y=0, roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def image_msg(b: Builder, ns: int, cam: str, path: Path, compressed: bool):
    if compressed:
        data = path.read_bytes()
        codec = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix.lower().lstrip(".")
        if codec not in bag_io.COMPRESSED_FORMATS:
            raise BagConvertError(f"cannot publish {path} as CompressedImage: only JPEG and PNG files")
        fmt = bag_io.COMPRESSED_FORMATS[codec]
        return b.s.types["sensor_msgs/msg/CompressedImage"](
            header=b.header(ns, optical_frame(cam)), format=fmt, data=np.frombuffer(data, dtype=np.uint8))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BagConvertError(f"cannot decode image {path}")
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    h, w = rgb.shape[:2]
    return b.s.types["sensor_msgs/msg/Image"](
        header=b.header(ns, optical_frame(cam)), height=h, width=w, encoding="rgb8", is_bigendian=0,
        step=3 * w, data=rgb.reshape(-1))


def odometry_msgs(b: Builder, poses: list[tuple[int, np.ndarray]]):
    """(ns, Odometry) with the twist from central finite differences, expressed in base_link."""
    out = []
    Odom = b.s.types["nav_msgs/msg/Odometry"]
    PoseCov = b.s.types["geometry_msgs/msg/PoseWithCovariance"]
    TwistCov = b.s.types["geometry_msgs/msg/TwistWithCovariance"]
    Twist = b.s.types["geometry_msgs/msg/Twist"]
    n = len(poses)
    for k, (ns, m) in enumerate(poses):
        lo, hi = max(0, k - 1), min(n - 1, k + 1)
        v = np.zeros(3)
        wz = 0.0
        if hi > lo:
            dt = (poses[hi][0] - poses[lo][0]) * 1e-9
            if dt > 0:
                v = m[:3, :3].T @ (poses[hi][1][:3, 3] - poses[lo][1][:3, 3]) / dt
                dyaw = yaw_of(poses[hi][1]) - yaw_of(poses[lo][1])
                wz = float((dyaw + np.pi) % (2 * np.pi) - np.pi) / dt
        twist = Twist(linear=b.Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2])),
                      angular=b.Vector3(x=0.0, y=0.0, z=wz))
        out.append((ns, Odom(header=b.header(ns, ODOM_FRAME), child_frame_id=BASE_FRAME,
                             pose=PoseCov(pose=b.pose(m), covariance=np.zeros(36)),
                             twist=TwistCov(twist=twist, covariance=np.zeros(36)))))
    return out


# ---- writing -----------------------------------------------------------------------------

# Order of messages sharing a timestamp: static TF and TF first, so a consumer can look up
# transforms for the images that follow; GT last.
_PRIO = {"tf_static": 0, "tf": 1, "odom": 2, "command": 3, "camera_info": 4, "image": 5, "gt": 6}


def scene_events(nusc, b: Builder, plan: ScenePlan, compressed: bool):
    """Sorted (record ns, prio, topic key, thunk -> (msg, typename)) of one scene."""
    off = plan.offset_ns
    ev: list[tuple[int, int, int, str, object]] = []
    seq = 0

    def add(ns, kind, topic, thunk):
        nonlocal seq
        ev.append((ns + off, _PRIO[kind], seq, topic, thunk))
        seq += 1

    start = plan.start_ns
    static_tfs = [b.transform(start + off, MAP_FRAME, ODOM_FRAME, np.eye(4))]
    static_tfs += [b.transform(start + off, BASE_FRAME, child, m) for child, m in plan.static.items()]
    add(start, "tf_static", bag_io.TF_STATIC_TOPIC, lambda: (b.tf(static_tfs), bag_io.TYPES["tf"]))

    # Ego poses at every written sensor timestamp.
    poses: dict[int, np.ndarray] = {}
    for recs in [*plan.cams.values(), plan.lidar]:
        for sd in recs:
            ns = bag_io.us_to_ns(sd["timestamp"])
            if ns not in poses:
                poses[ns] = pose_matrix(nusc.get("ego_pose", sd["ego_pose_token"]))
    pose_list = sorted(poses.items())
    for ns, m in pose_list:
        tfm = b.transform(ns + off, ODOM_FRAME, BASE_FRAME, m)
        add(ns, "tf", bag_io.TF_TOPIC, lambda tfm=tfm: (b.tf([tfm]), bag_io.TYPES["tf"]))
    for ns, msg in odometry_msgs(b, [(ns + off, m) for ns, m in pose_list]):
        add(ns - off, "odom", bag_io.ODOM_TOPIC, lambda msg=msg: (msg, bag_io.TYPES["odom"]))

    for cam, recs in plan.cams.items():
        itype = bag_io.TYPES["compressed" if compressed else "image"]
        for sd in recs:
            ns = bag_io.us_to_ns(sd["timestamp"])
            path = Path(nusc.dataroot) / sd["filename"]
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            size = plan.image_size[cam]
            ref = (sd.get("width") or size[0], sd.get("height") or size[1])
            info = camera_info(b, ns + off, cam, cs["camera_intrinsic"], size, ref)
            add(ns, "camera_info", bag_io.camera_info_topic(cam),
                lambda info=info: (info, bag_io.TYPES["camera_info"]))
            add(ns, "image", bag_io.image_topic(cam, compressed),
                lambda ns=ns, cam=cam, path=path: (image_msg(b, ns + off, cam, path, compressed), itype))

    Cmd = b.s.types["dima_msgs/msg/DrivingCommand"]
    Path_ = b.s.types["nav_msgs/msg/Path"]
    PoseStamped = b.s.types["geometry_msgs/msg/PoseStamped"]
    String = b.s.types["std_msgs/msg/String"]
    l2e = plan.lidar2ego
    e2l = np.linalg.inv(l2e)
    # GT from the data pipeline's records: the bag scores exactly what `dima eval` scores.
    cfg = DatasetConfig(dataroot=str(nusc.dataroot), version=nusc.version, split="all",
                        load_images=False, check_images=False, cache=False)
    records = scene_records(nusc, plan.scene, cfg)
    for i, (sample, rec) in enumerate(zip(plan.samples, records)):
        assert rec["token"] == sample["token"]
        front_ns = bag_io.us_to_ns(nusc.get("sample_data", sample["data"]["CAM_FRONT"])["timestamp"])
        traj, mask = rec["ego_fut_traj"].astype(np.float64), rec["ego_fut_mask"].astype(np.float64)
        cur_inv = np.linalg.inv(lidar_pose(nusc, sample))
        rel = [cur_inv @ lidar_pose(nusc, plan.samples[min(i + 1 + t, len(plan.samples) - 1)])
               for t in range(FUTURE_STEPS)]
        cmd = rec["command"]
        add(front_ns, "command", bag_io.COMMAND_TOPIC,
            lambda ns=front_ns, cmd=cmd: (Cmd(header=b.header(ns + off, BASE_FRAME), command=cmd),
                                          bag_io.TYPES["command"]))
        # The node plans from base_link at the front image's time, which fires tens of ms
        # before the LiDAR keyframe the GT is relative to (0.35 m at 10 m/s): the GT carries
        # the transform between the two, and its path is given at the image time.
        front_sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
        front_lidar = pose_matrix(nusc.get("ego_pose", front_sd["ego_pose_token"])) @ l2e
        front2key = cur_inv @ front_lidar
        key2front = np.linalg.inv(front2key)
        base_pts = lidar_xy_to_base_link(traj @ key2front[:2, :2].T + key2front[:2, 3], l2e)
        path_poses = []
        for t in range(FUTURE_STEPS):
            if mask[t] <= 0:
                break  # only the valid prefix of the future is published as a path
            heading = l2e @ key2front @ rel[t] @ e2l  # future base_link orientation, image-time base_link
            pm = heading.copy()
            pm[:3, 3] = base_pts[t]
            step_ns = front_ns + off + int(round((t + 1) * STEP_SECONDS * 1e9))
            path_poses.append(PoseStamped(header=b.header(step_ns, BASE_FRAME), pose=b.pose(pm)))
        path_msg = Path_(header=b.header(front_ns + off, BASE_FRAME), poses=path_poses)
        add(front_ns, "gt", bag_io.GT_FUTURE_TOPIC, lambda m=path_msg: (m, bag_io.TYPES["path"]))
        boxes, bmask = occupancy_boxes(rec)
        info = {
            "format": GT_FORMAT,
            "token": sample["token"],
            "scene_name": plan.scene["name"],
            "scene_token": plan.scene["token"],
            "timestamp_us": int(sample["timestamp"]),
            "stamp_ns": front_ns + off,
            "time_offset_ns": off,
            "ego_fut_traj": np.round(traj, 6).tolist(),
            "ego_fut_mask": mask.tolist(),
            "valid": bool(np.all(mask > 0)),
            "command": cmd,
            "lidar2ego": np.round(l2e, 9).tolist(),
            "front_lidar2lidar": np.round(front2key, 9).tolist(),
            "occ_boxes": np.round(boxes, 4).tolist(),
            "occ_mask": bmask.astype(int).tolist(),
        }
        add(front_ns, "gt", bag_io.GT_SAMPLE_TOPIC,
            lambda d=json.dumps(info, separators=(",", ":")): (String(data=d), bag_io.TYPES["string"]))
    ev.sort(key=lambda e: e[:3])
    return ev


def place_scenes(plans: list[ScenePlan], scene_gap: float = SCENE_GAP_S, keep_time: bool = False) -> None:
    """Set each plan's offset_ns so the bag's time only moves forward: every scene starts
    `scene_gap` s after the previous one ends; keep_time moves only scenes that overlap."""
    gap = int(round(scene_gap * 1e9))
    end = None
    for plan in plans:
        plan.offset_ns = 0
        if end is not None and (not keep_time or plan.start_ns <= end):
            plan.offset_ns = end + gap - plan.start_ns
        end = plan.end_ns + plan.offset_ns


def convert(dataroot: str | Path, out: str | Path, version: str | None = None, scenes: list[str] | None = None,
            split: str | None = None, compressed: bool = False, keyframes_only: bool = False,
            overwrite: bool = False, progress: bool = True, scene_gap: float = SCENE_GAP_S,
            keep_time: bool = False, per_scene: bool = False, compression: str = "zstd") -> dict:
    """Write the bag (per_scene: one bag per scene, out/<scene name>); returns a summary
    {topics: {topic: count}, scenes, seconds, out, bags}. Raises BagConvertError on bad input."""
    dataroot = Path(dataroot)
    if scene_gap < 0:
        raise BagConvertError(f"scene gap must be >= 0 s, got {scene_gap}")
    if compression not in bag_io.COMPRESSIONS:
        raise BagConvertError(f"compression {compression!r} is not one of {list(bag_io.COMPRESSIONS)}")
    nusc = load_nuscenes(dataroot, version)
    version = nusc.version
    chosen = select_scenes(nusc, dataroot, version, scenes, split)
    try:
        plans = [plan_scene(nusc, s, keyframes_only) for s in chosen]
    except KeyError as exc:
        raise BagConvertError(f"inconsistent nuScenes tables in {dataroot / version}: missing record {exc}") from None
    check_files(nusc, plans)
    for plan in plans:
        for cam, recs in plan.cams.items():
            plan.image_size[cam] = image_size(Path(nusc.dataroot) / recs[0]["filename"])

    store = bag_io.make_typestore()
    b = Builder(store)
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    out = Path(out)
    if per_scene:
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise bag_io.BagExistsError(f"output {out} already exists (use --overwrite to replace it)")
        bags = [(out / plan.scene["name"], [plan]) for plan in plans]
    else:
        place_scenes(plans, scene_gap, keep_time)
        bags = [(out, plans)]
    n_images = sum(len(r) for p in plans for r in p.cams.values())
    with tqdm(total=n_images, unit="img", desc="bag convert", disable=not progress) as bar:
        for bag_out, bag_plans in bags:
            _write_bag(nusc, b, bag_out, bag_plans, dataroot, compressed, compression, overwrite, counts, bar)
    return {"topics": counts, "scenes": [p.scene["name"] for p in plans], "seconds": time.perf_counter() - t0,
            "out": str(out.resolve()), "bags": [str(o.resolve()) for o, _ in bags]}


def _write_bag(nusc, b: Builder, out: Path, plans: list[ScenePlan], dataroot: Path, compressed: bool,
               compression: str, overwrite: bool, counts: dict[str, int], bar) -> None:
    with bag_io.atomic_bag_dir(out, overwrite=overwrite) as tmp:
        writer = bag_io.open_writer(tmp, compression)
        writer.set_custom_data("dima.dataroot", str(dataroot.resolve()))
        writer.set_custom_data("dima.version", nusc.version)
        writer.set_custom_data("dima.scenes", ",".join(p.scene["name"] for p in plans))
        writer.set_custom_data("dima.time_offsets_ns", ",".join(str(p.offset_ns) for p in plans))
        writer.set_custom_data("dima.images", "compressed" if compressed else "rgb8")
        conns: dict[str, object] = {}

        def conn(topic: str, typename: str):
            if topic not in conns:
                # Latched like their live publishers: the rig, and the driving command (a
                # transient-local subscription never matches a volatile publisher).
                qos = bag_io.recorded_qos(transient_local=topic in (bag_io.TF_STATIC_TOPIC,
                                                                    bag_io.COMMAND_TOPIC))
                conns[topic] = writer.add_connection(topic, typename, typestore=b.s, offered_qos_profiles=[qos])
            return conns[topic]

        writer.open()
        try:
            for plan in plans:
                for ns, _prio, _seq, topic, thunk in scene_events(nusc, b, plan, compressed):
                    msg, typename = thunk()
                    writer.write(conn(topic, typename), ns, b.ser(msg, typename))
                    counts[topic] = counts.get(topic, 0) + 1
                    if topic.endswith(("/image_raw", "/compressed")):
                        bar.update(1)
            writer.close()
        except BaseException:
            writer.abort()
            raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataroot", required=True, help="nuScenes-format dataroot")
    parser.add_argument("--version", default=None,
                        help="table version (v1.0-mini, v1.0-trainval, ...); default: the only one present")
    sel = parser.add_mutually_exclusive_group()
    sel.add_argument("--scenes", nargs="+", default=None, help="scene names to convert")
    sel.add_argument("--split", default=None, help="train / val / all (dima_meta.json or devkit splits)")
    parser.add_argument("--out", required=True, help="output rosbag2 directory (must not exist)")
    parser.add_argument("--compressed", action="store_true",
                        help="sensor_msgs/CompressedImage with the JPEG file bytes (default: raw rgb8 Image)")
    parser.add_argument("--keyframes-only", action="store_true",
                        help="only 2 Hz keyframes (default: keyframes and sweeps, 12 Hz cameras)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--scene-gap", type=float, default=SCENE_GAP_S, metavar="SECONDS",
                        help=f"time between consecutive scenes in the bag (default {SCENE_GAP_S:g} s; the real "
                             "gaps between nuScenes scenes are hours)")
    parser.add_argument("--keep-time", action="store_true",
                        help="keep the recorded times (only overlapping scenes are moved)")
    parser.add_argument("--per-scene", action="store_true", help="one bag per scene: OUT/<scene name>")
    parser.add_argument("--compression", choices=bag_io.COMPRESSIONS, default="zstd",
                        help="MCAP chunk compression (default zstd, as ros2 bag record)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        summary = convert(args.dataroot, args.out, version=args.version, scenes=args.scenes, split=args.split,
                          compressed=args.compressed, keyframes_only=args.keyframes_only,
                          overwrite=args.overwrite, progress=not args.no_progress, scene_gap=args.scene_gap,
                          keep_time=args.keep_time, per_scene=args.per_scene, compression=args.compression)
    except (BagConvertError, bag_io.BagExistsError) as exc:
        print(f"dima bag convert: error: {exc}", file=sys.stderr)
        return 2
    total = sum(summary["topics"].values())
    where = summary["out"] if len(summary["bags"]) == 1 else f"{len(summary['bags'])} bags in {summary['out']}"
    print(f"wrote {where}: {len(summary['scenes'])} scene(s), {total} messages in {summary['seconds']:.1f} s")
    for topic, n in sorted(summary["topics"].items()):
        print(f"  {topic:40s} {n}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dima bag convert", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
