"""The one training/evaluation sample: what the data pipeline yields and the model eats.

Every consumer (model, losses, metrics, baselines, bag tools, the ROS node's
pre-processing) agrees on this contract, so it lives in one place.

Frames follow VAD (docs/METHOD.md section 2): planning quantities are in the *current LiDAR
frame* (LIDAR_TOP of the keyframe), x to the right, y forward, z up, metres. Yaw is
counter-clockwise from +x of that frame, so an agent driving straight ahead of the ego
has yaw = pi/2. Trajectories are absolute positions (cumulative), not per-step offsets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# VAD camera order. The model, the data pipeline and the node all index cameras this way.
CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)

# Driving command indices, VAD's one-hot order.
CMD_RIGHT, CMD_LEFT, CMD_STRAIGHT = 0, 1, 2
COMMAND_NAMES: tuple[str, ...] = ("turn_right", "turn_left", "go_straight")

# Agent classes: the 10 nuScenes detection classes VAD uses, in VAD's order.
AGENT_CLASSES: tuple[str, ...] = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)
# Classes drawn into the collision occupancy (VAD: vehicles and humans).
OCCUPANCY_CLASSES: frozenset[str] = frozenset(
    {"car", "truck", "construction_vehicle", "bus", "trailer", "motorcycle", "bicycle", "pedestrian"}
)

# Vectorised map classes, VAD's order, and the fixed number of points per element.
MAP_CLASSES: tuple[str, ...] = ("divider", "ped_crossing", "boundary")
MAP_POINTS = 20

FUTURE_STEPS = 6  # 6 x 0.5 s = 3 s
HISTORY_STEPS = 2
STEP_SECONDS = 0.5

# Ego status vector ("+" variants only), in the current LiDAR frame:
EGO_STATUS_FIELDS: tuple[str, ...] = ("vx", "vy", "ax", "ay", "yaw_rate", "speed")

# CAN-bus-style ego motion input of the BEV encoder (VAD's can_bus), from the current pose
# and those 0.5 s / 1 s earlier only (causal; data/ego_motion.py computes it), current LiDAR frame:
CAN_BUS_FIELDS: tuple[str, ...] = (
    "dx", "dy",  # displacement since the previous frame (m)
    "dyaw",  # heading change since the previous frame (rad, ccw)
    "vx", "vy", "speed",  # velocity (m/s) over the last interval
    "ax", "ay",  # acceleration (m/s^2): change of velocity between the last two intervals
    "yaw_rate",  # rad/s over the last interval
    "has_prev", "has_prev2",  # 1 where the pose 0.5 s / 1 s earlier exists, else 0 (and the rest 0)
)
CAN_BUS_DIM = len(CAN_BUS_FIELDS)


@dataclass
class Sample:
    """One keyframe. Shapes: N cameras = 6, K agents, M map elements, H x W image."""

    token: str
    scene_token: str
    scene_name: str
    timestamp: int  # microseconds, the keyframe's LIDAR_TOP timestamp

    images: np.ndarray  # uint8 (6, H, W, 3), RGB, CAMERAS order
    intrinsics: np.ndarray  # float32 (6, 3, 3), for the images as stored in this sample
    cam2lidar: np.ndarray  # float32 (6, 4, 4), camera optical frame -> current LiDAR frame
    lidar2img: np.ndarray  # float32 (6, 4, 4), LiDAR point -> homogeneous pixel (K @ lidar2cam)
    lidar2ego: np.ndarray  # float32 (4, 4)
    ego2global: np.ndarray  # float32 (4, 4), ego pose at the LiDAR timestamp

    ego_fut_traj: np.ndarray  # float32 (6, 2), LiDAR frame positions at +0.5 s .. +3 s
    ego_fut_mask: np.ndarray  # float32 (6,), 0 where the scene ended (last pose repeated)
    ego_hist_traj: np.ndarray  # float32 (2, 2), positions at -0.5 s, -1 s (LiDAR frame)
    ego_hist_mask: np.ndarray  # float32 (2,)
    command: int  # CMD_RIGHT / CMD_LEFT / CMD_STRAIGHT: route_command(ego_fut_traj)
    ego_status: np.ndarray  # float32 (6,), EGO_STATUS_FIELDS

    agent_boxes: np.ndarray  # float32 (K, 7): x, y, z, length, width, height, yaw
    agent_labels: np.ndarray  # int64 (K,), index into AGENT_CLASSES
    agent_vel: np.ndarray  # float32 (K, 2), m/s in the LiDAR frame
    agent_fut_traj: np.ndarray  # float32 (K, 6, 2), absolute future centres, LiDAR frame
    agent_fut_yaw: np.ndarray  # float32 (K, 6)
    agent_fut_mask: np.ndarray  # float32 (K, 6)

    map_vectors: np.ndarray  # float32 (M, MAP_POINTS, 2), LiDAR frame
    map_labels: np.ndarray  # int64 (M,), index into MAP_CLASSES

    occupancy: np.ndarray  # bool (6, 200, 200): data.occupancy.occupancy_from_boxes of agent futures

    # Previous keyframe of the same scene, for temporal BEV (None at a scene start).
    prev_token: str | None = None
    # Transform from the previous keyframe's LiDAR frame to this one (for BEV alignment).
    prev2cur: np.ndarray = field(default_factory=lambda: np.eye(4, dtype=np.float32))
    # Ego motion input (CAN_BUS_FIELDS), zeros at a scene start.
    can_bus: np.ndarray = field(default_factory=lambda: np.zeros(CAN_BUS_DIM, dtype=np.float32))

    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """Evaluated only if all 6 future keyframes exist (docs/METHOD.md section 2)."""
        return bool(np.all(self.ego_fut_mask > 0))


# The driving command, one definition for training, `dima eval`, the simulator and the node's
# command sources: VAD's rule on the route the vehicle is asked to follow. The point the
# vehicle reaches on that route at the planning horizon (3 s) decides: >= 2 m to the right
# of the current LiDAR frame's forward axis is "turn right", >= 2 m to the left "turn left",
# else "go straight". In a dataset the route is the recorded future (its 3-s point is the last
# waypoint); in the simulator it is the route ahead, as far as the vehicle gets in 3 s. A lane
# change or an overtake on the route announces itself like a turn does.
COMMAND_LATERAL_M = 2.0
COMMAND_HORIZON_S = FUTURE_STEPS * STEP_SECONDS
COMMAND_RULE = (f"route point at {COMMAND_HORIZON_S:g} s, >= {COMMAND_LATERAL_M:g} m lateral "
                "(VAD rule; data.sample.route_command)")


def route_command(route_xy: np.ndarray) -> int:
    """The command for a route given in the current LiDAR frame (x right, y forward), up to
    where the vehicle gets on it at the planning horizon: VAD's rule on its last point."""
    x = float(np.asarray(route_xy, np.float64).reshape(-1, 2)[-1, 0])
    if x >= COMMAND_LATERAL_M:
        return CMD_RIGHT
    if x <= -COMMAND_LATERAL_M:
        return CMD_LEFT
    return CMD_STRAIGHT
