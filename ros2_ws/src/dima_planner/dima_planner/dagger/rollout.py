"""Closed-loop drives for DAgger: the learner and the privileged expert share the wheel, and
every keyframe the car reaches is labelled with the expert's plan from there.

A drive is the simulator's loop (sim/engine.py, the bench's controller and physics) with:
* a start state that may be perturbed (ChauffeurNet: off-centre, misaligned, at rest, fast);
* per segment of `segment_s`, the expert drives with probability beta, else the learner
  (DAgger's mixture policy; segments, not frames, so that each driver's plans are tracked
  long enough to reach the states it leads to);
* at every keyframe (each 0.5 s, the dataset's keyframe interval) the expert's plan from the
  current state, as the dataset's ground truth: the future LiDAR positions at +0.5 .. +3 s
  in the current LiDAR frame.
The learner runs in-process through `inference.Planner.plan`, the call the ROS node makes,
on the cameras the node would get (sim/cameras.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..data.sample import CAMERAS, STEP_SECONDS
from ..sim.cameras import CameraRig
from ..sim.config import SimConfig
from ..sim.engine import Plan, Simulator, ego_matrix, lidar2ego
from ..sim.planners import TIMES, Expert, lidar_track_to_plan
from ..sim.scenario import Scenario
from ..sim.vehicle import VehicleState
from .config import PerturbConfig


@dataclass
class Start:
    kind: str = "none"  # none | offset | rest | fast
    lateral_m: float = 0.0  # + left of the route
    heading_rad: float = 0.0  # + counter-clockwise
    speed: float | None = None  # None: the scripted ego's

    def state(self, sc: Scenario) -> VehicleState | None:
        if self.kind == "none":
            return None
        p, h = sc.route.at(sc.route_s0)
        n = np.array([-math.sin(h), math.cos(h)])
        x, y = np.asarray(p, float) + self.lateral_m * n
        v = float(sc.agents[0].v0) if self.speed is None else float(self.speed)
        return VehicleState(float(x), float(y), float(h) + self.heading_rad, v)


def draw_start(cfg: PerturbConfig, rng: np.random.Generator) -> Start:
    if rng.random() >= cfg.share:
        return Start()
    kinds = sorted(cfg.weights)
    w = np.array([cfg.weights[k] for k in kinds], float)
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    if kind == "offset":
        return Start("offset", float(rng.choice([-1, 1]) * rng.uniform(*cfg.lateral_m)),
                     float(rng.choice([-1, 1]) * math.radians(rng.uniform(*cfg.heading_deg))))
    if kind == "rest":
        return Start("rest", speed=0.0)
    return Start("fast", speed=float(rng.uniform(*cfg.fast_mps)))


def lidar_pose(x: float, y: float, yaw: float, l2e: np.ndarray) -> np.ndarray:
    return ego_matrix(x, y, yaw) @ l2e


def expert_label(sim: Simulator, expert: Expert, l2e: np.ndarray) -> np.ndarray:
    """(6, 2) the expert's plan from the simulator's state, in the dataset's format: future
    positions of the LiDAR origin at +0.5 .. +3 s in the current LiDAR frame, the car on the
    route's lane centre with the route's heading there."""
    xy, heading = sim.sc.route.at(expert.route_s(sim))
    w2l = np.linalg.inv(lidar_pose(*sim.pose_at(sim.t), l2e))
    out = [(w2l @ lidar_pose(float(p[0]), float(p[1]), float(h), l2e))[:2, 3] for p, h in zip(xy, heading)]
    return np.asarray(out, np.float32)


class InProcessPlanner:
    """A planner checkpoint driven in this process through `Planner.plan` (the node's call),
    on the simulated cameras, with the simulator's command and odometry."""

    name = "dima_inproc"

    def __init__(self, planner, scenario: Scenario, cfg: SimConfig):
        self.planner = planner
        self.rig = CameraRig(scenario, cfg.image_scale)
        self.l2e = lidar2ego()
        planner.reset()

    def plan(self, sim: Simulator, images: dict[str, np.ndarray] | None = None) -> Plan:
        images = images if images is not None else self.rig.render(sim)
        x, y, yaw = sim.pose_at(sim.t)
        l2w = lidar_pose(x, y, yaw, self.l2e)
        w2l = np.linalg.inv(l2w)
        poses = sim.camera_poses()
        cam2lidar = np.stack([w2l @ ego_matrix(*poses[c]) @ self.rig.cam2ego[c] for c in CAMERAS])
        intr = np.stack([self.rig.intrinsics[c] for c in CAMERAS])
        res = self.planner.plan([images[c] for c in CAMERAS], intr, cam2lidar, sim.command(),
                                stamp_ns=int(round(sim.t * 1e9)), lidar2world=l2w)
        traj = np.asarray(res.trajectory, float)
        pts = np.concatenate([traj, np.zeros((len(traj), 1)), np.ones((len(traj), 1))], 1) @ l2w.T
        return lidar_track_to_plan(pts[:, :2], yaw, l2w[:2, 3], self.l2e, sim.t, TIMES, self.name)


@dataclass
class Drive:
    """One drive: the simulator (its log holds every physics step of ego and agents) and the
    keyframes: times, expert labels (6, 2) and who drove the frame."""
    name: str
    sim: Simulator
    start: Start
    kf_t: list[float] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    expert_frames: int = 0
    learner_frames: int = 0


def drive(name: str, scenario: Scenario, cfg: SimConfig, beta: float, learner_ckpt_planner, start: Start,
          segment_s: float, rng: np.random.Generator) -> Drive:
    """Drive `scenario` with the beta-mixture of expert and learner (None: the expert alone)."""
    sim = Simulator(scenario, cfg, start.state(scenario))
    expert, l2e = Expert(), lidar2ego()
    learner = InProcessPlanner(learner_ckpt_planner, scenario, cfg) if learner_ckpt_planner is not None else None
    out = Drive(name, sim, start)
    kf_every = max(1, int(round(STEP_SECONDS * cfg.frame_hz)))
    seg_frames = max(1, int(round(segment_s * cfg.frame_hz)))
    expert_drives = True
    while not sim.done:
        if sim.frame % seg_frames == 0:
            expert_drives = learner is None or rng.random() < beta
        if sim.frame % kf_every == 0 and sim.frame > 0:  # frame 0 has no history: as a scene start, skip it
            out.kf_t.append(sim.t)
            out.labels.append(expert_label(sim, expert, l2e))
        if learner is not None:
            # The learner sees every frame (its temporal memory and odometry need them), driving or not.
            learner_plan = learner.plan(sim)
        if expert_drives:
            plan = expert.plan(sim)
            out.expert_frames += 1
        else:
            plan = learner_plan
            out.learner_frames += 1
        sim.advance(plan)
    return out
