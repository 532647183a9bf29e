"""`dima_sim_node`: the closed-loop simulator on ROS 2 topics (thin node around dima_planner.sim).

    dima_sim_node --ros-args --params-file params/ros/sim.yaml -p route:=turn_left:101

Per frame it publishes, in this order: /clock (it owns sim time), /tf (map -> base_link),
/odom, /dima/command (the manoeuvre at the next junction), then per camera CameraInfo and
the image (raw rgb8 or JPEG, at nuScenes' camera firing offsets before the frame time),
all rendered from the ego's simulated pose; /tf_static (the rig) is latched once.
It tracks the planner's dima_msgs/PlannedTrajectory (or nav_msgs/Path) with the
simulator's controller.

* lockstep (default, CARLA's synchronous mode): the simulation advances only once the plan
  stamped with this frame's front-camera stamp arrives, or after `plan_timeout` wall seconds
  (a missed plan: the last one is kept). Results do not depend on CPU speed.
* realtime: frames at wall-clock `frame_hz`; whatever plans arrived by the next frame are used.

At the end of the route it writes `<out>/<route>.json` and `<route>.png` and exits.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped, Twist, Vector3
from nav_msgs.msg import Odometry, Path as PathMsg
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from dima_msgs.msg import DrivingCommand, PlannedTrajectory, Reasoning

from ..bags import bag_io
from ..config import ConfigError
from ..data.geometry import ego_matrix
from ..data.sample import CAMERAS
from ..runtime.frames import BASE_FRAME, LIDAR_FRAME, MAP_FRAME, optical_frame
from ..sim.cameras import CameraRig
from ..sim.config import RouteSpec, SimConfig
from ..sim.engine import Plan, Simulator
from ..sim.planners import lidar_track_to_plan
from ..sim.runner import expert_log, route_result
from ..sim.scenario import build_scenario
from ..sim.viz import plot_route
from ..synth.nuscenes_writer import CAMERA_OFFSETS
from . import conversions as conv
from ..runtime.params import TOPIC_PATTERN, ParamSpec, validator
from .node_runtime import declare_parameters

SEC = 1_000_000_000


def _rel(topic: str) -> str:
    """The bag's topic names, relative: in a namespace (closed_loop.launch.py namespace:=)
    they meet the planner's relative names. /clock and the tf topics stay absolute (the
    launch file remaps them)."""
    return topic.lstrip("/")


NODE_NAME = "dima_sim"
# The simulator node's parameters (the same ParamSpec table style as the planner's and the
# MLLM node's). Every one is read once at start-up. Ranges: SimConfig's where it has them.
PARAMS: dict[str, ParamSpec] = {s.name: s for s in [
    ParamSpec("world", "data/world", "the generated world (dima synth output) whose towns, rig and renderer "
              "are used", "str", on_configure=True),
    ParamSpec("route", "turn_left:101", "scene-000N of the world, KIND:INDEX or KIND:INDEX@TOWN (a generated "
              "scenario; checked against the world at start-up)", "str", on_configure=True),
    ParamSpec("seconds", 20.0, "route duration (simulated s)", "float", 0.1, 86400.0, on_configure=True),
    ParamSpec("frame_hz", 12.0, "camera frames per simulated second (nuScenes: 12)", "float", 1.0, 50.0,
              on_configure=True),
    ParamSpec("image_scale", 0.25, "rendered image size relative to 1600x900", "float", 0.05, 1.0,
              on_configure=True),
    ParamSpec("transport", "raw", "'raw' (sensor_msgs/Image rgb8) or 'compressed' (JPEG)", "str",
              choices=("raw", "compressed"), on_configure=True),
    ParamSpec("jpeg_quality", 90, "JPEG quality of compressed images", "int", 1, 100, on_configure=True),
    ParamSpec("mode", "lockstep", "'lockstep' (each frame waits for its plan) or 'realtime' (wall-clock "
              "frame_hz)", "str", choices=("lockstep", "realtime"), on_configure=True),
    ParamSpec("plan_timeout", 10.0, "wall s to wait for a frame's plan before counting it missed", "float",
              0.0, 3600.0, on_configure=True),
    ParamSpec("plan_topic", _rel(bag_io.TRAJECTORY_TOPIC), "the planner's output the simulator tracks", "str",
              pattern=TOPIC_PATTERN, on_configure=True),
    ParamSpec("plan_type", "trajectory", "plan_topic's type: 'trajectory' (dima_msgs/PlannedTrajectory) or "
              "'path' (nav_msgs/Path)", "str", choices=("trajectory", "path"), on_configure=True),
    ParamSpec("out", "out/sim", "directory of <route>.json and <route>.png", "str", on_configure=True),
    ParamSpec("time_offset", 1000.0, "sim time of the route start (s)", "float", 0.0, 1e9, on_configure=True),
    ParamSpec("timeout_slack", 15.0, "s past the route duration before it is abandoned", "float", 0.0, 86400.0,
              on_configure=True),
    ParamSpec("wait_for_planner", 120.0, "s to wait for a publisher on plan_topic before driving", "float",
              0.0, 86400.0, on_configure=True),
]}
validate = validator(PARAMS)


def parse_route(text: str, seconds: float) -> RouteSpec:
    """'scene-0003' (a scene of the world), 'KIND:INDEX' or 'KIND:INDEX@TOWN' (a generated scenario)."""
    return RouteSpec.parse(text, seconds)


def plan_from_msg(msg, sim: Simulator, offset_ns: int, l2e: np.ndarray) -> Plan:
    """A PlannedTrajectory / nav_msgs Path in base_link at its stamp -> the sim's world centre
    track (the waypoints are the LiDAR origin's track, as the planner node publishes them)."""
    stamp_ns = conv.stamp_to_ns(msg.header.stamp)
    t = (stamp_ns - offset_ns) / SEC
    if isinstance(msg, PlannedTrajectory):
        poses = list(msg.poses)
        times = np.array([d.sec + d.nanosec * 1e-9 for d in msg.time_from_start])
    else:
        poses = [p.pose for p in msg.poses]
        times = np.array([(conv.stamp_to_ns(p.header.stamp) - stamp_ns) / SEC for p in msg.poses])
    base = np.array([[p.position.x, p.position.y] for p in poses], float).reshape(-1, 2)
    if not len(base):
        raise ValueError("the plan has no poses")
    if len(times) != len(base) or not np.all(np.isfinite(base)) or np.any(np.diff(times) <= 0) or times[0] <= 0:
        raise ValueError("the plan's times are not increasing from > 0 or its poses are not finite")
    x, y, yaw = sim.pose_at(t)
    e2w = ego_matrix(x, y, yaw)
    world = np.concatenate([base, np.zeros((len(base), 1)), np.ones((len(base), 1))], 1) @ e2w.T
    return lidar_track_to_plan(world[:, :2], yaw, (e2w @ l2e)[:2, 3], l2e, t, times, "ros")


class SimBridge(Node):
    """Publishes the simulated sensors and collects the planner's plans. `drive()` runs one
    route; the console node calls it once, `dima sim --bench` once per route."""

    def __init__(self, cfg: SimConfig | None = None, node_name: str = NODE_NAME, compressed: bool = False,
                 jpeg_quality: int = 90, plan_topic: str = _rel(bag_io.TRAJECTORY_TOPIC), plan_type: str = "trajectory",
                 **kwargs):
        """cfg None: everything from the node's ROS parameters (the console node)."""
        super().__init__(node_name, **kwargs)
        self.params = {}
        if cfg is None:
            p = self.params = declare_parameters(self, PARAMS, validate, read_only_on_configure=True,
                                                 on_configure_note="read at start-up")
            cfg = SimConfig(world=p["world"], frame_hz=float(p["frame_hz"]), image_scale=float(p["image_scale"]),
                            timeout_slack=float(p["timeout_slack"]))
            compressed, jpeg_quality = p["transport"] == "compressed", int(p["jpeg_quality"])
            plan_topic, plan_type = p["plan_topic"], p["plan_type"]
        self.cfg, self.compressed, self.jpeg_quality = cfg, compressed, jpeg_quality
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_clock = self.create_publisher(Clock, bag_io.CLOCK_TOPIC, reliable)
        self.pub_tf = self.create_publisher(TFMessage, bag_io.TF_TOPIC, reliable)
        self.pub_static = self.create_publisher(TFMessage, bag_io.TF_STATIC_TOPIC, latched)
        self.pub_odom = self.create_publisher(Odometry, _rel(bag_io.ODOM_TOPIC), reliable)
        # Latched, as the planner subscribes to the command (and a mission layer publishes it).
        self.pub_cmd = self.create_publisher(DrivingCommand, _rel(bag_io.COMMAND_TOPIC), latched)
        img_type = CompressedImage if compressed else Image
        self.pub_img = {c: self.create_publisher(img_type, _rel(bag_io.image_topic(c, compressed)), reliable) for c in CAMERAS}
        self.pub_info = {c: self.create_publisher(CameraInfo, _rel(bag_io.camera_info_topic(c)), reliable) for c in CAMERAS}
        msg_type = PlannedTrajectory if plan_type == "trajectory" else PathMsg
        self.create_subscription(msg_type, plan_topic, self._on_plan, reliable)
        # An MLLM node's commentary, if one runs, goes into the route's log (sim time, text).
        self.create_subscription(Reasoning, "/dima/reasoning", self._on_reasoning, reliable)
        self._reasoning: list[tuple[int, str]] = []
        self._plans: dict[int, object] = {}
        self._cond = threading.Condition()
        self.l2e = None
        self.frames_hook = None  # callable(sim, images) per frame, e.g. the video writer

    # ---- plans -------------------------------------------------------------------------
    def _on_plan(self, msg) -> None:
        with self._cond:
            self._plans[conv.stamp_to_ns(msg.header.stamp)] = msg
            self._cond.notify_all()

    def _on_reasoning(self, msg) -> None:
        with self._cond:
            self._reasoning.append((conv.stamp_to_ns(msg.input_stamp), msg.text))

    def _wait_plan(self, stamp_ns: int, timeout: float):
        deadline = time.monotonic() + timeout
        with self._cond:
            while stamp_ns not in self._plans:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._plans.pop(stamp_ns)

    def _take_latest(self, upto_ns: int):
        with self._cond:
            ready = [s for s in self._plans if s <= upto_ns]
            if not ready:
                return None
            best = max(ready)
            msg = self._plans[best]
            for s in ready:
                del self._plans[s]
            return msg

    def to_plan(self, msg, sim: Simulator, offset_ns: int) -> Plan | None:
        try:
            return plan_from_msg(msg, sim, offset_ns, self.l2e)
        except ValueError as e:
            self.get_logger().warning(f"plan ignored: {e}", throttle_duration_sec=5.0)
            return None

    # ---- sensors -----------------------------------------------------------------------
    def _publish_static(self, rig: CameraRig, stamp: Time) -> None:
        tfs = [self._transform(stamp, BASE_FRAME, optical_frame(c), rig.cam2ego[c]) for c in CAMERAS]
        tfs.append(self._transform(stamp, BASE_FRAME, LIDAR_FRAME, rig.cam2ego["LIDAR_TOP"]))
        self.pub_static.publish(TFMessage(transforms=tfs))

    @staticmethod
    def _transform(stamp: Time, parent: str, child: str, m: np.ndarray) -> TransformStamped:
        pose = conv.matrix_to_pose(m)
        t = TransformStamped(header=Header(stamp=stamp, frame_id=parent), child_frame_id=child)
        t.transform.translation = Vector3(x=pose.position.x, y=pose.position.y, z=pose.position.z)
        t.transform.rotation = pose.orientation
        return t

    def _odom(self, sim: Simulator, t: float, ns: int) -> None:
        x, y, yaw = sim.pose_at(t)
        m = ego_matrix(x, y, yaw)
        stamp = conv.ns_to_stamp(ns)
        od = Odometry(header=Header(stamp=stamp, frame_id=MAP_FRAME), child_frame_id=BASE_FRAME)
        od.pose.pose = conv.matrix_to_pose(m)
        st = sim.state
        od.twist.twist = Twist(linear=Vector3(x=float(st.v), y=0.0, z=0.0),
                               angular=Vector3(x=0.0, y=0.0, z=float(st.v / self.cfg.vehicle.wheelbase
                                                                     * math.tan(st.steer))))
        self.pub_odom.publish(od)
        self.pub_tf.publish(TFMessage(transforms=[self._transform(stamp, MAP_FRAME, BASE_FRAME, m)]))

    def _publish_frame(self, sim: Simulator, rig: CameraRig, offset_ns: int, hook: bool = True) -> int:
        """Everything of one frame; returns the front camera's stamp (what the plan will carry)."""

        t_ns = offset_ns + int(round(sim.t * SEC))
        self.pub_clock.publish(Clock(clock=conv.ns_to_stamp(t_ns)))
        front_ns = t_ns + int(round(CAMERA_OFFSETS["CAM_FRONT"] * SEC))
        self._odom(sim, sim.t + CAMERA_OFFSETS["CAM_FRONT"], front_ns)
        self._odom(sim, sim.t, t_ns)
        self.pub_cmd.publish(DrivingCommand(header=Header(stamp=conv.ns_to_stamp(front_ns), frame_id=BASE_FRAME),
                                            command=int(sim.command())))
        images = rig.render(sim)
        # The planner anchors on the front image and waits (sync_wait) for the others: send the
        # front one last, so in lockstep it never plans with a camera still on the wire.
        for cam in (*CAMERAS[1:], CAMERAS[0]):
            ns = t_ns + int(round(CAMERA_OFFSETS[cam] * SEC))
            stamp = conv.ns_to_stamp(ns)
            self.pub_info[cam].publish(self._camera_info(rig, cam, stamp))
            frame = optical_frame(cam)
            msg = (conv.rgb_to_compressed(images[cam], stamp, frame, self.jpeg_quality) if self.compressed
                   else conv.rgb_to_image(images[cam], stamp, frame))
            self.pub_img[cam].publish(msg)
        if hook and self.frames_hook is not None:
            self.frames_hook(sim, images)
        return front_ns

    def _camera_info(self, rig: CameraRig, cam: str, stamp: Time) -> CameraInfo:
        k = rig.intrinsics[cam]
        p = np.zeros((3, 4))
        p[:, :3] = k
        return CameraInfo(header=Header(stamp=stamp, frame_id=optical_frame(cam)), height=rig.height,
                          width=rig.width, distortion_model="plumb_bob", d=[0.0] * 5,
                          k=k.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(), p=p.reshape(-1).tolist())

    # ---- one route ---------------------------------------------------------------------
    def drive(self, spec: RouteSpec, offset_s: float = 0.0, mode: str = "lockstep", plan_timeout: float = 10.0,
              progress=None, scenario=None) -> Simulator:
        scenario = scenario if scenario is not None else build_scenario(spec, self.cfg.world)
        sim = Simulator(scenario, self.cfg)
        rig = CameraRig(scenario, self.cfg.image_scale)
        self.l2e = rig.cam2ego["LIDAR_TOP"]
        offset_ns = int(round(offset_s * SEC))
        with self._cond:
            self._plans.clear()
            self._reasoning.clear()
        # Clock first, then the rig: a planner resets on the jump to this route's time.
        self.pub_clock.publish(Clock(clock=conv.ns_to_stamp(offset_ns)))
        self._publish_static(rig, conv.ns_to_stamp(offset_ns))
        time.sleep(0.2)
        period = 1.0 / self.cfg.frame_hz
        next_wall = time.monotonic()
        while not sim.done:
            front_ns = self._publish_frame(sim, rig, offset_ns)
            if mode == "lockstep":
                if sim.frame == 0:
                    # The planner may have seen the first images before the route's /clock (topics
                    # are not ordered) and skipped them as "from the future": send the frame again.
                    msg = self._wait_plan(front_ns, min(2.0, plan_timeout))
                    if msg is None:
                        self._publish_frame(sim, rig, offset_ns, hook=False)
                        msg = self._wait_plan(front_ns, max(0.0, plan_timeout - 2.0))
                else:
                    msg = self._wait_plan(front_ns, plan_timeout)
            else:
                next_wall += period
                time.sleep(max(0.0, next_wall - time.monotonic()))
                msg = self._take_latest(front_ns)
            sim.advance(self.to_plan(msg, sim, offset_ns) if msg is not None else None)
            if progress is not None:
                progress(sim)
        with self._cond:
            sim.log.reasoning = [{"t": round((ns - offset_ns) / SEC, 3), "text": text}
                                 for ns, text in self._reasoning if ns >= offset_ns]
        return sim


def main(args: list[str] | None = None) -> int:
    import rclpy

    from .env import apply_ros_env_defaults, discovery_note

    note = discovery_note()
    apply_ros_env_defaults()
    rclpy.init(args=sys.argv if args is None else args)
    try:
        node = SimBridge()
        if note:
            node.get_logger().info(note)
        p = node.params
        spec = parse_route(p["route"], float(p["seconds"]))
        scenario = build_scenario(spec, node.cfg.world)  # a bad route or world fails here, at once
    except (ConfigError, ValueError) as e:
        print(f"dima_sim_node: invalid parameters: {str(e).removeprefix('invalid parameters: ')}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    cfg = node.cfg
    log = node.get_logger()
    executor = None
    try:
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        # The planner's output publisher exists once its model is loaded (lifecycle configure).
        deadline = time.monotonic() + float(p["wait_for_planner"])
        while node.count_publishers(p["plan_topic"]) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        if node.count_publishers(p["plan_topic"]) == 0:
            log.warning(f"no publisher on {p['plan_topic']} after {p['wait_for_planner']:.0f} s: driving anyway "
                        f"(every frame will count as a missed plan)")
        time.sleep(0.5)  # let the planner's subscriptions match ours
        log.info(f"route {spec.name} ({p['mode']}, {cfg.frame_hz:g} Hz, {p['transport']} images)")
        sim = node.drive(spec, float(p["time_offset"]), p["mode"], float(p["plan_timeout"]), scenario=scenario,
                         progress=lambda s: log.info(f"t={s.t:.1f} s, route {100 * (s.s_route - s.sc.route_s0) / s.sc.route_length:.0f} %",
                                                     throttle_duration_sec=5.0))
        expert = expert_log(sim.sc, cfg)
        res = route_result(spec.name, sim, cfg, expert)
        # The ego at every frame (mm): two lockstep runs of a route must give the same track.
        res["ego_track"] = [[round(e[0], 3), round(e[1], 3), round(e[2], 4), round(e[3], 3)]
                            for e in sim.log.ego[:: cfg.substeps]]
        out = Path(p["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{spec.name}.json").write_text(json.dumps(res, indent=1))
        plot_route(sim, out / f"{spec.name}.png", f"{spec.name}: planner over ROS 2", res, expert)
        log.info(f"{spec.name}: driving score {res['driving_score']:.1f}, route completion "
                 f"{res['route_completion']:.1f} %, collisions {res['collisions']}, missed plans "
                 f"{res['missed_plans']}; ended: {res['end_detail']}; wrote {out / (spec.name + '.json')}")
    except (KeyboardInterrupt, ExternalShutdownException, RCLError):
        pass  # Ctrl-C or SIGTERM: the route is abandoned, nothing is written
    finally:
        if executor is not None:
            executor.shutdown()
            spinner.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
