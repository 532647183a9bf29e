"""The DAgger iterations: drive, label, write, aggregate, fine-tune, score; resumable.

    runs/dagger/
      init/                  iteration 0's learner (init_from, re-saved under train.model's geometry)
      eval_init.json         its closed-loop score on eval_routes (iteration -1)
      iter_00/world/         the iteration's drives, a nuScenes world with the expert's labels
      iter_00/train/         the fine-tune's run directory (resumable: train --resume)
      iter_00/model/         the fine-tuned planner: the next iteration's learner
      iter_00/eval.json      its closed-loop score on eval_routes
      progress.json          every iteration's scores (also TensorBoard: tb/)

Each stage is skipped when its output exists, so a rerun of the same command resumes at the
first missing one (a half-written world is redone; a fine-tune resumes from its last save).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint, read_model_config, replace_dir
from ..config import to_dict
from ..data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset
from ..inference import load_planner
from ..model.planner import VisionPlanner
from ..sim.runner import expert_log, route_result
from ..sim.scenario import bench_routes, build_scenario, world_config
from ..train.checkpoint import save_model_dir
from ..train.loop import train
from .config import DaggerConfig

GEOMETRY_ONLY = ("bev_range_x", "bev_range_y")  # model fields that change no weight's shape


class ConcatPlanningDataset:
    """Several NuScenesPlanningDatasets read as one (the bench world's training split and the
    on-policy worlds): what TemporalPairs and the trainer need of a dataset."""

    def __init__(self, parts: list):
        self.parts = parts
        self.records = [r for p in parts for r in p.records]
        self._where = [(k, i) for k, p in enumerate(parts) for i in range(len(p))]
        toks = self.tokens
        if len(set(toks)) != len(toks):
            raise ValueError("aggregated worlds share sample tokens: each must be written with its own key")

    def __len__(self) -> int:
        return len(self._where)

    @property
    def tokens(self) -> list[str]:
        return [r["token"] for r in self.records]

    def tags(self) -> dict[str, list[str]]:
        return {t: v for p in self.parts for t, v in p.tags().items()}

    def __getitem__(self, i: int):
        k, j = self._where[i]
        return self.parts[k][j]


def dataset(dataroot: str | Path, cfg: DaggerConfig, split: str = "train"):
    m = cfg.train.model
    # Agents are supervised over the whole BEV ahead (VAD's +/-30 m would leave a 45-m BEV's far
    # part without targets); map vectors keep the dataset's range.
    return NuScenesPlanningDataset(DatasetConfig(
        dataroot=str(dataroot), version=cfg.train.data.version, split=split, image_size=list(m.image_size),
        image_fit=m.image_fit, agent_range=[-m.bev_range_x, -m.bev_range_y, m.bev_range_x, m.bev_range_y]))


def prepare_init(cfg: DaggerConfig, out: Path) -> Path:
    """init_from as a checkpoint of train.model: itself when the configs are equal; re-saved
    when they differ only in the BEV's metric range (same weights, another cell size)."""
    src = Path(cfg.init_from)
    theirs, ours = read_model_config(src), cfg.train.model
    if theirs == ours:
        return src
    diff = [k for k in vars(ours) if getattr(theirs, k) != getattr(ours, k)]
    if set(diff) - set(GEOMETRY_ONLY):
        raise ValueError(f"init_from {src} differs from train.model in {', '.join(diff)}; only "
                         f"{', '.join(GEOMETRY_ONLY)} may differ")
    if (out / "config.yaml").is_file() and read_model_config(out) == ours:
        return out
    old, _ = load_checkpoint(src, "cpu")
    model = VisionPlanner(ours)
    model.load_state_dict(old.state_dict())  # the geometry buffers (non-persistent) are the new ones
    save_model_dir(out, model, cfg.train, None, {"from": str(src), "changed": {k: [getattr(theirs, k), getattr(ours, k)]
                                                                                 for k in diff}})
    return out


def drive_routes(cfg: DaggerConfig, routes_cfg, ckpt: Path | None, beta: float, rng: np.random.Generator,
                 perturb: bool, desc: str):
    """Drive every route of routes_cfg (learner from ckpt, or the expert alone)."""
    from tqdm import tqdm

    from .rollout import Start, draw_start, drive

    planner = load_planner(ckpt, num_threads=cfg.train.threads or None) if ckpt is not None else None
    out = []
    for spec in tqdm(bench_routes(routes_cfg, cfg.sim.world), desc=desc, unit="route"):
        start = draw_start(cfg.perturb, rng) if perturb else Start()
        out.append(drive(spec.name, build_scenario(spec, cfg.sim.world), cfg.sim, beta, planner, start,
                         cfg.segment_s, rng))
    return out


def closed_loop_score(cfg: DaggerConfig, ckpt: Path, desc: str) -> dict:
    """The learner alone (beta 0, unperturbed) on eval_routes, scored as the bench scores."""
    t0 = time.monotonic()
    drives = drive_routes(cfg, cfg.eval_routes, ckpt, 0.0, np.random.default_rng(0), False, desc)
    rows = []
    for spec, d in zip(bench_routes(cfg.eval_routes, cfg.sim.world), drives):
        rows.append(route_result(spec.name, d.sim, cfg.sim, expert_log(build_scenario(spec, cfg.sim.world), cfg.sim)))
    ds = [r["driving_score"] for r in rows]
    return {"checkpoint": str(ckpt), "mean_driving_score": round(float(np.mean(ds)), 2),
            "routes_ds_ge_80": int(sum(x >= 80 for x in ds)), "routes": rows,
            "wall_s": round(time.monotonic() - t0, 1)}


def run_dagger(cfg: DaggerConfig, progress: bool = True) -> dict:
    from .world import write_world

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    synth, meta = world_config(cfg.sim.world)
    tb = None
    if cfg.train.logging.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(str(out / "tb"))
    progress_path = out / "progress.json"
    log = json.loads(progress_path.read_text()) if progress_path.is_file() else {"iterations": []}

    def note(msg: str) -> None:
        print(f"[dagger {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def record(i: int, score: dict, extra: dict) -> None:
        row = {"iteration": i, "mean_driving_score": score["mean_driving_score"],
               "routes_ds_ge_80": score["routes_ds_ge_80"], "eval_routes": len(score["routes"]), **extra}
        log["iterations"] = [r for r in log["iterations"] if r["iteration"] != i] + [row]
        log["iterations"].sort(key=lambda r: r["iteration"])
        progress_path.write_text(json.dumps(log, indent=1))
        if tb is not None:
            tb.add_scalar("dagger/eval_driving_score", score["mean_driving_score"], i)
            tb.add_scalar("dagger/eval_routes_ds_ge_80", score["routes_ds_ge_80"], i)
            tb.flush()
        note(f"iteration {i}: closed-loop DS {score['mean_driving_score']:.1f} on {len(score['routes'])} eval "
             f"routes, {score['routes_ds_ge_80']} >= 80")

    learner = prepare_init(cfg, out / "init")
    if cfg.eval_init and not (out / "eval_init.json").is_file():
        note(f"scoring the starting learner {learner}")
        score = closed_loop_score(cfg, learner, "eval init")
        (out / "eval_init.json").write_text(json.dumps(score, indent=1))
        record(-1, score, {"checkpoint": str(learner)})
    base = dataset(cfg.train.data.dataroot, cfg)
    worlds = []
    for i, beta in enumerate(cfg.betas):
        it = out / f"iter_{i:02d}"
        world = it / "world"
        t0 = time.monotonic()
        if not (world / "dima_meta.json").is_file() or (world / ".dima_synth_incomplete").exists():
            note(f"iteration {i}: driving {sum(cfg.routes.kinds.values())} training routes, expert share {beta:g}")
            rng = np.random.default_rng([cfg.seed, i])
            drives = drive_routes(cfg, cfg.routes, None if beta >= 1.0 else learner, beta, rng, True, f"drive {i}")
            write_world(world, synth, meta, drives, key=f"dagger{i:02d}", progress=progress)
        t_drive = time.monotonic() - t0
        worlds.append(world)
        model_dir = it / "model"
        t1 = time.monotonic()
        if not (model_dir / "config.yaml").is_file():
            parts = [base] + [dataset(w, cfg) for w in worlds]
            train_ds = ConcatPlanningDataset(parts)
            note(f"iteration {i}: fine-tuning {learner} on {len(train_ds)} frames "
                 f"({len(base)} of the world + {len(train_ds) - len(base)} on-policy), {cfg.steps_per_iteration} steps")
            tcfg = replace(cfg.train, out_dir=str(it / "train"), export_dir=str(model_dir), init_from=str(learner),
                           seed=cfg.train.seed + i,
                           schedule=replace(cfg.train.schedule, steps=cfg.steps_per_iteration, epochs=None))
            train(tcfg, resume=(it / "train" / "last").is_dir(), datasets=(train_ds, None))
        t_train = time.monotonic() - t1
        learner = model_dir
        if not (it / "eval.json").is_file():
            score = closed_loop_score(cfg, learner, f"eval {i}")
            (it / "eval.json").write_text(json.dumps(score, indent=1))
            wmeta = json.loads((world / "dima_meta.json").read_text())
            record(i, score, {"beta": beta, "checkpoint": str(learner),
                              "onpolicy_frames": len(json.loads((world / "dima_plan_labels.json").read_text())),
                              "learner_frames": sum(s["learner_frames"] for s in wmeta["scenes"]),
                              "expert_frames": sum(s["expert_frames"] for s in wmeta["scenes"]),
                              "starts": {k: sum(s["start"] == k for s in wmeta["scenes"])
                                         for k in ("none", "offset", "rest", "fast")},
                              "drive_write_s": round(t_drive, 1), "train_s": round(t_train, 1)})
    if cfg.export_dir:
        import shutil

        # DAgger returns the best of its policies on validation (Ross et al., 2011), not the
        # last: the validation towns' closed-loop score picks it (ties: the later iteration).
        rows = [r for r in log["iterations"] if 0 <= r["iteration"] < cfg.iterations]
        best = max(rows, key=lambda r: (r["mean_driving_score"], r["iteration"]))
        chosen = out / f"iter_{best['iteration']:02d}" / "model"
        replace_dir(cfg.export_dir, lambda tmp: shutil.copytree(chosen, tmp, dirs_exist_ok=True))
        log["exported"] = {"iteration": best["iteration"], "to": str(cfg.export_dir)}
        progress_path.write_text(json.dumps(log, indent=1))
        note(f"exported iteration {best['iteration']} (best validation-town DS {best['mean_driving_score']:.1f}) "
             f"to {cfg.export_dir}")
    if tb is not None:
        tb.close()
    return log
