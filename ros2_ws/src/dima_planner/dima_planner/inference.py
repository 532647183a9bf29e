"""Inference wrapper around a trained VisionPlanner: plain pre/post-processing, no rclpy.

    planner = load_planner("checkpoints/dima_tiny")
    result = planner.plan(images, intrinsics, cam2lidar, command, stamp_ns=t, lidar2world=T)
    result.trajectory            # (6, 2) LiDAR frame, x right, y forward, metres
    planner.predict(batch)       # (B, 6, 2) for a collated dataset batch (dima eval)

Inputs go through data/inputs.py, the function training uses. Temporal input has ONE
rule for `plan` and `predict`, the one training's chained history queue follows: the BEV of
the frame about 0.5 s earlier (TemporalMemory), itself made from its predecessor's,
aligned by the two frames' poses; ego motion (data/ego_motion.py) comes from the poses
the planner was given (`add_odometry` for a denser odometry stream). `reset()` or
scene_start=True forgets both. Nothing is global except torch's thread count, which is
only changed when `num_threads` is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends import graph_model
from .checkpoint import CheckpointError, load_checkpoint, read_model_config
from .data.ego_motion import CAN_BUS_DIM, PoseHistory
from .data.inputs import batch_inputs, normalise, prepare_frame
from .data.sample import AGENT_CLASSES, CAMERAS, MAP_CLASSES, STEP_SECONDS
from .model.mllm import LLMNotFoundError, MLLMBranch
from .model.mllm.checkpoint import MLLMCheckpointError, load_mllm_weights, read_mllm_config
from .model.planner import VisionPlanner


@dataclass
class PlanResult:
    trajectory: np.ndarray  # (6, 2) for the given command, LiDAR frame
    trajectories: np.ndarray  # (3, 6, 2) one per command (CMD_RIGHT, CMD_LEFT, CMD_STRAIGHT)
    command: int
    beam: dict[str, np.ndarray]  # bev (H*W, C), ego (1, C), agent (Na, C), map (Nm, C)
    ego_feat: np.ndarray  # (C,) planning head's penultimate ego feature
    agent_boxes: np.ndarray  # (Na, 7) x, y, z, l, w, h, yaw (LiDAR frame)
    agent_labels: np.ndarray  # (Na,) index into AGENT_CLASSES
    agent_scores: np.ndarray  # (Na,) probability of the best object class
    agent_motion: np.ndarray  # (Na, M, 6, 2) future centres per mode
    agent_motion_probs: np.ndarray  # (Na, M)
    map_points: np.ndarray  # (Nm, P, 2)
    map_labels: np.ndarray  # (Nm,) index into MAP_CLASSES
    map_scores: np.ndarray  # (Nm,)
    latency_ms: float  # model forward only (pre/post-processing excluded)
    used_prev_bev: bool  # whether the temporal BEV from the previous call was used
    can_bus: np.ndarray | None = None  # (CAN_BUS_DIM,) the ego motion input, None for camera-only models
    extras: dict[str, Any] = field(default_factory=dict)

    def confident_agents(self, threshold: float = 0.3) -> np.ndarray:
        """Indices of agent queries whose best class probability reaches `threshold`."""
        return np.flatnonzero(self.agent_scores >= threshold)

    def confident_map(self, threshold: float = 0.3) -> np.ndarray:
        return np.flatnonzero(self.map_scores >= threshold)


@dataclass
class _BevMemory:
    stamp_ns: int
    lidar2world: np.ndarray  # (4, 4)
    bev: torch.Tensor


class TemporalMemory:
    """The BEVs of recent frames, so that the temporal input matches training.

    Training chains a queue of keyframes 0.5 s apart (nuScenes keyframes at 2 Hz): the
    previous BEV is that of the frame 0.5 s earlier. A node planning at 12 Hz must
    therefore not feed the BEV of the frame 83 ms ago; it feeds the remembered BEV closest
    to `interval` before the current stamp, aligned with the ego motion between the two
    (odometry poses). `dima eval` walks keyframes through the same memory.
    """

    def __init__(self, interval_s: float = STEP_SECONDS, tolerance_s: float = 0.25, horizon_s: float = 1.5):
        self.interval_ns = int(interval_s * 1e9)
        self.tolerance_ns = int(tolerance_s * 1e9)
        self.horizon_ns = int(horizon_s * 1e9)
        self._items: list[_BevMemory] = []

    def clear(self) -> None:
        self._items.clear()

    def select(self, stamp_ns: int, lidar2world: np.ndarray) -> tuple[torch.Tensor, np.ndarray] | None:
        """(previous BEV, prev2cur) of the frame nearest `interval` ago, or None."""
        best = min(self._items, key=lambda m: abs(stamp_ns - m.stamp_ns - self.interval_ns), default=None)
        if best is None or abs(stamp_ns - best.stamp_ns - self.interval_ns) > self.tolerance_ns:
            return None
        return best.bev, np.linalg.inv(lidar2world) @ best.lidar2world

    def add(self, stamp_ns: int, lidar2world: np.ndarray, bev: torch.Tensor) -> None:
        self._items = [m for m in self._items if 0 < stamp_ns - m.stamp_ns <= self.horizon_ns]
        self._items.append(_BevMemory(stamp_ns, np.asarray(lidar2world, np.float64), bev))


class Planner:
    def __init__(self, model: VisionPlanner, device: str | torch.device = "cpu", num_threads: int | None = None):
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.memory = TemporalMemory()  # the one temporal state: BEVs by stamp and pose
        self.poses = PoseHistory()  # odometry seen, for the ego motion (CAN bus) input
        self._scene: str | None = None  # predict(): the scene being walked

    @property
    def uses_can_bus(self) -> bool:
        return bool(getattr(self.cfg, "can_bus", False))

    def reset(self) -> None:
        """Forget the temporal BEV and the odometry (next frame = scene start)."""
        self.memory.clear()
        self.poses.clear()
        self._scene = None

    def add_odometry(self, stamp_ns: int, lidar2world: np.ndarray) -> None:
        """Feed an odometry pose (LiDAR frame -> world) between plan() calls. Optional:
        plan() records the pose of every frame it plans; a denser stream only makes the
        poses 0.5 s and 1 s back (data/ego_motion.py) nearer their nominal stamps."""
        self.poses.add(int(stamp_ns), lidar2world)

    def can_bus(self, stamp_ns: int, lidar2world: np.ndarray) -> np.ndarray:
        """The ego motion vector plan() feeds for a frame at `stamp_ns` with this pose."""
        return self.poses.can_bus(int(stamp_ns), lidar2world)

    def _step(self, x: torch.Tensor, l2i: torch.Tensor, command: int, stamp_ns: int | None,
              lidar2world: np.ndarray | None, ego_status: torch.Tensor | None, can_bus: np.ndarray | None,
              extra: torch.Tensor | None):
        """One frame through the temporal rule and the model -> (enc, out, used_prev, latency_ms)."""
        prev_bev, p2c = None, None
        if stamp_ns is not None:
            picked = self.memory.select(stamp_ns, lidar2world)
            if picked is not None:
                prev_bev, p2c = picked[0], torch.from_numpy(picked[1].astype(np.float32))[None].to(self.device)
        used = prev_bev is not None
        cb = None
        if self.uses_can_bus:
            if can_bus is None:
                raise ValueError("this checkpoint takes ego motion (model.can_bus): plan() needs stamp_ns "
                                 "and lidar2world (odometry), or can_bus")
            cb = torch.as_tensor(np.asarray(can_bus, np.float32)).reshape(1, CAN_BUS_DIM).to(self.device)
        t0 = time.perf_counter()
        enc = self.model.encode(x, l2i, prev_bev, p2c, torch.tensor([used], device=self.device), ego_status, cb)
        out = self.model.plan(enc, torch.tensor([int(command)], device=self.device), extra)
        latency = (time.perf_counter() - t0) * 1e3
        if stamp_ns is not None:
            self.memory.add(stamp_ns, lidar2world, enc.beam.bev)
        return enc, out, used, latency

    # ---- batched (dima eval) ------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> np.ndarray:
        """(B, 6, 2) commanded trajectories for a collated dataset batch (`dima eval`).

        Images must be at the model's size (build the dataset with image_size =
        planner.cfg.image_size: the dataset resizes through data/inputs.py). Samples are
        walked one by one in batch order through the same temporal rule as plan(), keyed
        by their timestamps and LiDAR poses, with the dataset's ego motion vector: feed the
        dataset in order, unshuffled, as `dima eval` does. A new scene token resets it.
        """
        h, w = self.cfg.image_size
        if tuple(batch["images"].shape[-2:]) != (h, w):
            raise ValueError(f"batch images are {tuple(batch['images'].shape[-2:])}, this checkpoint takes "
                             f"{(h, w)}: build the dataset with image_size={[h, w]}")
        inp = batch_inputs(batch, self.device, self.cfg.use_ego_status, self.uses_can_bus)
        lidar2world = (batch["ego2global"].double() @ batch["lidar2ego"].double()).numpy()
        out = []
        for i in range(inp["images"].shape[0]):
            if batch["scene_token"][i] != self._scene:
                self.reset()
                self._scene = batch["scene_token"][i]
            stamp = int(batch["timestamp"][i]) * 1000
            status = None if inp["ego_status"] is None else inp["ego_status"][i:i + 1]
            cb = None
            if self.uses_can_bus:
                if "can_bus" not in batch:
                    raise ValueError("this checkpoint takes ego motion but the batch has no can_bus")
                cb = batch["can_bus"][i].numpy()
            self.poses.add(stamp, lidar2world[i])
            _, res, _, _ = self._step(inp["images"][i:i + 1], inp["lidar2img"][i:i + 1], int(batch["command"][i]),
                                      stamp, lidar2world[i], status, cb, None)
            out.append(res["plan"][0].float().cpu().numpy())
        return np.stack(out)

    # ---- one frame (ROS node) -----------------------------------------------------------------
    def preprocess(self, images: list, intrinsics: np.ndarray,
                   cam2lidar: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera frames (encoded bytes or RGB arrays, CAMERAS order) -> model tensors,
        through data/inputs.py exactly as the dataset does."""
        if len(images) != len(CAMERAS):
            raise ValueError(f"plan() needs {len(CAMERAS)} images in order {', '.join(CAMERAS)}, got {len(images)}")
        imgs, _, l2i = prepare_frame(images, intrinsics, cam2lidar, self.cfg.image_size,
                                     fit=getattr(self.cfg, "image_fit", "stretch"))
        x = normalise(imgs[None], channels_last=True)
        return x.to(self.device), torch.from_numpy(l2i).float()[None].to(self.device)

    @torch.no_grad()
    def plan(self, images: list, intrinsics: np.ndarray, cam2lidar: np.ndarray, command: int,
             ego_status: np.ndarray | None = None, *, stamp_ns: int | None = None,
             lidar2world: np.ndarray | None = None, scene_start: bool = False,
             extra_ego_feat: np.ndarray | None = None, can_bus: np.ndarray | None = None) -> PlanResult:
        """Plan one frame.

        images: per camera (CAMERAS order) JPEG/PNG bytes (as in sensor_msgs/CompressedImage)
        or uint8 RGB arrays; intrinsics are those of the images as given.
        stamp_ns and lidar2world (4, 4, LiDAR -> world, from odometry) of every frame give
        the temporal BEV (the one remembered closest to 0.5 s earlier, as in training) and
        the ego motion input; without them the frame is planned alone (and a model with
        model.can_bus needs `can_bus` explicitly). `can_bus` overrides the vector computed
        from the odometry history (data/ego_motion.py).
        """
        if int(command) not in (0, 1, 2):
            raise ValueError(f"command must be 0 (right), 1 (left) or 2 (straight), got {command}")
        if self.cfg.use_ego_status and ego_status is None:
            raise ValueError("this checkpoint was trained with ego status; plan() needs ego_status")
        if (stamp_ns is None) != (lidar2world is None):
            raise ValueError("plan() needs both stamp_ns and lidar2world, or neither")
        if lidar2world is not None:
            lidar2world = np.asarray(lidar2world, dtype=np.float64)
            if lidar2world.shape != (4, 4) or not np.isfinite(lidar2world).all():
                raise ValueError(f"lidar2world must be a finite 4x4 matrix, got shape {lidar2world.shape}")
        if can_bus is not None:
            can_bus = np.asarray(can_bus, np.float32)
            if can_bus.shape != (CAN_BUS_DIM,) or not np.isfinite(can_bus).all():
                raise ValueError(f"can_bus must be {CAN_BUS_DIM} finite values, got shape {can_bus.shape}")
        x, l2i = self.preprocess(images, intrinsics, cam2lidar)
        if scene_start:
            self.reset()
        if stamp_ns is not None:
            self.poses.add(int(stamp_ns), lidar2world)
            if can_bus is None:
                can_bus = self.poses.can_bus(int(stamp_ns), lidar2world)
        status = None
        if ego_status is not None and self.cfg.use_ego_status:
            status = torch.as_tensor(np.asarray(ego_status, np.float32))[None].to(self.device)
        extra = None if extra_ego_feat is None else torch.as_tensor(np.asarray(extra_ego_feat, np.float32))[None].to(self.device)
        enc, out, used, latency = self._step(x, l2i, int(command), None if stamp_ns is None else int(stamp_ns),
                                             lidar2world, status, can_bus, extra)
        res = self._result(enc, out, int(command), latency, used)
        res.can_bus = None if not self.uses_can_bus else np.asarray(can_bus, np.float32)
        return res

    @staticmethod
    def _result(enc, out, command: int, latency: float, used_prev: bool) -> PlanResult:
        p = {k: v[0].float().cpu() for k, v in enc.perception.items()}
        probs = p["agent_logits"].softmax(-1)[:, : len(AGENT_CLASSES)]
        scores, labels = probs.max(-1)
        raw = p["agent_boxes"]
        boxes = torch.cat([raw[:, :3], raw[:, 3:6].exp(), torch.atan2(raw[:, 6:7], raw[:, 7:8])], -1)
        mprobs = p["map_logits"].softmax(-1)[:, : len(MAP_CLASSES)]
        mscores, mlabels = mprobs.max(-1)
        beam = {k: getattr(enc.beam, k)[0].float().cpu().numpy() for k in ("bev", "ego", "agent", "map")}
        plan_all = out["plan_all"][0].float().cpu().numpy()
        return PlanResult(
            trajectory=plan_all[command], trajectories=plan_all, command=command, beam=beam,
            ego_feat=out["ego_feat"][0].float().cpu().numpy(),
            agent_boxes=boxes.numpy(), agent_labels=labels.numpy(), agent_scores=scores.numpy(),
            agent_motion=p["motion_traj"].numpy(), agent_motion_probs=p["motion_logits"].softmax(-1).numpy(),
            map_points=p["map_points"].numpy(), map_labels=mlabels.numpy(), map_scores=mscores.numpy(),
            latency_ms=latency, used_prev_bev=used_prev)


def load_planner(checkpoint_dir: str | Path, device: str = "cpu", num_threads: int | None = None,
                 dual: bool = False, mllm_checkpoint: str | Path | None = None,
                 llm_path: str | None = None, backend: str = "torch") -> Planner:
    """Planner from a checkpoint directory (CheckpointError with one sentence if unusable).

    dual=True: DiMA's Dual inference (DualModel below) with the MLLM branch of
    `mllm_checkpoint` (default: the same directory, as stage-2 training writes it);
    `llm_path` overrides the LLM folder named in its mllm.yaml.
    backend: "torch" (eager), or "onnxruntime" / "tensorrt" running the graph that
    `dima export --onnx` / `--tensorrt` wrote into the checkpoint (backends.py)."""
    if backend != "torch":
        if dual:
            raise CheckpointError(f"Dual inference runs on the torch backend only, not {backend}")
        cfg = read_model_config(checkpoint_dir)
        return Planner(graph_model(backend, checkpoint_dir, cfg, device, num_threads), device, num_threads)
    model, _ = load_checkpoint(checkpoint_dir, device)
    if dual:
        branch = load_mllm_branch(mllm_checkpoint or checkpoint_dir, device, llm_path)
        return Planner(DualModel(model, branch), device, num_threads)
    return Planner(model, device, num_threads)


# ---- Dual inference (DiMA) ---------------------------------------------------------------------
def load_mllm_branch(directory: str | Path, device: str | torch.device = "cpu", llm_path: str | None = None):
    """MLLMBranch from an MLLM checkpoint (model.mllm.checkpoint format:
    mllm.yaml + mllm.safetensors; the LLM is loaded from its own folder)."""
    try:
        cfg = read_mllm_config(directory)
    except MLLMCheckpointError as e:
        raise CheckpointError(f"Dual inference needs an MLLM checkpoint: {e} (train stage 2, or pass the "
                              "MLLM checkpoint directory)") from None
    if llm_path:
        cfg = replace(cfg, llm=replace(cfg.llm, path=llm_path))
    try:
        branch = MLLMBranch(cfg)
    except LLMNotFoundError as e:
        raise CheckpointError(f"the LLM of MLLM checkpoint {directory} is missing: {e}") from None
    try:
        load_mllm_weights(branch, directory)
    except MLLMCheckpointError as e:
        raise CheckpointError(str(e)) from None
    return branch.to(device).eval()


class DualModel(torch.nn.Module):
    """VisionPlanner-compatible forward for Dual inference: the MLLM's dual ego feature
    (from the same BEAM tokens) is max-pooled with the planner's penultimate ego feature
    inside the planning head (VisionPlanner.plan(extra_ego_feat=...)). Drop-in for
    Planner, so predict() and the temporal BEV stream work unchanged."""

    def __init__(self, planner: VisionPlanner, branch):
        super().__init__()
        c = planner.cfg.embed_dim
        m = branch.cfg
        if (m.token_dim, m.planner_dim, tuple(m.bev_hw)) != (c, c, (planner.cfg.bev_h, planner.cfg.bev_w)):
            raise CheckpointError(f"the MLLM checkpoint was trained for tokens {m.token_dim} wide on a "
                                  f"{m.bev_hw[0]}x{m.bev_hw[1]} BEV, the planner has {c} on "
                                  f"{planner.cfg.bev_h}x{planner.cfg.bev_w}")
        self.planner, self.branch, self.cfg = planner, branch, planner.cfg

    def encode(self, *args, **kw):
        return self.planner.encode(*args, **kw)

    def plan(self, enc, command: torch.Tensor, extra_ego_feat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        dt = self.branch.dtype
        feat = self.branch.dual_ego_feature({k: getattr(enc.beam, k).to(dt) for k in ("bev", "ego", "agent", "map")})
        if extra_ego_feat is not None:
            feat = torch.maximum(feat, extra_ego_feat.to(feat))
        return self.planner.plan(enc, command, feat)

    def forward(self, images, lidar2img, command, prev_bev=None, prev2cur=None, has_prev=None, ego_status=None,
                can_bus=None, history=None, extra_ego_feat=None) -> dict[str, Any]:
        if history:
            prev_bev, has_prev = self.planner.history_bev(history)
        enc = self.planner.encode(images, lidar2img, prev_bev, prev2cur, has_prev, ego_status, can_bus)
        out = self.plan(enc, command, extra_ego_feat)
        return {**enc.perception, **out, "beam": enc.beam, "bev": enc.beam.bev}
