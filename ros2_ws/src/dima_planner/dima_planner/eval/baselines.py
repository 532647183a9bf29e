"""Reference planners that need no images: constant velocity and an ego-state MLP (AD-MLP-like).

Both take a collated batch (`dima_planner.data.nuscenes_dataset.collate`) and return
float (B, 6, 2) LiDAR-frame waypoints, the same `predict(batch)` interface as the model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..data.sample import FUTURE_STEPS, STEP_SECONDS

_STEPS = torch.arange(1, FUTURE_STEPS + 1, dtype=torch.float32) * STEP_SECONDS


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


class ConstantVelocity:
    """Extrapolates the velocity of the last 0.5 s (current position minus the -0.5 s one).

    Where the -0.5 s keyframe is missing (scene start) it falls back to the ego-status
    velocity, which is the same finite difference taken over LIDAR_TOP poses.
    """

    name = "const_vel"

    def predict(self, batch: dict[str, Any]) -> np.ndarray:
        hist = _np(batch["ego_hist_traj"]).astype(np.float64)  # (B, 2, 2): -0.5 s, -1 s
        has = _np(batch["ego_hist_mask"])[:, 0] > 0
        v = np.where(has[:, None], -hist[:, 0] / STEP_SECONDS, _np(batch["ego_status"])[:, :2])
        return (v[:, None, :] * _STEPS.numpy()[None, :, None]).astype(np.float32)


@dataclass
class EgoMLPConfig:
    hidden: int = 256
    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    seed: int = 0
    use_ego_status: bool = True  # False: history + command only (a "no ego status" row)


def ego_features(batch: dict[str, Any], use_ego_status: bool = True) -> torch.Tensor:
    """(B, F) inputs: [ego status (6)] + history (4) + history mask (2) + command one-hot (3)."""
    parts = []
    if use_ego_status:
        parts.append(torch.as_tensor(_np(batch["ego_status"]), dtype=torch.float32))
    b = len(batch["command"])
    parts.append(torch.as_tensor(_np(batch["ego_hist_traj"]), dtype=torch.float32).reshape(b, -1))
    parts.append(torch.as_tensor(_np(batch["ego_hist_mask"]), dtype=torch.float32))
    parts.append(nn.functional.one_hot(torch.as_tensor(_np(batch["command"]), dtype=torch.int64), 3).float())
    return torch.cat(parts, dim=1)


class EgoMLP(nn.Module):
    """3-layer MLP on ego state -> 6 cumulative (x, y) waypoints, with stored input scaling."""

    name = "ego_mlp"

    def __init__(self, in_dim: int, cfg: EgoMLPConfig):
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden),
                                 nn.ReLU(), nn.Linear(cfg.hidden, FUTURE_STEPS * 2))
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).view(-1, FUTURE_STEPS, 2)

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> np.ndarray:
        self.eval()
        return self(ego_features(batch, self.cfg.use_ego_status)).numpy()

    def save(self, path: str | Path) -> None:
        meta = {"config": json.dumps(asdict(self.cfg)), "in_dim": str(self.mean.numel()), "kind": "dima.ego_mlp"}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "EgoMLP":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("kind") != "dima.ego_mlp":
            raise ValueError(f"{path} is not an ego-MLP baseline checkpoint (metadata kind={meta.get('kind')!r})")
        model = cls(int(meta["in_dim"]), EgoMLPConfig(**json.loads(meta["config"])))
        model.load_state_dict(load_file(str(path)))
        return model


def ego_arrays(dataset) -> dict[str, np.ndarray]:
    """The ego-only fields of a whole NuScenesPlanningDataset, read from its cached records."""
    recs = dataset.records
    if not recs:
        raise ValueError("ego_arrays: the dataset is empty")
    out = {k: np.stack([r[k] for r in recs]) for k in
           ("ego_status", "ego_hist_traj", "ego_hist_mask", "ego_fut_traj", "ego_fut_mask")}
    out["command"] = np.array([r["command"] for r in recs], np.int64)
    return out


def train_ego_mlp(train_set, cfg: EgoMLPConfig | None = None) -> EgoMLP:
    """Fit the MLP on a training split (L1 on the masked future waypoints). Seconds on CPU."""
    cfg = cfg or EgoMLPConfig()
    torch.manual_seed(cfg.seed)
    data = ego_arrays(train_set)
    x = ego_features(data, cfg.use_ego_status)
    y = torch.as_tensor(data["ego_fut_traj"], dtype=torch.float32)
    m = torch.as_tensor(data["ego_fut_mask"], dtype=torch.float32)[..., None]
    model = EgoMLP(x.shape[1], cfg)
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0).clamp_min(1e-3) if len(x) > 1 else torch.ones(x.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in tqdm(range(cfg.epochs), desc="ego-MLP", unit="epoch", leave=False):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i: i + cfg.batch_size]
            loss = ((model(x[idx]) - y[idx]).abs() * m[idx]).sum() / m[idx].sum().clamp_min(1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def cached_ego_mlp(weights: str | Path, fit: Callable[[], EgoMLP], key: str | None = None) -> EgoMLP:
    """The MLP saved at `weights`, or fit() saved there. With `key` (what the fit depends on:
    the data and the config) a stamp file beside the weights must match it, else it is refitted."""
    weights = Path(weights)
    stamp = weights.with_suffix(".world")
    if weights.exists() and (key is None or (stamp.exists() and stamp.read_text() == key)):
        return EgoMLP.load(weights)
    mlp = fit()
    weights.parent.mkdir(parents=True, exist_ok=True)
    mlp.save(weights)
    if key is not None:
        stamp.write_text(key)
    return mlp


def world_ego_mlp(world: str | Path, cache_dir: str | Path, cfg: EgoMLPConfig,
                  on_fit: Callable[[], None] | None = None) -> EgoMLP:
    """The ego-status MLP of a generated world (`dima eval`'s baseline), fitted on its train
    split once and cached in `cache_dir` (refitted when the world or the config changes)."""
    from ..data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset
    from ..data.splits import META_FILE

    meta = (Path(world) / META_FILE).read_text()

    def fit() -> EgoMLP:
        if on_fit is not None:
            on_fit()
        ds = NuScenesPlanningDataset(DatasetConfig(dataroot=str(world), version=json.loads(meta)["version"],
                                                   split="train", load_images=False))
        return train_ego_mlp(ds, cfg)

    return cached_ego_mlp(Path(cache_dir) / "ego_mlp.safetensors", fit, meta + repr(cfg))
