"""The planner node on CARLA bridge names with Autoware outputs, over real DDS.

One node process runs params/ros/carla.yaml as carla.launch.py loads it (topics
/carla/ego_vehicle/..., base frame ego_vehicle, extrinsics_source: tf) with the Autoware
outputs switched on. This process plays the bridge: bgra8 images, camera_info, odometry in
map, and every pose on /tf only (map -> ego_vehicle -> ego_vehicle/rgb_*), no /tf_static and
no rig file. It subscribes with the Autoware message types, as an Autoware stack would:
the node must plan from /tf alone, its autoware_planning_msgs/Trajectory must carry the
poses of its nav_msgs/Path in map, PredictedObjects must carry the detections, and a
sensor pose that stops being re-published must turn into a `stale_extrinsics` skip.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dima_planner.ros.env import apply_ros_env_defaults, pid_domain_id

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints" / "dima_tiny"
PARAMS = REPO / "params" / "ros" / "planner.yaml"
CARLA = REPO / "params" / "ros" / "carla.yaml"
H, W = 96, 160

apply_ros_env_defaults(domain_id=pid_domain_id(53))

from autoware_perception_msgs.msg import PredictedObjects  # noqa: E402
from autoware_planning_msgs.msg import Trajectory  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import TransformStamped  # noqa: E402
from nav_msgs.msg import Odometry, Path as PathMsg  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from dds_harness import TestNode, start_node_process, stop_node_process  # noqa: E402
from dima_planner.data.geometry import RIG_HW, load_rig, matrix_to_quat_xyzw, scale_intrinsics  # noqa: E402
from dima_planner.data.sample import CAMERAS  # noqa: E402
from dima_planner.ros.conversions import ns_to_stamp, stamp_to_ns  # noqa: E402
from dima_planner.runtime.params import flatten_ros_params  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]
AW_TRAJECTORY, AW_OBJECTS = "/planning/dima/trajectory", "/planning/dima/objects"


def _tf(parent: str, child: str, m: np.ndarray, stamp_ns: int) -> TransformStamped:
    t = TransformStamped(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=parent), child_frame_id=child)
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = map(float, m[:3, 3])
    q = t.transform.rotation
    q.x, q.y, q.z, q.w = matrix_to_quat_xyzw(m)
    return t


class Bridge(TestNode):
    """Publishes what carla-ros-bridge publishes (names from carla.yaml); records the node's outputs."""

    def __init__(self, domain_id: int):
        super().__init__("dima_test_carla_bridge", domain_id)
        self.p = flatten_ros_params(yaml.safe_load(CARLA.read_text()))
        rel = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.img = {c: self.node.create_publisher(Image, self.p[f"cameras.{c}.topic"], rel) for c in CAMERAS}
        self.info = {c: self.node.create_publisher(CameraInfo, self.p[f"cameras.{c}.info_topic"], rel) for c in CAMERAS}
        self.odom = self.node.create_publisher(Odometry, self.p["odom_topic"], rel)
        self.tf = self.node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.paths = self.record(PathMsg, "/dima/path", rel)
        self.world_paths = self.record(PathMsg, "/" + self.p["world_path_topic"], rel)
        self.trajectories = self.record(Trajectory, AW_TRAJECTORY, rel)
        self.objects = self.record(PredictedObjects, AW_OBJECTS, rel)
        self.diags = self.record(DiagnosticArray, "/diagnostics", rel)
        self.rig = load_rig()
        rng = np.random.default_rng(1)
        self.pixels = {c: rng.integers(0, 255, (H, W, 4), dtype=np.uint8) for c in CAMERAS}
        # the bridge's sensor frames: ego_vehicle/<id>, optical (the nuScenes rig's camera poses)
        self.frame = {c: "ego_vehicle/" + self.p[f"cameras.{c}.topic"].split("/")[3] for c in CAMERAS}

    def send(self, stamp_ns: int, x: float, *, sensor_tf_stamp_ns: int | None = None) -> None:
        """One tick: /tf (vehicle in map, sensors on the vehicle), odometry, then the six cameras."""
        ego = np.eye(4)
        ego[:3, :3] = [[math.cos(0.3), -math.sin(0.3), 0], [math.sin(0.3), math.cos(0.3), 0], [0, 0, 1]]
        ego[:3, 3] = (100.0 + x, -50.0, 0.0)
        sensor_stamp = stamp_ns if sensor_tf_stamp_ns is None else sensor_tf_stamp_ns
        msg = TFMessage(transforms=[_tf("map", "ego_vehicle", ego, stamp_ns)])
        msg.transforms += [_tf("ego_vehicle", self.frame[c], self.rig.cam2ego[c], sensor_stamp) for c in CAMERAS]
        self.tf.publish(msg)
        odom = Odometry(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="map"), child_frame_id="ego_vehicle")
        p, q = odom.pose.pose.position, odom.pose.pose.orientation
        p.x, p.y, p.z = map(float, ego[:3, 3])
        q.x, q.y, q.z, q.w = matrix_to_quat_xyzw(ego)
        odom.twist.twist.linear.x = 5.0
        self.odom.publish(odom)
        for i, cam in enumerate(CAMERAS):
            s = ns_to_stamp(stamp_ns + i * 5_000_000)
            k = scale_intrinsics(self.rig.intrinsics[cam], RIG_HW, (H, W))
            header = Header(stamp=s, frame_id=self.frame[cam])
            self.info[cam].publish(CameraInfo(header=header, height=H, width=W, k=k.ravel().tolist(),
                                              p=np.c_[k, np.zeros(3)].ravel().tolist(), distortion_model="plumb_bob",
                                              d=[0.0] * 5))
            self.img[cam].publish(Image(header=header, height=H, width=W, encoding="bgra8", step=W * 4,
                                        data=self.pixels[cam].tobytes()))

    def at(self, store: list, stamp_ns: int) -> list:
        return [m for m in store if stamp_to_ns(m.header.stamp) == stamp_ns]

    def planning_values(self) -> dict[str, str]:
        for arr in reversed(self.diags):
            for s in arr.status:
                if s.name.endswith("planning"):
                    return {kv.key: kv.value for kv in s.values}
        return {}


def _pose_xyz_yaw(pose) -> tuple[float, float, float, float]:
    q = pose.orientation
    return pose.position.x, pose.position.y, pose.position.z, math.atan2(2 * (q.w * q.z + q.x * q.y),
                                                                         1 - 2 * (q.y * q.y + q.z * q.z))


@pytest.fixture(scope="module")
def running():
    domain = pid_domain_id(53)
    proc = start_node_process(
        "dima_planner.ros.planner_node", domain, PARAMS, "--params-file", str(CARLA),
        "-p", f"checkpoint:={CKPT}", "-p", "num_threads:=1", "-p", "warmup_width:=160", "-p", "warmup_height:=96",
        "-p", "diagnostics_period:=0.2", "-p", "sync_wait:=0.3", "-p", "sensor_qos_depth:=5",
        "-p", f"autoware_trajectory_topic:={AW_TRAJECTORY}", "-p", f"autoware_objects_topic:={AW_OBJECTS}",
        "-p", "autoware_objects_score_threshold:=0.0")
    bridge = Bridge(domain)
    try:
        yield proc, bridge
    finally:
        bridge.close()
        out = stop_node_process(proc)
        print(out[-3000:])


def _plan_frames(bridge: Bridge, proc, n: int) -> list[int]:
    stamps = []
    for i in range(n):
        t = time.time_ns()
        bridge.send(t, x=2.5 * (i + 1))
        stamps.append(t)
        time.sleep(0.5)
        assert proc.poll() is None, "node died"
    return stamps


def test_plans_from_tf_alone_and_autoware_sees_the_path(running):
    proc, bridge = running
    deadline = time.monotonic() + 120
    planned = None
    while time.monotonic() < deadline and planned is None:  # configure (model load) takes a while
        t = time.time_ns()
        bridge.send(t, x=0.0)
        if bridge.wait(lambda: bridge.at(bridge.paths, t), 3.0):
            planned = t
        assert proc.poll() is None, "node died"
    assert planned is not None, f"no plan from /tf-only extrinsics; diagnostics: {bridge.planning_values()}"
    stamps = _plan_frames(bridge, proc, 3)
    for t in stamps:
        traj = bridge.wait(lambda: bridge.at(bridge.trajectories, t), 20.0)
        path = bridge.wait(lambda: bridge.at(bridge.world_paths, t), 5.0)
        assert traj and path, f"no Autoware trajectory / map path for {t}"
        traj, path = traj[0], path[0]
        assert traj.header.frame_id == path.header.frame_id == "map"
        assert len(traj.points) == len(path.poses) + 1 == 7
        times = [p.time_from_start.sec + p.time_from_start.nanosec / 1e9 for p in traj.points]
        assert np.allclose(times, np.arange(7) * 0.5)
        for point, stamped in zip(traj.points[1:], path.poses):
            assert np.allclose(_pose_xyz_yaw(point.pose), _pose_xyz_yaw(stamped.pose), atol=1e-6)
        # point 0: where the track starts now, near the vehicle in map (x = 100 + ..., y = -50)
        x0, y0, _, _ = _pose_xyz_yaw(traj.points[0].pose)
        assert abs(y0 + 50.0) < 5.0 and 95.0 < x0 < 120.0
        v = np.array([p.longitudinal_velocity_mps for p in traj.points])
        a = np.array([p.acceleration_mps2 for p in traj.points])
        assert np.all(np.isfinite(v)) and np.all(v >= 0) and np.all(np.isfinite(a))
        xy = np.array([_pose_xyz_yaw(p.pose)[:2] for p in traj.points])
        mean_speed = np.linalg.norm(xy[-1] - xy[0]) / 3.0
        assert abs(np.mean(v) - mean_speed) < max(1.0, 0.5 * mean_speed)  # velocities come from the plan
        objs = bridge.wait(lambda: bridge.at(bridge.objects, t), 5.0)
        assert objs, f"no PredictedObjects for {t}"
        objs = objs[0]
        assert objs.header.frame_id == "map" and len(objs.objects) == 24  # threshold 0: every agent query
        for o in objs.objects:
            assert len(o.kinematics.predicted_paths) == 6 and len(o.kinematics.predicted_paths[0].path) == 7
            assert abs(sum(p.confidence for p in o.kinematics.predicted_paths) - 1.0) < 1e-3
            assert o.shape.dimensions.x > 0 and 0 <= o.existence_probability <= 1


def test_a_sensor_pose_that_is_no_longer_published_is_stale(running):
    proc, bridge = running
    before = int(bridge.planning_values().get("rejected.stale_extrinsics", 0))
    time.sleep(1.5)  # every sensor pose sent so far is now older than tf_max_age (0.5 s)
    t = time.time_ns()
    bridge.send(t, x=20.0, sensor_tf_stamp_ns=t - 3_000_000_000)  # sensors last seen 3 s before the images
    ok = bridge.wait(lambda: int(bridge.planning_values().get("rejected.stale_extrinsics", 0)) > before, 20.0)
    assert ok, f"no stale_extrinsics skip; diagnostics: {bridge.planning_values()}"
    assert not bridge.at(bridge.paths, t)
    # Fresh poses: planning again. Ticks are resent until one is planned: a lone tick can be
    # dropped while the node is busy or the sync waits (the node plans the latest frame only).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = time.time_ns()
        bridge.send(t, x=22.0)
        if bridge.wait(lambda: bridge.at(bridge.paths, t), 3.0):
            break
        assert proc.poll() is None, "node died"
    else:
        pytest.fail(f"no plan after fresh sensor poses; diagnostics: {bridge.planning_values()}")
