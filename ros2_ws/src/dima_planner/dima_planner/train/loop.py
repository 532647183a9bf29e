"""The training loop: plain, one objective, resumable (model, optimiser, scheduler, data
position, RNG states), DDP under torchrun (gloo on CPU, nccl on CUDA)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import to_dict
from ..model.planner import VisionPlanner, count_parameters
from .config import OptimConfig, ScheduleConfig, TrainConfig
from .data import ResumableBatches, TemporalPairs, collate_pairs
from .objective import make_objective
from .state import Distributed, load_init, load_train_state, save_model_dir, save_train_state, seed_everything
from .validate import evaluate


OBJECTIVE_STATE = "objective_state.json"  # stage 2: loss weights and the distillation gate


def lr_lambda(cfg: ScheduleConfig, total: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def build_optimizer(model: VisionPlanner, cfg: OptimConfig, extra_groups: list[dict[str, Any]] | None = None,
                    shard: bool = False) -> torch.optim.Optimizer:
    """AdamW over the planner (backbone at lr * backbone_lr_mult) plus `extra_groups` (stage 2:
    the MLLM branch's trainable parameters). shard: ZeroRedundancyOptimizer around AdamW, each
    rank holding the states of its shard only (needs an initialised process group)."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("image_encoder.trunk.") and p.requires_grad]
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult},
              *(extra_groups or [])]
    if shard:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=cfg.lr, betas=cfg.betas,
                                       weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


RESNET50_WEIGHTS = ("torchvision's ImageNet ResNet-50, https://download.pytorch.org/models/resnet50-0676ba61.pth "
                    "(or resnet50-19c8e357.pth, the weights VAD starts from)")


def check_backbone_weights(m) -> None:
    """VAD freezes the ResNet stem and BatchNorm on ImageNet weights: refuse to freeze random ones."""
    if not m.backbone.startswith("resnet") or (m.frozen_stages < 0 and not m.norm_eval):
        return
    from pathlib import Path as _P

    if not m.pretrained_path or not _P(m.pretrained_path).expanduser().is_file():
        raise FileNotFoundError(
            f"model.backbone {m.backbone} with frozen_stages {m.frozen_stages} / norm_eval {m.norm_eval} needs "
            f"ImageNet weights at model.pretrained_path (now {m.pretrained_path!r}): download "
            f"{RESNET50_WEIGHTS if m.backbone == 'resnet50' else 'torchvision ' + m.backbone + ' weights'} "
            "and point model.pretrained_path at the file (or set frozen_stages: -1, norm_eval: false "
            "to train the backbone from scratch)")


def build_datasets(cfg: TrainConfig):
    from ..data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset

    size = list(cfg.model.image_size)
    mk = lambda split: NuScenesPlanningDataset(DatasetConfig(  # noqa: E731
        dataroot=cfg.data.dataroot, version=cfg.data.version, split=split, image_size=size,
        image_fit=cfg.model.image_fit))
    return mk(cfg.data.train_split), (mk(cfg.data.val_split) if cfg.data.val_split else None)


def train(cfg: TrainConfig, resume: bool = False, datasets: tuple | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) training. Returns {"step", "losses": [...], "val": metrics or {}, "model",
    "mllm", "optimizer"}.

    datasets: (train, val or None) instead of building them from cfg.data.
    stop_after: leave after this global step with a checkpoint, as if interrupted (tests)."""
    from tqdm import tqdm

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dist = Distributed(cfg.device)
    device = dist.device(cfg.device)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.out_dir)
    train_ds, val_ds = datasets if datasets is not None else build_datasets(cfg)
    total = cfg.schedule.total_steps(len(train_ds), cfg.data.batch_size, dist.world)

    if not (resume or cfg.init_from):
        check_backbone_weights(cfg.model)
    model = VisionPlanner(cfg.model).to(device)
    if cfg.init_from and not resume:
        model.load_state_dict(load_init(cfg.init_from, cfg.model).state_dict())
    objective = make_objective(model, cfg, device, dist.rank, getattr(train_ds, "tokens", None))
    if objective.mllm is not None and cfg.mllm.llm.fsdp:
        if dist.enabled:
            from ..model.mllm.llm import shard_llm

            shard_llm(objective.mllm.llm)  # FSDP2 over the decoder layers; DDP below leaves the LLM alone
        else:
            print("note: mllm.llm.fsdp ignored: not a distributed run (world size 1)", file=sys.stderr)
    shard = cfg.optim.shard_states and dist.enabled
    if cfg.optim.shard_states and not dist.enabled:
        print("note: optim.shard_states ignored: not a distributed run (world size 1)", file=sys.stderr)
    optim = build_optimizer(model, cfg.optim, objective.extra_param_groups(), shard=shard)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(cfg.schedule, total))
    step = load_train_state(run_dir, model, cfg, optim, sched, device, objective.mllm) if resume else 0
    if resume and (run_dir / "last" / OBJECTIVE_STATE).is_file():
        objective.load_state(json.loads((run_dir / "last" / OBJECTIVE_STATE).read_text()))
    # The last validation before the interruption: a run resumed at its final step (to redo
    # only the work after it, e.g. QA fine-tuning) still exports the planner's scores.
    metrics: dict[str, Any] = {}
    if resume and (run_dir / "last" / "meta.json").is_file():
        metrics = dict(json.loads((run_dir / "last" / "meta.json").read_text()).get("val") or {})
    model.train()
    if dist.enabled:
        if objective.mllm is not None and cfg.mllm.llm.fsdp:
            # FSDP2 already reduces the LLM's (LoRA) gradients across ranks.
            llm = objective.mllm.llm
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                objective.module, [f"mllm.llm.{n}" for n, _ in llm.named_parameters()]
                + [f"mllm.llm.{n}" for n, _ in llm.named_buffers()])
        objective.forward_module = nn.parallel.DistributedDataParallel(
            objective.module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)

    fut_steps = getattr(objective, "future_steps", None)
    pairs = TemporalPairs(train_ds, cfg.data.cache_images, fut_steps, cfg.data.queue_length)
    sampler = ResumableBatches(len(pairs), cfg.data.batch_size, cfg.seed, step, total, dist.rank, dist.world)
    loader = torch.utils.data.DataLoader(pairs, batch_sampler=sampler, collate_fn=collate_pairs,
                                         num_workers=cfg.data.num_workers)
    writer = None
    if cfg.logging.tensorboard and dist.main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"))
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    if dist.main and cfg.logging.progress:
        print(f"stage {cfg.stage}: planner {count_parameters(model):,} parameters{objective.describe()}; "
              f"{len(pairs)} training samples; steps {step}..{total} at batch {cfg.data.batch_size} x "
              f"{dist.world} process(es), queue {cfg.data.queue_length}", file=sys.stderr)

    losses: list[float] = []
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not (cfg.logging.progress and dist.main))
    t0, seen = time.perf_counter(), 0
    for batch in loader:
        terms = objective(batch, step)
        optim.zero_grad(set_to_none=True)
        terms["loss"].backward()
        norms = objective.clip_gradients()
        optim.step()
        sched.step()
        step += 1
        loss = dist.all_mean(float(terms["loss"].detach()))
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {step}")
        losses.append(loss)
        seen += batch["images"].shape[0] * dist.world
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        post = {"loss": f"{loss:.3f}", "plan": f"{float(terms['plan'].detach()):.3f}"}
        if "mllm_total" in terms:
            post["mllm"] = f"{float(terms['mllm_total'].detach()):.3f}"
        bar.set_postfix(**post, sps=f"{rate:.1f}")
        if writer is not None and step % cfg.logging.log_every == 0:
            for k, v in terms.items():
                writer.add_scalar(f"train/{k}", float(v), step)
            writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
            for k, v in norms.items():
                writer.add_scalar(f"train/{k}", v, step)
            writer.add_scalar("train/samples_per_s", rate, step)
        if writer is not None:
            for k, v in objective.scalars().items():
                if k.startswith("grad_encoder/") or step % cfg.logging.log_every == 0:
                    writer.add_scalar(k, v, step)
        last = step == total
        interrupted = stop_after is not None and step >= stop_after and not last
        if val_ds is not None and dist.main and (last or (cfg.schedule.val_every and step % cfg.schedule.val_every == 0)):
            metrics = evaluate(model, val_ds, device, mllm=objective.mllm)
            model.train()
            bar.write(f"step {step} val: L2 avg {metrics['l2_avg']:.3f} m, collision avg "
                      f"{100 * metrics['col_avg']:.2f} % over {metrics['num_samples']} samples")
            note = objective.after_validation(metrics)
            if note:
                bar.write(f"step {step} val: {note}")
            if writer is not None:
                for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg", "col_avg", "teacher_l2_avg"):
                    if k in metrics:
                        writer.add_scalar(f"val/{k}", metrics[k], step)
                if "distill_open" in metrics:
                    writer.add_scalar("val/distill_open", float(metrics["distill_open"]), step)
        save_now = last or interrupted or bool(cfg.schedule.ckpt_every and step % cfg.schedule.ckpt_every == 0)
        if save_now and shard:
            optim.consolidate_state_dict(to=0)  # a collective: every rank, before rank 0 saves
        if dist.main and save_now:
            save_train_state(run_dir, model, cfg, optim, sched, step, metrics, objective.mllm,
                             {OBJECTIVE_STATE: json.dumps(objective.state())})
        if interrupted:
            break
    bar.close()
    if writer is not None:
        writer.close()
    extra_meta = objective.finish(train_ds, run_dir) if dist.main and step == total else {}
    if dist.main and cfg.export_dir and step == total:
        wall = time.perf_counter() - t0
        save_model_dir(cfg.export_dir, model, cfg, objective.mllm, {"step": step, "val": metrics,
                                                                    "train_wall_s": round(wall, 1), **extra_meta})
    dist.close()
    return {"step": step, "losses": losses, "val": metrics, "model": model, "mllm": objective.mllm,
            "optimizer": optim}
