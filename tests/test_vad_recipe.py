"""VAD's recipe pieces: constraints on predicted agents / map, per-step offset L1, augmentation,
frozen ResNet stem and BatchNorm."""
from __future__ import annotations

import pytest
import torch

from dima_planner.model.augment import AugmentConfig, augment_inputs, grid_mask
from dima_planner.model.losses import PlannerLossWeights, collision_loss, predicted_scene


def _pred(b=1, na=3, nm=2):
    plan = torch.stack([torch.zeros(6), torch.arange(1, 7) * 2.0], -1)[None].repeat(b, 1, 1)
    logits = torch.full((b, na, 11), -5.0)
    logits[:, 0, 0] = 5.0  # query 0: a confident car
    motion = torch.zeros(b, na, 6, 6, 2)
    motion[:, 0, 2] = torch.stack([torch.full((6,), 0.5), torch.arange(1, 7) * 2.0 + 1.0], -1)  # in the ego's way
    mlog = torch.zeros(b, na, 6)
    mlog[:, 0, 2] = 5.0  # its most likely mode
    return {"plan": plan, "agent_logits": logits, "motion_traj": motion, "motion_logits": mlog,
            "map_logits": torch.full((b, nm, 4), -5.0), "map_points": torch.zeros(b, nm, 20, 2)}


def test_constraints_use_confident_predicted_agents_with_their_likely_mode():
    pred = _pred()
    scene = predicted_scene(pred)
    assert scene["agent_mask"].tolist() == [[True, False, False]] and not scene["map_mask"].any()
    emask = torch.ones(1, 6)
    loss = collision_loss(pred["plan"], scene, emask)
    # the nearest agent is 0.5 m lateral, 1 m ahead at every step: relu(1.5-0.5) + relu(3-1)
    assert float(loss) == pytest.approx(3.0)
    pred["agent_logits"][:, 0, 0] = -5.0  # not confident any more
    assert float(collision_loss(pred["plan"], predicted_scene(pred), emask)) == 0.0


def test_plan_l1_on_offsets_differs_from_positions():
    from dima_planner.model.losses import _offsets

    gt = torch.stack([torch.zeros(6), torch.arange(1, 7) * 2.0], -1)[None]
    plan = gt.clone()
    plan[:, 0, 1] += 1.0  # one early step off: every later position is right
    assert _offsets(plan)[0, :2, 1].tolist() == [3.0, 1.0]
    pos = (plan - gt).abs().sum()
    off = (_offsets(plan) - _offsets(gt)).abs().sum()
    assert float(pos) == 1.0 and float(off) == 2.0
    with pytest.raises(ValueError):
        PlannerLossWeights(plan_target="cumsum")


def test_augmentation_is_deterministic_per_generator_and_bounded():
    x = torch.rand(2, 6, 3, 32, 48)
    cfg = AugmentConfig(photometric=True, grid_mask=True, grid_mask_prob=1.0)
    a = augment_inputs({"images": x, "history": [{"images": x}]}, cfg, torch.Generator().manual_seed(3))
    b = augment_inputs({"images": x, "history": [{"images": x}]}, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["history"][0]["images"], b["history"][0]["images"])
    assert float(a["images"].min()) >= 0 and float(a["images"].max()) <= 1 and not torch.equal(a["images"], x)
    zeroed = (grid_mask(torch.ones(64, 1, 3, 40, 40), cfg, torch.Generator().manual_seed(0)) == 0).float().mean()
    assert 0.1 < float(zeroed) < 0.4  # mode 1 with ratio 0.5 zeroes about a quarter


def test_frozen_resnet_stem_and_batchnorm_and_weights_error(tmp_path):
    import dataclasses

    from dima_planner.model import VisionPlanner, preset
    from dima_planner.train.trainer import check_backbone_weights

    cfg = dataclasses.replace(preset("vad_tiny"), backbone="resnet18", image_size=(64, 112), bev_h=10, bev_w=10,
                              embed_dim=32, num_heads=4, ffn_dim=64, num_agent_queries=4, num_map_queries=4,
                              pretrained_path=None)
    model = VisionPlanner(cfg).train()
    trunk = model.image_encoder.trunk
    assert not any(p.requires_grad for p in trunk.conv1.parameters())
    assert not any(p.requires_grad for p in trunk.layer1.parameters())
    assert any(p.requires_grad for p in trunk.layer2.parameters())
    assert not trunk.bn1.training and not trunk.layer3[0].bn1.training  # BatchNorm holds its statistics
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        check_backbone_weights(cfg)
    with pytest.raises(FileNotFoundError, match="resnet50-0676ba61"):
        check_backbone_weights(preset("vad_tiny"))
