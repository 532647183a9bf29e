"""What a training step optimises. The loop calls `objective(batch, step)` and backpropagates
terms["loss"]; stage 1 and stage 2 differ only here, not in the loop.

    PlannerObjective  stage 1: VAD's planner losses (model/losses.py)
    DiMAObjective     stage 2: the same plus the MLLM branch's losses (model/joint.py)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..eval.qa import scene_frames
from ..inference import Planner
from ..model.augment import augment_inputs
from ..model.joint import DiMAJoint, LossBalancer, MLLM_TERMS, encoder_grad_norms, encoder_parameters
from ..model.losses import planning_losses
from ..model.mllm import MLLMBranch
from ..model.mllm.dual_tune import DualTuneData, requires_grad, tune_dual
from ..model.mllm.qa_tune import stack_beams, tune_qa
from ..model.planner import VisionPlanner, count_parameters
from ..qa.drivelm import load_drivelm
from .data import to_device

MLLM_LOSSES = ("qa", "plan", "bev_recon", "bev_future", "edit_qa", "edit_plan", "distill", "dual_plan", "total")


class PlannerObjective:
    """Stage 1: the vision planner alone."""

    def __init__(self, model: VisionPlanner, cfg, device: torch.device, rank: int = 0):
        self.model, self.cfg, self.device, self.rank = model, cfg, device, rank
        self.module: nn.Module = model  # what DDP wraps and the optimiser's extra groups come from
        self.forward_module: nn.Module = model  # replaced by the DDP wrapper when distributed
        self.mllm = None

    def extra_param_groups(self) -> list[dict[str, Any]]:
        return []

    def inputs(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        """Model inputs, augmented (cfg.augment) with draws from (seed, step, rank): resume stays exact."""
        inp = to_device(batch["inputs"], self.device)
        if self.cfg.augment.enabled:
            g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 64 + self.rank)
            inp = augment_inputs(inp, self.cfg.augment, g)
        return inp

    def predict(self, batch: dict[str, Any], step: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return self.forward_module(**self.inputs(batch, step)), {}

    def __call__(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        with autocast:
            pred, extra = self.predict(batch, step)
        cfg = self.cfg
        terms = planning_losses({k: v.float() if torch.is_tensor(v) else v for k, v in pred.items()},
                                to_device(batch["targets"], self.device), cfg.losses,
                                (cfg.model.bev_range_x, cfg.model.bev_range_y))
        return self.combine(terms, extra)

    def combine(self, terms: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return terms

    def describe(self) -> str:
        return ""

    def clip_gradients(self) -> dict[str, float]:
        """Clip and return the gradient norms ({"grad_norm": ...} and per-group extras)."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        return {"grad_norm": float(nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip))}

    def scalars(self) -> dict[str, float]:
        """Extra TensorBoard scalars of the last step (name -> value)."""
        return {}

    def after_validation(self, metrics: dict[str, Any]) -> str:
        """React to a validation (stage 2: the distillation gate); returns a log line or ""."""
        return ""

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def finish(self, train_ds, run_dir) -> dict[str, Any]:
        """Work after the last step (stage 2: QA fine-tuning); returns extra checkpoint meta."""
        return {}


class DiMAObjective(PlannerObjective):
    """Stage 2: planner + MLLM branch trained jointly (DiMA); the MLLM's losses are added
    with weight stage2.mllm_weight."""

    def __init__(self, model: VisionPlanner, mllm, cfg, device: torch.device, rank: int = 0,
                 train_tokens: list[str] | None = None):
        super().__init__(model, cfg, device, rank)
        self.mllm = mllm
        drivelm = None
        if cfg.stage2.drivelm_path:
            drivelm = load_drivelm(cfg.stage2.drivelm_path)
            if rank == 0:
                covered = sum(t in drivelm for t in (train_tokens or []))
                print(f"DriveLM QA {cfg.stage2.drivelm_path}: {len(drivelm)} key frames, {covered} of "
                      f"{len(train_tokens or [])} training samples covered", file=sys.stderr)
        self.module = DiMAJoint(model, mllm.train(), drivelm)
        self.module.distill_open = not cfg.stage2.distill_gate
        self.forward_module = self.module
        self.future_steps = cfg.mllm.surrogate.future_steps if cfg.stage2.future_bev else 0
        self.balancer = LossBalancer(vars(cfg.mllm.loss_weights) | {"dual_plan": cfg.stage2.dual_weight},
                                     cfg.stage2.encoder_grad_fraction)
        self.encoder_params = encoder_parameters(model)
        self.planner_params = [p for p in model.parameters() if p.requires_grad]
        self.encoder_norms: dict[str, float] = {}
        self._norms: dict[str, float] = {}
        self._step = 0

    def extra_param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.mllm.trainable_parameters(), "lr": self.cfg.optim.lr * self.cfg.stage2.mllm_lr_mult}]

    def predict(self, batch: dict[str, Any], step: int):
        # QA subsets and edits drawn from (seed, step, rank): resume stays exact.
        self._step = step
        rng = np.random.default_rng([self.cfg.seed, step, self.rank])
        return self.forward_module(self.inputs(batch, step), batch["samples"], rng, self.cfg.stage2,
                                   to_device(batch["future"], self.device))

    def combine(self, terms, mterms):
        s2 = self.cfg.stage2
        terms["planner_loss"] = terms["loss"]
        self.encoder_norms = {}
        if self.balancer.pending(mterms):
            self.encoder_norms = self.balancer.calibrate(terms["planner_loss"], mterms, self.encoder_params)
            if self.rank == 0:
                print(f"step {self._step}: MLLM loss weights "
                      f"{', '.join(f'{k} {v:.3g}' for k, v in self.balancer.weights.items())} "
                      f"(encoder grad fraction {s2.encoder_grad_fraction})", file=sys.stderr)
        elif s2.grad_probe_every and (self._step + 1) % s2.grad_probe_every == 0 and self.rank == 0:
            # Per-loss gradient norm on the shared encoder, weighted as in the total.
            self.encoder_norms = encoder_grad_norms(
                {"planner": terms["planner_loss"],
                 **{k: self.balancer.weights.get(k, 1.0) * mterms[k].float() for k in MLLM_TERMS if k in mterms}},
                self.encoder_params)
        mterms["total"] = self.balancer.total(mterms)
        terms.update({f"mllm_{k}": v.float() for k, v in mterms.items() if k in MLLM_LOSSES})
        terms["loss"] = terms["loss"] + s2.mllm_weight * mterms["total"].float()
        return terms

    def clip_gradients(self) -> dict[str, float]:
        # Per group: one global norm over both branches let the MLLM's larger gradients
        # scale every planner update down.
        self._norms = {
            "grad_norm": float(nn.utils.clip_grad_norm_(self.planner_params, self.cfg.optim.grad_clip)),
            "grad_norm_mllm": float(nn.utils.clip_grad_norm_(self.mllm.trainable_parameters(),
                                                             self.cfg.stage2.mllm_grad_clip))}
        return self._norms

    def scalars(self) -> dict[str, float]:
        out = {f"loss_weight/{k}": v for k, v in self.balancer.weights.items()}
        out.update({f"grad_encoder/{k}": v for k, v in self.encoder_norms.items()})
        return out

    def after_validation(self, metrics: dict[str, Any]) -> str:
        joint = self.module
        was = joint.distill_open
        joint.distill_open = was or metrics["teacher_l2_avg"] < metrics["l2_avg"]
        metrics["distill_open"] = joint.distill_open
        return (f"MLLM planning head (teacher) L2 avg {metrics['teacher_l2_avg']:.3f} m vs planner "
                f"{metrics['l2_avg']:.3f} m: distillation {'on' if joint.distill_open else 'off'}"
                f"{' (gate opened)' if joint.distill_open and not was else ''}")

    def state(self) -> dict[str, Any]:
        return {"loss_weights": self.balancer.weights, "distill_open": self.module.distill_open}

    def load_state(self, state: dict[str, Any]) -> None:
        self.balancer.weights = dict(state.get("loss_weights", self.balancer.weights))
        self.module.distill_open = bool(state.get("distill_open", self.module.distill_open))

    def finish(self, train_ds, run_dir) -> dict[str, Any]:
        """Stage 2's last phases, on the trained planner's BEAM tokens of every training
        frame (made once, by the planner node's own path): QA fine-tuning, then Dual
        calibration (it must follow: QA tuning moves the LLM's read-out under ego_proj)."""
        meta = self.state()
        s2 = self.cfg.stage2
        if s2.qa_tune.steps <= 0 and s2.dual_tune.steps <= 0:
            return meta
        frames = scene_frames(Planner(self.model, self.device), train_ds, progress=self.cfg.logging.progress)
        self.model.train()
        writer = None
        if self.cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(Path(run_dir) / "tb"))
        if s2.qa_tune.steps > 0:
            meta["qa_tune"] = qa_finetune(self.mllm, frames, self.cfg, writer)
        if s2.dual_tune.steps > 0:
            d = meta["dual_tune"] = dual_calibrate(self.model, self.mllm, frames, self.cfg, writer)
            b, a = d["before"], d["after"]
            print(f"Dual calibration on the training frames: plan L1 {b['dual_l1']:.3f} -> {a['dual_l1']:.3f} m "
                  f"(LLM-free {a['llm_free_l1']:.3f}), MLLM feature wins {b['mllm_share']:.0%} -> "
                  f"{a['mllm_share']:.0%} of the pooled channels, teacher {b['teacher_l1']:.3f} -> "
                  f"{a['teacher_l1']:.3f} m ({d['wall_s']:.0f} s)")
        if writer is not None:
            writer.close()
        return meta

    def describe(self) -> str:
        m = self.mllm
        return (f" + MLLM {sum(p.numel() for p in m.trainable_parameters()):,} trainable of "
                f"{count_parameters(m):,} (LLM loaded in {m.llm_load_seconds:.1f} s)")


def qa_finetune(mllm, frames: list, cfg, writer=None) -> dict[str, Any]:
    """QA fine-tuning (model/mllm/qa_tune.py): the MLLM branch learns QA on the trained
    planner's BEAM tokens of `frames` (eval.qa.scene_frames); the planner is frozen.
    Returns what the run did."""
    t0 = time.perf_counter()
    k = cfg.stage2.qa_tune.free_text_per_sample

    def qa_of(i: int, rng: np.random.Generator) -> list:
        free = frames[i].free_text
        pick = [free[j] for j in sorted(rng.choice(len(free), min(k, len(free)), replace=False))] if k > 0 else []
        return frames[i].factual + pick

    log = (lambda st, loss: writer.add_scalar("qa_tune/loss", loss, st)) if writer is not None else None
    losses = tune_qa(mllm, [f.beam for f in frames], qa_of, cfg.stage2.qa_tune, seed=cfg.seed, log=log,
                     progress=cfg.logging.progress)
    return {"steps": len(losses), "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "wall_s": round(time.perf_counter() - t0, 1)}


def dual_calibrate(model: VisionPlanner, mllm, frames: list, cfg, writer=None) -> dict[str, Any]:
    """Dual calibration (model/mllm/dual_tune.py) on `frames`: the LLM's read-out of each
    frame is computed once, then only the MLLM's ego projection and planning head learn;
    the planner's parameters are frozen for the duration. Returns the metrics before and
    after on the training frames."""
    t0 = time.perf_counter()
    dev, dt = mllm.device, mllm.dtype
    beams = [f.beam for f in frames]
    was = mllm.training
    mllm.eval()  # LoRA dropout off: the read-out as Dual inference computes it
    readout = torch.cat([mllm.readout_hidden(stack_beams(beams, range(k, min(k + 32, len(beams))), dev, dt))
                         for k in range(0, len(beams), 32)])
    mllm.train(was)
    stack = lambda key: torch.from_numpy(np.stack([getattr(f, key) for f in frames]).astype(np.float32)).to(dev, dt)  # noqa: E731
    data = DualTuneData(readout=readout, planner_feat=stack("ego_feat"),
                        command=torch.tensor([f.command for f in frames], device=dev),
                        target=stack("ego_fut_traj"), mask=stack("ego_fut_mask"))
    log = (lambda st, loss: writer.add_scalar("dual_tune/loss", loss, st)) if writer is not None else None
    with requires_grad(model.parameters(), False):  # no gradient reaches the planner's trajectory layer
        out = tune_dual(mllm, model.planning_head.trajectories, data, cfg.stage2.dual_tune, seed=cfg.seed, log=log,
                        progress=cfg.logging.progress)
    return {**out, "wall_s": round(time.perf_counter() - t0, 1)}


def build_mllm(cfg, device: torch.device):
    """The MLLM branch (loads the LLM: LLMNotFoundError names a missing folder)."""
    return MLLMBranch(cfg).to(device)


def make_objective(model: VisionPlanner, cfg, device: torch.device, rank: int = 0,
                   train_tokens: list[str] | None = None) -> PlannerObjective:
    if cfg.stage == 2:
        return DiMAObjective(model, build_mllm(cfg.mllm, device), cfg, device, rank, train_tokens)
    return PlannerObjective(model, cfg, device, rank)
