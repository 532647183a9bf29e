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
an insertion or, when the sample has a GT agent, a removal with equal odds (the lead
agent in half of those removals, when there is one). A
removal must name the agent *token* that is that GT agent: we take the agent query whose
predicted centre is nearest to the GT box centre (no gradient), a greedy stand-in for the
detection loss's Hungarian assignment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..qa import generate_qa, lead_agent, make_insert_edit, make_remove_edit
from ..qa.factual import factual_qa
from .mllm import EditBatch, MLLMBranch, MLLMTargets, QABatch
from .mllm.dual_tune import DualTuneConfig
from .mllm.losses import masked_trajectory_l1
from .mllm.qa_tune import QATuneConfig
from .planner import SceneEncoding, VisionPlanner


@dataclass
class Stage2Config:
    qa_per_sample: int = 2  # random free-text QA pairs per sample per step (0: none)
    # The factual questions (qa/factual.py: vehicles ahead, lead distance, ego action,
    # pedestrian crossing) asked about every sample in every step; `dima eval --qa` scores them.
    factual_qa: bool = True
    # DriveLM-nuScenes QA JSON (v1.1 format, qa/drivelm.py): samples it covers take their free-
    # text QA from it instead of the generated perception/prediction/planning pairs.
    drivelm_path: str | None = None
    edit_fraction: float = 0.5  # share of samples that also get a scene edit
    future_bev: bool = True  # future BEV prediction (needs the next keyframes' images)
    mllm_lr_mult: float = 0.5  # MLLM trainable parameters' lr = optim.lr * this
    mllm_weight: float = 1.0  # total = planner loss + mllm_weight * MLLM total
    # Dual: the planning head also plans from max(planner, MLLM) ego features (see forward)
    dual_weight: float = 0.0
    # Gradient clipping per parameter group: the planner's at optim.grad_clip, the MLLM
    # branch's (Q-Formers, LoRA, heads) at this. One global norm over both let the MLLM's
    # larger gradients scale every planner update down (by 0.4-0.6 in the old runs).
    mllm_grad_clip: float = 5.0
    # Loss balancing on the shared encoder (image + BEV encoder): each MLLM loss's weight
    # is set, the first time that loss appears, to make its gradient norm on the encoder
    # this fraction of the planner losses' (measured on that batch, then fixed; see
    # LossBalancer). None: use mllm.loss_weights as given.
    encoder_grad_fraction: float | None = 0.1
    # Distillation starts only once the MLLM's planning head beats the planner on the
    # validation split (checked at each validation, logged as val/distill_open).
    distill_gate: bool = True
    grad_probe_every: int = 50  # log per-loss encoder gradient norms every N steps (0: never)
    qa_tune: QATuneConfig = field(default_factory=QATuneConfig)  # QA fine-tuning at the end
    dual_tune: DualTuneConfig = field(default_factory=DualTuneConfig)  # then Dual calibration


def scene_qa(samples: Sequence, k: int, rng: np.random.Generator, factual: bool = False,
             drivelm: dict | None = None) -> QABatch:
    """Per sample: k random free-text pairs (DriveLM's for samples `drivelm` covers, else
    generated from the annotations) plus, with `factual`, the four factual pairs."""

    per_sample = []
    for s in samples:
        free = list(drivelm.get(s.token, [])) if drivelm else []
        free = free or generate_qa(s)
        if k <= 0:
            free = []
        elif len(free) > k:
            free = [free[j] for j in sorted(rng.choice(len(free), k, replace=False))]
        per_sample.append((factual_qa(s) if factual else []) + free)
    return QABatch.from_pairs(per_sample)


@torch.no_grad()
def nearest_agent_token(pred_boxes: torch.Tensor, xy: np.ndarray) -> int:
    """Agent query (of one sample's (Na, >=2) predicted boxes) nearest to GT centre xy."""
    d = (pred_boxes[:, :2].float().cpu() - torch.as_tensor(np.asarray(xy, np.float32))).norm(dim=-1)
    return int(d.argmin())


def scene_edits(samples: Sequence, pred_boxes: torch.Tensor, fraction: float, descriptor_dim: int,
                rng: np.random.Generator) -> EditBatch | None:
    edits = []
    for i, s in enumerate(samples):
        if rng.random() >= fraction:
            edits.append(None)
            continue
        if len(s.agent_boxes) and rng.random() < 0.5:
            # Half of the removals take the lead agent when there is one: the edits where
            # the plan changes (the ego is released) are the informative ones.
            lead = lead_agent(s)
            a = lead if lead is not None and rng.random() < 0.5 else int(rng.integers(len(s.agent_boxes)))
            edits.append(make_remove_edit(s, a, nearest_agent_token(pred_boxes[i], s.agent_boxes[a, :2])))
        else:
            edits.append(make_insert_edit(s, rng))
    return EditBatch.from_edits(edits, descriptor_dim)


class DiMAJoint(nn.Module):
    """One module for DDP: planner forward + planner losses + MLLM forward on its tokens."""

    def __init__(self, planner: VisionPlanner, mllm: MLLMBranch, drivelm: dict | None = None):
        super().__init__()
        self.planner = planner
        self.mllm = mllm
        self.drivelm = drivelm  # {sample token: [QAPair]} from Stage2Config.drivelm_path
        # Distillation gate: the MLLM teaches the planner only once its own planning head is
        # better on validation (set by the trainer after each validation; logged).
        self.distill_open = False
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
        dt = self.mllm.dtype
        beam = {k: getattr(pred["beam"], k).to(dt) for k in ("bev", "ego", "agent", "map")}
        qa = scene_qa(samples, cfg.qa_per_sample, rng, cfg.factual_qa, self.drivelm)
        edits = scene_edits(samples, pred["agent_boxes"], cfg.edit_fraction, self.mllm.cfg.edit_descriptor_dim, rng)
        # KL on the planner's pre-activation ego feature (after its ReLU half the channels
        # are exactly zero), only while the distillation gate is open.
        student = pred.get("ego_feat_pre", pred["ego_feat"]).to(dt) if self.distill_open else None
        targets = MLLMTargets.from_samples(
            samples, planner_ego_feature=student, edits=edits,
            future_bev=None if fut_bev is None else fut_bev.to(dt),
            future_bev_mask=None if future is None else future["mask"])
        mterms = self.mllm(beam, qa, targets)
        if cfg.dual_weight > 0:
            # Dual inference max-pools the MLLM's ego feature with the planner's and feeds
            # the planning head (docs/METHOD.md section 1). A head trained only on its own
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


# ------------------------------------------------------------------ loss balancing
MLLM_TERMS = ("qa", "plan", "bev_recon", "bev_future", "edit_qa", "edit_plan", "distill", "dual_plan")


def encoder_parameters(planner: VisionPlanner) -> list[nn.Parameter]:
    """The shared scene encoder: what both the planner and the MLLM losses train."""
    return [p for m in (planner.image_encoder, planner.bev_encoder) for p in m.parameters() if p.requires_grad]


def encoder_grad_norms(terms: dict[str, torch.Tensor], params: list[nn.Parameter]) -> dict[str, float]:
    """{term: L2 norm of d term / d encoder} (the graph is kept for the real backward)."""
    out = {}
    for name, t in terms.items():
        if not t.requires_grad:
            continue
        grads = torch.autograd.grad(t, params, retain_graph=True, allow_unused=True)
        out[name] = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))
    return out


class LossBalancer:
    """Weights of the MLLM losses in the stage-2 total.

    With `fraction` set, each MLLM loss's weight is calibrated once, at the first step it
    appears: w = fraction * |grad_enc(planner loss)| / |grad_enc(loss)|, so on that batch
    its gradient on the shared encoder is `fraction` of planning's (our rule; the paper
    gives no weights). Weights then stay fixed (saved with the run), so the objective
    does not chase noise. Without `fraction` the configured weights are used.
    """

    def __init__(self, configured: dict[str, float], fraction: float | None, max_weight: float = 1e3):
        self.configured = dict(configured)
        self.fraction = fraction
        self.max_weight = max_weight
        # A configured weight of 0 switches the term off in either mode (the ablations of
        # README "Stage 2"): it is never calibrated.
        self.weights: dict[str, float] = ({k: 0.0 for k, w in configured.items() if w == 0} if fraction is not None
                                          else dict(configured))

    def pending(self, mterms: dict[str, torch.Tensor]) -> list[str]:
        return [k for k in MLLM_TERMS if k in mterms and k not in self.weights]

    def calibrate(self, planner_loss: torch.Tensor, mterms: dict[str, torch.Tensor],
                  params: list[nn.Parameter]) -> dict[str, float]:
        """Set the weights of the pending terms; returns their encoder gradient norms."""
        names = self.pending(mterms)
        if not names:
            return {}
        norms = encoder_grad_norms({"planner": planner_loss, **{k: mterms[k] for k in names}}, params)
        for k in names:
            g = norms.get(k, 0.0)
            # A loss with no gradient on the encoder (e.g. a head-only term) keeps its
            # configured weight: there is nothing to balance.
            self.weights[k] = (min(self.fraction * norms["planner"] / g, self.max_weight) if g > 1e-12
                               else self.configured.get(k, 1.0))
        return norms

    def total(self, mterms: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = [self.weights.get(k, self.configured.get(k, 1.0)) * mterms[k].float()
                 for k in MLLM_TERMS if k in mterms]
        return sum(terms) if terms else mterms["total"].float() * 0.0
