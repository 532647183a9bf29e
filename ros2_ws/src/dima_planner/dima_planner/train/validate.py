"""Validation during training: the planner walks the split exactly as `dima eval` and the
node do (inference.Planner, one temporal rule), scored with the VAD-convention metrics."""
from __future__ import annotations

import numpy as np
import torch

from ..model.planner import VisionPlanner


@torch.no_grad()
def predict_sequential(model: VisionPlanner, dataset, device: torch.device, progress: bool = False) -> np.ndarray:
    """(N, 6, 2) commanded trajectories, frames in dataset order, BEV chained within a scene."""
    from tqdm import tqdm

    from ..data.nuscenes_dataset import collate
    from ..inference import Planner

    planner = Planner(model, device)
    preds = [planner.predict(collate([dataset[i]]))[0]
             for i in tqdm(range(len(dataset)), desc="val", leave=False, disable=not progress)]
    return np.stack(preds)


def evaluate(model: VisionPlanner, dataset, device: torch.device, progress: bool = False) -> dict[str, float]:
    """VAD-convention L2 / collision of the model on `dataset` (valid samples only)."""
    from ..data.nuscenes_dataset import occupancy_of
    from ..eval.metrics import planning_metrics

    was = model.training
    pred = predict_sequential(model, dataset, device, progress)
    model.train(was)
    gt = np.stack([r["ego_fut_traj"] for r in dataset.records])
    mask = np.stack([r["ego_fut_mask"] for r in dataset.records]) > 0
    occ = np.stack([occupancy_of(r) for r in dataset.records])
    return planning_metrics(pred, gt, occ, valid=mask, convention="vad")
