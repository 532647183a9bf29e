"""The DiMA planner as a ROS 2 lifecycle node (LLM-free inference: scene encoder + planner).

    dima_planner_node --ros-args --params-file params/ros/planner.yaml

Lifecycle: configure loads and warms up the model (FAILURE with the reason in the log and
in /diagnostics if the checkpoint or device is unusable) and creates the topics; activate
starts the planning worker; deactivate stops it; cleanup releases the model. With
`autostart: true` (default) the node configures and activates itself.

Data flow: subscription callbacks only cache messages (sync.InputCache) or hand them to
the core's stores (CameraInfo, odometry, command, /tf_static). Each front-camera image is
offered to a worker thread (sync.AnchorSlot; a newer one replaces an unprocessed one,
counted as a busy drop). The worker waits up to `sync_wait` for the other cameras and
calls `PlannerCore.step` (planner_core.py: every per-frame decision, ROS-free), which
decodes on a small thread pool straight to the model's input size; the node publishes
the PlanOutput, every output stamped with the front-camera stamp, or counts the Skip
with its reason in /diagnostics. Nothing stale or implausible is ever published.

Executor: single-threaded. Callbacks only cache; the lifecycle transitions then run on the
thread that also builds the wait set, so `cleanup` can never destroy a subscription while
the executor is using it (rclpy's InvalidHandle race: a crash about once in 75
lifecycle cycles under 12 Hz input).
"""
from __future__ import annotations

import json
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
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from dima_msgs.msg import DrivingCommand, PlannedTrajectory, SceneTokens

from ..data.geometry import RIG_HW, Rig, load_rig, scale_intrinsics
from ..data.sample import CAMERAS, EGO_STATUS_FIELDS
from ..runtime.errors import InputError
from ..runtime.images import Decoded, ImageLimits
from ..runtime.params import NODE_NAME, PARAMS, CoreParams, resolve_checkpoint, validate
from ..runtime.planner_core import FrameInputs, PlanOutput, PlannerCore, Skip, decode_one
from ..runtime.planner_stats import PlannerStats
from ..runtime.sync import SEC, AnchorSlot, Cached, InputCache, side_cameras_ready
from . import conversions as conv
from .diagnostics import build_diagnostics
from .lifecycle_guard import guard_change_state
from .node_runtime import declare_parameters, set_parameters, spin
from .peers import PeerWatch

FRONT = CAMERAS[0]
SIDES = CAMERAS[1:]


def _guarded(transition):
    """Any exception in a lifecycle transition is logged with its traceback and reported in
    /diagnostics (the model status' `error`) instead of rclpy's bare "error during a
    transition". A failed configure releases what it made and stays `unconfigured`
    (FAILURE); any other transition returns ERROR, whose on_error releases everything."""
    name = transition.__name__.removeprefix("on_")

    def run(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return transition(self, state)
        except Exception as e:  # noqa: BLE001 - the point is to catch everything, with its reason
            self.get_logger().error(f"{name} failed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            self._model_error = f"{name} failed: {type(e).__name__}: {e}"
            if name != "configure":
                return TransitionCallbackReturn.ERROR
            try:
                self._release()
            except Exception as release_error:  # noqa: BLE001
                self.get_logger().error(f"releasing after the failed configure: {release_error}")
            return TransitionCallbackReturn.FAILURE

    run.__name__ = transition.__name__
    return run


def model_id_of(checkpoint: Path) -> str:
    """Checkpoint directory name and the first 12 hex digits of its weights' sha256."""
    try:
        sha = json.loads((checkpoint / "meta.json").read_text()).get("sha256", "")
    except (OSError, ValueError):
        sha = ""
    return f"{checkpoint.name}:{sha[:12]}" if sha else checkpoint.name


class PlannerNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any):
        # Fields destroy_node() needs exist before anything can raise (rclpy >= 9 destroys a
        # node whose __init__ raised when the context shuts down).
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slot = AnchorSlot()
        super().__init__(node_name, **kwargs)
        guard_change_state(self)  # an invalid ChangeState request gets success=false, not an exit
        self._p: dict[str, Any] = declare_parameters(self, PARAMS, validate, read_only_on_configure=False,
                                                     on_configure_note="applies at the next configure")
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stats = PlannerStats()
        self._cache = InputCache(depth=4)
        self._core: PlannerCore | None = None  # made by configure, dropped by cleanup
        self._planner = None
        self._rig: Rig | None = None
        self._model_id = ""
        self._model_error = ""
        self._state = "unconfigured"
        self._subs: list = []
        self._pubs: dict[str, Any] = {}
        self._peers: PeerWatch | None = None  # the graph around the topics, while configured

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
        result = set_parameters(params, self._p, validate)
        if result.successful and self._core is not None:
            self._core.p = CoreParams.from_values(self._p)  # the next frame reads the new values
        return result

    # ---- lifecycle ----------------------------------------------------------------------------
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def _fail(self, reason: str) -> TransitionCallbackReturn:  # configure failed for a known reason
        self._model_error = reason
        self.get_logger().error(f"configure failed: {reason}")
        self._release()
        return TransitionCallbackReturn.FAILURE

    @_guarded
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self._p
        self._model_error = ""
        ckpt, tried = resolve_checkpoint(p["checkpoint"])
        try:
            self._rig = load_rig(p["rig_file"])
        except (OSError, ValueError, KeyError) as e:
            return self._fail(f"rig_file {p['rig_file']!r}: {e}")
        if p["autoware_trajectory_topic"] or p["autoware_objects_topic"]:
            try:
                from . import autoware  # noqa: F401  (the message packages are optional)
            except ImportError as e:
                return self._fail(f"an Autoware output topic is set but its messages are missing ({e}): source an "
                                  f"Autoware workspace, or run `make setup` (builds them into the venv)")
        try:
            # Imported at configure, not at node start: inference brings torch and the model,
            # 3.4 s of `python -X importtime` on the 2-core dev machine (the node module alone:
            # 1.0 s), and an unconfigured node answers its lifecycle services within a second.
            from ..inference import load_planner

            t0 = time.monotonic()
            mllm = resolve_checkpoint(p["mllm_checkpoint"])[0] if p["mllm_checkpoint"] else None
            self._planner = load_planner(ckpt, p["device"], p["num_threads"] or None, dual=p["dual_mode"],
                                         mllm_checkpoint=mllm, llm_path=p["llm_path"] or None,
                                         backend=p["backend"])
            load_s = time.monotonic() - t0
            if p["warmup"]:
                t0 = time.monotonic()
                w, h = p["warmup_width"], p["warmup_height"]
                ks = np.stack([scale_intrinsics(self._rig.intrinsics[c], RIG_HW, (h, w)) for c in CAMERAS])
                c2l = np.stack([np.linalg.inv(self._rig.lidar2ego) @ self._rig.cam2ego[c] for c in CAMERAS])
                status = np.zeros(len(EGO_STATUS_FIELDS), np.float32)
                self._planner.plan([np.zeros((h, w, 3), np.uint8)] * len(CAMERAS), ks, c2l, p["default_command"],
                                   status, scene_start=True, stamp_ns=0, lidar2world=np.eye(4))
                self._planner.reset()
                self.get_logger().info(f"warm-up forward pass {time.monotonic() - t0:.2f} s")
        except Exception as e:  # CheckpointError, bad device (RuntimeError), missing torch, ...
            where = f" (also looked in {', '.join(map(str, tried[1:]))})" if len(tried) > 1 and not ckpt.is_dir() else ""
            return self._fail(f"cannot load checkpoint {str(ckpt)!r} on device {p['device']!r}: {e}{where}")
        self._model_id = model_id_of(ckpt) + ("+dual" if p["dual_mode"] else "")
        self.get_logger().info(f"loaded {self._model_id} on {p['device']} ({p['backend']}) in {load_s:.2f} s")
        self._core = PlannerCore(CoreParams.from_values(p), self._planner, self._rig, self._stats, self.get_logger())
        self._pool = ThreadPoolExecutor(p["decode_threads"], thread_name_prefix="dima_decode")
        self._create_topics()
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    @_guarded
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._core.reset_temporal()
        self._stats.reset()
        self._slot.clear()
        self._stop.clear()
        self._state = "active"
        self._worker = threading.Thread(target=self._work, name="dima_planner_worker", daemon=True)
        self._worker.start()
        self.get_logger().info("active: planning on every front camera image")
        return super().on_activate(state)

    @_guarded
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._stop_worker():
            raise RuntimeError("the planning worker did not stop within 30 s")
        self._state = "inactive"
        return super().on_deactivate(state)

    @_guarded
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    @_guarded
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("error during a transition: releasing everything (back to unconfigured)")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self) -> bool:
        """Stop the worker; False if it is still running after 30 s (a cycle that never ends)."""
        self._stop.set()
        self._slot.clear()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            if self._worker.is_alive():
                self.get_logger().error("the planning worker did not stop within 30 s")
                return False
            self._worker = None
        return True

    def _release(self) -> None:
        self._stop_worker()
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        self._peers = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._core = None
        self._planner = None  # frees the model (and its GPU memory once collected)
        self._cache.clear()
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
        # A mission layer may publish a driving command once, latched: the transient-local
        # subscription receives it even when it went out before this node started or was
        # configured. DDS never matches a transient-local subscription with a volatile
        # publisher, so a volatile one keeps plain publishers (`ros2 topic pub`, older bags)
        # working; a latched publisher reaches both, and _on_command drops the second copy.
        for durability in (DurabilityPolicy.TRANSIENT_LOCAL, DurabilityPolicy.VOLATILE):
            self._subs.append(self.create_subscription(
                DrivingCommand, p["command_topic"], self._on_command,
                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=durability)))
        self._subs.append(self.create_subscription(TFMessage, "/tf_static", self._on_tf_static, latched))
        if p["extrinsics_source"] == "tf":  # sensor poses on /tf (carla-ros-bridge): tf2's QoS
            self._subs.append(self.create_subscription(
                TFMessage, "/tf", self._on_tf,
                QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)))
        self._pubs = {
            "path": self.create_lifecycle_publisher(PathMsg, p["path_topic"], out),
            "path_map": self.create_lifecycle_publisher(PathMsg, p["world_path_topic"], out),
            "trajectory": self.create_lifecycle_publisher(PlannedTrajectory, p["trajectory_topic"], out),
            "tokens": self.create_lifecycle_publisher(SceneTokens, p["scene_tokens_topic"], out),
            "markers": self.create_lifecycle_publisher(MarkerArray, p["markers_topic"], out),
        }
        if p["autoware_trajectory_topic"] or p["autoware_objects_topic"]:
            from . import autoware

            self._pubs.update(autoware.create_publishers(self, p, out))
        # A killed camera driver / bag player / simulator or MLLM node shows up in /diagnostics.
        images = [s.topic_name for s in self._subs if s.msg_type in (Image, CompressedImage)]
        odom = [s.topic_name for s in self._subs if s.msg_type is Odometry]
        self._peers = PeerWatch(inputs=images + odom,
                                outputs=[self._pubs[k].topic_name for k in ("tokens", "trajectory")])

    # ---- callbacks: cache or hand to the core, nothing else ---------------------------------------
    def _on_image(self, cam: str, msg) -> None:
        stamp = conv.stamp_to_ns(msg.header.stamp)
        self._cache.put(cam, stamp, msg)
        self._stats.arrival(cam, stamp)
        if cam == FRONT and self._state == "active":
            self._stats.anchor()
            self._slot.offer(self._cache.latest(cam))

    def _on_info(self, cam: str, msg: CameraInfo) -> None:
        core = self._core
        if core is not None:
            core.on_camera_info(cam, msg)

    def _on_odom(self, msg: Odometry) -> None:
        core = self._core
        if core is None:
            return
        stamp = conv.stamp_to_ns(msg.header.stamp)
        core.on_odometry(msg, self.get_clock().now().nanoseconds)
        self._stats.arrival("odom", stamp)
        # after the core has it: the put wakes a worker waiting for odometry at its front stamp
        self._cache.put("odom", stamp, None)

    def _on_command(self, msg: DrivingCommand) -> None:
        core = self._core
        stamp = conv.stamp_to_ns(msg.header.stamp)
        if core is None or core.command == (int(msg.command), stamp):
            return  # not configured, or the copy of a latched command through the other subscription
        if core.on_command(int(msg.command), stamp) is None:
            self._cache.put("command", conv.stamp_to_ns(msg.header.stamp), None)

    def _on_tf_static(self, msg: TFMessage) -> None:
        core = self._core
        if core is None:
            return
        for reason in core.on_tf_static(msg):
            self.get_logger().warning(reason)

    def _on_tf(self, msg: TFMessage) -> None:
        core = self._core
        if core is None:
            return
        for reason in core.on_tf(msg):  # /tf repeats at sensor rate: say it once a few seconds
            self.get_logger().warning(reason, throttle_duration_sec=5.0)

    # ---- worker ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        core = self._core
        while not self._stop.is_set():
            anchor = self._slot.take(timeout=0.1)
            if anchor is None or self._stop.is_set():
                continue
            try:
                out = core.step(self._frame(anchor), self._decode)
                if isinstance(out, Skip):
                    self._skipped(anchor, out)
                else:
                    self._publish(out)
            except Exception as e:  # a bug or a model failure must not kill the node
                if not self.context.ok():  # Ctrl-C: the context went down under a running cycle
                    return
                self._stats.reject("internal_error", f"{type(e).__name__}: {e}")
                core.reset_temporal()
                self.get_logger().error(f"planning cycle failed:\n{traceback.format_exc()}",
                                        throttle_duration_sec=5.0)

    def _frame(self, anchor: Cached) -> FrameInputs:
        """The anchor and every side camera's cached images, after waiting up to sync_wait for
        them and for odometry reaching the front stamp (topics arrive in no particular order)."""
        t_start = time.monotonic()
        p = self._p
        tol = int(p["sync_tolerance"] * SEC)

        def ready() -> bool:
            odom = self._cache.latest("odom")
            return (odom is not None and odom.stamp_ns >= anchor.stamp_ns
                    and side_cameras_ready({c: self._cache.items(c) for c in SIDES}, anchor.stamp_ns, tol))

        if p["sync_wait"] > 0:
            self._cache.wait_for(ready, p["sync_wait"])
        return FrameInputs(self.get_clock().now().nanoseconds, anchor, {c: self._cache.items(c) for c in SIDES},
                           t_start, time.monotonic() - t_start)

    def _decode(self, msgs: dict[str, Any], limits: ImageLimits, out_hw: tuple[int, int],
                fit: str) -> dict[str, Decoded | InputError]:
        """planner_core.DecodeFn on the decode thread pool (cv2 releases the GIL)."""
        futures = {cam: self._pool.submit(decode_one, m, limits, out_hw, fit) for cam, m in msgs.items()}
        return {cam: f.result() for cam, f in futures.items()}

    def _skipped(self, anchor: Cached, skip: Skip) -> None:
        if skip.reset:  # a bag loop / clock reset: every cached image belongs to the other timeline
            self._cache.clear()
            self.get_logger().warning(skip.reason)
        if not skip.counted:
            return
        self._stats.reject(skip.category, skip.reason)
        self.get_logger().warning(f"no plan for {anchor.stamp_ns / 1e9:.3f}: {skip.reason}",
                                  throttle_duration_sec=1.0)

    def _publish(self, out: PlanOutput) -> None:
        p = self._p
        base = p["base_frame"]
        for key, note in out.degraded:
            self._stats.degrade(key, note)
        planner_s = time.monotonic() - max(out.arrivals)
        stamp_ns, result, model_id = out.stamp_ns, out.result, self._model_id
        self._pubs["path"].publish(conv.build_path(out.base_poses, stamp_ns, base))
        self._pubs["path_map"].publish(conv.build_path(out.world_poses, stamp_ns, out.world_frame))
        origin = conv.lidar_points_to_base(np.zeros(2), out.lidar2ego)
        self._pubs["trajectory"].publish(conv.build_trajectory(out.base_poses, origin, stamp_ns, base, out.command,
                                                               planner_s, out.model_s, model_id))
        if "autoware_trajectory" in self._pubs or "autoware_objects" in self._pubs:
            from . import autoware

            autoware.publish(self._pubs, out, p)
        # Only build the big messages when someone listens.
        if self._pubs["tokens"].get_subscription_count() > 0:
            cfg = self._planner.cfg
            # The penultimate ego feature feeds the MLLM node's Dual mode.
            self._pubs["tokens"].publish(conv.build_scene_tokens(result.beam, (cfg.bev_h, cfg.bev_w), stamp_ns, base,
                                                                 out.command, out.base_poses, model_id,
                                                                 getattr(result, "ego_feat", None)))
        if p["publish_markers"] and self._pubs["markers"].get_subscription_count() > 0:
            thr = p["marker_score_threshold"]
            ai, mi = result.confident_agents(thr), result.confident_map(thr)
            best = result.agent_motion_probs[ai].argmax(-1) if len(ai) else np.zeros(0, int)
            agents = {"boxes": result.agent_boxes[ai], "labels": result.agent_labels[ai],
                      "motion": result.agent_motion[ai, best] if len(ai) else np.zeros((0, 6, 2))}
            maps = {"points": result.map_points[mi], "labels": result.map_labels[mi]}
            self._pubs["markers"].publish(conv.build_markers(out.base_poses, out.lidar2ego, stamp_ns, base, agents,
                                                             maps))
        total = time.monotonic() - out.t_start
        # node overhead = everything this node does itself: decode, checks, messages (not the
        # planner's plan() call, not the wait for the side cameras)
        self._stats.planned(out.model_s, planner_s, total - out.plan_s - out.wait_s)

    # ---- diagnostics -------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        keys = list(CAMERAS) + ["odom", "command"]
        rates = {k: self._cache.rate(k) for k in keys}
        ages = {k: (None if (t := self._cache.last_arrival(k)) is None else now - t) for k in keys}
        # Fully qualified: two namespaced planners publish to the one /diagnostics topic.
        msg = build_diagnostics(self.get_clock().now().to_msg(), self.get_fully_qualified_name(), state=self._state,
                                model_loaded=self._planner is not None, model_id=self._model_id,
                                device=self._p["device"], model_error=self._model_error,
                                snapshot=self._stats.snapshot(), input_rates=rates, input_ages=ages,
                                front_name=FRONT, front_timeout=self._p["front_timeout"],
                                drops_busy=self._slot.dropped_busy, loss_warn=self._p["loss_warn_ratio"],
                                watchdog=self._stats.watchdog(self._p["no_plan_warn_after"],
                                                              self._p["no_plan_error_after"]))
        peers = self._peers
        if peers is not None:
            peers.update(self)
            msg.status.append(peers.status(self.get_fully_qualified_name()))
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        self._stop_worker()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return spin(PlannerNode, "dima_planner_node", threads=1, args=args)


if __name__ == "__main__":
    sys.exit(main())
