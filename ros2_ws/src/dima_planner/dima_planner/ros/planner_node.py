"""The DiMA planner as a ROS 2 lifecycle node (LLM-free inference: scene encoder + planner).

    dima_planner_node --ros-args --params-file params/ros/planner.yaml

Lifecycle: configure loads and warms up the model (FAILURE with the reason in the log and
in /diagnostics if the checkpoint or device is unusable) and creates the topics; activate
starts the planning worker; deactivate stops it; cleanup releases the model. With
`autostart: true` (default) the node configures and activates itself.

Data flow: subscription callbacks only cache messages (sync.InputCache). Each front-camera
image is offered to a worker thread (sync.AnchorSlot; a newer one replaces an unprocessed
one, counted as a busy drop). The worker waits up to `sync_wait` for the other cameras,
decodes and validates images in a thread pool, checks stamps against the node clock
(sim time works with a replayed /clock), runs the model and publishes, every output
stamped with the front-camera stamp. Any unusable input skips the cycle with a reason
(counted in /diagnostics); nothing stale is ever published.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry, Path as PathMsg
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterValueException, ParameterException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from dima_msgs.msg import DrivingCommand, PlannedTrajectory, SceneTokens

from ..data.sample import CAMERAS, EGO_STATUS_FIELDS
from . import conversions as conv
from .conversions import InputError
from .diagnostics import PlannerStats, build_diagnostics
from .node_runtime import descriptor, set_parameters, spin
from .extrinsics import RIG_SIZE, Rig, StaticTransforms, load_rig
from .params import NODE_NAME, PARAMS, resolve_checkpoint, validate
from .sync import SEC, AnchorSlot, Cached, InputCache, OdomHistory, TemporalState, select_cameras, side_cameras_ready

FRONT = CAMERAS[0]
SIDES = CAMERAS[1:]


class _CycleSkip(Exception):
    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category, self.reason = category, reason


def model_id_of(checkpoint: Path) -> str:
    """Checkpoint directory name and the first 12 hex digits of its weights' sha256."""
    try:
        sha = json.loads((checkpoint / "meta.json").read_text()).get("sha256", "")
    except (OSError, ValueError):
        sha = ""
    return f"{checkpoint.name}:{sha[:12]}" if sha else checkpoint.name


class PlannerNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any):
        # Fields destroy_node() needs exist before anything can raise.
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        super().__init__(node_name, **kwargs)
        for spec in PARAMS.values():
            try:
                self.declare_parameter(spec.name, spec.default, descriptor(spec, notes=["applies at the next configure"] if spec.on_configure else []))
            except (ParameterException, InvalidParameterValueException) as e:  # a bad --params-file / -p value
                raise ValueError(f"parameter {spec.name}: {e}") from None
        self._p: dict[str, Any] = {n: self.get_parameter(n).value for n in PARAMS}
        bad = [r for n, v in self._p.items() if (r := validate(n, v))]
        if bad:
            raise ValueError("invalid parameters: " + "; ".join(bad))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stats = PlannerStats()
        self._cache = InputCache(depth=4)
        self._slot = AnchorSlot()
        self._odom = OdomHistory()
        self._odom_error: tuple[int, str] | None = None  # (stamp_ns, reason) of the last unusable odometry
        self._temporal = TemporalState()
        self._tf = StaticTransforms()
        self._last_good: dict[str, Cached] = {}
        self._last_good_arrays: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}  # rgb, K, frame_id
        self._command: tuple[int, int] | None = None  # (command, stamp_ns)
        self._planner = None
        self._rig: Rig | None = None
        self._model_id = ""
        self._model_error = ""
        self._state = "unconfigured"
        self._subs: list = []
        self._pubs: dict[str, Any] = {}
        self._last_plan_stamp: int | None = None
        self._rate_skips = 0

        # /diagnostics is published in every state (that is where a failed configure shows).
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Wall-clock timers: with use_sim_time the node clock stands still until /clock arrives,
        # and that is exactly when diagnostics must still say what is going on.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diag_timer = self.create_timer(self._p["diagnostics_period"], self._publish_diagnostics,
                                             callback_group=self._diag_group, clock=steady)
        self._autostart_timer = None
        if self._p["autostart"]:
            self._autostart_timer = self.create_timer(0.01, self._autostart, clock=steady)

    # ---- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        return set_parameters(params, self._p, validate)

    # ---- lifecycle ----------------------------------------------------------------------------
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _fail(self, reason: str) -> TransitionCallbackReturn:
        self._model_error = reason
        self.get_logger().error(f"configure failed: {reason}")
        self._release()
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self._p
        self._model_error = ""
        ckpt, tried = resolve_checkpoint(p["checkpoint"])
        try:
            self._rig = load_rig(p["rig_file"])
        except (OSError, ValueError, KeyError) as e:
            return self._fail(f"rig_file {p['rig_file']!r}: {e}")
        try:
            from ..inference import load_planner  # torch is imported here, not at node start

            t0 = time.monotonic()
            self._planner = load_planner(ckpt, p["device"], p["num_threads"] or None)
            load_s = time.monotonic() - t0
            if p["warmup"]:
                t0 = time.monotonic()
                w, h = p["warmup_width"], p["warmup_height"]
                ks = np.stack([conv.scale_intrinsics(self._rig.intrinsics[c], RIG_SIZE, (w, h)) for c in CAMERAS])
                c2l = np.stack([np.linalg.inv(self._rig.lidar2ego) @ self._rig.cam2ego[c] for c in CAMERAS])
                status = np.zeros(len(EGO_STATUS_FIELDS), np.float32)
                self._planner.plan([np.zeros((h, w, 3), np.uint8)] * len(CAMERAS), ks, c2l, p["default_command"],
                                   status, scene_start=True, stamp_ns=0, lidar2world=np.eye(4))
                self._planner.reset()
                self.get_logger().info(f"warm-up forward pass {time.monotonic() - t0:.2f} s")
        except Exception as e:  # CheckpointError, bad device (RuntimeError), missing torch, ...
            where = f" (also looked in {', '.join(map(str, tried[1:]))})" if len(tried) > 1 and not ckpt.is_dir() else ""
            return self._fail(f"cannot load checkpoint {str(ckpt)!r} on device {p['device']!r}: {e}{where}")
        self._model_id = model_id_of(ckpt)
        self.get_logger().info(f"loaded {self._model_id} on {p['device']} in {load_s:.2f} s")
        self._pool = ThreadPoolExecutor(p["decode_threads"], thread_name_prefix="dima_decode")
        self._create_topics()
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._reset_temporal()
        self._stats.reset()
        self._slot.clear()
        self._stop.clear()
        self._state = "active"
        self._worker = threading.Thread(target=self._work, name="dima_planner_worker", daemon=True)
        self._worker.start()
        self.get_logger().info("active: planning on every front camera image")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("error during a transition: releasing everything (back to unconfigured)")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

    def _release(self) -> None:
        self._stop_worker()
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._planner = None  # frees the model (and its GPU memory once collected)
        self._cache.clear()
        self._odom.clear()
        self._reset_temporal()
        self._state = "unconfigured"

    # ---- topics ---------------------------------------------------------------------------------
    def _create_topics(self) -> None:
        p = self._p
        reliability = ReliabilityPolicy.RELIABLE if p["sensor_qos"] == "reliable" else ReliabilityPolicy.BEST_EFFORT
        sensor = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=p["sensor_qos_depth"], reliability=reliability,
                            durability=DurabilityPolicy.VOLATILE)
        # CameraInfo is latched by some drivers: a volatile subscription still matches them.
        info = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        out = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)
        for cam in CAMERAS:
            msg_type = CompressedImage if p[f"cameras.{cam}.transport"] == "compressed" else Image
            self._subs.append(self.create_subscription(msg_type, p[f"cameras.{cam}.topic"],
                                                       lambda m, c=cam: self._on_image(c, m), sensor))
            self._subs.append(self.create_subscription(CameraInfo, p[f"cameras.{cam}.info_topic"],
                                                       lambda m, c=cam: self._on_info(c, m), info))
        self._subs.append(self.create_subscription(Odometry, p["odom_topic"], self._on_odom, sensor))
        self._subs.append(self.create_subscription(
            DrivingCommand, p["command_topic"], self._on_command,
            QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)))
        self._subs.append(self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, latched))
        self._pubs = {
            "path": self.create_lifecycle_publisher(PathMsg, "/dima/path", out),
            "path_map": self.create_lifecycle_publisher(PathMsg, "/dima/path_map", out),
            "trajectory": self.create_lifecycle_publisher(PlannedTrajectory, "/dima/trajectory", out),
            "tokens": self.create_lifecycle_publisher(SceneTokens, "/dima/scene_tokens", out),
            "markers": self.create_lifecycle_publisher(MarkerArray, "/dima/markers", out),
        }

    # ---- callbacks: cache only ----------------------------------------------------------------------
    def _on_image(self, cam: str, msg) -> None:
        self._cache.put(cam, conv.stamp_to_ns(msg.header.stamp), msg)
        if cam == FRONT and self._state == "active":
            self._slot.offer(self._cache.latest(cam))

    def _on_info(self, cam: str, msg: CameraInfo) -> None:
        self._cache.put("info:" + cam, conv.stamp_to_ns(msg.header.stamp), msg)

    def _on_odom(self, msg: Odometry) -> None:
        stamp = conv.stamp_to_ns(msg.header.stamp)
        try:
            pose = conv.odometry_pose(msg)
        except InputError as e:
            self._odom_error = (stamp, e.reason)
            return
        self._cache.put("odom", stamp, None)  # rate/age bookkeeping only; poses live in OdomHistory
        self._odom.put(stamp, pose, msg)

    def _on_command(self, msg: DrivingCommand) -> None:
        if msg.command not in (DrivingCommand.TURN_RIGHT, DrivingCommand.TURN_LEFT, DrivingCommand.GO_STRAIGHT):
            self._stats.reject("bad_command", f"driving command {msg.command} is not 0, 1 or 2; ignored")
            return
        self._cache.put("command", conv.stamp_to_ns(msg.header.stamp), None)
        self._command = (int(msg.command), conv.stamp_to_ns(msg.header.stamp))

    def _on_tf_static(self, msg: TFMessage) -> None:
        for reason in self._tf.add(msg):
            self._stats.reject("bad_pose", reason)
            self.get_logger().warning(reason)

    # ---- worker ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            anchor = self._slot.take(timeout=0.1)
            if anchor is None or self._stop.is_set():
                continue
            try:
                self._cycle(anchor)
            except _CycleSkip as e:
                self._stats.reject(e.category, e.reason)
                self.get_logger().warning(f"no plan for {anchor.stamp_ns / 1e9:.3f}: {e.reason}",
                                          throttle_duration_sec=1.0)
            except Exception as e:  # a bug or a model failure must not kill the node
                self._stats.reject("internal_error", f"{type(e).__name__}: {e}")
                self._reset_temporal()
                self.get_logger().error(f"planning cycle failed:\n{traceback.format_exc()}",
                                        throttle_duration_sec=5.0)

    def _reset_temporal(self) -> None:
        self._temporal.reset()
        self._last_good.clear()
        self._last_good_arrays.clear()
        self._last_plan_stamp = None
        if self._planner is not None:
            self._planner.reset()

    def _cycle(self, anchor: Cached) -> None:
        p = self._p
        t_start = time.monotonic()
        anchor_ns = anchor.stamp_ns

        # 1. staleness against the node clock (sim time follows /clock), then order: a stamp
        #    that is old for the clock is stale; one that is fresh but before the last plan means
        #    the clock itself went back (bag loop) or the frame arrived out of order.
        now_ns = self.get_clock().now().nanoseconds
        if now_ns == 0:
            raise _CycleSkip("no_clock", "use_sim_time is set but no /clock has been received yet")
        lag = (now_ns - anchor_ns) / 1e9
        if lag > p["max_input_age"]:
            raise _CycleSkip("stale_input", f"front camera stamp is {lag:.3f} s behind the node clock "
                                            f"(max_input_age {p['max_input_age']:.3f} s)")
        if -lag > p["max_input_age"]:
            raise _CycleSkip("future_stamp", f"front camera stamp is {-lag:.3f} s ahead of the node clock")
        order = self._temporal.check_order(anchor_ns, int(p["time_jump_reset"] * SEC))
        if not order.ok:
            if order.reset:  # a bag loop / clock reset: everything cached belongs to the other timeline
                self._reset_temporal()
                self._cache.clear(keep=tuple("info:" + c for c in CAMERAS))
                self._odom.clear()
                self.get_logger().warning(order.reason)
            raise _CycleSkip(order.category, order.reason)
        if (p["min_plan_period"] > 0 and self._last_plan_stamp is not None
                and anchor_ns - self._last_plan_stamp < p["min_plan_period"] * SEC):
            self._rate_skips += 1
            return

        # 2. one image per camera
        tol = int(p["sync_tolerance"] * SEC)
        if p["sync_wait"] > 0:
            self._cache.wait_for(lambda: side_cameras_ready({c: self._cache.items(c) for c in SIDES}, anchor_ns, tol),
                                 p["sync_wait"])
        t_synced = time.monotonic()
        picks = select_cameras(anchor_ns, {c: self._cache.items(c) for c in SIDES}, tol,
                               p["missing_camera_policy"], self._last_good, int(p["max_reuse_age"] * SEC))
        to_decode = {FRONT: anchor.msg}
        to_decode.update({c: pk.item.msg for c, pk in picks.items() if pk.status == "fresh"})
        futures = {c: self._pool.submit(conv.decode_image, m) for c, m in to_decode.items()}
        decoded: dict[str, np.ndarray] = {}
        for cam, fut in futures.items():
            try:
                decoded[cam] = fut.result()
            except InputError as e:
                raise _CycleSkip(e.category, f"{cam}: {e.reason}") from None

        # 3. per camera: image, intrinsics, frame
        images, ks, frames, notes = [], [], [], []
        for cam in CAMERAS:
            pick = picks.get(cam)
            if cam in decoded:
                img = decoded[cam]
                frame = p[f"cameras.{cam}.frame_id"] or to_decode[cam].header.frame_id or cam
                k = self._intrinsics(cam, img.shape[:2])
            elif pick.status == "reused":
                img, k, frame = self._last_good_arrays[cam]
                notes.append(f"{cam} {pick.note}")
                self._stats.degrade(f"reused.{cam}", notes[-1])
            else:  # masked: a black image with the camera's last known (or rig) geometry
                prev = self._last_good_arrays.get(cam)
                if prev is not None:
                    img, k, frame = np.zeros_like(prev[0]), prev[1], prev[2]
                else:
                    h, w = decoded[FRONT].shape[:2]
                    img = np.zeros((h, w, 3), np.uint8)
                    k = conv.scale_intrinsics(self._rig.intrinsics[cam], RIG_SIZE, (w, h))
                    frame = p[f"cameras.{cam}.frame_id"] or cam
                notes.append(f"{cam} {pick.note}")
                self._stats.degrade(f"masked.{cam}", notes[-1])
            images.append(img)
            ks.append(k)
            frames.append(frame)

        # 4. extrinsics
        lidar2ego, cam2ego = self._extrinsics(frames)
        cam2lidar = np.linalg.inv(lidar2ego)[None] @ cam2ego

        # 5. odometry at the front stamp (required: it places the plan in the map and aligns the BEV)
        try:
            ego2world, odom_msg = self._odom.pose_at(anchor_ns, int(p["max_odom_age"] * SEC))
        except InputError as e:
            err = self._odom_error
            if err is not None and abs(err[0] - anchor_ns) <= p["max_odom_age"] * SEC:
                raise _CycleSkip("bad_odometry", f"odometry unusable: {err[1]}") from None
            raise _CycleSkip(e.category, e.reason) from None

        # 6. command and ego status
        command = p["default_command"]
        if self._command is not None:
            cmd, cmd_ns = self._command
            if p["max_command_age"] <= 0 or abs(anchor_ns - cmd_ns) <= p["max_command_age"] * SEC:
                command = cmd
        ego_status = self._ego_status(odom_msg, lidar2ego) if p["use_ego_status"] else None

        # 7. temporal inputs, then the model
        lidar2world = ego2world @ lidar2ego
        temporal = self._temporal.advance(anchor_ns, int(p["max_scene_gap"] * SEC))
        t_model = time.monotonic()
        try:
            # Stamp and pose let the planner pick the BEV of ~0.5 s ago, as in training.
            result = self._planner.plan(images, np.stack(ks), cam2lidar, command, ego_status,
                                        scene_start=temporal.scene_start, stamp_ns=anchor_ns,
                                        lidar2world=lidar2world)
        except ValueError as e:
            self._reset_temporal()
            raise _CycleSkip("model_input", f"planner rejected the inputs: {e}") from None
        plan_s = time.monotonic() - t_model  # resize/normalise + forward
        model_s = float(result.latency_ms) / 1e3  # forward pass alone (PlannedTrajectory.model_latency)
        traj = np.asarray(result.trajectory, dtype=np.float64)
        if traj.shape != (6, 2) or not np.all(np.isfinite(traj)):
            self._reset_temporal()
            raise _CycleSkip("bad_model_output", f"model returned a non-finite or {traj.shape} trajectory")

        # 8. remember good images for reuse_last; build and publish
        for cam, img, k, frame in zip(CAMERAS, images, ks, frames):
            if cam in decoded:
                src = anchor if cam == FRONT else picks[cam].item
                self._last_good[cam] = src
                self._last_good_arrays[cam] = (img, k, frame)
        self._publish(result, traj, anchor_ns, command, ego2world, odom_msg, lidar2ego, model_s, plan_s,
                      arrivals=[anchor.recv_wall] + [pk.item.recv_wall for pk in picks.values() if pk.status == "fresh"],
                      t_start=t_start, wait_s=t_synced - t_start)
        self._last_plan_stamp = anchor_ns

    def _intrinsics(self, cam: str, hw: tuple[int, int]) -> np.ndarray:
        if self._p["intrinsics_source"] == "rig":
            return conv.scale_intrinsics(self._rig.intrinsics[cam], RIG_SIZE, (hw[1], hw[0]))
        info = self._cache.latest("info:" + cam)
        if info is None:
            raise _CycleSkip("no_camera_info", f"{cam}: no CameraInfo received on "
                                               f"{self._p[f'cameras.{cam}.info_topic']}")
        try:
            return conv.camera_info_matrix(info.msg, hw)
        except InputError as e:
            raise _CycleSkip(e.category, f"{cam}: {e.reason}") from None

    def _extrinsics(self, frames: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._p["extrinsics_source"] == "rig":
            return self._rig.lidar2ego, np.stack([self._rig.cam2ego[c] for c in CAMERAS])
        base = self._p["base_frame"]
        try:
            lidar = self._p["lidar_frame"]
            lidar2ego = self._tf.lookup(base, lidar) if lidar else self._rig.lidar2ego
            cam2ego = np.stack([self._tf.lookup(base, f) for f in frames])
        except InputError as e:
            raise _CycleSkip(e.category, e.reason + " (extrinsics_source: tf_static)") from None
        return lidar2ego, cam2ego

    def _ego_status(self, odom: Odometry, lidar2ego: np.ndarray) -> np.ndarray:
        """EGO_STATUS_FIELDS in the LiDAR frame from the odometry twist (base_link axes).
        Acceleration is the velocity change from the previous odometry message."""
        r = lidar2ego[:3, :3].T  # base_link -> LiDAR axes
        v = r @ np.array([odom.twist.twist.linear.x, odom.twist.twist.linear.y, 0.0])
        acc = np.zeros(3)
        prev = getattr(self, "_prev_twist", None)
        stamp = conv.stamp_to_ns(odom.header.stamp)
        if prev is not None and 0 < stamp - prev[0] < SEC:
            acc = (v - prev[1]) / ((stamp - prev[0]) / 1e9)
        self._prev_twist = (stamp, v)
        out = np.array([v[0], v[1], acc[0], acc[1], odom.twist.twist.angular.z, math.hypot(v[0], v[1])], np.float32)
        if not np.all(np.isfinite(out)):
            raise _CycleSkip("bad_odometry", "odometry twist is not finite")
        return out

    def _publish(self, result, traj: np.ndarray, stamp_ns: int, command: int, ego2world: np.ndarray,
                 odom_msg: Odometry, lidar2ego: np.ndarray, model_s: float, plan_s: float, arrivals: list[float],
                 t_start: float, wait_s: float) -> None:
        p = self._p
        base = p["base_frame"]
        base_poses = conv.trajectory_lidar_to_base(traj, lidar2ego)
        world_poses = ego2world[None] @ base_poses
        world_frame = odom_msg.header.frame_id or p["map_frame"]
        planner_s = time.monotonic() - max(arrivals)
        model_id = self._model_id
        self._pubs["path"].publish(conv.build_path(base_poses, stamp_ns, base))
        self._pubs["path_map"].publish(conv.build_path(world_poses, stamp_ns, world_frame))
        origin = conv.lidar_points_to_base(np.zeros(2), lidar2ego)
        self._pubs["trajectory"].publish(conv.build_trajectory(base_poses, origin, stamp_ns, base, command,
                                                               planner_s, model_s, model_id))
        # Only build the big messages when someone listens.
        if self._pubs["tokens"].get_subscription_count() > 0:
            cfg = self._planner.cfg
            # The penultimate ego feature feeds the MLLM node's Dual mode; a planner result
            # without one (older inference code) leaves the field empty and Dual falls back
            # to the MLLM's own feature.
            ego_feature = getattr(result, "ego_feat", None)
            self._pubs["tokens"].publish(conv.build_scene_tokens(result.beam, (cfg.bev_h, cfg.bev_w), stamp_ns, base,
                                                                 command, base_poses, model_id, ego_feature))
        if p["publish_markers"] and self._pubs["markers"].get_subscription_count() > 0:
            thr = p["marker_score_threshold"]
            ai, mi = result.confident_agents(thr), result.confident_map(thr)
            best = result.agent_motion_probs[ai].argmax(-1) if len(ai) else np.zeros(0, int)
            agents = {"boxes": result.agent_boxes[ai], "labels": result.agent_labels[ai],
                      "motion": result.agent_motion[ai, best] if len(ai) else np.zeros((0, 6, 2))}
            maps = {"points": result.map_points[mi], "labels": result.map_labels[mi]}
            self._pubs["markers"].publish(conv.build_markers(base_poses, lidar2ego, stamp_ns, base, agents, maps))
        total = time.monotonic() - t_start
        # node overhead = everything this node does itself: decode, checks, messages (not the
        # planner's plan() call, not the wait for the side cameras)
        self._stats.planned(model_s, planner_s, total - plan_s - wait_s)

    # ---- diagnostics -------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        keys = list(CAMERAS) + ["odom", "command"]
        rates = {k: self._cache.rate(k) for k in keys}
        ages = {k: (None if (t := self._cache.last_arrival(k)) is None else now - t) for k in keys}
        msg = build_diagnostics(self.get_clock().now().to_msg(), self.get_name(), state=self._state,
                                model_loaded=self._planner is not None, model_id=self._model_id,
                                device=self._p["device"], model_error=self._model_error,
                                snapshot=self._stats.snapshot(), input_rates=rates, input_ages=ages,
                                front_name=FRONT, front_timeout=self._p["front_timeout"],
                                drops_busy=self._slot.dropped_busy)
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        self._stop_worker()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return spin(PlannerNode, "dima_planner_node", threads=2, args=args)


if __name__ == "__main__":
    sys.exit(main())
