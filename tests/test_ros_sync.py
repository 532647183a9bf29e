"""Synchronisation, odometry interpolation, temporal state, diagnostics and parameter
validation of the planner node, as plain modules."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time

from dima_planner.ros.diagnostics import PlannerStats, build_diagnostics
from dima_planner.runtime.params import PARAMS, validate
from dima_planner.runtime.sync import (SEC, AnchorSlot, Cached, InputCache, OdomHistory, OdomSample, TemporalState,
                                   select_cameras, side_cameras_ready)

MS = 1_000_000


def c(stamp_ms: int, tag: str = "") -> Cached:
    return Cached(stamp_ms * MS, tag or f"img@{stamp_ms}", 0.0)


def test_select_cameras_fresh_mask_and_reuse():
    items = {"A": [c(990), c(1040)], "B": [c(800)], "C": []}
    last = {"B": c(950, "old-B"), "C": c(100, "ancient-C")}
    picks = select_cameras(1000 * MS, items, 100 * MS, "mask", last, 500 * MS)
    assert picks["A"].status == "fresh" and picks["A"].item.msg == "img@990"  # nearest
    assert picks["B"].status == "masked" and "-200 ms" in picks["B"].note
    assert picks["C"].status == "masked" and "no image" in picks["C"].note
    picks = select_cameras(1000 * MS, items, 100 * MS, "reuse_last", last, 500 * MS)
    assert picks["B"].status == "reused" and picks["B"].item.msg == "old-B"
    assert picks["C"].status == "masked"  # too old to reuse
    with pytest.raises(ValueError):
        select_cameras(0, items, 0, "guess", {}, 0)


def test_side_cameras_ready():
    assert not side_cameras_ready({"A": [c(1000)], "B": []}, 1000 * MS, 100 * MS)
    assert not side_cameras_ready({"A": [c(850)]}, 1000 * MS, 100 * MS)  # may still come
    assert side_cameras_ready({"A": [c(850), c(1200)]}, 1000 * MS, 100 * MS)  # window passed
    assert side_cameras_ready({"A": [c(1030)], "B": [c(960)]}, 1000 * MS, 100 * MS)


def test_anchor_slot_drops_while_busy():
    slot = AnchorSlot()
    assert slot.offer(c(1))
    assert not slot.offer(c(2))  # the worker has not taken 1: it is dropped for 2
    assert slot.dropped_busy == 1
    assert slot.take(0.01).stamp_ns == 2 * MS
    assert slot.take(0.01) is None


def test_cache_wait_and_rate():
    cache = InputCache(depth=2)
    threading.Timer(0.05, lambda: cache.put("A", 5, "x")).start()
    t0 = time.monotonic()
    assert cache.wait_for(lambda: bool(cache.items("A")), 2.0)
    assert time.monotonic() - t0 < 1.0
    assert not cache.wait_for(lambda: False, 0.05)
    for i in range(3):
        cache.put("A", 10 + i, i)
    assert [x.msg for x in cache.items("A")] == [1, 2]  # depth 2
    assert cache.rate("A") > 0


def pose(x: float, yaw: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[0, 3] = x
    return m


def sample(stamp: int, x: float, yaw: float, tag: str = "") -> OdomSample:
    return OdomSample(stamp, pose(x, yaw), np.zeros(3), tag)


def test_odometry_interpolation_and_staleness():
    h = OdomHistory()
    h.put(sample(1 * SEC, 0.0, 3.1, "a"))
    h.put(sample(1 * SEC + 100 * MS, 1.0, -3.1, "b"))  # yaw wraps through pi
    at = h.pose_at(1 * SEC + 25 * MS, 250 * MS)
    assert at.matrix[0, 3] == pytest.approx(0.25) and at.sample.frame_id == "a" and not at.bridged
    yaw = math.atan2(at.matrix[1, 0], at.matrix[0, 0])
    assert abs(abs(yaw) - (3.1 + 0.25 * (2 * math.pi - 6.2))) < 1e-6
    with pytest.raises(Exception, match="from the front camera"):
        h.pose_at(2 * SEC, 250 * MS)
    h.put(sample(1 * SEC + 50 * MS, 0.5, 0.0, "late"))  # a late message is inserted in order
    assert h.latest().frame_id == "b"
    assert h.pose_at(1 * SEC + 50 * MS, 250 * MS).sample.frame_id == "late"
    h.put(sample(0, 5.0, 0.0, "loop"))  # a jump back > 1 s: new timeline
    assert h.latest().frame_id == "loop"
    with pytest.raises(Exception, match="no odometry"):
        OdomHistory().pose_at(0, SEC)


def test_odometry_bridged_across_a_rejected_message_is_flagged():
    h = OdomHistory()
    h.put(sample(1 * SEC, 0.0, 0.0))
    h.mark_bad(1 * SEC + 50 * MS, "non-finite position")
    h.put(sample(1 * SEC + 100 * MS, 1.0, 0.0))
    assert h.pose_at(1 * SEC + 60 * MS, 250 * MS).bridged == "non-finite position"
    assert h.pose_at(1 * SEC + 100 * MS, 250 * MS).bridged == ""  # an exact sample bridges nothing
    assert h.bad_near(1 * SEC + 40 * MS, 20 * MS) == "non-finite position"


def test_temporal_state_order_jump_and_scene_start():
    t = TemporalState()
    d = t.advance(10 * SEC, 2 * SEC)
    assert d.scene_start
    d = t.advance(10 * SEC + 500 * MS, 2 * SEC)
    assert not d.scene_start
    assert t.check_order(10 * SEC + 400 * MS, SEC).category == "out_of_order"
    assert t.check_order(10 * SEC + 500 * MS, SEC).category == "out_of_order"  # repeat
    assert t.check_order(11 * SEC, SEC).ok
    jump = t.check_order(1 * SEC, SEC)
    assert jump.category == "time_jump" and jump.reset and t.last_stamp_ns is None and t.resets == 1
    assert t.advance(1 * SEC, 2 * SEC).scene_start
    assert t.advance(5 * SEC, 2 * SEC).scene_start  # gap > max_scene_gap


def test_diagnostics_report_reasons_and_latency():
    stats = PlannerStats()
    stats.planned(0.05, 0.07, 0.004)
    stats.reject("bad_encoding", "CAM_FRONT: unsupported image encoding 'yuv422'")
    arr = build_diagnostics(Time(), "dima_planner", state="active", model_loaded=True, model_id="m:1", device="cpu",
                            model_error="", snapshot=stats.snapshot(), input_rates={"CAM_FRONT": 12.0},
                            input_ages={"CAM_FRONT": 5.0}, front_name="CAM_FRONT", front_timeout=1.0, drops_busy=3)
    by = {s.name.split(": ")[1]: s for s in arr.status}
    values = {kv.key: kv.value for kv in by["planning"].values}
    assert values["rejected.bad_encoding"] == "1" and values["dropped.busy"] == "3"
    assert float(values["model_latency_p50_ms"]) == pytest.approx(50.0)
    assert values["last_rejection"].startswith("bad_encoding")
    assert by["inputs"].level == b"\x02"  # no front image for 5 s
    failed = build_diagnostics(Time(), "n", state="unconfigured", model_loaded=False, model_id="", device="cuda:7",
                               model_error="cannot load", snapshot=PlannerStats().snapshot(), input_rates={},
                               input_ages={}, front_name="CAM_FRONT", front_timeout=1.0, drops_busy=0)
    assert failed.status[0].level == b"\x02" and failed.status[0].message == "cannot load"


def test_parameter_validation():
    assert validate("sync_tolerance", 0.1) is None
    assert "outside" in validate("sync_tolerance", 2.0)
    assert "must be a float" in validate("sync_tolerance", 1)
    assert "not one of" in validate("missing_camera_policy", "guess")
    assert "does not match" in validate("device", "gpu0")
    assert validate("device", "cuda:1") is None
    assert "unknown" in validate("no_such_param", 1)
    assert validate("use_sim_time", True) is None
    assert validate("lidar_frame", "") is None
    assert all(spec.check(spec.default) is None for spec in PARAMS.values())


def test_relative_checkpoint_resolves_against_cwd_then_package_roots(tmp_path, monkeypatch):
    from dima_planner import resources
    from dima_planner.runtime.params import resolve_checkpoint

    cwd, share = tmp_path / "cwd", tmp_path / "share"
    (share / "checkpoints" / "dima_tiny").mkdir(parents=True)
    cwd.mkdir()
    monkeypatch.setattr(resources, "resource_roots", lambda: [share])
    # only installed: the share directory's copy (ros2 launch from any directory)
    got, tried = resolve_checkpoint("checkpoints/dima_tiny", cwd)
    assert got == share / "checkpoints" / "dima_tiny"
    assert tried == [cwd / "checkpoints" / "dima_tiny", share / "checkpoints" / "dima_tiny"]
    # a checkout's own checkpoint wins over the installed one
    (cwd / "checkpoints" / "dima_tiny").mkdir(parents=True)
    assert resolve_checkpoint("checkpoints/dima_tiny", cwd)[0] == cwd / "checkpoints" / "dima_tiny"
    # neither: the working-directory candidate (the loader's error names it), both listed
    got, tried = resolve_checkpoint("checkpoints/other", cwd)
    assert got == cwd / "checkpoints" / "other" and len(tried) == 2
    # no package root at all: the working directory only; absolute paths as given
    monkeypatch.setattr(resources, "resource_roots", lambda: [])
    assert resolve_checkpoint("checkpoints/other", cwd)[1] == [cwd / "checkpoints" / "other"]
    assert resolve_checkpoint(str(tmp_path / "abs"), cwd) == (tmp_path / "abs", [tmp_path / "abs"])


def test_package_roots_without_an_ament_environment(monkeypatch):
    """A plain venv has no AMENT_PREFIX_PATH: ament_index_python raises OSError, which means
    "not installed there", and the source checkout still provides params and checkpoints."""
    from dima_planner import resources

    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert resources.ament_share_dir() is None
    assert resources.find("checkpoints/dima_tiny_stage2/meta.json") is not None
    assert resources.find("params/fastdds_shm.xml") is not None
