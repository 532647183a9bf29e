"""The plan and the detections as Autoware messages (autoware_planning_msgs/Trajectory,
autoware_perception_msgs/PredictedObjects), in the odometry's frame (map on Autoware).

Only imported when the node is configured with an Autoware output topic: the message
packages come from an Autoware installation, or from tools/setup.sh, which builds the
upstream definitions (tools/interfaces/) into the venv where they are missing.

Trajectory (as autoware_tensorrt_vad publishes it): point 0 is where the planned track is
now (time_from_start 0, the vehicle's heading), points 1..6 are the plan's waypoints at
0.5 s steps with exactly the poses of the world Path (dima/path_odom or dima/path_map).
Along the 7 points, at their times t: longitudinal_velocity_mps is the speed |dp/dt|,
acceleration_mps2 d(speed)/dt and heading_rate_rps d(yaw)/dt, each a second-order finite
difference (numpy.gradient: central inside, one-sided at the ends), i.e. the values *at*
each point. (dima_msgs/PlannedTrajectory.velocity is the mean speed over the 0.5 s before
each waypoint instead.) The model plans forward motion: velocities are >= 0.

PredictedObjects: every detection whose class probability reaches the threshold; pose,
box (BOUNDING_BOX: x length, y width, z height) and class probability from the detection
head, one predicted path per motion mode (the current pose then 6 future poses 0.5 s
apart, confidence = the mode's probability), the initial twist along the heading from the
most likely mode's first step. Detections are not tracked: object_id is new every message.
"""
from __future__ import annotations

import math
import uuid

import numpy as np
from autoware_perception_msgs.msg import (ObjectClassification, PredictedObject, PredictedObjectKinematics,
                                          PredictedObjects, PredictedPath, Shape)
from autoware_planning_msgs.msg import Trajectory, TrajectoryPoint
from std_msgs.msg import Header
from unique_identifier_msgs.msg import UUID

from ..data.geometry import travel_headings
from ..data.sample import AGENT_CLASSES, STEP_SECONDS
from . import conversions as conv

# AGENT_CLASSES (nuScenes detection classes) -> ObjectClassification labels; static
# obstacles (barrier, traffic_cone) have no Autoware class and are UNKNOWN, as Autoware's
# own camera/LiDAR detectors report them.
AUTOWARE_LABELS = {
    "car": ObjectClassification.CAR, "truck": ObjectClassification.TRUCK,
    "construction_vehicle": ObjectClassification.TRUCK, "bus": ObjectClassification.BUS,
    "trailer": ObjectClassification.TRAILER, "barrier": ObjectClassification.UNKNOWN,
    "motorcycle": ObjectClassification.MOTORCYCLE, "bicycle": ObjectClassification.BICYCLE,
    "pedestrian": ObjectClassification.PEDESTRIAN, "traffic_cone": ObjectClassification.UNKNOWN,
}


def _yaw(m: np.ndarray) -> float:
    return math.atan2(m[1, 0], m[0, 0])


def _planar(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:3, 3] = (x, y, z)
    return m


def ego_world_pose(world_poses: np.ndarray, base_poses: np.ndarray) -> np.ndarray:
    """base_link in the world frame at the plan's stamp (world_poses = ego @ base_poses)."""
    return world_poses[0] @ np.linalg.inv(base_poses[0])


def trajectory_profile(world_poses: np.ndarray, start: np.ndarray,
                       dt: float = STEP_SECONDS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(poses (N+1, 4, 4), speed, acceleration, heading rate) along `start` then the N
    waypoints, at t = 0, dt, ..., N dt (see the module docstring)."""
    poses = np.concatenate([start[None], world_poses], 0)
    t = np.arange(len(poses)) * dt
    xy = poses[:, :2, 3]
    speed = np.hypot(np.gradient(xy[:, 0], t), np.gradient(xy[:, 1], t))
    yaw = np.unwrap([_yaw(m) for m in poses])
    return poses, speed, np.gradient(speed, t), np.gradient(yaw, t)


def build_trajectory(world_poses: np.ndarray, base_poses: np.ndarray, lidar2ego: np.ndarray, stamp_ns: int,
                     frame_id: str, dt: float = STEP_SECONDS) -> Trajectory:
    ego = ego_world_pose(world_poses, base_poses)
    origin = conv.lidar_points_to_base(np.zeros(2), lidar2ego)  # where the planned track starts
    start = ego @ _planar(origin[0], origin[1], origin[2], 0.0)
    poses, speed, accel, yaw_rate = trajectory_profile(world_poses, start, dt)
    msg = Trajectory(header=Header(stamp=conv.ns_to_stamp(stamp_ns), frame_id=frame_id))
    for i, m in enumerate(poses):
        msg.points.append(TrajectoryPoint(
            time_from_start=conv.seconds_to_duration(i * dt), pose=conv.matrix_to_pose(m),
            longitudinal_velocity_mps=float(speed[i]), acceleration_mps2=float(accel[i]),
            heading_rate_rps=float(yaw_rate[i])))
    return msg


def build_predicted_objects(result, lidar2ego: np.ndarray, ego: np.ndarray, stamp_ns: int, frame_id: str,
                            threshold: float, dt: float = STEP_SECONDS) -> PredictedObjects:
    """PredictedObjects in `frame_id` (ego: base_link in that frame) from an inference.PlanResult."""
    msg = PredictedObjects(header=Header(stamp=conv.ns_to_stamp(stamp_ns), frame_id=frame_id))
    lidar2world = ego @ lidar2ego
    yaw_l2w = _yaw(lidar2world)
    for i in result.confident_agents(threshold):
        x, y, z, length, width, height, yaw = (float(v) for v in result.agent_boxes[i])
        if not all(math.isfinite(v) for v in (x, y, z, length, width, height, yaw)):
            continue
        centre = lidar2world @ np.array([x, y, z, 1.0])
        heading = yaw + yaw_l2w
        pose = _planar(centre[0], centre[1], centre[2], heading)
        obj = PredictedObject(object_id=UUID(uuid=list(uuid.uuid4().bytes)),
                              existence_probability=float(result.agent_scores[i]))
        obj.classification = [ObjectClassification(label=AUTOWARE_LABELS[AGENT_CLASSES[int(result.agent_labels[i])]],
                                                    probability=float(result.agent_scores[i]))]
        obj.shape = Shape(type=Shape.BOUNDING_BOX)
        obj.shape.dimensions.x, obj.shape.dimensions.y, obj.shape.dimensions.z = length, width, height
        kin = PredictedObjectKinematics()
        kin.initial_pose_with_covariance.pose = conv.matrix_to_pose(pose)
        probs = np.asarray(result.agent_motion_probs[i], dtype=np.float64)
        paths = []
        for mode in np.argsort(-probs):
            future = np.asarray(result.agent_motion[i, mode], dtype=np.float64)  # (6, 2) LiDAR frame
            pts = np.concatenate([[[x, y]], future], 0)
            world = (lidar2world @ np.c_[pts, np.full(len(pts), z), np.ones(len(pts))].T).T
            path = PredictedPath(time_step=conv.seconds_to_duration(dt), confidence=float(probs[mode]))
            yaws = [heading, *travel_headings(world[1:, :2], world[0, :2], heading)]  # standing keeps the heading
            for p, yaw in zip(world, yaws):
                path.path.append(conv.matrix_to_pose(_planar(p[0], p[1], p[2], yaw)))
            paths.append((path, world))
        kin.predicted_paths = [p for p, _ in paths]
        if paths:  # the most likely mode's first step, along the object's heading
            w = paths[0][1]
            v = (w[1, :2] - w[0, :2]) / dt
            kin.initial_twist_with_covariance.twist.linear.x = float(v @ [math.cos(heading), math.sin(heading)])
            kin.initial_twist_with_covariance.twist.linear.y = float(v @ [-math.sin(heading), math.cos(heading)])
        obj.kinematics = kin
        msg.objects.append(obj)
    return msg


# ---- the node's side: publishers and one call per plan ----------------------------------------------
def create_publishers(node, params, qos) -> dict:
    """Lifecycle publishers of the Autoware outputs whose topic parameter is set."""
    pubs = {}
    if params["autoware_trajectory_topic"]:
        pubs["autoware_trajectory"] = node.create_lifecycle_publisher(Trajectory, params["autoware_trajectory_topic"],
                                                                      qos)
    if params["autoware_objects_topic"]:
        pubs["autoware_objects"] = node.create_lifecycle_publisher(PredictedObjects, params["autoware_objects_topic"],
                                                                   qos)
    return pubs


def publish(pubs: dict, out, params) -> None:
    """Publish a planner_core.PlanOutput on the Autoware publishers made by create_publishers."""
    if "autoware_trajectory" in pubs:
        pubs["autoware_trajectory"].publish(build_trajectory(out.world_poses, out.base_poses, out.lidar2ego,
                                                             out.stamp_ns, out.world_frame))
    if "autoware_objects" in pubs:
        ego = ego_world_pose(out.world_poses, out.base_poses)
        pubs["autoware_objects"].publish(build_predicted_objects(
            out.result, out.lidar2ego, ego, out.stamp_ns, out.world_frame,
            float(params["autoware_objects_score_threshold"])))
