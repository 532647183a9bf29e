"""Scene editing (DiMA's surrogate task), on annotations.

DiMA adds or removes an agent token, writes a matching QA pair and predicts the edited
ego trajectory. What is known without a simulator fixes this simplification:

* insert: a static agent (car, truck, pedestrian, barrier...) is placed either ON the
  GT ego path (the ego drove there, so the spot is on the road: our stand-in for
  "consistent with the map") or beside it. On the path, the edited ego future is the GT
  future with its arc length clamped so the ego stops a safety gap before the object;
  beside it, the future is unchanged. The model-side token is made by a linear layer
  from `agent_descriptor` (MLLMBranch.edit_token).
* remove: only agents that are NOT the lead agent in the ego corridor are removed,
  because then the GT future is still a correct plan; removing the lead would need a
  counterfactual future that annotations do not give. The caller must say which agent
  token is that agent (the planner's detection matching), so `make_remove_edit` takes
  the token index.
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


def clamp_trajectory(traj: np.ndarray, max_arc: float) -> np.ndarray:
    """The same path, never going further than arc length max_arc (stop there)."""
    arc = _arc(traj)[1:]
    out = traj.astype(np.float64).copy()
    for t in range(len(traj)):
        if arc[t] > max_arc:
            out[t] = _point_at(traj, max(max_arc, 0.0))[0]
    return out.astype(np.float32)


def make_insert_edit(sample: Sample, rng: np.random.Generator, cfg: QAGenConfig = QAGenConfig()) -> SceneEdit:
    name, length, width = _INSERTABLE[int(rng.integers(len(_INSERTABLE)))]
    label = AGENT_CLASSES.index(name)
    traj = np.asarray(sample.ego_fut_traj, np.float32)
    mask = np.asarray(sample.ego_fut_mask, np.float32)
    path_len = float(_arc(traj[mask > 0] if (mask > 0).any() else traj[:1])[-1])
    text_name = name.replace("_", " ")
    on_path = path_len > EGO_FRONT + SAFETY_GAP + 4.0 and rng.random() < 0.6
    if on_path:
        s = float(rng.uniform(EGO_FRONT + SAFETY_GAP + 2.0, path_len))
        (x, y), yaw = _point_at(traj[mask > 0], s)
        stop_arc = s - 0.5 * length - EGO_FRONT - SAFETY_GAP
        edited = clamp_trajectory(traj, stop_arc)
        answer = (f"The ego vehicle should slow down and stop behind the {text_name}, "
                  f"because it blocks the ego's path {math.hypot(x, y):.0f} m ahead.")
    else:
        s = float(rng.uniform(5.0, max(path_len, 6.0)))
        (px, py), yaw = _point_at(traj[mask > 0] if (mask > 0).any() else traj, s)
        side = 1.0 if rng.random() < 0.5 else -1.0
        # Beside the path: shift perpendicular to the path heading by a lane width.
        x, y = px + side * 4.0 * math.sin(yaw), py - side * 4.0 * math.cos(yaw)
        edited = traj.copy()
        answer = (f"The {text_name} {where_text(x, y)} is outside the ego's path, "
                  "so the ego vehicle can keep its plan.")
    question = f"Suppose a stationary {text_name} is placed {where_text(x, y)}. What should the ego vehicle do?"
    return SceneEdit("insert", QAPair(question, answer, "edit"), edited, mask.copy(), int(sample.command),
                     descriptor=agent_descriptor(label, x, y, yaw, 0.0, 0.0, length, width))


def make_remove_edit(sample: Sample, agent: int, token_index: int,
                     cfg: QAGenConfig = QAGenConfig()) -> SceneEdit | None:
    """Remove GT agent `agent` (matched to agent token `token_index`); None for the lead
    agent, whose removal has no known edited future (see the module docstring)."""
    if not 0 <= agent < len(sample.agent_boxes):
        raise IndexError(f"agent {agent} out of range for {len(sample.agent_boxes)} agents")
    if lead_agent(sample, cfg) == agent:
        return None
    name = AGENT_CLASSES[int(sample.agent_labels[agent])].replace("_", " ")
    where = where_text(*sample.agent_boxes[agent, :2])
    qa = QAPair(f"Suppose the {name} {where} is removed. How does the ego vehicle's plan change?",
                f"It does not change: the {name} {where} is not in the ego's path.", "edit")
    return SceneEdit("remove", qa, np.asarray(sample.ego_fut_traj, np.float32).copy(),
                     np.asarray(sample.ego_fut_mask, np.float32).copy(), int(sample.command),
                     token_index=int(token_index))
