"""TensorRT engine of the LLM-free planner through torch-tensorrt (`dima export --tensorrt`),
loaded by the node's `backend: tensorrt` (backends.py). The engine is compiled from
backends.PlannerGraph, the same graph the ONNX export writes, so every backend returns
the same outputs. Nothing here is needed for eager inference.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .backends import TRT_ENGINE, TRT_META, PlannerGraph, example_inputs, tensorrt_available
from .model.planner import VisionPlanner

__all__ = ["TRT_ENGINE", "PlannerGraph", "build_tensorrt", "example_inputs", "tensorrt_available"]


def build_tensorrt(model: VisionPlanner, precision: str = "fp16", out: str | Path | None = None,
                   source_sha256: str = ""):
    """Compile PlannerGraph(model) with torch-tensorrt; saved to `out` when given, with
    TRT_META beside it (source weights, precision) for the backend's staleness check.
    RuntimeError if unavailable."""
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
        Path(out).with_name(TRT_META).write_text(json.dumps(
            {"source_sha256": source_sha256, "precision": precision, "torch_tensorrt": torch_tensorrt.__version__,
             "device": torch.cuda.get_device_name(0)}, indent=2) + "\n")
    return trt
