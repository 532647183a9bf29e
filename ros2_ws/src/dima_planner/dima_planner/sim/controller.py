"""Trajectory tracking: pure pursuit (or Stanley) laterally, the plan's timing longitudinally.

A plan is a timed track of the ego centre in the world: where the planner wants the car at
+0.5 s .. +3 s after the plan's stamp. The speed target comes from that timing (the plan's
distance-over-time), corrected by the along-track position error, so a plan that slows to
a stop ahead of an obstacle brings the car to a stop there.
"""
from __future__ import annotations

import math

import numpy as np

from .config import ControllerConfig, VehicleConfig
from .vehicle import VehicleState


class TrackedPlan:
    """World polyline with cumulative distance S and time T (seconds after the stamp)."""

    def __init__(self, t0: float, times: np.ndarray, xy: np.ndarray, start_xy: np.ndarray):
        self.t0 = float(t0)
        self.xy = np.concatenate([np.asarray(start_xy, float)[None], np.asarray(xy, float)], 0)
        self.times = np.concatenate([[0.0], np.asarray(times, float)])
        seg = np.linalg.norm(np.diff(self.xy, axis=0), axis=1)
        self.S = np.concatenate([[0.0], np.cumsum(seg)])
        self.length = float(self.S[-1])
        last = self.xy[-1] - self.xy[-2] if seg[-1] > 1e-3 else None
        if last is None:  # direction of the last moving segment (for extrapolation)
            moving = np.nonzero(seg > 1e-3)[0]
            last = self.xy[moving[-1] + 1] - self.xy[moving[-1]] if len(moving) else np.array([1.0, 0.0])
        self.end_dir = last / max(np.linalg.norm(last), 1e-9)
        span = self.times[-1] - self.times[-3]
        self.end_speed = float((self.S[-1] - self.S[-3]) / span) if span > 0 else 0.0

    def s_at_time(self, tau: float) -> float:
        """Distance along the plan the ego should have covered tau seconds after the stamp."""
        if tau <= self.times[-1]:
            return float(np.interp(tau, self.times, self.S))
        return self.length + self.end_speed * (tau - self.times[-1])

    def point_at(self, s: float) -> np.ndarray:
        if s <= self.length:
            return np.array([np.interp(s, self.S, self.xy[:, 0]), np.interp(s, self.S, self.xy[:, 1])])
        return self.xy[-1] + self.end_dir * (s - self.length)

    def project(self, p: np.ndarray) -> tuple[float, float]:
        """(along-track distance, signed lateral offset, left positive) of point p."""
        best = (np.inf, 0.0, 0.0)
        for i in range(len(self.xy) - 1):
            a, b = self.xy[i], self.xy[i + 1]
            d = b - a
            L2 = float(d @ d)
            t = 0.0 if L2 < 1e-12 else float(np.clip((p - a) @ d / L2, 0.0, 1.0))
            q = a + t * d
            dist = float(np.linalg.norm(p - q))
            if dist < best[0] - 1e-9:
                cross = d[0] * (p - a)[1] - d[1] * (p - a)[0]
                best = (dist, self.S[i] + t * math.sqrt(L2), math.copysign(dist, cross))
        # Past the end: along the extrapolated direction.
        e = p - self.xy[-1]
        ahead = float(e @ self.end_dir)
        if ahead > 0 and best[1] >= self.length - 1e-6:
            lat = float(self.end_dir[0] * e[1] - self.end_dir[1] * e[0])
            return self.length + ahead, lat
        return best[1], best[2]


def control(state: VehicleState, plan: TrackedPlan, t: float, ccfg: ControllerConfig,
            vcfg: VehicleConfig) -> tuple[float, float]:
    """(steering angle, acceleration) commands at sim time t."""
    pos = np.array([state.x, state.y])
    s_now, lat = plan.project(pos)
    tau = t - plan.t0
    # Longitudinal: the plan's speed a little ahead, plus the along-track position error.
    if plan.length < ccfg.stop_distance:
        accel = -min(vcfg.max_decel, max(2.0, 2.0 * state.v))  # stop and hold
        v_ref = 0.0
    else:
        h = 0.25
        v_ref = max(0.0, (plan.s_at_time(tau + h) - plan.s_at_time(max(0.0, tau - h))) / (tau + h - max(0.0, tau - h)))
        s_err = plan.s_at_time(tau) - s_now
        accel = ccfg.speed_gain * (v_ref - state.v) + ccfg.position_gain * s_err
        # Never drive past the end of a plan that stops.
        if plan.end_speed < 0.3:
            room = plan.length - s_now
            if room < 0.3:
                accel = min(accel, -max(2.0, 2.0 * state.v))
            elif state.v ** 2 / (2 * room) > 1.0:  # brake to stop within the room left
                accel = min(accel, -1.2 * state.v ** 2 / (2 * room))
    # Lateral.
    if ccfg.lateral == "stanley":
        front = pos + vcfg.wheelbase / 2 * np.array([math.cos(state.yaw), math.sin(state.yaw)])
        s_f, lat_f = plan.project(front)
        d = plan.point_at(s_f + 0.5) - plan.point_at(max(0.0, s_f - 0.5))
        path_yaw = math.atan2(d[1], d[0])
        head_err = (path_yaw - state.yaw + math.pi) % (2 * math.pi) - math.pi
        steer = head_err + math.atan2(ccfg.stanley_gain * lat_f, max(state.v, 1.0))
    else:
        rear = pos - vcfg.wheelbase / 2 * np.array([math.cos(state.yaw), math.sin(state.yaw)])
        ld = max(ccfg.lookahead_min, ccfg.lookahead_time * state.v)
        s_rear, _ = plan.project(rear)
        target = plan.point_at(s_rear + ld)
        dx, dy = target - rear
        alpha = math.atan2(dy, dx) - state.yaw
        dist = max(math.hypot(dx, dy), 1e-3)
        steer = math.atan2(2.0 * vcfg.wheelbase * math.sin(alpha), dist)
    return steer, accel
