"""Validation during training: the planner walks the split exactly as `dima eval` and the
node do (inference.Planner, one temporal rule), scored with the VAD-convention metrics."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..data.nuscenes_dataset import collate, occupancy_of
from ..eval.metrics import planning_metrics
from ..eval.qa import scene_frames
from ..inference import Planner
from ..model.planner import VisionPlanner


@torch.no_grad()
def predict_sequential(model: VisionPlanner, dataset, device: torch.device, progress: bool = False) -> np.ndarray:
    """(N, 6, 2) commanded trajectories, frames in dataset order, BEV chained within a scene."""
    planner = Planner(model, device)
    preds = [planner.predict(collate([dataset[i]]))[0]
             for i in tqdm(range(len(dataset)), desc="val", leave=False, disable=not progress)]
    return np.stack(preds)


@torch.no_grad()
def teacher_predictions(model: VisionPlanner, mllm, dataset, device: torch.device) -> np.ndarray:
    """(N, 6, 2) plans of the MLLM planning head (the distillation teacher) from the BEAM
    tokens the planner makes along the split (the reasoning node's path, eval/qa.py)."""
    frames = scene_frames(Planner(model, device), dataset, progress=False)
    was = mllm.training
    mllm.eval()
    out = []
    for f, r in zip(frames, dataset.records):
        beam = {k: torch.from_numpy(v)[None].to(device, mllm.dtype) for k, v in f.beam.items()}
        cmd = torch.tensor([int(r["command"])], device=device)
        out.append(mllm.plan_from_feature(mllm.dual_ego_feature(beam), cmd)[0].float().cpu().numpy())
    mllm.train(was)
    return np.stack(out)


def evaluate(model: VisionPlanner, dataset, device: torch.device, progress: bool = False,
             mllm=None) -> dict[str, float]:
    """VAD-convention L2 / collision of the model on `dataset` (valid samples only); with
    `mllm` also the MLLM planning head's L2 as "teacher_l2_avg" (the distillation gate)."""
    was = model.training
    pred = predict_sequential(model, dataset, device, progress)
    tpred = teacher_predictions(model, mllm, dataset, device) if mllm is not None else None
    model.train(was)
    gt = np.stack([r["ego_fut_traj"] for r in dataset.records])
    mask = np.stack([r["ego_fut_mask"] for r in dataset.records]) > 0
    occ = np.stack([occupancy_of(r) for r in dataset.records])
    out = planning_metrics(pred, gt, occ, valid=mask, convention="vad")
    if tpred is not None:
        out["teacher_l2_avg"] = planning_metrics(tpred, gt, occ, valid=mask, convention="vad")["l2_avg"]
    return out


class Validator:
    """Validation of a run: due every schedule.val_every steps and at the last one, on the
    main process; the objective reacts to the scores (stage 2: the distillation gate)."""

    def __init__(self, dataset, cfg, main: bool):
        self.dataset, self.every, self.main = dataset, cfg.schedule.val_every, main

    def due(self, step: int, total: int) -> bool:
        return (self.dataset is not None and self.main
                and (step == total or bool(self.every and step % self.every == 0)))

    def __call__(self, model: VisionPlanner, objective, device: torch.device, step: int, logger) -> dict[str, float]:
        metrics = evaluate(model, self.dataset, device, mllm=objective.mllm)
        model.train()
        logger.validation(step, metrics, objective.after_validation(metrics))
        return metrics
