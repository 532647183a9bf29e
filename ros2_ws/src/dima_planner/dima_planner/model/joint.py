"""Stage 2 of DiMA: the vision planner and the MLLM branch trained jointly.

    loss = VAD planner losses (model/losses.py)
         + MLLM losses (model/mllm): QA next-token CE, MLLM planning head, masked BEV
           reconstruction, future BEV prediction (t+1, t+2), scene editing (QA + edited
           plan) and distillation KL(MLLM ego feature || planner ego feature)
         + dual_weight * L1 of the plan made from max-pooled ego features (Dual)

The scene encoder is the MLLM's tokenizer: the BEAM tokens go to the MLLM *with* their
gradient, so every MLLM loss also trains the encoder (DiMA's point). The distillation
teacher (the MLLM's feature) is detached by MLLMConfig.distill.detach_teacher, so KL
moves only the planner's penultimate ego feature.

Future BEV targets (our choice, the paper does not say): the BEV tokens of the next one
and two keyframes of the same scene, computed by the *current* scene encoder under
no_grad from those frames' images alone (no temporal input, like the previous-frame BEV
in stage-1 training), so the targets follow the encoder as it trains. A missing future
frame (scene end) is masked out of the loss.

Scene edits (qa/scene_edit.py): each sample is edited with probability `edit_fraction`;
an insertion or, when the sample has a non-lead GT agent, a removal with equal odds. A
removal must name the agent *token* that is that GT agent: we take the agent query whose
predicted centre is nearest to the GT box centre (no gradient), a greedy stand-in for the
detection loss's Hungarian assignment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .mllm import EditBatch, MLLMBranch, MLLMTargets, QABatch
from .mllm.losses import masked_trajectory_l1
from .planner import SceneEncoding, VisionPlanner


@dataclass
class Stage2Config:
    qa_per_sample: int = 2  # random generated QA pairs per sample per step (0: no QA loss)
    edit_fraction: float = 0.5  # share of samples that also get a scene edit
    future_bev: bool = True  # future BEV prediction (needs the next keyframes' images)
    mllm_lr_mult: float = 0.5  # MLLM trainable parameters' lr = optim.lr * this
    mllm_weight: float = 1.0  # total = planner loss + mllm_weight * MLLM total
    # Dual: the planning head also plans from max(planner, MLLM) ego features (see forward)
    dual_weight: float = 0.0


def scene_qa(samples: Sequence, k: int, rng: np.random.Generator) -> QABatch:
    """QA generated from each Sample's annotations; k random pairs per sample."""
    from ..qa import generate_qa

    if k <= 0:
        return QABatch([], [], [])
    return QABatch.from_pairs([generate_qa(s) for s in samples], max_per_sample=k, rng=rng)


@torch.no_grad()
def nearest_agent_token(pred_boxes: torch.Tensor, xy: np.ndarray) -> int:
    """Agent query (of one sample's (Na, >=2) predicted boxes) nearest to GT centre xy."""
    d = (pred_boxes[:, :2].float().cpu() - torch.as_tensor(np.asarray(xy, np.float32))).norm(dim=-1)
    return int(d.argmin())


def scene_edits(samples: Sequence, pred_boxes: torch.Tensor, fraction: float, descriptor_dim: int,
                rng: np.random.Generator) -> EditBatch | None:
    from ..qa import lead_agent, make_insert_edit, make_remove_edit

    edits = []
    for i, s in enumerate(samples):
        if rng.random() >= fraction:
            edits.append(None)
            continue
        lead = lead_agent(s)
        removable = [a for a in range(len(s.agent_boxes)) if a != lead]
        if removable and rng.random() < 0.5:
            a = int(rng.choice(removable))
            edits.append(make_remove_edit(s, a, nearest_agent_token(pred_boxes[i], s.agent_boxes[a, :2])))
        else:
            edits.append(make_insert_edit(s, rng))
    return EditBatch.from_edits(edits, descriptor_dim)


class DiMAJoint(nn.Module):
    """One module for DDP: planner forward + planner losses + MLLM forward on its tokens."""

    def __init__(self, planner: VisionPlanner, mllm: MLLMBranch):
        super().__init__()
        self.planner = planner
        self.mllm = mllm
        c, h, w = planner.cfg.embed_dim, planner.cfg.bev_h, planner.cfg.bev_w
        m = mllm.cfg
        if (m.token_dim, m.planner_dim, tuple(m.bev_hw)) != (c, c, (h, w)):
            raise ValueError(f"the MLLM config expects tokens {m.token_dim} wide, a planner feature of "
                             f"{m.planner_dim} and a {m.bev_hw[0]}x{m.bev_hw[1]} BEV; the planner has "
                             f"{c}, {c} and {h}x{w}")

    @torch.no_grad()
    def future_bev(self, images: torch.Tensor, lidar2img: torch.Tensor,
                   can_bus: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, 6, 3, H, W) future frames -> (B, S, H*W, C) BEV targets (see module doc)."""
        b, s = images.shape[:2]
        was = self.planner.training
        self.planner.eval()
        bev = self.planner.encode_bev(images.flatten(0, 1), lidar2img.flatten(0, 1),
                                      can_bus=None if can_bus is None else can_bus.flatten(0, 1))
        self.planner.train(was)
        return bev.view(b, s, *bev.shape[1:])

    def forward(self, inputs: dict[str, torch.Tensor], samples: Sequence, rng: np.random.Generator,
                cfg: Stage2Config, future: dict[str, torch.Tensor] | None = None) -> tuple[dict, dict]:
        """(planner outputs, MLLM losses) for one batch; `samples` are the batch's Samples."""
        pred = self.planner(**inputs)
        fut_bev = None
        if future is not None:
            fut_bev = self.future_bev(future["images"], future["lidar2img"], future.get("can_bus"))
        dt = next(self.mllm.parameters()).dtype
        beam = {k: getattr(pred["beam"], k).to(dt) for k in ("bev", "ego", "agent", "map")}
        qa = scene_qa(samples, cfg.qa_per_sample, rng)
        edits = scene_edits(samples, pred["agent_boxes"], cfg.edit_fraction, self.mllm.cfg.edit_descriptor_dim, rng)
        targets = MLLMTargets.from_samples(
            samples, planner_ego_feature=pred["ego_feat"].to(dt), edits=edits,
            future_bev=None if fut_bev is None else fut_bev.to(dt),
            future_bev_mask=None if future is None else future["mask"])
        mterms = self.mllm(beam, qa, targets)
        if cfg.dual_weight > 0:
            # Dual inference max-pools the MLLM's ego feature with the planner's and feeds
            # the planning head (DIMA.md section 1). A head trained only on its own
            # feature meets a shifted input there, so it also learns to plan from the
            # pooled one (our choice; the paper does not say how Dual is trained).
            enc = SceneEncoding(beam=pred["beam"], perception=pred)
            dual = self.planner.plan(enc, inputs["command"], mterms["ego_feature"].to(pred["ego_feat"].dtype))
            dev = dual["plan"].device
            mterms["dual_plan"] = masked_trajectory_l1(dual["plan"], targets.ego_fut_traj.to(dev),
                                                       targets.ego_fut_mask.to(dev))
            mterms["total"] = mterms["total"] + cfg.dual_weight * mterms["dual_plan"].to(mterms["total"].dtype)
        return pred, mterms


def future_frames(dataset_items: Sequence, steps: int) -> dict[str, Any]:
    """Collate the next `steps` keyframes of each item: items are (sample, [next samples])."""
    cur = [c for c, _ in dataset_items]
    imgs, l2i, mask, cbus = [], [], [], []
    for c, nxt in dataset_items:
        frames = list(nxt[:steps])
        m = [1.0] * len(frames) + [0.0] * (steps - len(frames))
        frames += [c] * (steps - len(frames))  # padding, masked out
        imgs.append(np.stack([f.images for f in frames]))
        l2i.append(np.stack([f.lidar2img for f in frames]))
        cbus.append(np.stack([f.can_bus for f in frames]))
        mask.append(m)
    return {"images": torch.from_numpy(np.stack(imgs)).permute(0, 1, 2, 5, 3, 4),
            "lidar2img": torch.from_numpy(np.stack(l2i)), "can_bus": torch.from_numpy(np.stack(cbus)),
            "mask": torch.tensor(mask, dtype=torch.float32), "samples": cur}
