"""One model-input path: the same camera frame becomes the same tensor through the dataset
(training), `dima eval` (Planner.predict on dataset batches) and the node (Planner.plan on
the frame's JPEG bytes and raw intrinsics)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset, collate
from dima_planner.inference import Planner
from dima_planner.model import VisionPlanner, preset
from dima_planner.data.geometry import scale_intrinsics
from dima_planner.data.inputs import _reduction, decode_image, lidar2img
from dima_planner.train import TemporalPairs, collate_pairs


def test_jpeg_decode_uses_the_largest_dct_reduction_that_still_covers_the_target():
    assert _reduction(900, 1600, (96, 160)) == 8  # 113 x 200 >= 96 x 160
    assert _reduction(900, 1600, (384, 640)) == 2
    assert _reduction(225, 400, (96, 160)) == 2
    assert _reduction(225, 400, (225, 400)) == 1
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (225, 400, 3), dtype=np.uint8), (9, 9), 3)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_image(jpg.tobytes(), (96, 160))
    assert out.shape == (96, 160, 3) and out.dtype == np.uint8
    full = cv2.resize(cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), (160, 96),
                      interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - full.astype(int)).mean() < 3  # DCT scaling ~ a full decode + area resize
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image(b"\xff\xd8garbage", (96, 160))


def test_intrinsics_scale_with_width_on_x_and_height_on_y():
    k = np.array([[1000.0, 0, 800], [0, 1000, 450], [0, 0, 1]])
    s = scale_intrinsics(k, (900, 1600), (90, 320))
    np.testing.assert_allclose(s, [[200, 0, 160], [0, 100, 45], [0, 0, 1]])


@pytest.fixture(scope="module")
def frame(training_world):
    cfg = preset("tiny_cpu")
    ds = NuScenesPlanningDataset(DatasetConfig(dataroot=str(training_world), version="v1.0-dima", split="val",
                                               image_size=list(cfg.image_size)))
    torch.manual_seed(0)
    return ds, VisionPlanner(cfg).eval()


class Capture:
    """Wraps VisionPlanner.encode to record what each path feeds the model."""

    def __init__(self, model):
        self.calls, self.model, self._encode = [], model, model.encode

    def __enter__(self):
        def encode(images, lidar2img, *args, **kw):
            can_bus = kw.get("can_bus", args[4] if len(args) > 4 else None)
            self.calls.append((images.detach().clone(), lidar2img.detach().clone(),
                               None if can_bus is None else can_bus.detach().clone()))
            return self._encode(images, lidar2img, *args, **kw)
        self.model.encode = encode
        return self

    def __exit__(self, *exc):
        del self.model.encode


def test_dataset_eval_and_node_paths_feed_identical_tensors(frame):
    ds, model = frame
    i = next(j for j, r in enumerate(ds.records) if r["prev_token"])  # a frame with history
    rec = ds.records[i]
    # training: the dataset sample, collated with its temporal queue, through the model inputs
    train_inp = collate_pairs([TemporalPairs(ds, False, queue_length=3)[i]], use_ego_status=False,
                              use_can_bus=True)["inputs"]
    planner = Planner(model)
    # dima eval: Planner.predict on the dataset's scene up to this frame (the temporal rule)
    start = next(j for j in range(i, -1, -1) if not ds.records[j]["prev_token"])
    with Capture(model) as eval_cap:
        planner.predict(collate([ds[j] for j in range(start, i + 1)]))
    # node: the JPEG bytes as a CompressedImage carries them, the tables' raw intrinsics,
    # odometry poses of the frames seen so far
    planner.reset()
    with Capture(model) as node_cap:
        for j in range(start, i + 1):
            r = ds.records[j]
            jpegs = [(ds.root / p).read_bytes() for p in r["cam_paths"]]
            pose = r["ego2global"] @ r["lidar2ego"]
            planner.plan(jpegs, r["cam_k"], r["cam2lidar"], int(r["command"]), stamp_ns=r["timestamp"] * 1000,
                         lidar2world=pose)
    imgs_e, l2i_e, cb_e = eval_cap.calls[-1]
    imgs_n, l2i_n, cb_n = node_cap.calls[-1]
    assert torch.equal(train_inp["images"], imgs_e) and torch.equal(imgs_e, imgs_n)
    torch.testing.assert_close(train_inp["lidar2img"], l2i_e, rtol=0, atol=0)
    torch.testing.assert_close(l2i_e, l2i_n, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(train_inp["can_bus"], cb_e, rtol=0, atol=0)
    torch.testing.assert_close(cb_e, cb_n, rtol=1e-5, atol=1e-4)  # dataset vs odometry poses: same rule
    assert cb_n[0, 9] == 1 and cb_n[0, 5] > 0  # a moving frame with history
    # the geometry: lidar2img is K (scaled with the image) times the camera pose
    h, w = model.cfg.image_size
    hw0 = [(int(hh), int(ww)) for ww, hh in rec["cam_size"]]
    ks = np.stack([scale_intrinsics(k, s, (h, w)) for k, s in zip(rec["cam_k"], hw0)])
    np.testing.assert_allclose(l2i_n[0].numpy(), lidar2img(ks, rec["cam2lidar"]), rtol=1e-5, atol=1e-4)


def test_inference_does_not_import_training():
    import subprocess
    import sys

    code = ("import sys, dima_planner.inference; bad = [m for m in sys.modules if m.startswith('dima_planner.train')]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_scale_and_pad_keeps_the_aspect_ratio_and_the_geometry():
    from dima_planner.data.inputs import prepare_frame
    from dima_planner.data.geometry import fitted_size

    assert fitted_size(900, 1600, (384, 640), "pad") == (360, 640)  # VAD-Tiny
    assert fitted_size(900, 1600, (736, 1280), "pad") == (720, 1280)  # VAD-Base
    rng = np.random.default_rng(1)
    img = rng.integers(1, 255, (90, 160, 3), dtype=np.uint8)
    k = np.array([[[100.0, 0, 80], [0, 100, 45], [0, 0, 1]]])
    out, ks, _ = prepare_frame([img], k, np.eye(4)[None], (48, 64), fit="pad")
    assert out.shape == (1, 48, 64, 3) and out[0, 36:].max() == 0 and out[0, :36].min() > 0
    np.testing.assert_allclose(ks[0], [[40, 0, 32], [0, 40, 18], [0, 0, 1]])  # one factor, 0.4, both axes
