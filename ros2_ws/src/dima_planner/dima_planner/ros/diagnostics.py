"""Planner node health: counters, latency percentiles and the /diagnostics message.

`PlannerStats` is filled by the worker thread and read by the 1 Hz diagnostics timer, so
it is lock-protected. `build_diagnostics` turns a snapshot into a DiagnosticArray with
three statuses: model, inputs, planning.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


@dataclass
class Rejection:
    category: str
    reason: str
    wall: float


@dataclass
class PlannerStats:
    window: int = 200
    plans: int = 0
    rejections: Counter = field(default_factory=Counter)
    degraded: Counter = field(default_factory=Counter)  # masked / reused cameras
    last_rejection: Rejection | None = None
    last_degraded: str = ""
    last_plan_wall: float | None = None
    model_s: deque = field(default_factory=lambda: deque(maxlen=200))
    total_s: deque = field(default_factory=lambda: deque(maxlen=200))  # input arrival -> published
    overhead_s: deque = field(default_factory=lambda: deque(maxlen=200))  # node work outside model + sync wait
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reject(self, category: str, reason: str) -> None:
        with self._lock:
            self.rejections[category] += 1
            self.last_rejection = Rejection(category, reason, time.monotonic())

    def degrade(self, category: str, note: str) -> None:
        with self._lock:
            self.degraded[category] += 1
            self.last_degraded = note

    def planned(self, model_s: float, total_s: float, overhead_s: float) -> None:
        with self._lock:
            self.plans += 1
            self.last_plan_wall = time.monotonic()
            self.model_s.append(model_s)
            self.total_s.append(total_s)
            self.overhead_s.append(overhead_s)

    def snapshot(self) -> dict:
        with self._lock:
            return {"plans": self.plans, "rejections": dict(self.rejections), "degraded": dict(self.degraded),
                    "last_rejection": self.last_rejection, "last_degraded": self.last_degraded,
                    "last_plan_wall": self.last_plan_wall, "model_s": list(self.model_s),
                    "total_s": list(self.total_s), "overhead_s": list(self.overhead_s)}

    def reset(self) -> None:
        with self._lock:
            self.plans = 0
            self.rejections.clear()
            self.degraded.clear()
            self.last_rejection = None
            self.last_degraded = ""
            self.last_plan_wall = None
            self.model_s.clear()
            self.total_s.clear()
            self.overhead_s.clear()


def percentiles_ms(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(values) * 1e3, [50, 99])
    return float(p50), float(p99)


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, float):
        value = f"{value:.3f}"
    return KeyValue(key=key, value=str(value))


def build_diagnostics(stamp, node_name: str, *, state: str, model_loaded: bool, model_id: str, device: str,
                      model_error: str, snapshot: dict, input_rates: dict[str, float],
                      input_ages: dict[str, float | None], front_name: str, front_timeout: float,
                      drops_busy: int, recent_s: float = 2.0) -> DiagnosticArray:
    """The node's DiagnosticArray. Levels: ERROR = cannot plan (no model, no front camera,
    recent rejections and no recent plan); WARN = planning but degraded or dropping."""
    hw = f"{node_name}"
    now = time.monotonic()
    arr = DiagnosticArray(header=Header(stamp=stamp))

    # Model
    if model_loaded:
        m = DiagnosticStatus(level=OK, name=f"{node_name}: model", message=f"loaded ({state})", hardware_id=hw)
    else:
        m = DiagnosticStatus(level=ERROR if model_error else WARN, name=f"{node_name}: model", hardware_id=hw,
                             message=model_error or f"not loaded ({state})")
    m.values = [_kv("state", state), _kv("model_id", model_id), _kv("device", device), _kv("error", model_error)]
    arr.status.append(m)

    # Inputs
    inp = DiagnosticStatus(level=OK, name=f"{node_name}: inputs", message="ok", hardware_id=hw)
    front_age = input_ages.get(front_name)
    if state == "active" and (front_age is None or front_age > front_timeout):
        inp.level = ERROR
        inp.message = (f"no front camera ({front_name}) image " +
                       ("received yet" if front_age is None else f"for {front_age:.1f} s") + "; not planning")
    for key in input_rates:
        age = input_ages.get(key)
        inp.values.append(_kv(f"{key}.rate_hz", input_rates[key]))
        inp.values.append(_kv(f"{key}.age_s", "never" if age is None else age))
    arr.status.append(inp)

    # Planning
    snap = snapshot
    p50, p99 = percentiles_ms(snap["model_s"])
    t50, t99 = percentiles_ms(snap["total_s"])
    o50, o99 = percentiles_ms(snap["overhead_s"])
    plan = DiagnosticStatus(level=OK, name=f"{node_name}: planning", hardware_id=hw,
                            message=f"{snap['plans']} plans")
    rej = snap["last_rejection"]
    recent_rej = rej is not None and now - rej.wall <= recent_s
    recent_plan = snap["last_plan_wall"] is not None and now - snap["last_plan_wall"] <= recent_s
    if recent_rej:
        plan.level = WARN if recent_plan else ERROR
        plan.message = f"cycle skipped ({rej.category}): {rej.reason}"
    elif snap["last_degraded"] and recent_plan:
        plan.level = WARN
        plan.message = f"planning degraded: {snap['last_degraded']}"
    plan.values = [_kv("plans", snap["plans"]), _kv("dropped.busy", drops_busy)]
    plan.values += [_kv(f"rejected.{k}", v) for k, v in sorted(snap["rejections"].items())]
    plan.values += [_kv(f"degraded.{k}", v) for k, v in sorted(snap["degraded"].items())]
    plan.values += [_kv("last_rejection", f"{rej.category}: {rej.reason}" if rej else ""),
                    _kv("model_latency_p50_ms", p50), _kv("model_latency_p99_ms", p99),
                    _kv("planner_latency_p50_ms", t50), _kv("planner_latency_p99_ms", t99),
                    _kv("node_overhead_p50_ms", o50), _kv("node_overhead_p99_ms", o99)]
    arr.status.append(plan)
    return arr
