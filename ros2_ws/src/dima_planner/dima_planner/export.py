"""`dima export`: the LLM-free DiMA planner alone, from a stage-1 or stage-2 checkpoint.

    dima export --checkpoint checkpoints/dima_tiny_stage2 --out checkpoints/dima_tiny_llmfree

DiMA's LLM-free inference needs only the scene encoder + planning transformer: the
output holds model.safetensors / config.yaml / meta.json (the checkpoint.py format,
loadable by inference.load_planner) and no MLLM or LLM tensors. The weights are
re-verified (hash, architecture) on the way through, and the output is read back.

    dima export ... --onnx

also writes <out>/planner.onnx (backends.PlannerGraph, opset 20, batch 1) for the node's
`backend: onnxruntime`, and checks it: ONNX Runtime and torch on the same inputs agree
within backends.ORT_TOLERANCE, else it exits 1.

    dima export ... --tensorrt [--precision fp16]

also builds a TensorRT engine of the same graph (torch-tensorrt; needs a CUDA GPU) into
<out>/planner_trt.ep (accel.py) for `backend: tensorrt`; without torch-tensorrt or a GPU it
says so and exits 1. Both files record the weights they were made from; the backends
refuse them for other weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import accel, backends
from .backends import ORT_TOLERANCE
from .checkpoint import WEIGHTS, CheckpointError, load_checkpoint, save_checkpoint


def export_planner(src: str | Path, dst: str | Path) -> dict:
    """Write the planner of checkpoint `src` to `dst`; returns the new meta."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"export would overwrite its source {src}: choose another --out")
    model, meta = load_checkpoint(src)
    train_cfg = None
    import yaml

    try:
        train_cfg = (yaml.safe_load((src / "config.yaml").read_text()) or {}).get("train")
    except (OSError, yaml.YAMLError):
        train_cfg = None
    keep = {k: meta[k] for k in ("step", "val", "stage") if k in meta}
    save_checkpoint(dst, model, train_cfg, {**keep, "exported_from": str(src), "source_sha256": meta["sha256"],
                                            "llm_free": True})
    _, out_meta = load_checkpoint(dst)  # read back: hash and architecture
    return out_meta


def write_onnx(checkpoint: str | Path, sha256: str) -> tuple[Path, float]:
    """Export the checkpoint's planner to <checkpoint>/planner.onnx; returns (path, the largest
    |ONNX Runtime - torch| over every output on the example inputs with a previous BEV)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    model, _ = load_checkpoint(checkpoint)
    path = backends.export_onnx(model, Path(checkpoint) / backends.ONNX_FILE, sha256)
    graph = backends.PlannerGraph(model).eval()
    torch.manual_seed(0)
    inputs = list(backends.example_inputs(model))
    inputs[graph.input_names.index("prev_bev")].normal_()
    with torch.no_grad():
        ref = graph(*inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(backends.OUTPUTS), {n: t.numpy() for n, t in zip(graph.input_names, inputs)})
    return path, max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="stage-1 or stage-2 checkpoint directory")
    parser.add_argument("--out", required=True, help="directory for the LLM-free planner")
    parser.add_argument("--onnx", action="store_true", help="also write planner.onnx (backend onnxruntime)")
    parser.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (CUDA + torch-tensorrt)")
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"),
                        help="TensorRT engine precision")


def run(args: argparse.Namespace) -> int:
    try:
        meta = export_planner(args.checkpoint, args.out)
    except CheckpointError as e:
        print(f"dima export: {e}", file=sys.stderr)
        return 1
    size = (Path(args.out) / WEIGHTS).stat().st_size
    print(f"wrote the LLM-free planner to {args.out} ({meta['num_parameters']:,} parameters, "
          f"{size / 1e6:.1f} MB, sha256 {meta['sha256'][:12]})")
    if getattr(args, "onnx", False):
        try:
            path, err = write_onnx(args.out, meta["sha256"])
        except (ImportError, RuntimeError, ValueError) as e:
            print(f"dima export: ONNX export failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1

        if err > ORT_TOLERANCE:
            print(f"dima export: {path} disagrees with torch by {err:.2e} (> {ORT_TOLERANCE:g}); not usable",
                  file=sys.stderr)
            path.unlink()
            return 1
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); ONNX Runtime vs torch: max |difference| "
              f"{err:.1e} (tolerance {ORT_TOLERANCE:g})")
    if getattr(args, "tensorrt", False):
        try:
            model, _ = load_checkpoint(args.out)
            engine = Path(args.out) / accel.TRT_ENGINE
            accel.build_tensorrt(model, args.precision, engine, meta["sha256"])
        except RuntimeError as e:
            print(f"dima export: {e}", file=sys.stderr)
            return 1
        print(f"wrote the TensorRT engine ({args.precision}) to {engine}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima export", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
