"""Kinematic bicycle with actuator limits, referenced at the box centre (base_link)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import VehicleConfig


@dataclass
class VehicleState:
    x: float
    y: float
    yaw: float
    v: float
    steer: float = 0.0
    accel: float = 0.0

    def copy(self) -> "VehicleState":
        return VehicleState(self.x, self.y, self.yaw, self.v, self.steer, self.accel)


def step(state: VehicleState, steer_cmd: float, accel_cmd: float, dt: float, cfg: VehicleConfig) -> VehicleState:
    """One Euler step: steering and acceleration move toward the commands within their rate
    limits, speed stays in [0, max_speed] (no reversing), the centre moves along the slip angle."""
    steer_cmd = max(-cfg.max_steer, min(cfg.max_steer, steer_cmd))
    d_steer = max(-cfg.max_steer_rate * dt, min(cfg.max_steer_rate * dt, steer_cmd - state.steer))
    steer = state.steer + d_steer
    accel_cmd = max(-cfg.max_decel, min(cfg.max_accel, accel_cmd))
    d_acc = max(-cfg.max_jerk * dt, min(cfg.max_jerk * dt, accel_cmd - state.accel))
    accel = state.accel + d_acc
    v = max(0.0, min(cfg.max_speed, state.v + accel * dt))
    if v == 0.0 and accel < 0:
        accel = 0.0  # standing: the brakes hold, no further deceleration
    beta = math.atan(0.5 * math.tan(steer))  # slip angle at the centre (centre of mass mid-wheelbase)
    v_mid = 0.5 * (state.v + v)
    x = state.x + v_mid * math.cos(state.yaw + beta) * dt
    y = state.y + v_mid * math.sin(state.yaw + beta) * dt
    yaw = state.yaw + v_mid / cfg.wheelbase * math.cos(beta) * math.tan(steer) * dt
    return VehicleState(x, y, yaw, v, steer, (v - state.v) / dt)
