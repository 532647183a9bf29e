"""The planner node's per-frame policy, without ROS: `PlannerCore.step(FrameInputs) -> PlanOutput | Skip`.

The node (planner_node.py) subscribes, hands the front image and the cached side images
over to its worker thread, calls `step`, and publishes what comes back. Everything that
decides *whether and with what* to plan lives here, so it is tested with plain tables
(tests/test_planner_core.py) instead of DDS round trips:

  staleness and order of the front stamp, the side cameras (fresh / reused / masked, and a
  corrupt side camera treated like a missing one), intrinsics matched to their image
  (CameraInfo by stamp, else the last valid one of that size; P for rectified images),
  extrinsics from a cycle-free /tf_static (+ stamped /tf) store, odometry (never poisoned by one bad stamp;
  a plan that bridged a rejected sample says so), command and ego status, the temporal
  state, plausibility limits on everything that becomes an output, and the counters the
  watchdog and /diagnostics read (planner_stats.PlannerStats).

Messages are read by attribute (header.stamp, k, p, pose.pose, ...): no rclpy or message
package is imported here; the tests hand it real message objects. torch (and model/) are
imported when a PlannerCore is made, i.e. at configure, never at node start.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..data import geometry
from ..data.ego_motion import ego_status_vector
from ..data.geometry import scale_intrinsics
from ..data.sample import CAMERAS, STEP_SECONDS
from .errors import InputError
from .extrinsics import RIG_HW, Rig, StaticTransforms
from .frames import trajectory_lidar_to_base
from .images import Decoded, ImageLimits, decode
from .params import CoreParams
from .planner_stats import PlannerStats
from .sync import (SEC, Cached, CameraPick, OdomHistory, OdomSample, TemporalState, fallback_pick, select_cameras,
                   stamp_to_ns)

FRONT = CAMERAS[0]
SIDES = CAMERAS[1:]
COMMANDS = (0, 1, 2)  # DrivingCommand: TURN_RIGHT, TURN_LEFT, GO_STRAIGHT


class Log(Protocol):
    def warning(self, msg: str) -> None: ...


@dataclass
class FrameInputs:
    now_ns: int  # node clock (sim time follows /clock); 0 = no /clock yet
    anchor: Cached  # the front image
    sides: dict[str, list[Cached]]  # the cached images of every side camera
    t_start: float = field(default_factory=time.monotonic)  # worker took the anchor
    wait_s: float = 0.0  # spent waiting for the side cameras (not node overhead)


@dataclass
class Skip:
    category: str  # the /diagnostics counter rejected.<category>
    reason: str
    reset: bool = False  # time jumped back: the node also drops its cached images
    counted: bool = True  # False: a deliberate skip (min_plan_period), not a rejection


@dataclass
class PlanOutput:
    stamp_ns: int
    result: Any  # inference.PlanResult
    trajectory: np.ndarray  # (6, 2) LiDAR frame
    base_poses: np.ndarray  # (6, 4, 4) in base_frame
    world_poses: np.ndarray  # (6, 4, 4) in world_frame
    world_frame: str
    command: int
    lidar2ego: np.ndarray
    model_s: float  # forward pass alone
    plan_s: float  # plan(): preprocessing + forward
    arrivals: list[float]  # monotonic arrival of every fresh image used
    degraded: list[tuple[str, str]]  # (counter key, note): masked/reused cameras, bridged odometry
    t_start: float
    wait_s: float


# (messages by camera, limits, the model's image_size (H, W), its image_fit) -> decoded by camera
DecodeFn = Callable[[dict[str, Any], ImageLimits, tuple[int, int], str], dict[str, "Decoded | InputError"]]


def decode_one(msg, limits: ImageLimits, out_hw: tuple[int, int], fit: str) -> Decoded | InputError:
    try:
        return decode(msg, limits, out_hw, fit)
    except InputError as e:
        return e


def decode_serially(msgs: dict[str, Any], limits: ImageLimits, out_hw: tuple[int, int],
                    fit: str) -> dict[str, Decoded | InputError]:
    """The reference DecodeFn (the node runs decode_one on its thread pool)."""
    return {cam: decode_one(msg, limits, out_hw, fit) for cam, msg in msgs.items()}


# ---- camera intrinsics ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraModel:
    stamp_ns: int
    hw: tuple[int, int]  # (H, W) of the image it describes; (0, 0) = unspecified
    k: np.ndarray  # (3, 3) the matrix the model uses: P[:3, :3] for rectified images, else K
    distorted: bool


def camera_model(msg, rectified: bool) -> CameraModel:
    """Checked intrinsics of a sensor_msgs/CameraInfo. For a rectified image, image_geometry's
    rule: the projection P describes it (K and D belong to the raw image)."""
    what = f"camera_info {msg.header.frame_id!r}"
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if rectified:
        p = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        if not np.any(p[:3, :3]):
            raise InputError("bad_camera_info", f"{what}: P is all zero but the image is rectified "
                                                f"(cameras.<cam>.rectified: true)")
        k = p[:, :3].copy()
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0 or k[2, 2] != 1.0 or k[2, 0] or k[2, 1]:
        raise InputError("bad_camera_info", f"{what} has an invalid {'P' if rectified else 'K'} {k.ravel().tolist()}")
    w, h = int(msg.width), int(msg.height)
    if w < 0 or h < 0 or (w == 0) != (h == 0):
        raise InputError("bad_camera_info", f"{what} has an invalid size {w}x{h}")
    if abs(k[0, 2]) > 10 * max(w, 1) + 1e4 or abs(k[1, 2]) > 10 * max(h, 1) + 1e4:
        raise InputError("bad_camera_info", f"{what} has its principal point far outside the image")
    d = np.asarray(msg.d, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise InputError("bad_camera_info", f"{what} has non-finite distortion coefficients")
    return CameraModel(stamp_to_ns(msg.header.stamp), (h, w), k, bool(np.any(d != 0.0)))


class CameraInfoStore:
    """The last few *valid* CameraInfo of one camera. A bad one is remembered as the reason
    but never replaces a good one, so a neighbour's or an earlier bad message cannot spoil
    a valid image; an image gets the CameraInfo with its own stamp, else the newest one of
    its size."""

    def __init__(self, depth: int = 8):
        self._models: deque[CameraModel] = deque(maxlen=depth)
        self.last_error: str = ""

    def add(self, msg, rectified: bool) -> str | None:
        try:
            self._models.append(camera_model(msg, rectified))
            self.last_error = ""
            return None
        except InputError as e:
            self.last_error = e.reason
            return e.reason

    def clear(self) -> None:
        self._models.clear()
        self.last_error = ""

    def lookup(self, stamp: int, hw: tuple[int, int]) -> CameraModel:
        if not self._models:
            if self.last_error:
                raise InputError("bad_camera_info", self.last_error)
            raise InputError("no_camera_info", "no CameraInfo received")
        fits = [m for m in self._models if m.hw in (tuple(hw), (0, 0))]
        exact = [m for m in fits if m.stamp_ns == stamp]
        if exact:
            return exact[-1]
        if fits:
            return fits[-1]
        m = self._models[-1]
        raise InputError("bad_camera_info", f"camera_info is for {m.hw[1]}x{m.hw[0]}, the image is {hw[1]}x{hw[0]}")


# ---- the core -------------------------------------------------------------------------------------------
class PlannerCore:
    """One planning stream. `params` the typed parameters (the node replaces them when one
    changes: the next frame reads the new ones); `planner` an inference.Planner; `rig` the
    fallback geometry."""

    def __init__(self, params: CoreParams, planner, rig: Rig, stats: PlannerStats | None = None,
                 log: Log | None = None):
        self.p = params
        self.planner = planner
        self.rig = rig
        self.stats = stats or PlannerStats()
        self.log = log
        self.tf = StaticTransforms()
        self.odom = OdomHistory()
        self.infos = {c: CameraInfoStore() for c in CAMERAS}
        self.temporal = TemporalState()
        self.last_good: dict[str, Cached] = {}
        self.last_good_arrays: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}  # model-size rgb, K, frame
        self.command: tuple[int, int] | None = None  # (command, stamp_ns)
        self.last_plan_stamp: int | None = None
        self.rate_skips = 0
        self._warned: set[str] = set()
        import torch

        self._torch, self._scale_intrinsics, self._ego_status_vector = torch, scale_intrinsics, ego_status_vector
        self._precision = self._autocast_context()

    # ---- inputs arriving between frames --------------------------------------------------------------
    def on_camera_info(self, cam: str, msg) -> str | None:
        """Store a CameraInfo; the reason when it is unusable (it then replaces nothing)."""
        rectified = self.p.camera_rectified[cam]
        bad = self.infos[cam].add(msg, rectified)
        if bad is None and not rectified and self.infos[cam]._models[-1].distorted:
            self._warn_once(f"distortion.{cam}", f"{cam}: CameraInfo has non-zero distortion ({msg.distortion_model}) "
                            f"but the model treats the image as undistorted (set cameras.{cam}.rectified and "
                            f"subscribe to the rectified image)")
        if bad:
            self.stats.input_rejected(f"camera_info.{cam}", bad)
        return bad

    def on_tf_static(self, msg) -> list[str]:
        reasons = self.tf.add(msg, max_translation=float(self.p.max_extrinsic_translation))
        for r in reasons:
            self.stats.input_rejected("tf_static", r)
        return reasons

    def on_tf(self, msg) -> list[str]:
        """/tf (extrinsics_source: tf): stamped sensor poses, e.g. carla-ros-bridge's."""
        reasons = self.tf.add(msg, static=False)
        for r in reasons:
            self.stats.input_rejected("tf", r)
        return reasons

    def on_command(self, command: int, stamp: int) -> str | None:
        if command not in COMMANDS:
            reason = f"driving command {command} is not 0, 1 or 2; ignored"
            self.stats.input_rejected("command", reason)
            return reason
        self.command = (int(command), int(stamp))
        return None

    def on_odometry(self, msg, now_ns: int) -> str | None:
        """Check and store an odometry message. A rejected one (non-finite, implausible, or
        stamped in the future) is remembered by stamp: it never enters the history, and a plan
        interpolating across it is reported as bridged."""
        stamp = stamp_to_ns(msg.header.stamp)
        try:
            sample = self._odometry_sample(msg, stamp, now_ns)
        except InputError as e:
            self.odom.mark_bad(stamp, e.reason)
            self.stats.input_rejected("odom", e.reason)
            return e.reason
        self.odom.put(sample)
        return None

    def _odometry_sample(self, msg, stamp: int, now_ns: int) -> OdomSample:
        what = f"odometry ({msg.header.frame_id} -> {msg.child_frame_id})"
        try:
            pose = geometry.pose_from_msg(msg.pose.pose)
        except ValueError as e:
            raise InputError("bad_odometry", f"{what}: {e}") from None
        limit = float(self.p.max_odom_position)
        if np.abs(pose[:3, 3]).max() > limit:
            raise InputError("bad_odometry", f"{what}: position {pose[:3, 3].tolist()} exceeds max_odom_position "
                                             f"{limit:g} m")
        tw = msg.twist.twist
        twist = np.array([tw.linear.x, tw.linear.y, tw.angular.z], dtype=np.float64)
        if not np.all(np.isfinite(twist)):
            raise InputError("bad_odometry", f"{what}: twist is not finite")
        if math.hypot(twist[0], twist[1]) > float(self.p.max_speed):
            raise InputError("bad_odometry", f"{what}: speed {math.hypot(twist[0], twist[1]):.1f} m/s exceeds "
                                             f"max_speed {self.p.max_speed:g}")
        ahead = (stamp - now_ns) / 1e9
        if now_ns > 0 and ahead > float(self.p.max_odom_age):
            raise InputError("bad_odometry", f"{what}: stamped {ahead:.3f} s ahead of the node clock")
        return OdomSample(stamp, pose, twist, msg.header.frame_id)

    # ---- lifecycle -----------------------------------------------------------------------------------
    def reset_temporal(self) -> None:
        self.temporal.reset()
        self.last_good.clear()
        self.last_good_arrays.clear()
        self.last_plan_stamp = None
        if self.planner is not None:
            self.planner.reset()

    def clear_inputs(self) -> None:
        """Forget everything received (cleanup / time jump); CameraInfo and /tf_static stay:
        they are latched by their publishers and not re-sent."""
        self.odom.clear()
        self.reset_temporal()

    # ---- one frame -----------------------------------------------------------------------------------
    def step(self, frame: FrameInputs, decode_fn: DecodeFn = decode_serially) -> PlanOutput | Skip:
        try:
            return self._step(frame, decode_fn)
        except InputError as e:
            return Skip(e.category, e.reason)

    def _step(self, frame: FrameInputs, decode_fn: DecodeFn) -> PlanOutput | Skip:
        p = self.p
        anchor_ns = frame.anchor.stamp_ns

        # 1. staleness against the node clock, then order (a fresh stamp before the last
        #    plan: the clock went back, or the frame arrived out of order)
        if frame.now_ns == 0:
            return Skip("no_clock", "use_sim_time is set but no /clock has been received yet")
        lag = (frame.now_ns - anchor_ns) / 1e9
        if lag > p.max_input_age:
            return Skip("stale_input", f"front camera stamp is {lag:.3f} s behind the node clock "
                                       f"(max_input_age {p.max_input_age:.3f} s)")
        if -lag > p.max_input_age:
            return Skip("future_stamp", f"front camera stamp is {-lag:.3f} s ahead of the node clock")
        order = self.temporal.check_order(anchor_ns, int(p.time_jump_reset * SEC))
        if not order.ok:
            if order.reset:
                self.clear_inputs()
            return Skip(order.category, order.reason, reset=order.reset)
        if (p.min_plan_period > 0 and self.last_plan_stamp is not None
                and anchor_ns - self.last_plan_stamp < p.min_plan_period * SEC):
            self.rate_skips += 1
            return Skip("rate_limited", "min_plan_period", counted=False)

        # 2. one image per camera: decode what is fresh, straight to the model's size
        tol, max_reuse = int(p.sync_tolerance * SEC), int(p.max_reuse_age * SEC)
        policy = p.missing_camera_policy
        picks = select_cameras(anchor_ns, frame.sides, tol, policy, self.last_good, max_reuse)
        size, fit = tuple(self.planner.cfg.image_size), self.planner.cfg.image_fit
        limits = ImageLimits(int(p.min_image_size), int(p.max_image_pixels))
        to_decode = {FRONT: frame.anchor.msg}
        to_decode.update({c: pk.item.msg for c, pk in picks.items() if pk.status == "fresh"})
        decoded = decode_fn(to_decode, limits, size, fit)

        # 3. per camera: image, intrinsics for that image, frame. The front camera must be
        #    usable; a side camera that is not is handled like a missing one.
        images, ks, frames, degraded = [], [], [], []
        fresh: dict[str, Cached] = {}
        for cam in CAMERAS:
            src = frame.anchor if cam == FRONT else (picks[cam].item if picks[cam].status == "fresh" else None)
            got = decoded.get(cam)
            if src is not None:
                try:
                    if isinstance(got, InputError):
                        raise got
                    k = self._intrinsics(cam, src.stamp_ns, got)
                    frame_id = p.camera_frames[cam] or src.msg.header.frame_id or cam
                    images.append(got.rgb)
                    ks.append(k)
                    frames.append(frame_id)
                    fresh[cam] = src
                    continue
                except InputError as e:
                    if cam == FRONT:
                        return Skip(e.category, f"{cam}: {e.reason}")
                    self.stats.input_rejected(f"image.{cam}", e.reason)
                    picks[cam] = fallback_pick(cam, anchor_ns, f"unusable image ({e.category}: {e.reason})", policy,
                                               self.last_good, max_reuse)
            img, k, frame_id, key = self._substitute(cam, picks[cam], size, fit)
            degraded.append((key, f"{cam} {picks[cam].note}"))
            images.append(img)
            ks.append(k)
            frames.append(frame_id)

        # 4. extrinsics
        lidar2ego, cam2ego = self._extrinsics(frames, anchor_ns)
        cam2lidar = np.linalg.inv(lidar2ego)[None] @ cam2ego

        # 5. odometry at the front stamp: places the plan in the map and aligns the temporal BEV
        max_odom = int(p.max_odom_age * SEC)
        try:
            pose = self.odom.pose_at(anchor_ns, max_odom)
        except InputError as e:
            bad = self.odom.bad_near(anchor_ns, max_odom)
            if bad is not None:
                return Skip("bad_odometry", f"odometry unusable: {bad}")
            return Skip(e.category, e.reason)
        if pose.bridged:
            degraded.append(("bridged_odometry", f"pose at the front stamp interpolated across a rejected odometry "
                                                 f"message ({pose.bridged})"))

        # 6. command and ego status
        command = int(p.default_command)
        if self.command is not None:
            cmd, cmd_ns = self.command
            if p.max_command_age <= 0 or abs(anchor_ns - cmd_ns) <= p.max_command_age * SEC:
                command = cmd
        lidar2world = pose.matrix @ lidar2ego
        ego_status = self._ego_status(anchor_ns, lidar2world, lidar2ego, max_odom) if p.use_ego_status else None

        # 7. temporal inputs, then the model
        temporal = self.temporal.advance(anchor_ns, int(p.max_scene_gap * SEC))
        if temporal.category:  # a forward jump: the planner drops its BEV (scene_start); so does the rest
            degraded.append((temporal.category, temporal.reason))
        t_model = time.monotonic()
        try:
            with self._torch.inference_mode(), self._precision:
                result = self.planner.plan(images, np.stack(ks), cam2lidar, command, ego_status,
                                           scene_start=temporal.scene_start, stamp_ns=anchor_ns,
                                           lidar2world=lidar2world)
        except ValueError as e:
            self.reset_temporal()
            return Skip("model_input", f"planner rejected the inputs: {e}")
        plan_s = time.monotonic() - t_model
        traj = np.asarray(result.trajectory, dtype=np.float64)

        # 8. plausibility of what would be published
        reach = float(p.max_plan_distance)
        if traj.shape != (6, 2) or not np.all(np.isfinite(traj)):
            self.reset_temporal()
            return Skip("bad_model_output", f"model returned a non-finite or {traj.shape} trajectory")
        if np.abs(traj).max() > reach:
            self.reset_temporal()
            return Skip("bad_model_output", f"a waypoint is {np.abs(traj).max():.1f} m away (max_plan_distance "
                                            f"{reach:g} m)")
        base_poses = trajectory_lidar_to_base(traj, lidar2ego)
        world_poses = pose.matrix[None] @ base_poses
        if not np.all(np.isfinite(world_poses)):
            return Skip("bad_model_output", "the plan in the map frame is not finite")

        # 9. remember the images used, for reuse_last
        for cam, img, k, frame_id in zip(CAMERAS, images, ks, frames):
            if cam in fresh:
                self.last_good[cam] = fresh[cam]
                self.last_good_arrays[cam] = (img, k, frame_id)
        self.last_plan_stamp = anchor_ns
        return PlanOutput(anchor_ns, result, traj, base_poses, world_poses,
                          pose.sample.frame_id or p.odom_frame, command, lidar2ego,
                          float(result.latency_ms) / 1e3, plan_s, [s.recv_wall for s in fresh.values()], degraded,
                          frame.t_start, frame.wait_s)

    # ---- pieces of step ------------------------------------------------------------------------------
    def _intrinsics(self, cam: str, stamp: int, img: Decoded) -> np.ndarray:
        """K of the model-size image: the source image's K (CameraInfo or rig) scaled as it was."""
        if self.p.intrinsics_source == "rig":
            k = self._scale_intrinsics(self.rig.intrinsics[cam], RIG_HW, img.source_hw)
        else:
            k = self.infos[cam].lookup(stamp, img.source_hw).k
        sx, sy = img.k_scale
        return np.diag([sx, sy, 1.0]) @ k

    def _substitute(self, cam: str, pick: CameraPick, hw: tuple[int, int],
                    fit: str) -> tuple[np.ndarray, np.ndarray, str, str]:
        """(image, K, frame, counter key) for a side camera without a usable fresh image."""
        if pick.status == "reused":
            img, k, frame_id = self.last_good_arrays[cam]
            return img, k, frame_id, f"reused.{cam}"
        prev = self.last_good_arrays.get(cam)
        if prev is not None:
            return np.zeros_like(prev[0]), prev[1], prev[2], f"masked.{cam}"
        # never seen: the rig's geometry (frame None = rig extrinsics); the image is black anyway
        k = self._scale_intrinsics(self.rig.intrinsics[cam], RIG_HW, hw, fit)
        return np.zeros((*hw, 3), np.uint8), k, None, f"masked.{cam}"

    def _extrinsics(self, frames: list[str | None], stamp_ns: int) -> tuple[np.ndarray, np.ndarray]:
        source = self.p.extrinsics_source
        if source == "rig":
            return self.rig.lidar2ego, np.stack([self.rig.cam2ego[c] for c in CAMERAS])
        base, lidar = self.p.base_frame, self.p.lidar_frame
        max_age = int(float(self.p.tf_max_age) * SEC)
        limit = float(self.p.max_extrinsic_translation)

        def lookup(frame: str) -> np.ndarray:
            m = self.tf.lookup(base, frame, stamp_ns, max_age)
            if np.linalg.norm(m[:3, 3]) > limit:  # a /tf chain may pass through a moving frame
                raise InputError("bad_extrinsics", f"{frame} is {np.linalg.norm(m[:3, 3]):.3g} m from {base} "
                                                   f"(max_extrinsic_translation {limit:g} m)")
            return m

        try:
            lidar2ego = lookup(lidar) if lidar else self.rig.lidar2ego
            # a masked camera never seen has no frame: the rig's pose relative to base_link
            cam2ego = np.stack([self.rig.cam2ego[c] if f is None else lookup(f) for c, f in zip(CAMERAS, frames)])
        except InputError as e:
            raise InputError(e.category, e.reason + f" (extrinsics_source: {source})") from None
        return lidar2ego, cam2ego

    def _ego_status(self, anchor_ns: int, lidar2world: np.ndarray, lidar2ego: np.ndarray,
                    max_age_ns: int) -> np.ndarray:
        """EGO_STATUS_FIELDS by the rule the dataset and the simulator use (one function,
        ego_motion.ego_status_vector): backward differences over the LiDAR poses 0.5 s and
        1 s before the front stamp, from the odometry; zero where it does not reach back that
        far (as at the start of a nuScenes log)."""
        past: list = []
        for k in (1, 2):
            t = anchor_ns - k * round(STEP_SECONDS * SEC)
            try:
                past += [self.odom.pose_at(t, max_age_ns).matrix @ lidar2ego, t * 1e-9]
            except InputError:
                break
        return self._ego_status_vector(lidar2world, anchor_ns * 1e-9, *past)

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.stats.warning(key, msg)
            if self.log is not None:
                self.log.warning(msg)

    def _autocast_context(self):
        """fp16/bf16 inference through torch.autocast on the planner's device (`precision`)."""
        precision = self.p.precision
        if precision == "fp32" or self.planner is None:
            return contextlib.nullcontext()
        torch = self._torch
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        return torch.autocast(device_type=self.planner.device.type, dtype=dtype)
