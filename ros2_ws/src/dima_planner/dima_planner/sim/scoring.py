"""Route scores from a simulation log, as the CARLA leaderboard defines them.

* route completion: progress along the route / route length (%), less the share of the
  route driven off-road or outside the route's lanes (CARLA: that share does not count).
  Outside the lanes = the ego centre more than lane_half_width from the route's lane centre,
  except one lane to the side a left/right command announced (a commanded lane change);
* the route ends early on an ego-fault collision, route deviation (> 30 m from the route) or
  when the agent is blocked (engine.py); completion is what was driven until then;
* collisions (vehicle, pedestrian, static = parked) with fault; red flags (TTC < 1 s, logged,
  not penalised); comfort (acceleration, jerk, yaw rate); no red-light infraction: the world
  has no traffic lights for the ego;
* driving score: completion x product of infraction penalties (ego-fault collisions:
  pedestrian 0.5, vehicle 0.6, static 0.65).

There is no PDMS: a NAVSIM-faithful one scores each plan against a non-reactive 4-s
simulation; a windowed score over the closed-loop rollout rewarded standing still. Every
score here is 0 for a car that does not move and grows only with distance driven on the route.
"""
from __future__ import annotations

import numpy as np

from dima_planner.data.sample import CMD_LEFT, CMD_RIGHT
from dima_planner.eval.stats import block_bootstrap_ci

from .config import ScoringConfig
from .engine import SimLog


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or len(x) < n:
        return x
    k = np.ones(n) / n
    return np.convolve(np.pad(x, (n // 2, n - 1 - n // 2), mode="edge"), k, mode="valid")


def kinematics(log: SimLog) -> dict[str, np.ndarray]:
    """Longitudinal/lateral acceleration, jerk, yaw rate and yaw acceleration of the ego,
    smoothed over 0.3 s (finite differences of a rate-limited actuator are otherwise spiky)."""
    t = log.array("t")
    e = log.array("ego")
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 0.1
    n = max(1, int(round(0.3 / dt)))
    yaw = np.unwrap(e[:, 2])
    yaw_rate = _smooth(np.gradient(yaw, dt) if len(t) > 1 else np.zeros(len(t)), n)
    lon = _smooth(e[:, 4], n)
    lat = e[:, 3] * yaw_rate
    jerk = _smooth(np.gradient(lon, dt), n) if len(t) > 1 else np.zeros(len(t))
    yaw_acc = _smooth(np.gradient(yaw_rate, dt), n) if len(t) > 1 else np.zeros(len(t))
    return {"t": t, "lon": lon, "lat": lat, "jerk": jerk, "yaw_rate": yaw_rate, "yaw_acc": yaw_acc}


def _comfortable(k: dict, m: np.ndarray, c: ScoringConfig) -> bool:
    if not m.any():
        return True
    return bool(np.all(k["lon"][m] <= c.max_lon_accel) and np.all(k["lon"][m] >= c.min_lon_accel)
                and np.all(np.abs(k["lat"][m]) <= c.max_lat_accel) and np.all(np.abs(k["jerk"][m]) <= c.max_jerk)
                and np.all(np.abs(k["yaw_rate"][m]) <= c.max_yaw_rate)
                and np.all(np.abs(k["yaw_acc"][m]) <= c.max_yaw_accel))


def score(log: SimLog, route_s0: float, route_length: float, cfg: ScoringConfig,
          expert: SimLog | None = None) -> dict:
    t = log.array("t")
    s = log.array("route_s") - route_s0
    e = log.array("ego")
    dt = np.diff(t, prepend=t[0])
    step_dist = np.concatenate([[0.0], np.hypot(np.diff(e[:, 0]), np.diff(e[:, 1]))])
    offroad = log.array("offroad").astype(bool)
    departed = lane_departure(log.array("route_lat"), log.array("command"), cfg)
    outside = offroad | departed
    progress = float(max(0.0, s[-1]))
    completion = 1.0 if log.end_reason == "completed" else min(1.0, progress / max(route_length, 1e-6))
    outside_share = float(np.sum(step_dist[outside])) / max(route_length, 1e-6)
    completion_eff = max(0.0, completion - outside_share)

    collisions = [ev for ev in log.events if ev.kind == "collision"]
    penalty = 1.0
    for ev in collisions:
        if ev.ego_fault:
            penalty *= {"pedestrian": cfg.penalty_pedestrian, "static": cfg.penalty_static}.get(
                ev.agent_kind, cfg.penalty_vehicle)
    red = [ev for ev in log.events if ev.kind == "red_flag"]
    distance_km = float(np.sum(step_dist)) / 1000.0

    k = kinematics(log)
    out = {
        "route_completion": round(100.0 * completion_eff, 2),
        "route_completion_raw": round(100.0 * completion, 2),
        "progress_m": round(progress, 2),
        "route_length_m": round(route_length, 2),
        "distance_km": round(distance_km, 4),
        "collisions": len(collisions),
        "collisions_ego_fault": sum(ev.ego_fault for ev in collisions),
        "collision_events": [{"t": round(ev.t, 3), "agent": ev.agent, "kind": ev.agent_kind,
                              "ego_fault": ev.ego_fault, "note": ev.detail} for ev in collisions],
        "collisions_per_km": round(len(collisions) / distance_km, 3) if distance_km > 0 else None,
        "offroad_s": round(float(np.sum(dt[offroad])), 2),
        "lane_departure_s": round(float(np.sum(dt[departed])), 2),
        "red_flags": len(red),
        "red_flag_events": [{"t": round(ev.t, 3), "agent": ev.agent, "kind": ev.agent_kind} for ev in red],
        "max_lat_accel": round(float(np.max(np.abs(k["lat"]))), 3),
        "max_lon_decel": round(float(-np.min(k["lon"])), 3),
        "max_jerk": round(float(np.max(np.abs(k["jerk"]))), 3),
        "rms_jerk": round(float(np.sqrt(np.mean(k["jerk"] ** 2))), 3),
        "comfortable": _comfortable(k, np.ones(len(t), bool), cfg),
        "infraction_penalty": round(penalty, 4),
        "driving_score": round(100.0 * completion_eff * penalty, 2),
        "sim_seconds": round(float(t[-1]), 3),
        "end": log.end_reason,
    }
    if expert is not None:
        xs = expert.array("route_s") - route_s0
        out["expert_progress_m"] = round(float(xs[-1]), 2)
        out["progress_vs_expert"] = round(progress / max(float(xs[-1]), 1e-6), 3)
    return out


def lane_departure(route_lat: np.ndarray, command: np.ndarray, cfg: ScoringConfig) -> np.ndarray:
    """(K,) bool: outside the route's lane, one lane to the commanded side excepted."""
    lat = np.asarray(route_lat, float)
    side = np.where(np.asarray(command) == CMD_LEFT, 1.0, np.where(np.asarray(command) == CMD_RIGHT, -1.0, 0.0))
    in_lane = np.abs(lat) <= cfg.lane_half_width
    # left positive: a left command allows the lane to the left (lat up to half + one lane)
    commanded = (side != 0) & (lat * side > 0) & (np.abs(lat) <= cfg.lane_half_width + cfg.lane_width)
    return ~(in_lane | commanded)


def route_bootstrap_ci(scores, paired_with=None, num: int = 10000, seed: int = 0) -> list[float]:
    """95 % CI of the mean over routes (routes resampled with replacement); with
    `paired_with` (the same routes' scores of another planner), of the mean difference."""
    x = np.asarray(scores, np.float64)
    if paired_with is not None:
        x = x - np.asarray(paired_with, np.float64)
    (lo, hi), = block_bootstrap_ci([x], np.ones(x.size), num, seed)  # one block per route
    return [round(lo, 2), round(hi, 2)]
