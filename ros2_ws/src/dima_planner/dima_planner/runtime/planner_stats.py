"""The planner node's counters, latency windows, frame-loss accounting and no-plan watchdog
(ROS-free; diagnostics.py turns a snapshot into /diagnostics).

Filled by the executor callbacks and the worker, read by the diagnostics timer: every
method takes the lock.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


def percentiles_ms(values) -> tuple[float, float]:
    """(p50, p99) in ms of a window of durations in seconds; NaN for an empty window.
    Every node's /diagnostics latency keys (planner and MLLM)."""
    if not values:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64) * 1e3, [50, 99])
    return float(p50), float(p99)


@dataclass
class Rejection:
    category: str
    reason: str
    wall: float


class StreamCounter:
    """Frames of one input expected from its stamps vs received.

    The period is the median of recent stamp steps; a step of n periods means n - 1 frames
    never arrived (lost before the node: publisher, transport, or a depth-1 subscription
    overwritten before the executor took it). A backward jump restarts the count."""

    def __init__(self, window: int = 200):
        self.received = 0
        self.lost = 0
        self._last: int | None = None
        self._steps: deque[int] = deque(maxlen=25)
        self._recent: deque[tuple[int, int]] = deque(maxlen=window)  # (received, lost) per arrival

    def add(self, stamp_ns: int) -> None:
        lost = 0
        if self._last is not None:
            step = stamp_ns - self._last
            if step <= 0:
                if step < 0:
                    self._steps.clear()
                self._last = stamp_ns if step < 0 else self._last
                self.received += 1
                self._recent.append((1, 0))
                return
            if len(self._steps) >= 5:
                period = sorted(self._steps)[len(self._steps) // 2]
                n = round(step / period)
                if n >= 2 and step > 1.5 * period:
                    lost = n - 1
            if lost == 0:
                self._steps.append(step)
        self._last = stamp_ns
        self.received += 1
        self.lost += lost
        self._recent.append((1, lost))

    def recent_loss(self) -> float:
        """Lost / expected over the last `window` arrivals."""
        rec = sum(r for r, _ in self._recent)
        lost = sum(l for _, l in self._recent)
        return lost / (rec + lost) if rec + lost else 0.0


@dataclass
class PlannerStats:
    window: int = 200
    plans: int = 0
    rejections: Counter = field(default_factory=Counter)
    degraded: Counter = field(default_factory=Counter)  # masked / reused cameras, bridged odometry
    input_rejections: Counter = field(default_factory=Counter)  # messages refused on arrival, by input
    warnings: dict = field(default_factory=dict)  # warn-once notes (key -> message)
    last_rejection: Rejection | None = None
    last_input_rejection: str = ""
    last_degraded: str = ""
    last_plan_wall: float | None = None
    last_anchor_wall: float | None = None
    since_wall: float = field(default_factory=time.monotonic)  # activation: the watchdog's origin
    anchors: int = 0
    streams: dict = field(default_factory=dict)  # input key -> StreamCounter
    model_s: deque = field(default_factory=lambda: deque(maxlen=200))
    total_s: deque = field(default_factory=lambda: deque(maxlen=200))  # input arrival -> published
    overhead_s: deque = field(default_factory=lambda: deque(maxlen=200))  # node work outside model + sync wait
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reject(self, category: str, reason: str) -> None:
        with self._lock:
            self.rejections[category] += 1
            self.last_rejection = Rejection(category, reason, time.monotonic())

    def input_rejected(self, key: str, reason: str) -> None:
        with self._lock:
            self.input_rejections[key] += 1
            self.last_input_rejection = f"{key}: {reason}"

    def degrade(self, category: str, note: str) -> None:
        with self._lock:
            self.degraded[category] += 1
            self.last_degraded = note

    def warning(self, key: str, message: str) -> None:
        with self._lock:
            self.warnings[key] = message

    def arrival(self, key: str, stamp_ns: int) -> None:
        with self._lock:
            counter = self.streams.get(key)
            if counter is None:
                counter = self.streams[key] = StreamCounter()
            counter.add(stamp_ns)

    def anchor(self) -> None:
        """A front image was handed to the worker."""
        with self._lock:
            self.anchors += 1
            self.last_anchor_wall = time.monotonic()

    def planned(self, model_s: float, total_s: float, overhead_s: float) -> None:
        with self._lock:
            self.plans += 1
            self.last_plan_wall = time.monotonic()
            self.model_s.append(model_s)
            self.total_s.append(total_s)
            self.overhead_s.append(overhead_s)

    def watchdog(self, warn_s: float, error_s: float, now: float | None = None) -> tuple[int, float, str]:
        """(level, seconds without a plan while front images arrive, why). Front images that
        stopped are the inputs status' business; this one catches a planner that receives
        anchors and publishes nothing (every cycle skipped, or a cycle that never ends)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.last_anchor_wall is None or now - self.last_anchor_wall > max(error_s, 1.0):
                return OK, 0.0, ""
            since = max(self.since_wall, self.last_plan_wall or 0.0)
            silent = now - since
            rej = self.last_rejection
            if rej is not None and rej.wall >= since:
                why = f"every cycle skipped, last: {rej.category}: {rej.reason}"
            else:
                why = "no planning cycle finished (the worker is busy or blocked)"
        if silent >= error_s:
            return ERROR, silent, why
        if silent >= warn_s:
            return WARN, silent, why
        return OK, silent, ""

    def snapshot(self) -> dict:
        with self._lock:
            return {"plans": self.plans, "rejections": dict(self.rejections), "degraded": dict(self.degraded),
                    "input_rejections": dict(self.input_rejections), "warnings": dict(self.warnings),
                    "last_rejection": self.last_rejection, "last_input_rejection": self.last_input_rejection,
                    "last_degraded": self.last_degraded, "last_plan_wall": self.last_plan_wall,
                    "anchors": self.anchors,
                    "streams": {k: (c.received, c.lost, c.recent_loss()) for k, c in self.streams.items()},
                    "model_s": list(self.model_s), "total_s": list(self.total_s),
                    "overhead_s": list(self.overhead_s)}

    def reset(self) -> None:
        with self._lock:
            self.plans = self.anchors = 0
            self.rejections.clear()
            self.degraded.clear()
            self.input_rejections.clear()
            self.streams.clear()
            self.last_rejection = None
            self.last_input_rejection = ""
            self.last_degraded = ""
            self.last_plan_wall = self.last_anchor_wall = None
            self.since_wall = time.monotonic()
            self.model_s.clear()
            self.total_s.clear()
            self.overhead_s.clear()
