"""Faster forward passes of the LLM-free planner: torch.compile (CUDA graphs on a GPU) and an
optional TensorRT engine through torch-tensorrt. Used by `dima export --tensorrt` and
tools/bench_forward.py; nothing here is needed for plain eager inference.

`PlannerGraph` is the planner as one tensor-in/tensor-out module with the temporal input
always present (a zero BEV and has_prev=False at a scene start), so that one compiled
graph / engine serves every frame.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .model.planner import VisionPlanner

TRT_ENGINE = "planner_trt.ep"  # torch_tensorrt.save'd ExportedProgram, next to model.safetensors


class PlannerGraph(torch.nn.Module):
    def __init__(self, model: VisionPlanner):
        super().__init__()
        self.model = model

    def forward(self, images, lidar2img, prev_bev, prev2cur, has_prev, command, can_bus):
        uses_can_bus = bool(getattr(self.model.cfg, "can_bus", False))
        enc = self.model.encode(images, lidar2img, prev_bev, prev2cur, has_prev, None,
                                can_bus if uses_can_bus else None)
        out = self.model.plan(enc, command, None)
        return out["plan_all"], enc.beam.bev, out["ego_feat"]


def example_inputs(model: VisionPlanner, device: str | torch.device = "cpu", dtype=torch.float32) -> tuple:
    """Batch-1 inputs of the right shapes (a plausible camera geometry, a previous BEV)."""
    cfg = model.cfg
    h, w = cfg.image_size
    images = torch.rand(1, 6, 3, h, w, device=device, dtype=dtype)
    lidar2img = torch.eye(4, device=device).repeat(1, 6, 1, 1)
    lidar2img[..., 0, 0] = lidar2img[..., 1, 1] = 0.5 * w
    lidar2img[..., 0, 2], lidar2img[..., 1, 2] = 0.5 * w, 0.5 * h
    prev_bev = torch.zeros(1, cfg.bev_h * cfg.bev_w, cfg.embed_dim, device=device, dtype=dtype)
    from .model.ego_motion import CAN_BUS_DIM

    return (images, lidar2img, prev_bev, torch.eye(4, device=device)[None], torch.tensor([True], device=device),
            torch.tensor([2], device=device), torch.zeros(1, CAN_BUS_DIM, device=device, dtype=dtype))


def tensorrt_available() -> str | None:
    """None when torch-tensorrt and a CUDA device are there, else the reason."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        return "torch-tensorrt is not installed (pip install torch-tensorrt matching this torch)"
    return None


def build_tensorrt(model: VisionPlanner, precision: str = "fp16", out: str | Path | None = None):
    """Compile PlannerGraph(model) with torch-tensorrt (ops TensorRT lacks, such as the 4x4
    inverse, stay in PyTorch); saved to `out` when given. RuntimeError if unavailable."""
    why = tensorrt_available()
    if why:
        raise RuntimeError(f"TensorRT engine not built: {why}")
    import torch_tensorrt

    graph = PlannerGraph(model.cuda().eval())
    inputs = example_inputs(model, "cuda")
    dtypes = {"fp32": {torch.float32}, "fp16": {torch.float16, torch.float32}, "bf16": {torch.bfloat16, torch.float32}}
    with torch.inference_mode():
        trt = torch_tensorrt.compile(graph, ir="dynamo", inputs=list(inputs), enabled_precisions=dtypes[precision],
                                     min_block_size=3)
    if out is not None:
        torch_tensorrt.save(trt, str(out), inputs=list(inputs))
    return trt
