"""Input caching and front-camera-anchored synchronisation for the planner node (no rclpy,
no message packages: messages are only stored here, never read).

Subscription callbacks only `put` the newest messages here (a few per camera, so the
worker can pick the one nearest the anchor). The worker thread takes the front image
from the `AnchorSlot`, waits briefly for the other cameras, and `select_cameras` picks one
image per camera within the sync tolerance or applies the missing-camera policy.
All stamps are integer nanoseconds of the message header (node/sim time).
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import InputError

SEC = 1_000_000_000


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (an rclpy or rosbags message: read by attribute) -> integer ns."""
    return int(stamp.sec) * SEC + int(stamp.nanosec)


@dataclass
class Cached:
    stamp_ns: int
    msg: Any
    recv_wall: float  # time.monotonic() at arrival, for rates and planner latency


class InputCache:
    """Newest few messages per input key. `put` is O(1); readers get snapshots."""

    def __init__(self, depth: int = 4):
        self._depth = depth
        self._data: dict[str, deque[Cached]] = {}
        self._cond = threading.Condition()
        self._arrivals: dict[str, deque[float]] = {}

    def put(self, key: str, stamp_ns: int, msg: Any) -> None:
        now = time.monotonic()
        with self._cond:
            self._data.setdefault(key, deque(maxlen=self._depth)).append(Cached(stamp_ns, msg, now))
            arr = self._arrivals.setdefault(key, deque(maxlen=200))
            arr.append(now)
            self._cond.notify_all()

    def items(self, key: str) -> list[Cached]:
        with self._cond:
            return list(self._data.get(key, ()))

    def latest(self, key: str) -> Cached | None:
        with self._cond:
            d = self._data.get(key)
            return d[-1] if d else None

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        with self._cond:
            for k in list(self._data):
                if k not in keep:
                    self._data[k].clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until predicate() (evaluated under the cache lock on each put) or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def rate(self, key: str, window: float = 5.0) -> float:
        """Arrival rate (Hz) over the last `window` seconds of wall time."""
        now = time.monotonic()
        with self._cond:
            arr = [t for t in self._arrivals.get(key, ()) if now - t <= window]
        if len(arr) < 2:
            return 0.0
        return (len(arr) - 1) / max(arr[-1] - arr[0], 1e-6)

    def last_arrival(self, key: str) -> float | None:
        with self._cond:
            arr = self._arrivals.get(key)
            return arr[-1] if arr else None


class AnchorSlot:
    """Hand-over of front images from the executor to the worker: one pending slot.

    A new anchor replaces an unprocessed one (the replaced one is a drop: the worker was
    busy). The executor thread never waits on the model.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: Cached | None = None
        self.dropped_busy = 0

    def offer(self, item: Cached) -> bool:
        """Returns False if a pending anchor was dropped to make room."""
        with self._cond:
            replaced = self._pending is not None
            if replaced:
                self.dropped_busy += 1
            self._pending = item
            self._cond.notify()
            return not replaced

    def take(self, timeout: float) -> Cached | None:
        with self._cond:
            if self._pending is None:
                self._cond.wait(timeout)
            item, self._pending = self._pending, None
            return item

    def clear(self) -> None:
        with self._cond:
            self._pending = None


@dataclass
class CameraPick:
    status: str  # "fresh" | "reused" | "masked"
    item: Cached | None  # the chosen message (None when masked)
    note: str = ""


def nearest(items: list[Cached], anchor_ns: int) -> Cached | None:
    return min(items, key=lambda c: abs(c.stamp_ns - anchor_ns), default=None)


def side_cameras_ready(items_by_cam: dict[str, list[Cached]], anchor_ns: int, tolerance_ns: int) -> bool:
    """True when every side camera has an image within tolerance, or already one past the
    window (then waiting longer cannot bring a better one)."""
    for items in items_by_cam.values():
        if not items:
            return False
        best = nearest(items, anchor_ns)
        if abs(best.stamp_ns - anchor_ns) > tolerance_ns and items[-1].stamp_ns <= anchor_ns + tolerance_ns:
            return False
    return True


def select_cameras(anchor_ns: int, items_by_cam: dict[str, list[Cached]], tolerance_ns: int, policy: str,
                   last_good: dict[str, Cached], max_reuse_ns: int) -> dict[str, CameraPick]:
    """One image per side camera for the front stamp `anchor_ns` (fallback_pick for a camera
    with no image within tolerance)."""
    if policy not in ("mask", "reuse_last"):
        raise ValueError(f"unknown missing_camera_policy {policy!r}")
    out = {}
    for cam, items in items_by_cam.items():
        best = nearest(items, anchor_ns)
        if best is not None and abs(best.stamp_ns - anchor_ns) <= tolerance_ns:
            out[cam] = CameraPick("fresh", best)
            continue
        why = ("no image received" if best is None else
               f"nearest image is {(best.stamp_ns - anchor_ns) / 1e6:+.0f} ms from the front camera")
        out[cam] = fallback_pick(cam, anchor_ns, why, policy, last_good, max_reuse_ns)
    return out


def fallback_pick(cam: str, anchor_ns: int, why: str, policy: str, last_good: dict[str, Cached],
                  max_reuse_ns: int) -> CameraPick:
    """A side camera without a usable image (none in time, or a corrupt one):
      mask       -> black image (the model sees nothing there);
      reuse_last -> its last used image if it is at most max_reuse_ns older than the anchor,
                    otherwise mask."""
    prev = last_good.get(cam)
    if policy == "reuse_last" and prev is not None and 0 <= anchor_ns - prev.stamp_ns <= max_reuse_ns:
        return CameraPick("reused", prev, f"{why}; reusing the image from {(anchor_ns - prev.stamp_ns) / 1e6:.0f} ms earlier")
    return CameraPick("masked", None, f"{why}; masked")


@dataclass(frozen=True)
class OdomSample:
    stamp_ns: int
    pose: np.ndarray  # 4x4 base_link -> odometry frame
    twist: np.ndarray  # (vx, vy, wz) in base_link
    frame_id: str


@dataclass(frozen=True)
class PoseAt:
    matrix: np.ndarray  # 4x4 at the requested stamp
    sample: OdomSample  # the nearer sample (twist, frame)
    bridged: str = ""  # reason of a rejected odometry message the interpolation spanned


class OdomHistory:
    """Recent odometry samples in stamp order; pose_at interpolates at a stamp (positions
    linearly, yaw by the shortest angle; roll/pitch from the nearer sample).

    A late sample is inserted in order (one early/late message never makes newer ones look
    late). Stamps of rejected messages are kept too, so that a pose interpolated across one
    is reported as bridged. A sample `jump_reset_ns` older than the newest is another
    timeline (bag loop): the history restarts."""

    def __init__(self, horizon_ns: int = 5 * SEC, jump_reset_ns: int = SEC):
        self._items: list[OdomSample] = []
        self._bad: deque[tuple[int, str]] = deque(maxlen=64)
        self._horizon = horizon_ns
        self._jump = jump_reset_ns
        self._lock = threading.Lock()

    def put(self, sample: OdomSample) -> None:
        with self._lock:
            items = self._items
            if items and items[-1].stamp_ns - sample.stamp_ns >= self._jump:
                items.clear()
                self._bad.clear()
            i = bisect.bisect_left([it.stamp_ns for it in items], sample.stamp_ns)
            if i < len(items) and items[i].stamp_ns == sample.stamp_ns:
                items[i] = sample  # a repeated stamp: the newer message wins
            else:
                items.insert(i, sample)
            newest = items[-1].stamp_ns
            while items and newest - items[0].stamp_ns > self._horizon:
                items.pop(0)

    def mark_bad(self, stamp_ns: int, reason: str) -> None:
        with self._lock:
            self._bad.append((stamp_ns, reason))

    def bad_near(self, t_ns: int, window_ns: int) -> str | None:
        """Reason of the rejected message nearest t_ns within window_ns, if any."""
        with self._lock:
            near = [(abs(s - t_ns), r) for s, r in self._bad if abs(s - t_ns) <= window_ns]
        return min(near)[1] if near else None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bad.clear()

    def latest(self) -> OdomSample | None:
        with self._lock:
            return self._items[-1] if self._items else None

    def pose_at(self, t_ns: int, max_age_ns: int) -> PoseAt:
        """The pose at t_ns, or InputError("stale_odometry")."""
        with self._lock:
            items = list(self._items)
            bad = list(self._bad)
        if not items:
            raise InputError("stale_odometry", "no odometry received")
        i = bisect.bisect_left([it.stamp_ns for it in items], t_ns)
        a = items[i - 1] if i > 0 else None
        b = items[i] if i < len(items) else None
        if b is not None and b.stamp_ns == t_ns:
            return PoseAt(b.pose, b)
        if a is not None and b is not None and b.stamp_ns - a.stamp_ns <= 2 * max_age_ns:
            near = a if t_ns - a.stamp_ns <= b.stamp_ns - t_ns else b
            spanned = [r for s, r in bad if a.stamp_ns < s < b.stamp_ns]
            return PoseAt(_interpolate(a, b, t_ns), near, spanned[-1] if spanned else "")
        near = min((x for x in (a, b) if x is not None), key=lambda it: abs(it.stamp_ns - t_ns))
        gap = near.stamp_ns - t_ns
        if abs(gap) > max_age_ns:
            raise InputError("stale_odometry", f"nearest odometry is {gap / 1e9:+.3f} s from the front camera "
                                               f"stamp (max {max_age_ns / 1e9:.3f} s)")
        lo, hi = sorted((near.stamp_ns, t_ns))
        spanned = [r for s, r in bad if lo < s <= hi]
        return PoseAt(near.pose, near, spanned[-1] if spanned else "")


def _interpolate(a: OdomSample, b: OdomSample, t_ns: int) -> np.ndarray:
    if b.stamp_ns == a.stamp_ns:
        return a.pose
    w = (t_ns - a.stamp_ns) / (b.stamp_ns - a.stamp_ns)
    out = (a if w < 0.5 else b).pose.copy()
    ya, yb = math.atan2(a.pose[1, 0], a.pose[0, 0]), math.atan2(b.pose[1, 0], b.pose[0, 0])
    dyaw = (yb - ya + math.pi) % (2 * math.pi) - math.pi
    base_yaw = math.atan2(out[1, 0], out[0, 0])
    yaw = ya + w * dyaw
    c, s = math.cos(yaw - base_yaw), math.sin(yaw - base_yaw)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    out[:3, :3] = rz @ out[:3, :3]
    out[:3, 3] = (1 - w) * a.pose[:3, 3] + w * b.pose[:3, 3]
    return out


@dataclass
class TemporalDecision:
    ok: bool
    scene_start: bool = False
    category: str = ""
    reason: str = ""
    reset: bool = False


@dataclass
class TemporalState:
    """Order checks and scene starts across plans (the planner keeps the BEV memory itself)."""

    last_stamp_ns: int | None = None
    resets: int = 0

    def reset(self) -> None:
        self.last_stamp_ns = None

    def check_order(self, stamp_ns: int, jump_reset_ns: int) -> TemporalDecision:
        """Reject stamps at or before the last planned one; a large backward jump also resets."""
        if self.last_stamp_ns is None or stamp_ns > self.last_stamp_ns:
            return TemporalDecision(True)
        back = (self.last_stamp_ns - stamp_ns) / 1e9
        if stamp_ns == self.last_stamp_ns:
            return TemporalDecision(False, category="out_of_order", reason="front image stamp repeats the last planned one")
        if back >= jump_reset_ns / 1e9:
            self.reset()
            self.resets += 1
            return TemporalDecision(False, category="time_jump", reset=True,
                                    reason=f"front stamp jumped back {back:.3f} s (bag loop or clock reset); "
                                           f"temporal state reset")
        return TemporalDecision(False, category="out_of_order",
                                reason=f"front image stamp is {back:.3f} s older than the last planned one")

    def advance(self, stamp_ns: int, max_gap_ns: int) -> TemporalDecision:
        """Record a planned frame; a first frame or one after a gap starts a new scene (a gap
        is also a forward time jump: a bag skipped ahead, a simulator fast-forwarded; its
        reason says so)."""
        gap = None if self.last_stamp_ns is None else stamp_ns - self.last_stamp_ns
        self.last_stamp_ns = stamp_ns
        if gap is not None and gap > max_gap_ns:
            return TemporalDecision(True, scene_start=True, category="time_jump_forward",
                                    reason=f"front stamp jumped forward {gap / 1e9:.3f} s (more than max_scene_gap "
                                           f"{max_gap_ns / 1e9:g} s): temporal state reset, new scene")
        return TemporalDecision(True, scene_start=gap is None)
