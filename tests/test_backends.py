"""Inference backends: the LLM-free planner exported to ONNX and run by ONNX Runtime plans
what torch plans, on frames of the generated world with the shipped checkpoint; stale or
missing graphs are refused with one sentence. (TensorRT needs a CUDA GPU: tools/bench_gpu.sh.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "dima_tiny"


def test_rigid_inverse_equals_the_general_inverse():
    from scipy.spatial.transform import Rotation

    from dima_planner.model.bev_encoder import rigid_inverse

    rng = np.random.default_rng(0)
    m = np.tile(np.eye(4), (8, 1, 1))
    m[:, :3, :3] = Rotation.random(8, random_state=1).as_matrix()
    m[:, :3, 3] = rng.normal(0, 20, (8, 3))
    t = torch.from_numpy(m).float()
    assert torch.allclose(rigid_inverse(t), torch.linalg.inv(t), atol=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, training_world):
    """The shipped checkpoint through `dima export --onnx`, and the session's small generated world."""
    from dima_planner.export import main as export_main

    root = tmp_path_factory.mktemp("backends")
    assert export_main(["--checkpoint", str(SHIPPED), "--out", str(root / "llmfree"), "--onnx"]) == 0
    return root / "llmfree", training_world


def _plans(planner, world: Path, cache: Path) -> np.ndarray:
    from torch.utils.data import DataLoader

    from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset, collate

    ds = NuScenesPlanningDataset(DatasetConfig(dataroot=str(world), version="v1.0-dima", split="all",
                                               image_size=list(planner.cfg.image_size), cache_dir=str(cache)))
    return np.concatenate([planner.predict(b) for b in DataLoader(ds, batch_size=8, collate_fn=collate)])


def test_onnxruntime_plans_what_torch_plans_on_real_frames(exported, tmp_path):
    """Every keyframe of the world in order (temporal BEV chained, ego motion on): the
    commanded trajectories of both backends agree within backends.ORT_TOLERANCE metres."""
    from dima_planner.backends import ORT_TOLERANCE
    from dima_planner.inference import load_planner

    ckpt, world = exported
    torch_plans = _plans(load_planner(ckpt, num_threads=1), world, tmp_path)
    ort = load_planner(ckpt, num_threads=1, backend="onnxruntime")
    assert type(ort.model).__name__ == "GraphModel"
    ort_plans = _plans(ort, world, tmp_path)
    assert len(torch_plans) >= 16 and np.abs(torch_plans).max() > 1.0  # real, moving plans
    assert np.abs(ort_plans - torch_plans).max() < ORT_TOLERANCE


def test_plan_api_returns_the_detections_of_both_backends_alike(exported):
    """Planner.plan (the node's call) on one frame: the whole PlanResult agrees."""
    from dima_planner.backends import ORT_TOLERANCE
    from dima_planner.data.geometry import RIG_HW, load_rig, scale_intrinsics
    from dima_planner.data.sample import CAMERAS
    from dima_planner.inference import load_planner

    ckpt, _ = exported
    rig = load_rig("")
    h, w = 180, 320
    ks = np.stack([scale_intrinsics(rig.intrinsics[c], RIG_HW, (h, w)) for c in CAMERAS])
    c2l = np.stack([np.linalg.inv(rig.lidar2ego) @ rig.cam2ego[c] for c in CAMERAS])
    images = [np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8) for i in range(6)]
    results = []
    for backend in ("torch", "onnxruntime"):
        p = load_planner(ckpt, backend=backend)
        for i in range(2):  # the second frame uses the first one's BEV
            r = p.plan(images, ks, c2l, 1, stamp_ns=int(i * 5e8), lidar2world=np.eye(4))
        results.append(r)
    a, b = results
    assert b.used_prev_bev and a.used_prev_bev
    for name in ("trajectories", "agent_boxes", "agent_scores", "agent_motion", "map_points", "ego_feat"):
        assert np.abs(getattr(a, name) - getattr(b, name)).max() < ORT_TOLERANCE, name
    assert (a.agent_labels == b.agent_labels).all()


def test_missing_or_stale_graph_is_refused_with_the_command_to_fix_it(exported, tmp_path):
    from dima_planner.checkpoint import CheckpointError
    from dima_planner.inference import load_planner

    ckpt, _ = exported
    with pytest.raises(CheckpointError, match="dima export"):
        load_planner(SHIPPED, backend="onnxruntime")  # no planner.onnx next to the shipped weights
    stale = tmp_path / "stale"
    shutil.copytree(ckpt, stale)
    meta = json.loads((stale / "meta.json").read_text())
    meta["sha256"] = "f" * 64  # as if the weights had been re-trained after the export
    (stale / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="made from other weights"):
        load_planner(stale, backend="onnxruntime")
    with pytest.raises(CheckpointError, match="torch backend only"):
        load_planner(ckpt, backend="onnxruntime", dual=True)
    with pytest.raises(CheckpointError, match="CUDA|cuda"):
        load_planner(ckpt, backend="tensorrt")  # no GPU here: one sentence, not a traceback


@pytest.mark.ros
def test_node_runs_the_onnxruntime_backend(exported):
    """`backend: onnxruntime` in the node: configure loads planner.onnx (warm-up pass included)
    and the node reaches `active`; the same parameter on a checkpoint without the graph
    leaves it unconfigured with the export command in its log."""
    from dds_harness import TestNode, lifecycle_state, start_node_process, stop_node_process
    from dima_planner.ros.env import pid_domain_id

    ckpt, _ = exported
    params = REPO / "params" / "ros" / "planner.yaml"
    for checkpoint, expect in ((ckpt, "active"), (SHIPPED, "unconfigured")):
        domain = pid_domain_id(57)
        proc = start_node_process("dima_planner.ros.planner_node", domain, params, "-p", f"checkpoint:={checkpoint}",
                                  "-p", "backend:=onnxruntime", "-p", "warmup_width:=160", "-p", "warmup_height:=96")
        probe = TestNode("backend_probe", domain)
        try:
            if expect == "active":
                state = lifecycle_state(probe, "dima_planner", timeout=60.0)
            else:  # a failed configure is logged; the node stays up, unconfigured
                state = probe.wait(lambda: "unconfigured" if any("configure failed" in line
                                                                 for line in proc.output_lines) else None, 60.0)
                assert proc.poll() is None, "the node exited instead of staying unconfigured"
        finally:
            probe.close()
            out = stop_node_process(proc)
        assert state == expect, out
        if expect == "active":
            assert "(onnxruntime)" in out, out
        else:
            assert "dima export" in out and "planner.onnx" in out, out


def test_stacked_camera_sampling_equals_sampling_each_camera_alone():
    """The BEV encoder's camera sampling (one 2-D grid_sample over the stacked camera maps,
    exportable) equals the volumetric form it replaced (camera = the exact depth slice, zero
    padding per camera), with offsets large enough to leave the maps and cross stripes."""
    import torch.nn.functional as F

    from dima_planner.model.bev_encoder import SpatialCrossAttention

    torch.manual_seed(0)
    b, n, c, h, w, q, nz, p, heads = 1, 6, 32, 6, 10, 40, 4, 2, 4
    sca = SpatialCrossAttention(c, heads, nz, p).eval()
    torch.nn.init.uniform_(sca.offsets.bias, -8.0, 8.0)  # pixels: many samples fall outside their camera
    torch.nn.init.normal_(sca.weights.weight, std=0.1)
    query, feats = torch.randn(b, q, c), torch.randn(b, n, c, h, w)
    ref_cam, hit = torch.rand(b, n, q, nz, 2), torch.rand(b, n, q, nz) > 0.6

    def volumetric(self, query, feats, ref_cam, hit):  # the former form, as a reference
        b, n, c, h, w = feats.shape
        q, nh, nz, p = query.shape[1], self.heads, self.num_z, self.points
        k = min(self.max_cams, n)
        cams = hit.sum(-1).topk(k, dim=1).indices
        ref = ref_cam.gather(1, cams[..., None, None].expand(-1, -1, -1, nz, 2))
        sel_hit = hit.gather(1, cams[..., None].expand(-1, -1, -1, nz))
        value = self.value(feats.permute(0, 1, 3, 4, 2))
        value = value.view(b, n, h, w, nh, c // nh).permute(0, 4, 5, 1, 2, 3).reshape(b * nh, c // nh, n, h, w)
        off = self.offsets(query).view(b, 1, q, nh, nz, p, 2) / feats.new_tensor([w, h])
        loc = ref[:, :, :, None, :, None, :] + off
        camz = ((2 * cams + 1).to(loc.dtype) / n - 1)[:, :, :, None, None, None, None].expand(-1, -1, -1, nh, nz, p, 1)
        grid = torch.cat([loc * 2 - 1, camz], -1).permute(0, 3, 2, 1, 4, 5, 6).reshape(b * nh, q, k * nz * p, 1, 3)
        sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]
        attn = self.weights(query).view(b, q, nh, nz * p).softmax(-1).view(b, 1, q, nh, nz, p)
        attn = attn * sel_hit[:, :, :, None, :, None].to(attn.dtype)
        attn = attn.permute(0, 3, 2, 1, 4, 5).reshape(b * nh, 1, q, k * nz * p)
        out = (sampled * attn).sum(-1).view(b, c, q).transpose(1, 2)
        count = sel_hit.any(-1).sum(1).clamp(min=1).to(out.dtype)
        return self.out(out / count[..., None])

    with torch.no_grad():
        got, want = sca(query, feats, ref_cam, hit), volumetric(sca, query, feats, ref_cam, hit)
    assert want.abs().max() > 0.1
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
