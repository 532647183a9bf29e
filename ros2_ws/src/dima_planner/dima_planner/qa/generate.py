"""Driving QA generated from a Sample's annotations (where DriveLM has no coverage).

Three groups, as DiMA describes and DriveLM names them:
  perception  what is around the ego and where;
  prediction  where the nearest agents go in the next 3 s (from their GT futures);
  planning /  what the ego should do and why: rule-based from the GT ego future
  behavior    (speed profile, stop), the driving command and the lead agent in the ego
              lane corridor.
Frames follow the Sample: current LiDAR frame, x to the right, y forward, metres.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from dima_planner.data.sample import (
    AGENT_CLASSES, CMD_LEFT, CMD_RIGHT, COMMAND_NAMES, EGO_STATUS_FIELDS, OCCUPANCY_CLASSES,
    STEP_SECONDS, Sample,
)

from .types import QAPair

_COMMAND_TEXT = {CMD_RIGHT: "turn right", CMD_LEFT: "turn left"}
_SECTORS = ("ahead", "ahead on the left", "to the left", "behind on the left",
            "behind", "behind on the right", "to the right", "ahead on the right")
# Classes that make the ego slow or stop when they block its lane.
_BLOCKING = OCCUPANCY_CLASSES | {"barrier", "traffic_cone"}


@dataclass
class QAGenConfig:
    max_objects: int = 5  # objects listed in the perception answer
    max_predictions: int = 3  # agents asked about in prediction QA
    perception_range: float = 30.0  # metres
    corridor_half_width: float = 1.8  # ego lane corridor |x| <= this
    lookahead: float = 30.0  # lead agents searched up to this far ahead (metres)
    stop_distance: float = 8.0  # a lead this close (or a near-still plan) -> stop
    slow_distance: float = 20.0  # a slower lead this close -> slow down
    stopped_speed: float = 0.5  # m/s; below this counts as stopped
    moving_speed: float = 0.5  # m/s; agents below this are "staying still"


def direction_text(x: float, y: float) -> str:
    """One of 8 sectors around the ego (0 rad = straight ahead, counter-clockwise)."""
    ang = math.atan2(-x, y)  # angle from +y (forward), positive to the left
    return _SECTORS[int(((ang + math.pi / 8) % (2 * math.pi)) // (math.pi / 4))]


def where_text(x: float, y: float) -> str:
    return f"{math.hypot(x, y):.0f} m {direction_text(x, y)}"


def _class_name(label: int) -> str:
    return AGENT_CLASSES[int(label)].replace("_", " ")


def ego_speeds(sample: Sample) -> tuple[float, np.ndarray]:
    """(current speed, per-step future speeds over valid steps), m/s."""
    pts = np.vstack([np.zeros((1, 2), np.float32), sample.ego_fut_traj]).astype(np.float64)
    valid = np.asarray(sample.ego_fut_mask) > 0
    steps = np.linalg.norm(np.diff(pts, axis=0), axis=1) / STEP_SECONDS
    fut = steps[valid] if valid.any() else steps[:1]
    status = np.asarray(sample.ego_status, dtype=np.float64)
    speed_i = EGO_STATUS_FIELDS.index("speed")
    # ego_status may be zeros when the dataset has no CAN bus; fall back to the first step.
    cur = float(status[speed_i]) if status.size > speed_i and status[speed_i] > 0 else float(fut[0])
    return cur, fut


def lead_agent(sample: Sample, cfg: QAGenConfig = QAGenConfig()) -> int | None:
    """Index of the nearest blocking agent in the ego lane corridor ahead, else None."""
    best, best_y = None, math.inf
    for i, (box, label) in enumerate(zip(sample.agent_boxes, sample.agent_labels)):
        x, y = float(box[0]), float(box[1])
        half = cfg.corridor_half_width + 0.5 * float(box[4])  # widen by the agent's half width
        if AGENT_CLASSES[int(label)] in _BLOCKING and abs(x) <= half and 0.0 < y <= cfg.lookahead and y < best_y:
            best, best_y = i, y
    return best


def _speed_trend(cur: float, fut: np.ndarray, cfg: QAGenConfig) -> str:
    end = float(fut[-2:].mean())
    if end < cfg.stopped_speed:
        return "stop"
    if end < 0.7 * cur - 0.5:
        return "decelerate"
    if end > 1.3 * cur + 0.5:
        return "accelerate"
    return "keep"


def planning_qa(sample: Sample, cfg: QAGenConfig = QAGenConfig()) -> list[QAPair]:
    """What the ego should do and why (planning) and its behaviour (behavior)."""
    cur, fut = ego_speeds(sample)
    trend = _speed_trend(cur, fut, cfg)
    route = _COMMAND_TEXT.get(int(sample.command), "go straight")
    lead = lead_agent(sample, cfg)

    reason = "the lane ahead is clear"
    if lead is not None:
        box = sample.agent_boxes[lead]
        name, dist = _class_name(sample.agent_labels[lead]), float(box[1])
        lead_speed = float(sample.agent_vel[lead][1])  # along the ego's forward axis
        reason = f"a {name} is {dist:.0f} m ahead in its lane"
        if dist <= cfg.stop_distance or trend == "stop":
            action = "stop" if cur > cfg.stopped_speed else "remain stopped"
            reason += " and blocks the way" if lead_speed < cfg.moving_speed else " and is too close"
        elif dist <= cfg.slow_distance and (lead_speed < cur or trend == "decelerate"):
            action = "slow down and keep a safe distance"
            reason += f", moving slower ({max(lead_speed, 0.0):.0f} m/s) than the ego ({cur:.0f} m/s)"
        else:
            action = "keep a safe following distance"
            if trend == "decelerate":
                action = "slow down and keep a safe following distance"
    elif trend == "stop":
        action = "stop" if cur > cfg.stopped_speed else "remain stopped"
        reason = "no agent blocks its lane, so it is likely yielding at a traffic light, a stop line or to crossing traffic"
    elif trend == "decelerate":
        action = "slow down"
        reason = "it is approaching a " + ("turn" if route != "go straight" else "situation that needs caution")
    elif trend == "accelerate":
        action = "accelerate"
    else:
        action = "keep its current speed"

    plan_a = f"The ego vehicle should {action} and {route}, because {reason}."
    motion = {"stop": "stopping", "decelerate": "slowing down", "accelerate": "speeding up",
              "keep": "keeping its speed"}[trend]
    if cur < cfg.stopped_speed and trend == "stop":
        motion = "standing still"
    turn = {"turn right": "turning right", "turn left": "turning left"}.get(route, "going straight")
    behavior_a = f"The ego vehicle is {turn}. It is driving at {cur:.0f} m/s and {motion}."
    return [
        QAPair(PLANNING_QUESTION, plan_a, "planning"),
        QAPair("Predict the behavior of the ego vehicle.", behavior_a, "behavior"),
    ]


def _near_agents(sample: Sample, rng: float) -> list[int]:
    d = np.hypot(sample.agent_boxes[:, 0], sample.agent_boxes[:, 1]) if len(sample.agent_boxes) else np.zeros(0)
    return [int(i) for i in np.argsort(d, kind="stable") if d[i] <= rng]


def perception_qa(sample: Sample, cfg: QAGenConfig = QAGenConfig()) -> list[QAPair]:
    near = _near_agents(sample, cfg.perception_range)
    if near:
        items = [f"a {_class_name(sample.agent_labels[i])} {where_text(*sample.agent_boxes[i, :2])}"
                 for i in near[: cfg.max_objects]]
        objects = "There is " + ", ".join(items) + "."
        if len(near) > cfg.max_objects:
            objects += f" {len(near) - cfg.max_objects} more objects are farther away."
    else:
        objects = f"There are no objects within {cfg.perception_range:.0f} m."
    lead = lead_agent(sample, cfg)
    if lead is None:
        ahead = f"No, the ego lane is clear for {cfg.lookahead:.0f} m."
    else:
        ahead = (f"Yes, a {_class_name(sample.agent_labels[lead])} is "
                 f"{float(sample.agent_boxes[lead, 1]):.0f} m ahead in the ego lane.")
    return [
        QAPair("What are the important objects in the current scene and where are they?", objects, "perception"),
        QAPair("Is there an object ahead of the ego vehicle in its lane?", ahead, "perception"),
    ]


def prediction_qa(sample: Sample, cfg: QAGenConfig = QAGenConfig()) -> list[QAPair]:
    out = []
    for i in _near_agents(sample, cfg.perception_range):
        if len(out) >= cfg.max_predictions:
            break
        valid = np.asarray(sample.agent_fut_mask[i]) > 0
        if not valid.any():
            continue
        start = sample.agent_boxes[i, :2].astype(np.float64)
        end = sample.agent_fut_traj[i][valid][-1].astype(np.float64)
        name = _class_name(sample.agent_labels[i])
        q = f"What will the {name} {where_text(*start)} do in the next 3 seconds?"
        move = end - start
        seconds = STEP_SECONDS * (int(np.nonzero(valid)[0][-1]) + 1)
        if np.linalg.norm(move) / seconds < cfg.moving_speed:
            a = f"The {name} will stay still."
        else:
            yaw0 = float(sample.agent_boxes[i, 6])
            yaw1 = float(sample.agent_fut_yaw[i][valid][-1])
            dyaw = (yaw1 - yaw0 + math.pi) % (2 * math.pi) - math.pi
            turn = "turn left" if dyaw > 0.35 else "turn right" if dyaw < -0.35 else "keep its direction"
            heading = math.atan2(move[1], move[0])  # LiDAR frame: pi/2 = same way as the ego
            rel = "the same way as the ego" if math.sin(heading) > 0.7 else (
                "towards the ego" if math.sin(heading) < -0.7 else "across the ego's path")
            a = (f"The {name} will move {rel} and {turn}, travelling {np.linalg.norm(move):.0f} m "
                 f"to end {where_text(*end)}.")
        out.append(QAPair(q, a, "prediction"))
    return out


def generate_qa(sample: Sample, cfg: QAGenConfig = QAGenConfig()) -> list[QAPair]:
    """All generated QA pairs of one sample: perception, prediction, planning, behavior."""
    return perception_qa(sample, cfg) + prediction_qa(sample, cfg) + planning_qa(sample, cfg)


def command_name(command: int) -> str:
    return COMMAND_NAMES[int(command)].replace("_", " ")


# The sentence grammar of planning_qa's answers, for checking that generated reasoning is
# well-formed (eval: every text must parse as the template it was trained on).
PLANNING_QUESTION = "What actions should the ego vehicle take, and why?"
_CLASS_RE = "|".join(c.replace("_", " ") for c in AGENT_CLASSES)
_ACTION_RE = ("stop|remain stopped|slow down and keep a safe distance|slow down and keep a safe following distance|"
              "keep a safe following distance|slow down|accelerate|keep its current speed")
_REASON_RE = (r"the lane ahead is clear"
              rf"|a (?:{_CLASS_RE}) is \d+ m ahead in its lane"
              r"(?: and blocks the way| and is too close|, moving slower \(\d+ m/s\) than the ego \(\d+ m/s\))?"
              r"|no agent blocks its lane, so it is likely yielding at a traffic light, a stop line or to crossing traffic"
              r"|it is approaching a (?:turn|situation that needs caution)")


def _planning_sentence(route_re: str) -> re.Pattern:
    return re.compile(rf"The ego vehicle should ({_ACTION_RE}) and ({route_re}), because ({_REASON_RE})\.")


PLANNING_PATTERN = _planning_sentence("turn right|turn left|go straight")


def planning_pattern(command: int | None = None) -> re.Pattern:
    """The planning answers' grammar; with the navigation command, its route clause is that
    command's (the answer's route is the command the planner was given, qa.generate.planning_qa)."""
    if command is None:
        return PLANNING_PATTERN
    return _planning_sentence(re.escape(_COMMAND_TEXT.get(int(command), "go straight")))


def answer_grammar(question: str, command: int | None = None) -> re.Pattern | None:
    """The grammar stage 2 trains the answers to `question` from, if it has one (the
    planning question, the node's commentary; its route clause fixed to `command` when
    given); None for any other question."""
    return planning_pattern(command) if " ".join(question.split()) == PLANNING_QUESTION else None


def parse_planning(text: str) -> tuple[str, str, str] | None:
    """(action, route, reason) of a planning answer, or None when it is not one."""
    m = PLANNING_PATTERN.fullmatch(" ".join(text.split()))
    return None if m is None else (m.group(1), m.group(2), m.group(3))
