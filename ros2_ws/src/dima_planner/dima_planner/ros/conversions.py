"""ROS message <-> numpy conversions and output message building for the planner node.

No cv_bridge: images are read straight from the message buffer (images.py, which checks
sizes and formats before decoding). Every reader validates its input and raises
`InputError` (with a short category used for the drop counters and a sentence saying what
is wrong) instead of returning a silently wrong array.

Frames: the model works in the nuScenes LiDAR frame (x right, y forward, z up; see
data/sample.py); ROS outputs are in base_link (REP-103: x forward, y left, z up).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from nav_msgs.msg import Path
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from dima_msgs.msg import PlannedTrajectory, SceneTokens

from ..data import geometry
from ..data.sample import AGENT_CLASSES, MAP_CLASSES, STEP_SECONDS
from ..runtime import images
from ..runtime.errors import InputError  # noqa: F401  (re-exported)
from ..runtime.frames import lidar_points_to_base, trajectory_lidar_to_base  # noqa: F401  (re-exported)
from ..runtime.images import SUPPORTED_ENCODINGS  # noqa: F401
from ..runtime.sync import stamp_to_ns  # noqa: F401  (re-exported: the nodes' message conversions)


# ---- time ---------------------------------------------------------------------------------
def ns_to_stamp(ns: int) -> Time:
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nsec)


def seconds_to_duration(s: float) -> Duration:
    sec = math.floor(s)
    return Duration(sec=int(sec), nanosec=int(round((s - sec) * 1e9)))


# ---- images (decoding and checks: images.py) ---------------------------------------------------
def rgb_to_image(rgb: np.ndarray, stamp: Time, frame_id: str, encoding: str = "rgb8") -> Image:
    """uint8 (H, W, 3) RGB -> sensor_msgs/Image in `encoding` (rgb8 or bgr8)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encoding must be rgb8 or bgr8, got {encoding!r}")
    pix = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    h, w = rgb.shape[:2]
    return Image(header=Header(stamp=stamp, frame_id=frame_id), height=h, width=w, encoding=encoding,
                 is_bigendian=0, step=w * 3, data=np.ascontiguousarray(pix).tobytes())


def rgb_to_compressed(rgb: np.ndarray, stamp: Time, frame_id: str, quality: int = 90) -> CompressedImage:
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return CompressedImage(header=Header(stamp=stamp, frame_id=frame_id), format="rgb8; jpeg compressed bgr8",
                           data=enc.tobytes())


_ANY_SIZE = images.ImageLimits(min_side=1)  # the node applies its own min_image_size


def decode_image(msg: Image | CompressedImage) -> np.ndarray:
    """Either image message -> uint8 (H, W, 3) RGB at its own size (checked; images.decode)."""
    return images.decode(msg, _ANY_SIZE).rgb


def image_to_rgb(msg: Image) -> np.ndarray:
    return images.decode_raw(msg, _ANY_SIZE).rgb


# ---- geometry (pose matrices: data/geometry.py; LiDAR <-> base_link: frames.py) ------------------
def transform_to_matrix(tf, what: str = "transform") -> np.ndarray:
    """geometry_msgs/Transform (child -> parent) -> 4x4; InputError("bad_pose") if unusable."""
    try:
        return geometry.transform_from_msg(tf, what)
    except ValueError as e:
        raise InputError("bad_pose", str(e)) from None


def pose_to_matrix(pose: Pose, what: str = "pose") -> np.ndarray:
    try:
        return geometry.pose_from_msg(pose, what)
    except ValueError as e:
        raise InputError("bad_pose", str(e)) from None


def matrix_to_pose(m: np.ndarray) -> Pose:
    w, x, y, z = geometry.matrix_to_quat_wxyz(m)
    return Pose(position=Point(x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3])),
                orientation=Quaternion(w=float(w), x=float(x), y=float(y), z=float(z)))


def speeds(base_poses: np.ndarray, origin_xy: np.ndarray, dt: float = STEP_SECONDS) -> np.ndarray:
    """Speed at each waypoint from finite differences, starting at `origin_xy` (where the
    track is now: the LiDAR origin in base_link)."""
    xy = np.concatenate([np.asarray(origin_xy, dtype=np.float64)[None, :2], base_poses[:, :2, 3]], 0)
    return (np.linalg.norm(np.diff(xy, axis=0), axis=1) / dt).astype(np.float32)


# ---- output messages -----------------------------------------------------------------------
def build_path(poses: np.ndarray, stamp_ns: int, frame_id: str, dt: float = STEP_SECONDS) -> Path:
    """Path of 4x4 poses; pose i is stamped at stamp + (i + 1) dt (when it is reached)."""
    out = Path(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id))
    for i, m in enumerate(poses):
        out.poses.append(PoseStamped(header=Header(stamp=ns_to_stamp(stamp_ns + int(round((i + 1) * dt * 1e9))),
                                                   frame_id=frame_id), pose=matrix_to_pose(m)))
    return out


def build_trajectory(base_poses: np.ndarray, origin_xy: np.ndarray, stamp_ns: int, frame_id: str, command: int,
                     planner_latency: float, model_latency: float, model_id: str,
                     dt: float = STEP_SECONDS) -> PlannedTrajectory:
    msg = PlannedTrajectory(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id))
    msg.poses = [matrix_to_pose(m) for m in base_poses]
    msg.time_from_start = [seconds_to_duration((i + 1) * dt) for i in range(len(base_poses))]
    msg.velocity = speeds(base_poses, origin_xy, dt).tolist()
    msg.command = int(command)
    msg.planner_latency = float(planner_latency)
    msg.model_latency = float(model_latency)
    msg.model_id = model_id
    return msg


_TOKEN_TYPES = (("bev", SceneTokens.TYPE_BEV), ("ego", SceneTokens.TYPE_EGO),
                ("agent", SceneTokens.TYPE_AGENT), ("map", SceneTokens.TYPE_MAP))


def build_scene_tokens(tokens: Mapping[str, np.ndarray], bev_hw: tuple[int, int], stamp_ns: int, frame_id: str,
                       command: int, base_poses: np.ndarray, model_id: str,
                       ego_feature: np.ndarray | None = None) -> SceneTokens:
    """Flatten the BEAM tokens ({bev, ego, agent, map}, each (count, dim)) into SceneTokens.

    `ego_feature` is the planning transformer's penultimate ego feature (C,) for the MLLM
    node's Dual mode; None leaves the field empty. The validating inverse of this encoder is
    `reasoning.decode_scene_tokens_msg` (the single decoder: keep the two in step).
    """
    msg = SceneTokens(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id))
    arrays, offset = [], 0
    for name, type_id in _TOKEN_TYPES:
        a = np.asarray(tokens[name], dtype=np.float32)
        if a.ndim == 3 and a.shape[0] == 1:  # tolerate a batch dimension of one
            a = a[0]
        if a.ndim != 2:
            raise ValueError(f"{name} tokens must be (count, dim), got {a.shape}")
        msg.types.append(type_id)
        msg.offsets.append(offset)
        msg.counts.append(a.shape[0])
        msg.dims.append(a.shape[1])
        arrays.append(a.ravel())
        offset += a.size
    if msg.counts[0] != bev_hw[0] * bev_hw[1]:
        raise ValueError(f"{msg.counts[0]} BEV tokens do not fill a {bev_hw[0]}x{bev_hw[1]} grid")
    msg.data = np.concatenate(arrays).astype(np.float32)
    msg.bev_h, msg.bev_w = int(bev_hw[0]), int(bev_hw[1])
    msg.command = int(command)
    msg.planned_poses = [matrix_to_pose(m) for m in base_poses]
    msg.model_id = model_id
    if ego_feature is not None:
        feat = np.asarray(ego_feature, dtype=np.float32)
        if feat.ndim == 2 and feat.shape[0] == 1:  # tolerate a batch dimension of one
            feat = feat[0]
        if feat.ndim != 1 or feat.size == 0:
            raise ValueError(f"ego_feature must be a non-empty (C,) vector, got {feat.shape}")
        if not np.all(np.isfinite(feat)):
            raise ValueError("ego_feature contains NaN or infinite values")
        msg.ego_feature = feat
    return msg


_AGENT_COLOURS = {"pedestrian": (1.0, 0.6, 0.0), "bicycle": (0.0, 0.8, 0.8), "motorcycle": (0.0, 0.8, 0.8)}
_MAP_COLOURS = {"divider": (1.0, 1.0, 1.0), "ped_crossing": (0.2, 0.4, 1.0), "boundary": (1.0, 0.2, 0.2)}


def _colour(rgb: Sequence[float], a: float = 1.0) -> ColorRGBA:
    return ColorRGBA(r=float(rgb[0]), g=float(rgb[1]), b=float(rgb[2]), a=float(a))


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in xyz]


def build_markers(base_poses: np.ndarray, lidar2ego: np.ndarray, stamp_ns: int, frame_id: str,
                  agents: Mapping[str, np.ndarray] | None, map_elements: Mapping[str, np.ndarray] | None,
                  lifetime_s: float = 1.0) -> MarkerArray:
    """Trajectory, detected agents (box + most likely predicted motion) and map polylines in base_link.

    agents: boxes (K, 7) x, y, z, l, w, h, yaw (LiDAR frame), labels (K,), motion (K, 6, 2);
    map_elements: points (M, P, 2) (LiDAR frame), labels (M,).
    """
    header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)
    life = seconds_to_duration(lifetime_s)
    out = MarkerArray()
    # DELETEALL first so that agents/map elements gone since the last cycle disappear.
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    traj = Marker(header=header, ns="trajectory", id=0, type=Marker.LINE_STRIP, action=Marker.ADD, lifetime=life)
    traj.pose.orientation.w = 1.0
    traj.scale.x = 0.3
    traj.color = _colour((0.1, 1.0, 0.1))
    traj.points = _points(np.concatenate([lidar_points_to_base(np.zeros(2), lidar2ego)[None], base_poses[:, :3, 3]], 0))
    out.markers.append(traj)
    yaw_l2e = math.atan2(lidar2ego[1, 0], lidar2ego[0, 0])
    if agents is not None:
        centres = lidar_points_to_base(agents["boxes"][:, :2], lidar2ego)
        motion = lidar_points_to_base(agents["motion"], lidar2ego)
        for i, box in enumerate(np.asarray(agents["boxes"], dtype=np.float64)):
            cls = AGENT_CLASSES[int(agents["labels"][i])]
            col = _AGENT_COLOURS.get(cls, (0.9, 0.9, 0.1))
            m = Marker(header=header, ns="agents", id=i, type=Marker.CUBE, action=Marker.ADD, lifetime=life)
            yaw = box[6] + yaw_l2e
            m.pose.position = Point(x=centres[i, 0], y=centres[i, 1], z=float(box[5]) / 2)
            m.pose.orientation = Quaternion(w=math.cos(yaw / 2), z=math.sin(yaw / 2))
            m.scale.x, m.scale.y, m.scale.z = (max(float(v), 0.1) for v in box[3:6])
            m.color = _colour(col, 0.5)
            out.markers.append(m)
            mo = Marker(header=header, ns="agent_motion", id=i, type=Marker.LINE_STRIP, action=Marker.ADD,
                        lifetime=life)
            mo.pose.orientation.w = 1.0
            mo.scale.x = 0.15
            mo.color = _colour(col, 0.9)
            mo.points = _points(np.concatenate([centres[i: i + 1], motion[i]], 0))
            out.markers.append(mo)
    if map_elements is not None:
        pts = lidar_points_to_base(map_elements["points"], lidar2ego)
        for i, line in enumerate(pts):
            cls = MAP_CLASSES[int(map_elements["labels"][i])]
            m = Marker(header=header, ns=f"map_{cls}", id=i, type=Marker.LINE_STRIP, action=Marker.ADD,
                       lifetime=life)
            m.pose.orientation.w = 1.0
            m.scale.x = 0.2
            m.color = _colour(_MAP_COLOURS[cls], 0.8)
            m.points = _points(line)
            out.markers.append(m)
    return out


def odometry_pose(msg: Any) -> np.ndarray:
    """nav_msgs/Odometry -> 4x4 pose of its child frame, with NaN/quaternion checks."""
    return pose_to_matrix(msg.pose.pose, f"odometry ({msg.header.frame_id} -> {msg.child_frame_id})")
