"""Trajectory tracking: the plan's speed profile longitudinally, pure pursuit (or Stanley) laterally.

A plan is a timed track of the ego centre in the world: where the planner wants the car at
+0.5 s .. +3 s after the plan's stamp. Longitudinally the controller follows a speed profile
fitted through *all* waypoints (a monotone cubic of distance over time, so it never overshoots
a stop), with the profile's acceleration as feed-forward and feedback on the speed and
along-track position errors: a plan at +/-1.5 m/s^2 re-issued at 4 Hz is delivered at
+/-1.5 m/s^2 (a controller that only chases the first segment's mean speed delivers about a
third of it). Laterally it follows the plan's track; a plan that (nearly) does not move
carries no direction, so the heading is held (wheels straight) instead of aiming anywhere.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

from .config import ControllerConfig, VehicleConfig
from .vehicle import VehicleState


class TrackedPlan:
    """World polyline with cumulative distance S, time T (seconds after the stamp) and the
    speed profile s(t) fitted through every (T, S) waypoint."""

    def __init__(self, t0: float, times: np.ndarray, xy: np.ndarray, start_xy: np.ndarray, start_yaw: float):
        self.t0 = float(t0)
        self.xy = np.concatenate([np.asarray(start_xy, float)[None], np.asarray(xy, float)], 0)
        self.times = np.concatenate([[0.0], np.asarray(times, float)])
        seg = np.linalg.norm(np.diff(self.xy, axis=0), axis=1)
        self.S = np.concatenate([[0.0], np.cumsum(seg)])
        self.length = float(self.S[-1])
        moving = np.nonzero(seg > 1e-3)[0]
        if len(moving):  # direction of the last moving segment (for extrapolation)
            last = self.xy[moving[-1] + 1] - self.xy[moving[-1]]
        else:  # a plan that stands still: the heading it was issued at, never a world axis
            last = np.array([math.cos(start_yaw), math.sin(start_yaw)])
        self.end_dir = last / max(np.linalg.norm(last), 1e-9)
        span = self.times[-1] - self.times[-3] if len(self.times) >= 3 else self.times[-1]
        self.end_speed = float((self.S[-1] - self.S[-3]) / span) if len(self.S) >= 3 and span > 0 else 0.0
        # Monotone cubic through all waypoints: its slope is the plan's speed, its curvature
        # the plan's acceleration (PCHIP: no overshoot, so a stop stays a stop).
        self._s = PchipInterpolator(self.times, self.S, extrapolate=True)
        self._v = self._s.derivative()

    def s_at_time(self, tau: float) -> float:
        """Distance along the plan the ego should have covered tau seconds after the stamp."""
        if tau <= self.times[-1]:
            return float(self._s(max(0.0, tau)))
        return self.length + self.end_speed * (tau - self.times[-1])

    def speed_at(self, tau: float) -> float:
        if tau <= self.times[-1]:
            return max(0.0, float(self._v(max(0.0, tau))))
        return max(0.0, self.end_speed)

    def accel_at(self, tau: float, window: float) -> float:
        """The profile's mean acceleration over [tau, tau + window] (feed-forward)."""
        return (self.speed_at(tau + window) - self.speed_at(tau)) / window

    def point_at(self, s: float) -> np.ndarray:
        if s <= self.length:
            return np.array([np.interp(s, self.S, self.xy[:, 0]), np.interp(s, self.S, self.xy[:, 1])])
        return self.xy[-1] + self.end_dir * (s - self.length)

    def project(self, p: np.ndarray) -> tuple[float, float]:
        """(along-track distance, signed lateral offset, left positive) of point p."""
        a, d = self.xy[:-1], np.diff(self.xy, axis=0)
        L2 = np.einsum("ij,ij->i", d, d)
        t = np.clip(np.einsum("ij,ij->i", p - a, d) / np.maximum(L2, 1e-12), 0.0, 1.0)
        q = a + t[:, None] * d
        dist = np.hypot(q[:, 0] - p[0], q[:, 1] - p[1])
        i = int(np.argmin(dist))  # the first of equally near segments
        s = float(self.S[i] + t[i] * math.sqrt(L2[i]))
        cross = d[i, 0] * (p - a[i])[1] - d[i, 1] * (p - a[i])[0]
        lat = math.copysign(float(dist[i]), cross)
        # Past the end: along the extrapolated direction.
        e = p - self.xy[-1]
        ahead = float(e @ self.end_dir)
        if ahead > 0 and s >= self.length - 1e-6:
            return self.length + ahead, float(self.end_dir[0] * e[1] - self.end_dir[1] * e[0])
        return s, lat


def control(state: VehicleState, plan: TrackedPlan, t: float, ccfg: ControllerConfig,
            vcfg: VehicleConfig) -> tuple[float, float]:
    """(steering angle, acceleration) commands at sim time t."""
    pos = np.array([state.x, state.y])
    s_now, _ = plan.project(pos)
    tau = t - plan.t0
    # Longitudinal: the profile's speed and acceleration a little ahead (the actuator's lag),
    # plus feedback on the speed and along-track position errors.
    if plan.length < ccfg.stop_distance:
        accel = -min(vcfg.max_decel, max(2.0, 2.0 * state.v))  # stop and hold
    else:
        ahead = tau + ccfg.preview_time
        v_ref = plan.speed_at(ahead)
        accel = (ccfg.accel_feedforward * plan.accel_at(ahead, ccfg.accel_window)
                 + ccfg.speed_gain * (v_ref - state.v) + ccfg.position_gain * (plan.s_at_time(tau) - s_now))
        # Never drive past the end of a plan that stops.
        if plan.end_speed < 0.3:
            room = plan.length - s_now
            if room < 0.3:
                accel = min(accel, -max(2.0, 2.0 * state.v))
            elif state.v ** 2 / (2 * room) > 1.0:  # brake to stop within the room left
                accel = min(accel, -1.2 * state.v ** 2 / (2 * room))
    # Lateral. A plan shorter than hold_heading_distance says "stay" and nothing about where:
    # hold the heading rather than steer toward the noise in its last few centimetres.
    if plan.length < ccfg.hold_heading_distance:
        return 0.0, accel
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
