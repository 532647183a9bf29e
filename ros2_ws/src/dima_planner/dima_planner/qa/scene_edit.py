"""Scene editing (DiMA's surrogate task), on annotations.

DiMA adds or removes an agent token, writes a matching QA pair and predicts the edited
ego trajectory. Without a simulator, the edited future is made kinematically (our
model; the paper does not say how its edited plans are made):

* route: the GT ego path (where the ego drove is on the road), extended beyond its end
  along its final heading (straight ahead when the ego stood still): the route the map
  allows when nothing blocks it, to the first order.
* insert ON the route: a static object at arc length s. The ego brakes at the constant
  deceleration that stops it a safety gap behind the object, a = v0^2 / (2 d), if that
  is within the comfort limit (COMFORT_DECEL); otherwise it changes lane: the route
  shifted sideways by one lane width with a smooth (cosine) transition, towards the
  side without agents, at the current speed. Beside the route the plan is unchanged.
* remove: a non-lead agent leaves the plan unchanged. Removing the LEAD agent (the one
  blocking the ego lane) releases the ego: from its current speed it accelerates at
  COMFORT_ACCEL towards FREE_SPEED along the route.
The model-side token of an insertion is made by a linear layer from `agent_descriptor`
(MLLMBranch.edit_token); a removal names the agent token to drop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dima_planner.data.sample import AGENT_CLASSES, Sample

from .generate import QAGenConfig, lead_agent, where_text
from .types import QAPair

DESCRIPTOR_DIM = len(AGENT_CLASSES) + 8
# (class, length, width) of the static objects an insertion may place.
_INSERTABLE = (("car", 4.5, 1.9), ("truck", 7.0, 2.5), ("pedestrian", 0.7, 0.7),
               ("barrier", 2.0, 0.5), ("traffic_cone", 0.4, 0.4))
EGO_FRONT = 2.6  # metres from the LiDAR origin to the ego's front bumper (about L/2 + 0.5)
SAFETY_GAP = 2.0
COMFORT_DECEL = 3.0  # m/s^2: firm but comfortable braking (ISO 15622 ACC allows 3.5)
COMFORT_ACCEL = 1.5  # m/s^2
FREE_SPEED = 8.0  # m/s: speed the released ego accelerates to (urban traffic in the world)
LANE_WIDTH = 3.5  # m
LANE_CHANGE_SECONDS = 2.0
STEP_S = 0.5
STEPS = 6


@dataclass
class SceneEdit:
    kind: str  # "insert" or "remove"
    qa: QAPair
    traj: np.ndarray  # (6, 2) edited ego future, LiDAR frame
    traj_mask: np.ndarray  # (6,)
    command: int
    descriptor: np.ndarray | None = None  # (DESCRIPTOR_DIM,), insert only
    token_index: int = -1  # remove only: which agent token to drop


def agent_descriptor(label: int, x: float, y: float, yaw: float, vx: float, vy: float,
                     length: float, width: float) -> np.ndarray:
    """Class one-hot + normalised (x, y, sin yaw, cos yaw, vx, vy, length, width)."""
    d = np.zeros(DESCRIPTOR_DIM, np.float32)
    d[int(label)] = 1.0
    d[len(AGENT_CLASSES):] = (x / 50.0, y / 50.0, math.sin(yaw), math.cos(yaw), vx / 10.0, vy / 10.0,
                              length / 10.0, width / 10.0)
    return d


def _arc(path: np.ndarray) -> np.ndarray:
    pts = np.vstack([np.zeros((1, 2)), path])
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])


def _point_at(path: np.ndarray, s: float) -> tuple[np.ndarray, float]:
    """Point and heading (yaw from +x) at arc length s along [origin] + path."""
    pts = np.vstack([np.zeros((1, 2)), path]).astype(np.float64)
    arc = _arc(path)
    s = float(np.clip(s, 0.0, arc[-1]))
    k = int(np.clip(np.searchsorted(arc, s, side="right") - 1, 0, len(pts) - 2))
    seg = pts[k + 1] - pts[k]
    seg_len = max(np.linalg.norm(seg), 1e-6)
    return pts[k] + seg * (s - arc[k]) / seg_len, math.atan2(seg[1], seg[0])


def route(traj: np.ndarray, mask: np.ndarray, length: float) -> np.ndarray:
    """(K, 2) polyline from the origin along the GT path, extended straight along its last
    heading to at least `length` metres (straight ahead, +y, when the ego stood still)."""
    valid = traj[mask > 0] if (mask > 0).any() else traj[:0]
    pts = np.vstack([np.zeros((1, 2)), valid]).astype(np.float64)
    keep = [0] + [i for i in range(1, len(pts)) if np.linalg.norm(pts[i] - pts[i - 1]) > 1e-3]
    pts = pts[keep]
    if len(pts) >= 2:
        d = pts[-1] - pts[-2]
        d /= np.linalg.norm(d)
    else:
        d = np.array([0.0, 1.0])
    have = float(_arc(pts[1:])[-1]) if len(pts) > 1 else 0.0
    extra = max(length - have, 0.0) + 1.0
    return np.vstack([pts, pts[-1] + d * extra])


def _on_route(poly: np.ndarray, s: float) -> tuple[np.ndarray, float]:
    return _point_at(poly[1:], s)


def follow(poly: np.ndarray, arc_lengths: np.ndarray, lateral: np.ndarray | None = None) -> np.ndarray:
    """(T, 2) points at the given arc lengths along `poly`, optionally shifted sideways
    (positive = left of the direction of travel) by `lateral` metres."""
    out = np.zeros((len(arc_lengths), 2))
    for t, s in enumerate(arc_lengths):
        p, yaw = _on_route(poly, float(s))
        off = 0.0 if lateral is None else float(lateral[t])
        out[t] = p + off * np.array([-math.sin(yaw), math.cos(yaw)])
    return out.astype(np.float32)


def braking_profile(v0: float, stop_dist: float) -> tuple[np.ndarray, float]:
    """(arc lengths at +0.5..+3 s, deceleration) braking uniformly to stop in stop_dist."""
    t = STEP_S * np.arange(1, STEPS + 1)
    if stop_dist <= 0.0 or v0 <= 0.0:
        return np.zeros(STEPS), math.inf if v0 > 0 else 0.0
    a = v0 * v0 / (2.0 * stop_dist)
    t_stop = v0 / a
    tc = np.minimum(t, t_stop)
    return v0 * tc - 0.5 * a * tc * tc, a


def accel_profile(v0: float, v_target: float, accel: float = COMFORT_ACCEL) -> np.ndarray:
    """Arc lengths at +0.5..+3 s accelerating at `accel` from v0 up to v_target."""
    t = STEP_S * np.arange(1, STEPS + 1)
    t_reach = max(v_target - v0, 0.0) / accel
    ta = np.minimum(t, t_reach)
    return v0 * ta + 0.5 * accel * ta * ta + v_target * np.maximum(t - t_reach, 0.0)


def _current_speed(sample: Sample) -> float:
    from .generate import ego_speeds

    return ego_speeds(sample)[0]


def _free_side(sample: Sample) -> float:
    """+1 (left) or -1 (right): the side with fewer agents within 30 m ahead, left on ties."""
    boxes = np.asarray(sample.agent_boxes)
    if len(boxes) == 0:
        return 1.0
    ahead = (boxes[:, 1] > 0) & (boxes[:, 1] < 30)
    left = int(((boxes[:, 0] < -1.0) & (boxes[:, 0] > -6.0) & ahead).sum())
    right = int(((boxes[:, 0] > 1.0) & (boxes[:, 0] < 6.0) & ahead).sum())
    return 1.0 if left <= right else -1.0


def make_insert_edit(sample: Sample, rng: np.random.Generator, cfg: QAGenConfig = QAGenConfig()) -> SceneEdit:
    name, length, width = _INSERTABLE[int(rng.integers(len(_INSERTABLE)))]
    label = AGENT_CLASSES.index(name)
    traj = np.asarray(sample.ego_fut_traj, np.float32)
    mask = np.asarray(sample.ego_fut_mask, np.float32)
    v0 = _current_speed(sample)
    reach = max(v0 * STEP_S * STEPS, 1.0)  # how far the current speed carries the ego in 3 s
    poly = route(traj, mask, reach + 30.0)
    text_name = name.replace("_", " ")
    on_path = rng.random() < 0.6
    full = np.ones(STEPS, np.float32)
    if on_path:
        s = float(rng.uniform(EGO_FRONT + SAFETY_GAP + 0.5 * length + 1.0, EGO_FRONT + SAFETY_GAP + 0.5 * length + reach))
        (x, y), yaw = _on_route(poly, s)
        stop_dist = s - 0.5 * length - EGO_FRONT - SAFETY_GAP
        arcs, decel = braking_profile(v0, stop_dist)
        if decel <= COMFORT_DECEL:
            edited = follow(poly, arcs)
            answer = (f"The ego vehicle should brake at {decel:.1f} m/s2 and stop behind the {text_name}, "
                      f"because it blocks the ego's path {math.hypot(x, y):.0f} m ahead.")
        else:
            side = _free_side(sample)
            t = STEP_S * np.arange(1, STEPS + 1)
            lat = side * LANE_WIDTH * 0.5 * (1 - np.cos(np.pi * np.minimum(t / LANE_CHANGE_SECONDS, 1.0)))
            edited = follow(poly, v0 * t, lat)
            answer = (f"The ego vehicle should change to the {'left' if side > 0 else 'right'} lane to pass the "
                      f"{text_name}, because it blocks the ego's path {math.hypot(x, y):.0f} m ahead, too close to stop comfortably.")
    else:
        s = float(rng.uniform(5.0, max(reach, 6.0)))
        (px, py), yaw = _on_route(poly, s)
        side = 1.0 if rng.random() < 0.5 else -1.0
        # Beside the route: shifted perpendicular to it by a lane width plus the object's half width.
        off = LANE_WIDTH + 0.5 * width
        x, y = px - side * off * math.sin(yaw), py + side * off * math.cos(yaw)
        edited, full = traj.copy(), mask.copy()
        answer = (f"The {text_name} {where_text(x, y)} is outside the ego's path, "
                  "so the ego vehicle can keep its plan.")
    question = f"Suppose a stationary {text_name} is placed {where_text(x, y)}. What should the ego vehicle do?"
    return SceneEdit("insert", QAPair(question, answer, "edit"), edited, full, int(sample.command),
                     descriptor=agent_descriptor(label, x, y, yaw, 0.0, 0.0, length, width))


def make_remove_edit(sample: Sample, agent: int, token_index: int,
                     cfg: QAGenConfig = QAGenConfig()) -> SceneEdit:
    """Remove GT agent `agent` (matched to agent token `token_index`). The lead agent's
    removal releases the ego (see the module docstring); any other leaves the plan."""
    if not 0 <= agent < len(sample.agent_boxes):
        raise IndexError(f"agent {agent} out of range for {len(sample.agent_boxes)} agents")
    name = AGENT_CLASSES[int(sample.agent_labels[agent])].replace("_", " ")
    where = where_text(*sample.agent_boxes[agent, :2])
    q = f"Suppose the {name} {where} is removed. How does the ego vehicle's plan change?"
    traj = np.asarray(sample.ego_fut_traj, np.float32)
    mask = np.asarray(sample.ego_fut_mask, np.float32)
    if lead_agent(sample, cfg) == agent:
        v0 = _current_speed(sample)
        target = max(v0, FREE_SPEED)
        arcs = accel_profile(v0, target)
        poly = route(traj, mask, float(arcs[-1]) + 1.0)
        qa = QAPair(q, f"With the {name} gone its lane is clear, so the ego vehicle should accelerate to "
                       f"{target:.0f} m/s and drive on.", "edit")
        return SceneEdit("remove", qa, follow(poly, arcs), np.ones(STEPS, np.float32), int(sample.command),
                         token_index=int(token_index))
    qa = QAPair(q, f"It does not change: the {name} {where} is not in the ego's path.", "edit")
    return SceneEdit("remove", qa, traj.copy(), mask.copy(), int(sample.command), token_index=int(token_index))
