"""PlannerCore as a plain module: one table row per decision the node makes on a frame.

The model is a real tiny_cpu VisionPlanner (freshly initialised: these tests are about the
policy, not the driving). Inputs are real sensor_msgs / nav_msgs / tf2_msgs objects, so the
core reads exactly what the node hands it. Each hostile-input rule of the node has a row
here; the node-process side is in tests/test_planner_fuzz.py.
"""
from __future__ import annotations

import dataclasses
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from dima_planner.data.ego_motion import ego_status_vector
from dima_planner.data.geometry import RIG_HW, load_rig, matrix_to_quat_xyzw, scale_intrinsics
from dima_planner.data.sample import CAMERAS
from dima_planner.inference import Planner
from dima_planner.model.config import preset
from dima_planner.model.planner import VisionPlanner
from dima_planner.runtime.images import ImageLimits, compressed_header, decode_compressed, decode_raw
from dima_planner.runtime.params import PARAMS, CoreParams
from dima_planner.runtime.planner_core import FrameInputs, PlannerCore, PlanOutput, Skip
from dima_planner.runtime.planner_stats import ERROR, OK, WARN, PlannerStats, StreamCounter
from dima_planner.runtime.sync import Cached

SEC, MS = 1_000_000_000, 1_000_000
W, H = 320, 180  # a 16:9 camera, twice the model's 160x96 width
T0 = 1_700_000_000 * SEC
RIG = load_rig()


def stamp(ns: int) -> Time:
    return Time(sec=ns // SEC, nanosec=ns % SEC)


@pytest.fixture(scope="module")
def planner():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Planner(VisionPlanner(preset("tiny_cpu")).eval())


class Spy:
    """The real planner, recording the inputs of each plan() call (and optionally replacing
    its trajectory: the one fake here, for a model output no real model produces on demand)."""

    def __init__(self, planner, trajectory=None):
        self.inner, self.calls, self.trajectory = planner, [], trajectory
        self.cfg, self.device = planner.cfg, planner.device

    def plan(self, images, intrinsics, cam2lidar, command, ego_status=None, **kw):
        self.calls.append(dict(images=images, intrinsics=intrinsics, command=command, ego_status=ego_status, **kw))
        res = self.inner.plan(images, intrinsics, cam2lidar, command, ego_status, **kw)
        if self.trajectory is not None:
            res.trajectory = np.asarray(self.trajectory, dtype=np.float32)
        return res

    def reset(self):
        self.inner.reset()


def params(**over):
    p = {n: s.default for n, s in PARAMS.items()}
    p.update(over)
    return CoreParams.from_values(p)


def image(cam: str, ns: int, w: int = W, h: int = H, encoding: str = "rgb8") -> Image:
    rgb = np.random.default_rng(abs(hash(cam)) % 1000).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image(header=Header(stamp=stamp(ns), frame_id=f"{cam.lower()}_optical"), height=h, width=w,
                 encoding=encoding, step=w * 3, data=rgb.tobytes())


def info(cam: str, ns: int, w: int = W, h: int = H, k: np.ndarray | None = None, d=(0.0,) * 5, p=None) -> CameraInfo:
    k = scale_intrinsics(RIG.intrinsics[cam], RIG_HW, (h, w)) if k is None else k
    pm = np.zeros((3, 4))
    pm[:, :3] = k if p is None else p
    return CameraInfo(header=Header(stamp=stamp(ns), frame_id=f"{cam.lower()}_optical"), width=w, height=h,
                      k=np.asarray(k, float).ravel().tolist(), p=pm.ravel().tolist(), d=list(d),
                      distortion_model="plumb_bob")


def odom(ns: int, x: float = 0.0, vx: float = 5.0) -> Odometry:
    m = Odometry(header=Header(stamp=stamp(ns), frame_id="map"), child_frame_id="base_link")
    m.pose.pose.position.x = float(x)
    m.pose.pose.orientation.w = 1.0
    m.twist.twist.linear.x = float(vx)
    return m


def transform(parent: str, child: str, m: np.ndarray) -> TransformStamped:
    t = TransformStamped(header=Header(frame_id=parent), child_frame_id=child)
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = map(float, m[:3, 3])
    x, y, z, w = matrix_to_quat_xyzw(m)
    t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = x, y, z, w
    return t


def rig_tf() -> TFMessage:
    frames = {"lidar_top": RIG.lidar2ego, **{f"{c.lower()}_optical": RIG.cam2ego[c] for c in CAMERAS}}
    return TFMessage(transforms=[transform("base_link", c, m) for c, m in frames.items()])


class Rig:
    """A core with CameraInfo, /tf_static and odometry in place; `frame()` builds one camera sweep."""

    def __init__(self, planner, trajectory=None, **over):
        self.spy = Spy(planner, trajectory)
        self.core = PlannerCore(params(**over), self.spy, RIG, PlannerStats())
        assert self.core.on_tf_static(rig_tf()) == []
        for c in CAMERAS:
            assert self.core.on_camera_info(c, info(c, T0)) is None
        self.t = T0

    def frame(self, ns: int, now: int | None = None, front: Image | None = None,
              sides: dict[str, Image | None] | None = None, with_odom: bool = True) -> FrameInputs:
        if with_odom:
            self.core.on_odometry(odom(ns - 40 * MS, x=5 * (ns - T0) / SEC - 0.2), ns)
            self.core.on_odometry(odom(ns + 40 * MS, x=5 * (ns - T0) / SEC + 0.2), ns)
        sides = sides or {}
        side_items = {}
        for i, c in enumerate(CAMERAS[1:], 1):
            msg = sides.get(c, image(c, ns + i * 10 * MS))
            side_items[c] = [] if msg is None else [Cached(ns + i * 10 * MS, msg, time.monotonic())]
        front = front or image(CAMERAS[0], ns)
        return FrameInputs(ns + 50 * MS if now is None else now, Cached(ns, front, time.monotonic()), side_items)

    def step(self, ns: int, **kw) -> PlanOutput | Skip:
        return self.core.step(self.frame(ns, **kw))


def expect_skip(out, category: str) -> Skip:
    assert isinstance(out, Skip), f"planned, expected a {category} skip"
    assert out.category == category, (out.category, out.reason)
    return out


def expect_plan(out) -> PlanOutput:
    assert isinstance(out, PlanOutput), f"skipped: {out.category}: {out.reason}"
    assert np.all(np.isfinite(out.base_poses)) and np.all(np.isfinite(out.world_poses))
    return out


# ---- the plain path, and the table of skip reasons ---------------------------------------------------------
def test_good_frame_is_planned_with_model_size_inputs(planner):
    r = Rig(planner)
    out = expect_plan(r.step(T0))
    call = r.spy.calls[-1]
    assert all(img.shape == (96, 160, 3) for img in call["images"])  # decoded straight to the model size
    k_front = scale_intrinsics(RIG.intrinsics["CAM_FRONT"], RIG_HW, (96, 160))
    np.testing.assert_allclose(call["intrinsics"][0], k_front, rtol=1e-9)
    assert out.command == 2 and out.degraded == [] and out.world_frame == "map"


def _bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header declaring w x h (the pixel data is a tiny compressed stream)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096, 9)) + chunk(b"IEND", b"")


def _bad(kind: str, cam: str, ns: int):
    if kind == "encoding":
        return image(cam, ns, encoding="yuv422")
    if kind == "truncated":
        m = image(cam, ns)
        m.data = bytes(m.data)[:-m.step]
        return m
    if kind == "1x1":
        return image(cam, ns, 1, 1)
    if kind == "2x2":
        return image(cam, ns, 2, 2)
    if kind == "bomb":
        return CompressedImage(header=Header(stamp=stamp(ns)), format="png", data=_bomb_png(16384, 16384))
    if kind == "garbage":
        return CompressedImage(header=Header(stamp=stamp(ns)), format="jpeg", data=b"\xff\xd8\xff" + b"\x00" * 50)
    raise ValueError(kind)


@pytest.mark.parametrize("kind, category", [
    ("encoding", "bad_encoding"), ("truncated", "bad_size"),
    ("1x1", "bad_size"), ("2x2", "bad_size"),  # too small to resize: refused
    ("bomb", "bad_size"),  # refused from its header size, before decoding
    ("garbage", "bad_compressed"),
])
def test_unusable_front_image_skips_with_its_category(planner, kind, category):
    r = Rig(planner)
    expect_skip(r.step(T0, front=_bad(kind, "CAM_FRONT", T0)), category)
    expect_plan(r.step(T0 + 100 * MS))  # and the next good frame plans


def test_clock_and_order_skips(planner):
    r = Rig(planner)
    expect_skip(r.step(T0, now=0), "no_clock")
    expect_skip(r.step(T0, now=T0 + 3 * SEC), "stale_input")
    expect_skip(r.step(T0, now=T0 - 3 * SEC), "future_stamp")
    expect_plan(r.step(T0))
    expect_skip(r.step(T0), "out_of_order")  # a repeat
    expect_skip(r.step(T0 - 100 * MS, now=T0), "out_of_order")
    jump = expect_skip(r.step(T0 - 5 * SEC, now=T0 - 5 * SEC), "time_jump")
    assert jump.reset
    expect_plan(r.step(T0 - 4 * SEC))  # the new timeline plans (fresh odometry there)


def test_rate_limit_is_not_a_rejection(planner):
    r = Rig(planner, min_plan_period=0.4)
    expect_plan(r.step(T0))
    skip = r.step(T0 + 100 * MS)
    assert isinstance(skip, Skip) and not skip.counted and r.core.rate_skips == 1
    expect_plan(r.step(T0 + 500 * MS))


def test_missing_inputs(planner):
    r = Rig(planner)
    expect_skip(r.step(T0, with_odom=False), "stale_odometry")
    core = PlannerCore(params(), Spy(planner), RIG, PlannerStats())
    rr = Rig.__new__(Rig)
    rr.core, rr.spy, rr.t = core, core.planner, T0
    expect_skip(rr.step(T0), "no_camera_info")
    for c in CAMERAS:
        core.on_camera_info(c, info(c, T0))
    expect_skip(rr.step(T0 + 100 * MS), "no_extrinsics")
    core.on_tf_static(rig_tf())
    expect_plan(rr.step(T0 + 200 * MS))


# ---- command, ego status, reuse and mask -----------------------------------------------------------------
def test_command_age_and_ego_status(planner):
    r = Rig(planner, max_command_age=0.5, use_ego_status=True)
    assert r.core.on_command(7, T0) is not None  # not a command
    r.core.on_command(1, T0)
    assert expect_plan(r.step(T0)).command == 1
    # Ego status by the dataset's rule (backward differences over the poses 0.5 s and 1 s
    # earlier): zero until the odometry reaches back that far, as at a log's start.
    assert not r.spy.calls[-1]["ego_status"].any()
    expect_plan(r.step(T0 + 500 * MS))
    assert expect_plan(r.step(T0 + 1 * SEC)).command == 2  # expired: default_command
    status = r.spy.calls[-1]["ego_status"]
    lidar_v = RIG.lidar2ego[:3, :3].T @ np.array([5.0, 0.0, 0.0])
    np.testing.assert_allclose(status[:2], lidar_v[:2], atol=1e-5)  # 5 m/s forward, in LiDAR axes
    np.testing.assert_allclose(status[2:5], 0.0, atol=1e-5)  # constant speed, straight
    assert status[5] == pytest.approx(np.hypot(*lidar_v[:2]), abs=1e-5)
    age = int(PARAMS["max_odom_age"].default * SEC)
    poses = [r.core.odom.pose_at(T0 + k * 500 * MS, age).matrix @ RIG.lidar2ego for k in (2, 1, 0)]
    want = ego_status_vector(poses[0], (T0 + SEC) * 1e-9, poses[1], (T0 + 500 * MS) * 1e-9, poses[2], T0 * 1e-9)
    # the one function the dataset and the simulator call (lidar2ego here from the rig, there from /tf_static)
    np.testing.assert_allclose(status, want, atol=1e-6)


@pytest.mark.parametrize("policy, key", [("mask", "masked.CAM_BACK"), ("reuse_last", "reused.CAM_BACK")])
def test_missing_side_camera_policy(planner, policy, key):
    r = Rig(planner, missing_camera_policy=policy)
    expect_plan(r.step(T0))
    out = expect_plan(r.step(T0 + 100 * MS, sides={"CAM_BACK": None}))
    assert [k for k, _ in out.degraded] == [key]
    back = r.spy.calls[-1]["images"][CAMERAS.index("CAM_BACK")]
    assert (back.max() == 0) == (policy == "mask")


# ---- a corrupt side camera is a missing one, not a fatal error ---------------------------------------------
@pytest.mark.parametrize("kind", ["encoding", "truncated", "2x2", "bomb"])
def test_corrupt_side_camera_is_masked_not_fatal(planner, kind):
    r = Rig(planner)
    out = expect_plan(r.step(T0, sides={"CAM_BACK_LEFT": _bad(kind, "CAM_BACK_LEFT", T0)}))
    assert [k for k, _ in out.degraded] == ["masked.CAM_BACK_LEFT"]
    assert r.core.stats.snapshot()["input_rejections"] == {"image.CAM_BACK_LEFT": 1}


def test_side_camera_with_bad_camera_info_is_masked(planner):
    r = Rig(planner, missing_camera_policy="reuse_last")
    expect_plan(r.step(T0))
    # CAM_BACK's CameraInfo is for another size: its image cannot be used this frame
    r.core.infos["CAM_BACK"].clear()
    r.core.on_camera_info("CAM_BACK", info("CAM_BACK", T0, w=640, h=360))
    out = expect_plan(r.step(T0 + 100 * MS))
    assert [k for k, _ in out.degraded] == ["reused.CAM_BACK"]


# ---- intrinsics matched to their image (by stamp; P for rectified images) ----------------------------------
def test_camera_info_is_matched_by_stamp_and_a_bad_one_spoils_nothing(planner):
    r = Rig(planner)
    k1 = scale_intrinsics(RIG.intrinsics["CAM_FRONT"], RIG_HW, (H, W))
    k2 = k1.copy()
    k2[0, 0] *= 1.2
    r.core.on_camera_info("CAM_FRONT", info("CAM_FRONT", T0 + 100 * MS, k=k1))
    r.core.on_camera_info("CAM_FRONT", info("CAM_FRONT", T0 + 200 * MS, k=k2))  # the next frame's
    nan = info("CAM_FRONT", T0 + 300 * MS)
    nan.k = [float("nan")] * 9
    assert r.core.on_camera_info("CAM_FRONT", nan) is not None  # rejected on arrival ...
    expect_plan(r.step(T0 + 100 * MS))  # ... and the frame at T0+100 gets its own K, not the latest
    np.testing.assert_allclose(r.spy.calls[-1]["intrinsics"][0], np.diag([0.5, 96 / 180, 1]) @ k1, rtol=1e-9)
    expect_plan(r.step(T0 + 200 * MS))
    np.testing.assert_allclose(r.spy.calls[-1]["intrinsics"][0], np.diag([0.5, 96 / 180, 1]) @ k2, rtol=1e-9)


def test_rectified_images_use_p_and_distortion_is_warned_once(planner):
    k = scale_intrinsics(RIG.intrinsics["CAM_FRONT"], RIG_HW, (H, W))
    p = k.copy()
    p[0, 0] *= 0.9  # rectification changes the focal length
    r = Rig(planner, **{"cameras.CAM_FRONT.rectified": True})
    r.core.on_camera_info("CAM_FRONT", info("CAM_FRONT", T0, k=k, p=p, d=(-0.3, 0.1, 0, 0, 0)))
    expect_plan(r.step(T0))
    np.testing.assert_allclose(r.spy.calls[-1]["intrinsics"][0], np.diag([0.5, 96 / 180, 1]) @ p, rtol=1e-9)
    assert not r.core.stats.snapshot()["warnings"]  # rectified: D belongs to the raw image

    raw = Rig(planner)
    for _ in range(3):
        raw.core.on_camera_info("CAM_FRONT", info("CAM_FRONT", T0, d=(-0.3, 0.1, 0, 0, 0)))
    assert list(raw.core.stats.snapshot()["warnings"]) == ["distortion.CAM_FRONT"]


# ---- /tf_static cycles and absurd geometry (extrinsic and plan-distance limits) ----------------------------
def test_tf_static_cycles_are_rejected_and_lookup_always_ends(planner):
    r = Rig(planner)
    eye = np.eye(4)
    loops = TFMessage(transforms=[transform("base_link", "base_link", eye),
                                  transform("a", "b", eye), transform("b", "a", eye),
                                  transform("cam_front_optical", "base_link", eye)])
    reasons = r.core.on_tf_static(loops)
    assert len(reasons) == 3 and all("cycle" in x for x in reasons)  # a -> b alone is fine
    t = time.monotonic()
    expect_plan(r.step(T0))
    assert time.monotonic() - t < 10.0
    r.core.on_tf_static(rig_tf())  # republishing the correct tree keeps working
    expect_plan(r.step(T0 + 100 * MS))


def test_implausible_extrinsics_and_odometry_are_rejected(planner):
    r = Rig(planner)
    far = np.eye(4)
    far[0, 3] = 1e300
    assert r.core.on_tf_static(TFMessage(transforms=[transform("base_link", "cam_front_optical", far)]))
    assert r.core.on_odometry(odom(T0, x=1e300), T0) is not None
    assert r.core.on_odometry(odom(T0, vx=1e5), T0) is not None
    out = expect_plan(r.step(T0))
    assert np.abs(out.world_poses[:, :3, 3]).max() < 1e3 and np.abs(out.base_poses[:, :3, 3]).max() < 1e3


def test_absurd_model_output_is_not_published(planner):
    r = Rig(planner, trajectory=np.full((6, 2), 1e6))
    expect_skip(r.step(T0), "bad_model_output")
    r = Rig(planner, trajectory=np.full((6, 2), np.nan))
    expect_skip(r.step(T0), "bad_model_output")


# ---- odometry: late samples kept, bridged poses flagged ----------------------------------------------------
def test_future_odometry_does_not_poison_the_history(planner):
    r = Rig(planner)
    assert r.core.on_odometry(odom(T0 + 900 * MS), T0) is not None  # 0.9 s ahead of the clock: rejected
    expect_plan(r.step(T0))  # samples around T0 arriving after it are still used


def test_plan_across_a_rejected_odometry_message_says_bridged(planner):
    r = Rig(planner)
    f = r.frame(T0)
    bad = odom(T0)
    bad.pose.pose.position.x = float("nan")
    r.core.on_odometry(bad, T0)
    out = expect_plan(r.core.step(f))
    assert [k for k, _ in out.degraded] == ["bridged_odometry"]


# ---- watchdog and frame loss -------------------------------------------------------------------------------
def test_watchdog_warns_then_errors_while_anchors_arrive_unplanned():
    s = PlannerStats()
    t0 = s.since_wall
    assert s.watchdog(1.0, 3.0, now=t0 + 5)[0] == OK  # no front images at all: the inputs status says so
    s.anchor()
    s.last_anchor_wall = t0 + 0.4
    assert s.watchdog(1.0, 3.0, now=t0 + 0.5)[0] == OK
    s.last_anchor_wall = t0 + 1.4
    level, silent, why = s.watchdog(1.0, 3.0, now=t0 + 1.5)
    assert level == WARN and silent == pytest.approx(1.5) and "worker" in why
    s.reject("no_extrinsics", "no chain")
    s.last_anchor_wall = t0 + 3.4
    level, _, why = s.watchdog(1.0, 3.0, now=t0 + 3.5)
    assert level == ERROR and "no_extrinsics" in why
    s.planned(0.04, 0.05, 0.005)
    assert s.watchdog(1.0, 3.0, now=s.last_plan_wall + 0.1)[0] == OK


def test_stream_counter_counts_frames_lost_before_the_node():
    c = StreamCounter()
    period = 83_333_333
    stamps = [T0 + i * period for i in range(100) if i % 4 != 3]  # every 4th frame never arrives
    for s in stamps:
        c.add(s)
    # 25 missing: the first gap comes before the period is known, the last after the last stamp
    assert c.received == len(stamps) == 75 and c.lost == 23
    assert c.recent_loss() == pytest.approx(23 / 98)


# ---- images ----------------------------------------------------------------------------------------------------
def test_compressed_header_and_reduced_decode():
    rgb = np.random.default_rng(0).integers(0, 255, (900, 1600, 3), dtype=np.uint8)
    rgb = cv2.GaussianBlur(rgb, (31, 31), 10)
    ok, jpg = cv2.imencode(".jpg", rgb)
    assert compressed_header(jpg.tobytes()) == ("jpeg", 900, 1600)  # (H, W), the model's image_size order
    msg = CompressedImage(format="jpeg", data=jpg.tobytes())
    d = decode_compressed(msg, ImageLimits(), (96, 160))
    assert d.rgb.shape == (96, 160, 3) and d.source_hw == (900, 1600)
    full = cv2.resize(cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), (160, 96),
                      interpolation=cv2.INTER_AREA)
    assert np.abs(d.rgb.astype(int) - full).mean() < 3.0  # DCT-scaled decoding: the same picture
    assert d.k_scale == pytest.approx((160 / 1600, 96 / 900), rel=1e-12)  # data/inputs.py's convention
    raw = decode_raw(image("CAM_FRONT", T0), ImageLimits(), (96, 160))
    assert raw.rgb.shape == (96, 160, 3) and raw.k_scale == (0.5, 96 / 180)



def test_a_pad_model_gets_on_the_node_path_what_training_feeds_it(planner):
    """A model trained with image_fit "pad" (the vad_* configs) is fed scaled, zero-padded
    images on the node path too, with the intrinsics of the padded image: for raw and JPEG
    messages, exactly the arrays and the tensor of the training input function (prepare_frame,
    which the dataset calls with the model's image_fit)."""
    from dima_planner.data.inputs import normalise, prepare_frame

    cfg = dataclasses.replace(planner.cfg, image_fit="pad")
    pad = Planner(VisionPlanner(cfg).eval())
    h, w = cfg.image_size  # a 320x180 camera into 160x96: scaled to 160x90, 6 zero rows below
    for compressed in (False, True):
        r = Rig(pad)
        msgs = {c: image(c, T0 + i * 10 * MS) for i, c in enumerate(CAMERAS)}
        if compressed:
            msgs = {c: CompressedImage(header=m.header, format="jpeg",
                                       data=cv2.imencode(".jpg", np.frombuffer(m.data, np.uint8).reshape(H, W, 3)[..., ::-1])[1].tobytes())
                    for c, m in msgs.items()}
        out = expect_plan(r.step(T0, front=msgs[CAMERAS[0]], sides={c: msgs[c] for c in CAMERAS[1:]}))
        call = r.spy.calls[-1]
        sources = [bytes(m.data) if compressed else np.frombuffer(m.data, np.uint8).reshape(H, W, 3) for m in msgs.values()]
        ks = np.stack([np.asarray(info(c, T0).k, float).reshape(3, 3) for c in CAMERAS])
        cam2lidar = np.linalg.inv(RIG.lidar2ego)[None] @ np.stack([RIG.cam2ego[c] for c in CAMERAS])
        want_img, want_k, want_l2i = prepare_frame(sources, ks, cam2lidar, (h, w), fit="pad")
        got = np.stack(call["images"])
        assert got.shape == (6, h, w, 3) and not got[:, 90:].any() and got[:, :90].any()  # padded, not stretched
        np.testing.assert_array_equal(got, want_img)
        np.testing.assert_allclose(call["intrinsics"], want_k, rtol=1e-12)
        x, l2i = pad.preprocess(call["images"], call["intrinsics"], cam2lidar)
        torch.testing.assert_close(x, normalise(want_img[None], channels_last=True), rtol=0, atol=0)
        torch.testing.assert_close(l2i, torch.from_numpy(want_l2i).float()[None], rtol=1e-5, atol=1e-4)
        assert np.all(np.isfinite(out.trajectory))


# ---- import boundaries -----------------------------------------------------------------------------------------
def test_core_and_sync_import_no_ros_and_the_node_no_torch():
    """The core and sync.py are ROS-free; the node module loads torch only at configure, so a
    process answers its lifecycle services at once."""
    import subprocess
    import sys

    code = ("import sys; import dima_planner.runtime.planner_core, dima_planner.runtime.sync; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs', 'nav_msgs', "
            "'geometry_msgs', 'tf2_msgs', 'std_msgs', 'builtin_interfaces', 'diagnostic_msgs', 'dima_msgs')]; "
            "assert not bad, bad; import dima_planner.ros.planner_node; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
