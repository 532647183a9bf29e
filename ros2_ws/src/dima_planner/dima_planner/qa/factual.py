"""Factual driving QA: four questions whose answers are facts of the annotations, each in
one fixed sentence template, so an answer can be scored by exact match and every
generated text can be checked for being well-formed (it parses as its template).

    vehicles_ahead   How many vehicles are ahead within 30 m?        (a count)
    lead_distance    How far ahead is the lead vehicle in the ego lane? (nearest 5 m, or none)
    ego_action       What is the ego vehicle doing?                   (stopped/stopping/slowing/keeping/speeding up)
    ped_crossing     Is a pedestrian crossing in front of the ego vehicle? (yes/no)

Definitions (ours; DiMA and DriveLM do not define these questions). Frames follow the
Sample: current LiDAR frame, x to the right, y forward, metres.
  * "vehicle": car, truck, bus, trailer, construction vehicle, motorcycle (not bicycles).
  * "ahead within 30 m": 0 < y, centre distance <= 30 m and |x| <= y (a 90-degree cone).
  * "lead vehicle": nearest vehicle whose centre is in the ego lane corridor
    (|x| <= 1.8 m + half its width) with 0 < y <= 30 m; its distance y rounded to 5 m
    (at least 5 m).
  * "ego action": from the GT ego future speed profile (generate._speed_trend), with
    "standing still" when both the current and the final speeds are below 0.5 m/s.
  * "pedestrian crossing": a pedestrian within 0 < y <= 20 m, |x| <= 6 m whose velocity is
    mostly sideways (|vx| > |vy| and |vx| >= 0.5 m/s), i.e. walking across the ego's road.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from dima_planner.data.sample import AGENT_CLASSES, Sample

from .generate import QAGenConfig, _speed_trend, ego_speeds
from .types import QAPair

VEHICLE_CLASSES = frozenset({"car", "truck", "bus", "trailer", "construction_vehicle", "motorcycle"})
AHEAD_RANGE = 30.0
LEAD_RANGE = 30.0
CORRIDOR_HALF_WIDTH = 1.8
CROSS_RANGE = 20.0
CROSS_HALF_WIDTH = 6.0
CROSS_MIN_SPEED = 0.5

_ACTIONS = {"standing": "standing still", "stop": "stopping", "decelerate": "slowing down",
            "keep": "keeping its speed", "accelerate": "speeding up"}


@dataclass(frozen=True)
class Template:
    """One factual question: its text, its answer pattern and how to read the value back."""

    qtype: str
    question: str
    pattern: re.Pattern

    def parse(self, text: str) -> str | None:
        """The answer's value ("3", "15", "none", "slowing down", "yes"...) or None when the
        text is not a sentence of this template."""
        m = self.pattern.fullmatch(normalise(text))
        if m is None:
            return None
        return next(g for g in m.groups() if g is not None)


def normalise(text: str) -> str:
    """Whitespace collapsed, stripped: the form exact match compares."""
    return " ".join(text.split())


TEMPLATES: dict[str, Template] = {t.qtype: t for t in (
    Template("vehicles_ahead", f"How many vehicles are ahead of the ego vehicle within {AHEAD_RANGE:.0f} m?",
             re.compile(r"There (?:are (no|\d+) vehicles|is (1) vehicle) ahead within 30 m\.")),
    Template("lead_distance", "How far ahead is the lead vehicle in the ego lane?",
             re.compile(r"(?:The lead vehicle is (\d+) m ahead|There is (no) lead vehicle within 30 m)\.")),
    Template("ego_action", "What is the ego vehicle doing?",
             re.compile(r"The ego vehicle is (standing still|stopping|slowing down|keeping its speed|speeding up)\.")),
    Template("ped_crossing", "Is a pedestrian crossing in front of the ego vehicle?",
             re.compile(r"(Yes), a pedestrian is crossing ahead\.|(No), no pedestrian is crossing ahead\.")),
)}
QTYPES: tuple[str, ...] = tuple(TEMPLATES)


def qtype_of(question: str) -> str | None:
    """Which factual question this is (None for any other question)."""
    q = normalise(question)
    return next((t.qtype for t in TEMPLATES.values() if t.question == q), None)


def _name(label: int) -> str:
    return AGENT_CLASSES[int(label)]


def vehicles_ahead(sample: Sample) -> int:
    n = 0
    for box, label in zip(sample.agent_boxes, sample.agent_labels):
        x, y = float(box[0]), float(box[1])
        if _name(label) in VEHICLE_CLASSES and y > 0 and math.hypot(x, y) <= AHEAD_RANGE and abs(x) <= y:
            n += 1
    return n


def lead_vehicle_distance(sample: Sample) -> float | None:
    """Distance y (m) of the nearest vehicle in the ego lane corridor ahead, else None."""
    best = None
    for box, label in zip(sample.agent_boxes, sample.agent_labels):
        x, y = float(box[0]), float(box[1])
        if (_name(label) in VEHICLE_CLASSES and 0.0 < y <= LEAD_RANGE
                and abs(x) <= CORRIDOR_HALF_WIDTH + 0.5 * float(box[4]) and (best is None or y < best)):
            best = y
    return best


def ego_action(sample: Sample, cfg: QAGenConfig = QAGenConfig()) -> str:
    cur, fut = ego_speeds(sample)
    trend = _speed_trend(cur, fut, cfg)
    if trend == "stop" and cur < cfg.stopped_speed:
        trend = "standing"
    return _ACTIONS[trend]


def pedestrian_crossing(sample: Sample) -> bool:
    for box, label, vel in zip(sample.agent_boxes, sample.agent_labels, sample.agent_vel):
        x, y = float(box[0]), float(box[1])
        vx, vy = float(vel[0]), float(vel[1])
        if (_name(label) == "pedestrian" and 0.0 < y <= CROSS_RANGE and abs(x) <= CROSS_HALF_WIDTH
                and abs(vx) > abs(vy) and abs(vx) >= CROSS_MIN_SPEED):
            return True
    return False


def answer_text(qtype: str, value: str) -> str:
    """The template's sentence for a value (the inverse of Template.parse)."""
    if qtype == "vehicles_ahead":
        if value == "no" or value == "0":
            return f"There are no vehicles ahead within {AHEAD_RANGE:.0f} m."
        if value == "1":
            return f"There is 1 vehicle ahead within {AHEAD_RANGE:.0f} m."
        return f"There are {value} vehicles ahead within {AHEAD_RANGE:.0f} m."
    if qtype == "lead_distance":
        if value == "no":
            return f"There is no lead vehicle within {LEAD_RANGE:.0f} m."
        return f"The lead vehicle is {value} m ahead."
    if qtype == "ego_action":
        return f"The ego vehicle is {value}."
    if qtype == "ped_crossing":
        return "Yes, a pedestrian is crossing ahead." if value == "Yes" else "No, no pedestrian is crossing ahead."
    raise KeyError(f"unknown factual question type {qtype!r}; known: {list(QTYPES)}")


def vehicles_value(count: int) -> str:
    """The vehicles_ahead answer value of a vehicle count."""
    return "no" if count == 0 else str(count)


def lead_value(distance: float | None) -> str:
    """The lead_distance answer value of a distance (m): the nearest 5 m, at least 5."""
    return "no" if distance is None else str(max(5, 5 * int(round(distance / 5.0))))


def factual_values(sample: Sample, cfg: QAGenConfig = QAGenConfig()) -> dict[str, str]:
    """{qtype: value} of one sample (values as Template.parse returns them)."""
    n = vehicles_ahead(sample)
    lead = lead_vehicle_distance(sample)
    return {
        "vehicles_ahead": vehicles_value(n),
        "lead_distance": lead_value(lead),
        "ego_action": ego_action(sample, cfg),
        "ped_crossing": "Yes" if pedestrian_crossing(sample) else "No",
    }


def factual_qa(sample: Sample, cfg: QAGenConfig = QAGenConfig()) -> list[QAPair]:
    """The four factual QA pairs of one sample, in QTYPES order."""
    category = {"vehicles_ahead": "perception", "lead_distance": "perception", "ego_action": "behavior",
                "ped_crossing": "perception"}
    return [QAPair(TEMPLATES[t].question, answer_text(t, v), category[t])
            for t, v in factual_values(sample, cfg).items()]
