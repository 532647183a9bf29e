"""Inference wrapper around a trained VisionPlanner: plain pre/post-processing, no rclpy.

    planner = load_planner("checkpoints/dima_tiny")
    result = planner.plan(images, intrinsics, cam2lidar, command, prev2cur=T, scene_start=False)
    result.trajectory            # (6, 2) LiDAR frame, x right, y forward, metres
    planner.predict(batch)       # (B, 6, 2) for a collated batch (dima eval)

`plan` keeps the temporal BEV between calls (one stream); `reset()` or scene_start=True
clears it. Nothing is global except torch's thread count, which is only changed when
`num_threads` is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .checkpoint import load_checkpoint
from .data.sample import AGENT_CLASSES, CAMERAS, MAP_CLASSES, STEP_SECONDS
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
    extras: dict[str, Any] = field(default_factory=dict)

    def confident_agents(self, threshold: float = 0.3) -> np.ndarray:
        """Indices of agent queries whose best class probability reaches `threshold`."""
        return np.flatnonzero(self.agent_scores >= threshold)

    def confident_map(self, threshold: float = 0.3) -> np.ndarray:
        return np.flatnonzero(self.map_scores >= threshold)


def resize_intrinsics(k: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image resized from (H, W) to (H', W') (pixel-corner convention, as PIL/cv2)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return np.diag([sx, sy, 1.0]) @ k


def lidar2img_from(intrinsics: np.ndarray, cam2lidar: np.ndarray) -> np.ndarray:
    """(6, 4, 4) LiDAR point -> homogeneous pixel, K @ inverse(cam2lidar)."""
    k4 = np.tile(np.eye(4), (intrinsics.shape[0], 1, 1))
    k4[:, :3, :3] = intrinsics
    return k4 @ np.linalg.inv(cam2lidar)


@dataclass
class _BevMemory:
    stamp_ns: int
    lidar2world: np.ndarray  # (4, 4)
    bev: torch.Tensor


class TemporalMemory:
    """The BEVs of recent frames, so that the temporal input matches training.

    The model learns temporal self-attention from keyframe pairs 0.5 s apart (nuScenes
    keyframes at 2 Hz): how far the scene moved in the warped previous BEV is how it reads
    motion. A node planning at 12 Hz must therefore not feed the BEV of the frame 83 ms
    ago; it feeds the remembered BEV closest to `interval` before the current stamp,
    aligned with the ego motion between the two (odometry poses).
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
        self._prev_bev: torch.Tensor | None = None  # plan()'s temporal state without poses
        self.memory = TemporalMemory()  # plan()'s temporal state with stamps and poses
        self._stream: tuple[str, int, torch.Tensor] | None = None  # predict()'s (scene, stamp, bev)

    def reset(self) -> None:
        """Forget the temporal BEV of plan() and predict() (next frame = scene start)."""
        self._prev_bev = None
        self.memory.clear()
        self._stream = None

    # ---- batched (dima eval) ------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> np.ndarray:
        """(B, 6, 2) commanded trajectories for a collated batch (`dima eval`).

        Images of another size are resized here (lidar2img rescaled to match). With the
        batch's own `prev_images` (train.collate_pairs) the batch runs in one forward.
        Otherwise samples are streamed one by one in batch order, carrying the BEV across
        calls while consecutive samples are keyframes of one scene (same scene_token,
        0 < dt <= 1 s, history present): feed the dataset in order, unshuffled, as
        `dima eval` does. This stream is separate from plan()'s state.
        """
        from .train import model_inputs

        inp = model_inputs(batch, self.device, self.cfg.use_ego_status)
        inp["images"], inp["lidar2img"] = self._fit_size(inp["images"], inp["lidar2img"])
        if "prev_images" in inp:
            inp["prev_images"], inp["prev_lidar2img"] = self._fit_size(inp["prev_images"], inp["prev_lidar2img"])
            return self.model(**inp)["plan"].float().cpu().numpy()
        out = []
        for i in range(inp["images"].shape[0]):
            scene, stamp = batch["scene_token"][i], int(batch["timestamp"][i])
            has_hist = bool(batch["ego_hist_mask"][i, 0] > 0) if "ego_hist_mask" in batch else True
            last = self._stream
            chained = (last is not None and last[0] == scene and 0 < stamp - last[1] <= 1_000_000 and has_hist)
            one = {k: (v[i:i + 1] if torch.is_tensor(v) else v) for k, v in inp.items()}
            res = self.model(**one, prev_bev=last[2] if chained else None,
                             has_prev=torch.tensor([chained], device=self.device))
            self._stream = (scene, stamp, res["bev"])
            out.append(res["plan"][0].float().cpu().numpy())
        return np.stack(out)

    def _fit_size(self, images: torch.Tensor, lidar2img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.cfg.image_size
        h0, w0 = images.shape[-2:]
        if (h0, w0) == (h, w):
            return images, lidar2img
        b, n = images.shape[:2]
        images = torch.nn.functional.interpolate(images.flatten(0, 1), size=(h, w), mode="bilinear",
                                                 antialias=True, align_corners=False).view(b, n, 3, h, w)
        scale = torch.diag(lidar2img.new_tensor([w / w0, h / h0, 1.0, 1.0]))
        return images, scale @ lidar2img

    # ---- one frame (ROS node) -----------------------------------------------------------------
    def preprocess(self, images: list[np.ndarray], intrinsics: np.ndarray,
                   cam2lidar: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if len(images) != len(CAMERAS):
            raise ValueError(f"plan() needs {len(CAMERAS)} images in order {', '.join(CAMERAS)}, got {len(images)}")
        intrinsics = np.asarray(intrinsics, dtype=np.float64)
        cam2lidar = np.asarray(cam2lidar, dtype=np.float64)
        if intrinsics.shape != (6, 3, 3) or cam2lidar.shape != (6, 4, 4):
            raise ValueError(f"intrinsics must be (6, 3, 3) and cam2lidar (6, 4, 4), got {intrinsics.shape} and {cam2lidar.shape}")
        if not (np.isfinite(intrinsics).all() and np.isfinite(cam2lidar).all()):
            raise ValueError("intrinsics / cam2lidar contain NaN or infinite values")
        h, w = self.cfg.image_size
        resized, ks = [], []
        for name, img, k in zip(CAMERAS, images, intrinsics):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) == 0:
                raise ValueError(f"{name} image must be uint8 HxWx3 RGB, got {img.dtype} {img.shape}")
            resized.append(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if img.shape[:2] != (h, w) else img)
            ks.append(resize_intrinsics(k, img.shape[:2], (h, w)))
        l2i = lidar2img_from(np.stack(ks), cam2lidar)
        x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float().div_(255.0)[None]
        return x.to(self.device), torch.from_numpy(l2i).float()[None].to(self.device)

    @torch.no_grad()
    def plan(self, images: list[np.ndarray], intrinsics: np.ndarray, cam2lidar: np.ndarray, command: int,
             ego_status: np.ndarray | None = None, prev2cur: np.ndarray | None = None,
             scene_start: bool = False, extra_ego_feat: np.ndarray | None = None,
             stamp_ns: int | None = None, lidar2world: np.ndarray | None = None) -> PlanResult:
        """Plan one frame.

        Temporal input, preferred: `stamp_ns` and `lidar2world` (4, 4, from odometry) of
        every frame; the BEV remembered closest to 0.5 s earlier is used, as in training
        (TemporalMemory). Otherwise `prev2cur` (4, 4) maps the previous call's LiDAR frame
        into this one, which matches training only when calls are 0.5 s apart. Without
        either, or at a scene start, the temporal BEV is not used.
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
        x, l2i = self.preprocess(images, intrinsics, cam2lidar)
        if scene_start:
            self.reset()
        prev_bev = self._prev_bev
        if stamp_ns is not None:
            picked = self.memory.select(int(stamp_ns), lidar2world)
            prev_bev, prev2cur = picked if picked is not None else (None, None)
        use_prev = prev_bev is not None and prev2cur is not None
        p2c = None
        if use_prev:
            p2c = np.asarray(prev2cur, dtype=np.float32)
            if p2c.shape != (4, 4) or not np.isfinite(p2c).all():
                raise ValueError(f"prev2cur must be a finite 4x4 matrix, got shape {p2c.shape}")
            p2c = torch.from_numpy(p2c)[None].to(self.device)
        status = None
        if ego_status is not None and self.cfg.use_ego_status:
            status = torch.as_tensor(np.asarray(ego_status, np.float32))[None].to(self.device)
        extra = None if extra_ego_feat is None else torch.as_tensor(np.asarray(extra_ego_feat, np.float32))[None].to(self.device)
        t0 = time.perf_counter()
        enc = self.model.encode(x, l2i, prev_bev if use_prev else None, p2c,
                                torch.tensor([use_prev], device=self.device), status)
        out = self.model.plan(enc, torch.tensor([int(command)], device=self.device), extra)
        latency = (time.perf_counter() - t0) * 1e3
        self._prev_bev = enc.beam.bev
        if stamp_ns is not None:
            self.memory.add(int(stamp_ns), lidar2world, enc.beam.bev)
        return self._result(enc, out, int(command), latency, use_prev)

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
                 llm_path: str | None = None) -> Planner:
    """Planner from a checkpoint directory (CheckpointError with one sentence if unusable).

    dual=True: DiMA's Dual inference (DualModel below) with the MLLM branch of
    `mllm_checkpoint` (default: the same directory, as stage-2 training writes it);
    `llm_path` overrides the LLM folder named in its mllm.yaml."""
    model, _ = load_checkpoint(checkpoint_dir, device)
    if dual:
        branch = load_mllm_branch(mllm_checkpoint or checkpoint_dir, device, llm_path)
        return Planner(DualModel(model, branch), device, num_threads)
    return Planner(model, device, num_threads)


# ---- Dual inference (DiMA) ---------------------------------------------------------------------
def load_mllm_branch(directory: str | Path, device: str | torch.device = "cpu", llm_path: str | None = None):
    """MLLMBranch from an MLLM checkpoint (model.mllm.checkpoint format:
    mllm.yaml + mllm.safetensors; the LLM is loaded from its own folder)."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from .checkpoint import CheckpointError
    from .config import ConfigError, load_yaml
    from .model.mllm import LLMNotFoundError, MLLMBranch, MLLMConfig
    from .model.mllm.checkpoint import MLLM_CONFIG, MLLM_WEIGHTS

    directory = Path(directory)
    for name in (MLLM_CONFIG, MLLM_WEIGHTS):
        if not (directory / name).is_file():
            raise CheckpointError(f"Dual inference needs an MLLM checkpoint, but {directory} has no {name} "
                                  "(train stage 2, or pass the MLLM checkpoint directory)")
    try:
        cfg = load_yaml(MLLMConfig, directory / MLLM_CONFIG)
    except ConfigError as e:
        raise CheckpointError(f"MLLM checkpoint config {directory / MLLM_CONFIG} is invalid: {e}") from None
    if llm_path:
        cfg = replace(cfg, llm=replace(cfg.llm, path=llm_path))
    try:
        branch = MLLMBranch(cfg)
    except LLMNotFoundError as e:
        raise CheckpointError(f"the LLM of MLLM checkpoint {directory} is missing: {e}") from None
    try:
        branch.load_trainable_state_dict(load_file(str(directory / MLLM_WEIGHTS)))
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"MLLM weights {directory / MLLM_WEIGHTS} do not fit their config: {e}") from None
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
            from .checkpoint import CheckpointError

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
                prev_images=None, prev_lidar2img=None, extra_ego_feat=None) -> dict[str, Any]:
        if prev_images is not None and self.cfg.use_temporal:
            prev_bev = self.planner.encode_bev(prev_images, prev_lidar2img)
        enc = self.planner.encode(images, lidar2img, prev_bev, prev2cur, has_prev, ego_status)
        out = self.plan(enc, command, extra_ego_feat)
        return {**enc.perception, **out, "beam": enc.beam, "bev": enc.beam.bev}
