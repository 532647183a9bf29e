"""Planners driven in-process through the same loop and controller as the ROS planner node.

* `Expert`: privileged, rule based: the route's lane centre with the generator's IDM on the
  true agents (the same leader rule the traffic uses), and on where each of them will be in
  the next 2 s along its own path (a car about to cut in, a pedestrian about to step out).
  The simulator's sanity check: it must score 100 on every route.
* `RouteFollower`: the expert blind to agents: the privileged route at the speed limit
  (the generator's free-road IDM). What knowing the route alone is worth: routes where
  perception matters must cost it an infraction.
* `StandStill`: plans to stay where it is. Every score must rank it last.
* `ConstVelPlanner`, `EgoMLPPlanner`: the open-loop baselines of `dima eval`
  (eval/baselines.py), fed the batch fields they were built for from the simulated ego.

Every planner returns a `Plan` (world centre track) or None (no plan this frame).
LiDAR-frame waypoints (the VAD target: future LiDAR positions) become the centre track
by `lidar_track_to_plan`, which the ROS node's messages go through as well.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dima_planner.config import load_yaml
from dima_planner.data.ego_motion import ego_status_vector
from dima_planner.data.geometry import ego_matrix, travel_headings
from dima_planner.data.sample import FUTURE_STEPS, HISTORY_STEPS, STEP_SECONDS
from dima_planner.synth import agents as ag_mod

from .engine import Plan, Simulator, lidar2ego

TIMES = np.arange(1, FUTURE_STEPS + 1) * STEP_SECONDS


def lidar_track_to_plan(world_lidar_xy: np.ndarray, start_yaw: float, start_lidar_xy: np.ndarray,
                        l2e: np.ndarray, stamp: float, times: np.ndarray, source: str) -> Plan:
    """World positions of the LiDAR origin (the planner's waypoints) -> the ego centre track.

    The centre lies the LiDAR mount's offset behind each waypoint along the direction of
    travel there (the current heading while a step is under 5 cm, i.e. standing), the
    orientation `conversions.trajectory_lidar_to_base` gives each pose.
    """
    off = l2e[:2, 3]
    pts = np.asarray(world_lidar_xy, float)
    out = np.zeros_like(pts)
    for i, (p, heading) in enumerate(zip(pts, travel_headings(pts, start_lidar_xy, start_yaw))):
        c, s = math.cos(heading), math.sin(heading)
        out[i] = p - [c * off[0] - s * off[1], s * off[0] + c * off[1]]
    return Plan(stamp, np.asarray(times, float), out, source)


class Expert:
    name = "expert"
    blind = False
    PREVIEW = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # s: where the others will be, along their own paths

    def leader(self, sim: Simulator, s: float) -> tuple[float, float]:
        """(gap, leader speed) along the route: the nearest agent in its corridor now or at any
        PREVIEW time (agents advanced at their current speed along their own paths; a
        predicted one counts as a leader as near as it must be now to get there)."""
        tr = sim.traffic
        gap, v_lead = tr.leader(0, s)
        xy, yaw = tr.poses()
        moving = [j for j, a in enumerate(sim.sc.agents) if j > 0 and a.path is not None and tr.v[j] > 0.05]
        for tau in self.PREVIEW:
            fut, fyaw = xy.copy(), yaw.copy()
            for j in moving:
                p, h = sim.sc.agents[j].path.at(tr.s[j] + tr.v[j] * tau)
                fut[j], fyaw[j] = p, h
            g, vl = tr.leader(0, s, fut, fyaw)
            # Where it will be at tau, moving at vl along the route, it is a leader now at
            # g - vl * tau: one about to merge in beside the ego is one just ahead of it.
            g = max(0.5, g - vl * tau) if np.isfinite(g) else g
            if g < gap:
                gap, v_lead = g, vl
        return gap, v_lead

    def plan(self, sim: Simulator) -> Plan:
        xy, _ = sim.sc.route.at(self.route_s(sim))
        return Plan(sim.t, TIMES.copy(), xy, self.name)

    def route_s(self, sim: Simulator) -> np.ndarray:
        """Route coordinates of the plan's centre track at TIMES (IDM along the route)."""
        ego = sim.sc.agents[0]
        s, v = sim.s_route, sim.state.v
        gap, v_lead = (np.inf, 0.0) if self.blind else self.leader(sim, s)
        dt, out_s = 0.1, []
        for k in range(1, int(round(TIMES[-1] / dt)) + 1):
            a = ag_mod.idm_accel(ego, s, v, gap, v_lead)
            v_new = max(0.0, v + a * dt)
            s += 0.5 * (v + v_new) * dt
            if np.isfinite(gap):
                gap -= 0.5 * (v + v_new) * dt - v_lead * dt
            v = v_new
            if k % int(round(STEP_SECONDS / dt)) == 0:
                out_s.append(s)
        return np.array(out_s)


class RouteFollower(Expert):
    name = "route_follower"
    blind = True


class StandStill:
    name = "stand_still"

    def plan(self, sim: Simulator) -> Plan:
        here = np.array([sim.state.x, sim.state.y])
        return Plan(sim.t, TIMES.copy(), np.repeat(here[None], len(TIMES), 0), self.name)


class _BatchPlanner:
    """Builds the one-sample batch of the dataset's ego fields from the simulated ego."""

    def __init__(self):
        self.l2e = lidar2ego()

    def batch(self, sim: Simulator) -> dict:
        t = sim.t
        x, y, yaw = sim.pose_at(t)
        l2w = ego_matrix(x, y, yaw) @ self.l2e
        w2l = np.linalg.inv(l2w)
        hist, mask = [], np.zeros(HISTORY_STEPS, np.float32)
        for k in range(1, HISTORY_STEPS + 1):
            if t - k * STEP_SECONDS >= -1e-9:
                hist.append((w2l @ ego_matrix(*sim.pose_at(t - k * STEP_SECONDS)) @ self.l2e)[:2, 3])
                mask[k - 1] = 1.0
        first = hist[-1] if hist else np.zeros(2)
        hist = np.array(hist + [first] * (HISTORY_STEPS - len(hist)), np.float32)
        # Ego status as the dataset computes it (data.ego_motion.ego_status_vector): backward
        # differences of the LiDAR poses 0.5 s and 1 s back (the world's keyframe interval),
        # zeros before there is such a pose, exactly what the baselines were fitted on.
        prev = [(ego_matrix(*sim.pose_at(t - k * STEP_SECONDS)) @ self.l2e, t - k * STEP_SECONDS)
                if t - k * STEP_SECONDS >= -1e-9 else (None, None) for k in (1, 2)]
        status = ego_status_vector(l2w, t, *prev[0], *prev[1])
        return {"ego_hist_traj": hist[None], "ego_hist_mask": mask[None], "ego_status": status[None],
                "command": np.array([sim.command()], np.int64), "l2w": l2w, "yaw": yaw}

    def _to_plan(self, traj: np.ndarray, b: dict, sim: Simulator) -> Plan:
        l2w = b["l2w"]
        pts = np.concatenate([traj, np.zeros((len(traj), 1)), np.ones((len(traj), 1))], 1) @ l2w.T
        return lidar_track_to_plan(pts[:, :2], b["yaw"], l2w[:2, 3], self.l2e, sim.t, TIMES, self.name)


class ConstVelPlanner(_BatchPlanner):
    name = "const_vel"

    def __init__(self):
        super().__init__()
        from dima_planner.eval.baselines import ConstantVelocity  # torch: see fit_ego_mlp

        self.model = ConstantVelocity()

    def plan(self, sim: Simulator) -> Plan:
        b = self.batch(sim)
        return self._to_plan(np.asarray(self.model.predict(b)[0], float), b, sim)


class EgoMLPPlanner(_BatchPlanner):
    name = "ego_mlp"

    def __init__(self, model):
        super().__init__()
        self.model = model

    def plan(self, sim: Simulator) -> Plan:
        b = self.batch(sim)
        return self._to_plan(np.asarray(self.model.predict(b)[0], float), b, sim)


def fit_ego_mlp(world: str | Path, cache_dir: str | Path, mlp_config: str | Path):
    """The ego-status MLP of `dima eval`, fitted on the world's train split once and cached."""
    # Imported here: the baselines bring torch (3.4 s of `python -X importtime` on the 2-core
    # dev machine), which dima_sim_node, importing this module, never needs.
    from dima_planner.eval.baselines import EgoMLPConfig, world_ego_mlp

    return world_ego_mlp(world, cache_dir, load_yaml(EgoMLPConfig, mlp_config))
