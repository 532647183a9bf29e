"""Inference backends of the LLM-free planner: torch (eager), ONNX Runtime, TensorRT.

    dima export --checkpoint checkpoints/dima_tiny --out checkpoints/dima_tiny_llmfree --onnx
    planner = load_planner("checkpoints/dima_tiny_llmfree", backend="onnxruntime")

One graph serves every accelerated backend: `PlannerGraph`, the planner as one
tensor-in/tensor-out module (encode + plan, every output `inference.Planner` reads), with
the temporal input always present (a zero BEV and has_prev=False at a scene start, which
the encoder treats exactly like no previous BEV). `dima export --onnx` writes it to
<checkpoint>/planner.onnx, `dima export --tensorrt` compiles it with torch-tensorrt
(accel.py) to <checkpoint>/planner_trt.ep. Both files record the sha256 of the weights they
were made from; a backend refuses a file made from other weights (a re-trained checkpoint
whose ONNX was not exported again) with one sentence.

`GraphModel` is what `inference.Planner` holds instead of the torch module: the same
`encode(...)` / `plan(enc, command)` pair, so the temporal memory, ego motion and
post-processing are the torch path's own code. `encode` runs the whole graph (planning
included: it plans all three commands at once), `plan` picks the stored outputs.
Dual inference (an MLLM feature entering the planning head) is torch-only.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .checkpoint import META, CheckpointError
from .data.ego_motion import CAN_BUS_DIM
from .data.sample import EGO_STATUS_FIELDS
from .model.planner import BeamTokens, SceneEncoding, VisionPlanner

BACKENDS = ("torch", "onnxruntime", "tensorrt")
ONNX_FILE = "planner.onnx"
TRT_ENGINE = "planner_trt.ep"  # torch_tensorrt.save'd ExportedProgram
TRT_META = "planner_trt.json"  # its source weights and precision
ONNX_OPSET = 20  # GridSample (opset 16) and the dynamo exporter's default ops
SOURCE_KEY = "dima.source_sha256"  # ONNX metadata: the weights the graph was made from

INPUTS = ("images", "lidar2img", "prev_bev", "prev2cur", "has_prev", "can_bus", "ego_status")
OUTPUTS = ("plan_all", "ego_feat", "bev", "ego", "agent", "map", "agent_logits", "agent_boxes", "motion_traj",
           "motion_logits", "map_logits", "map_points")
PERCEPTION = OUTPUTS[6:]
# ONNX Runtime on CPU vs torch on the same frames (tests/test_backends.py): the two
# differ by float rounding only; this bounds every output (metres for trajectories).
ORT_TOLERANCE = 1e-4


class PlannerGraph(torch.nn.Module):
    """VisionPlanner as tensors in, OUTPUTS out. Inputs the model does not take (can_bus
    without model.can_bus, ego_status without use_ego_status) are not graph inputs."""

    def __init__(self, model: VisionPlanner):
        super().__init__()
        self.model = model
        self.input_names = graph_inputs(model.cfg)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = dict(zip(self.input_names, inputs))
        enc = self.model.encode(x["images"], x["lidar2img"], x["prev_bev"], x["prev2cur"], x["has_prev"],
                                x.get("ego_status"), x.get("can_bus"))
        # The planning head plans every command; the command only selects (in Planner).
        out = self.model.plan(enc, torch.zeros(1, dtype=torch.long, device=x["images"].device))
        beam, p = enc.beam, enc.perception
        return (out["plan_all"], out["ego_feat"], beam.bev, beam.ego, beam.agent, beam.map,
                *(p[k] for k in PERCEPTION))


def graph_inputs(cfg) -> tuple[str, ...]:
    drop = set()
    if not getattr(cfg, "can_bus", False):
        drop.add("can_bus")
    if not cfg.use_ego_status:
        drop.add("ego_status")
    return tuple(n for n in INPUTS if n not in drop)


def example_inputs(model: VisionPlanner, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
    """Batch-1 inputs of PlannerGraph(model) (a plausible camera geometry, a previous BEV)."""

    cfg = model.cfg
    h, w = cfg.image_size
    lidar2img = torch.eye(4, device=device).repeat(1, 6, 1, 1)
    lidar2img[..., 0, 0] = lidar2img[..., 1, 1] = 0.5 * w
    lidar2img[..., 0, 2], lidar2img[..., 1, 2] = 0.5 * w, 0.5 * h
    every = {"images": torch.rand(1, 6, 3, h, w, device=device), "lidar2img": lidar2img,
             "prev_bev": torch.zeros(1, cfg.bev_h * cfg.bev_w, cfg.embed_dim, device=device),
             "prev2cur": torch.eye(4, device=device)[None], "has_prev": torch.tensor([True], device=device),
             "can_bus": torch.zeros(1, CAN_BUS_DIM, device=device),
             "ego_status": torch.zeros(1, len(EGO_STATUS_FIELDS), device=device)}
    return tuple(every[n] for n in graph_inputs(cfg))


def weights_sha256(checkpoint: str | Path) -> str:
    try:
        return json.loads((Path(checkpoint) / META).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {checkpoint} has no readable {META}") from None


# ---- ONNX -------------------------------------------------------------------------------------
def export_onnx(model: VisionPlanner, path: str | Path, source_sha256: str) -> Path:
    """Write PlannerGraph(model) to `path` (ONNX, opset ONNX_OPSET, batch 1, fixed image size)
    with the source weights' hash in its metadata. Needs the onnx and onnxscript packages."""
    import tempfile
    import warnings

    import onnx

    path = Path(path)
    graph = PlannerGraph(model.cpu().eval()).eval()
    inputs = example_inputs(model)
    # The exporter logs a line per torchvision op it cannot register (torchvision is not a
    # dependency) and onnxscript's optimizer one per multi-output Split it leaves alone:
    # hundreds of lines that say nothing about this graph, which is checked below.
    quiet = [logging.getLogger(n) for n in ("onnxscript.optimizer", "torch.onnx._internal.exporter._registration")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore", FutureWarning)
            # The exporter may write the weights beside the graph (planner.onnx.data); the file
            # saved below holds everything (a 4 MB model is far from protobuf's 2 GB limit).
            torch.onnx.export(graph, inputs, f"{tmp}/planner.onnx", dynamo=True, opset_version=ONNX_OPSET,
                              input_names=list(graph.input_names), output_names=list(OUTPUTS), verbose=False)
            proto = onnx.load(f"{tmp}/planner.onnx")
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {SOURCE_KEY: source_sha256,
                                        "dima.image_size": json.dumps(list(model.cfg.image_size))})
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def _check_source(what: Path, recorded: str, checkpoint: Path, command: str) -> None:
    expected = weights_sha256(checkpoint)
    if recorded != expected:
        raise CheckpointError(f"{what} was made from other weights (sha256 {recorded[:12] or 'unknown'}..., "
                              f"the checkpoint's are {expected[:12]}...): run `{command}` again")


class GraphModel:
    """Duck-typed VisionPlanner (encode / plan / cfg) over a compiled graph `run`
    (dict of input tensors -> OUTPUTS tensors)."""

    def __init__(self, cfg, run, device: torch.device, name: str):
        self.cfg, self._run, self.device, self.backend = cfg, run, device, name
        self._zero_bev = torch.zeros(1, cfg.bev_h * cfg.bev_w, cfg.embed_dim)
        self._inputs = graph_inputs(cfg)

    # Planner calls model.to(device).eval(): the graph is already where it runs.
    def to(self, device) -> GraphModel:
        return self

    def eval(self) -> GraphModel:
        return self

    def encode(self, images, lidar2img, prev_bev=None, prev2cur=None, has_prev=None, ego_status=None,
               can_bus=None) -> SceneEncoding:
        b = images.shape[0]
        if b != 1:
            raise ValueError(f"the {self.backend} graph takes batch 1, got {b}")
        if prev_bev is None:  # a scene start: zero BEV, has_prev False (the encoder then ignores it)
            prev_bev, prev2cur, has_prev = self._zero_bev, torch.eye(4)[None], torch.zeros(1, dtype=torch.bool)
        elif has_prev is None:
            has_prev = torch.ones(1, dtype=torch.bool)
        given = {"images": images, "lidar2img": lidar2img, "prev_bev": prev_bev, "prev2cur": prev2cur,
                 "has_prev": has_prev.bool(), "can_bus": can_bus, "ego_status": ego_status}
        missing = [n for n in self._inputs if given[n] is None]
        if missing:
            raise ValueError(f"this checkpoint's graph needs {', '.join(missing)}")
        out = dict(zip(OUTPUTS, self._run({n: given[n] for n in self._inputs})))
        enc = SceneEncoding(BeamTokens(out["bev"], out["ego"], out["agent"], out["map"]),
                            {k: out[k] for k in PERCEPTION})
        enc.planned = {"plan_all": out["plan_all"], "ego_feat": out["ego_feat"]}
        return enc

    def plan(self, enc: SceneEncoding, command: torch.Tensor, extra_ego_feat=None) -> dict[str, torch.Tensor]:
        if extra_ego_feat is not None:
            raise ValueError(f"Dual inference runs on the torch backend only, not {self.backend}")
        plan_all = enc.planned["plan_all"]
        idx = command.long().view(-1, 1, 1, 1).expand(-1, 1, *plan_all.shape[2:])
        return {**enc.planned, "plan": plan_all.gather(1, idx)[:, 0]}


def onnxruntime_model(checkpoint: str | Path, cfg, num_threads: int | None = None,
                      device: str = "cpu") -> GraphModel:
    """GraphModel over <checkpoint>/planner.onnx in ONNX Runtime (CPU; CUDA provider on a
    cuda device when the installed onnxruntime has it)."""
    checkpoint = Path(checkpoint)
    path = checkpoint / ONNX_FILE
    if not path.is_file():
        raise CheckpointError(f"backend onnxruntime needs {path}: run `dima export --checkpoint {checkpoint} "
                              f"--out <dir> --onnx` and use <dir> as the checkpoint")
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("backend onnxruntime needs the onnxruntime package (tools/requirements.txt)") from None
    opts = ort.SessionOptions()
    if num_threads:
        opts.intra_op_num_threads = int(num_threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise CheckpointError("backend onnxruntime on cuda needs onnxruntime-gpu (CUDAExecutionProvider); "
                                  "use device cpu, or backend tensorrt")
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CheckpointError(f"{path} cannot be loaded by ONNX Runtime: {e}") from None
    meta = session.get_modelmeta().custom_metadata_map
    _check_source(path, meta.get(SOURCE_KEY, ""), checkpoint, f"dima export --onnx` into {checkpoint}")
    names = [i.name for i in session.get_inputs()]
    if tuple(names) != graph_inputs(cfg):
        raise CheckpointError(f"{path} takes inputs {names}, the checkpoint's config needs {list(graph_inputs(cfg))}")

    def run(feed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        arrays = {n: t.detach().cpu().numpy() for n, t in feed.items()}
        return [torch.from_numpy(a) for a in session.run(list(OUTPUTS), arrays)]

    return GraphModel(cfg, run, torch.device("cpu"), "onnxruntime")


# ---- TensorRT ---------------------------------------------------------------------------------
def tensorrt_available() -> str | None:
    """None when torch-tensorrt and a CUDA device are there, else the reason."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        return "torch-tensorrt is not installed (pip install torch-tensorrt matching this torch)"
    return None


def tensorrt_model(checkpoint: str | Path, cfg, device: str = "cuda") -> GraphModel:
    """GraphModel over the torch-tensorrt engine `dima export --tensorrt` wrote. Needs a
    CUDA device and torch-tensorrt (the same version that built the engine)."""
    checkpoint = Path(checkpoint)
    path, meta_path = checkpoint / TRT_ENGINE, checkpoint / TRT_META
    if not device.startswith("cuda"):
        raise CheckpointError(f"backend tensorrt runs on a CUDA device, not {device!r} (set device: cuda)")
    why = tensorrt_available()
    if why:
        raise CheckpointError(f"backend tensorrt: {why}")
    if not path.is_file() or not meta_path.is_file():
        raise CheckpointError(f"backend tensorrt needs {path} and {meta_path.name}: run `dima export --checkpoint "
                              f"{checkpoint} --out <dir> --tensorrt` on this GPU")
    try:
        recorded = json.loads(meta_path.read_text())
    except ValueError:
        raise CheckpointError(f"{meta_path} is not JSON") from None
    _check_source(path, recorded.get("source_sha256", ""), checkpoint, f"dima export --tensorrt` into {checkpoint}")
    import torch_tensorrt

    try:
        module = torch_tensorrt.load(str(path)).module()
    except Exception as e:  # engine of another TensorRT version / GPU
        raise CheckpointError(f"{path} cannot be loaded: {e} (build it again on this machine)") from None
    dev = torch.device(device)

    def run(feed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            outs = module(*(feed[n].to(dev) for n in graph_inputs(cfg)))
        return [o.float() for o in outs]

    return GraphModel(cfg, run, dev, "tensorrt")


def graph_model(backend: str, checkpoint: str | Path, cfg, device: str, num_threads: int | None) -> Any:
    if backend == "onnxruntime":
        return onnxruntime_model(checkpoint, cfg, num_threads, device)
    if backend == "tensorrt":
        return tensorrt_model(checkpoint, cfg, device)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
