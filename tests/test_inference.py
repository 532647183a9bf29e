"""Planner temporal memory: the node's 12 Hz frames get the BEV of ~0.5 s ago, as in training."""
from __future__ import annotations

import numpy as np
import torch

from dima_planner.inference import TemporalMemory

MS = 1_000_000


def _pose(x: float) -> np.ndarray:
    m = np.eye(4)
    m[1, 3] = x  # LiDAR y is forward
    return m


def test_picks_the_frame_closest_to_half_a_second_ago_with_its_ego_motion():
    mem = TemporalMemory()
    for i in range(13):  # 12 Hz: frames at 0, 83, 167, ... ms, ego moving 1 m per frame
        t = i * 1000 // 12 * MS
        if i < 12:
            mem.add(t, _pose(float(i)), torch.full((1, 4, 2), float(i)))
    now = 12 * 1000 // 12 * MS  # 1000 ms
    bev, prev2cur = mem.select(now, _pose(12.0))
    assert float(bev[0, 0, 0]) == 6.0  # 500 ms ago, not the previous frame (11)
    np.testing.assert_allclose(prev2cur[:3, 3], [0.0, -6.0, 0.0])  # 6 m behind the current LiDAR


def test_nothing_usable_at_a_start_or_after_a_gap():
    mem = TemporalMemory(tolerance_s=0.25)
    assert mem.select(0, np.eye(4)) is None
    mem.add(0, np.eye(4), torch.zeros(1))
    assert mem.select(100 * MS, np.eye(4)) is None  # 0.1 s old: too recent to stand in for 0.5 s
    assert mem.select(500 * MS, np.eye(4)) is not None
    assert mem.select(900 * MS, np.eye(4)) is None  # 0.9 s old: too old
    mem.add(2000 * MS, np.eye(4), torch.zeros(1))  # older entries beyond the horizon are dropped
    assert mem.select(2500 * MS, np.eye(4)) is not None and len(mem._items) == 1
    mem.clear()
    assert mem.select(2500 * MS, np.eye(4)) is None
