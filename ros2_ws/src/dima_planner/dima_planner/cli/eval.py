"""`dima eval`: score a checkpoint and/or the baselines on a nuScenes-format split.

Sharded: under torchrun (`torchrun --nproc_per_node=2 -m dima_planner.cli.eval ...`, or
`dima eval` started by torchrun) each rank scores a contiguous block of whole scenes and
rank 0 gathers the per-sample results and writes everything: the metrics equal a
single-process run's.

Writes <out>/metrics.json (every method, both conventions, every scenario subset, each
number with a 95 % confidence interval from a block bootstrap over scenes), <out>/metrics.md
(tables), <out>/bars_<convention>.png and <out>/bev_<i>.png; `--json FILE` writes the
metrics JSON there too. Methods are named `planner` (`planner_dual` with --dual),
`const_vel`, `ego_mlp`, `ego_mlp_noego`.

    dima eval --dataroot DIR --version V --split val --baselines const_vel ego_mlp --json FILE

`--method NAME=CHECKPOINT[:dual] ... --reference NAME [--block K]` compares checkpoints
instead, with paired moving-block bootstrap CIs (eval/compare.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..config import load_yaml
from ..data.nuscenes_dataset import DataRootError, DatasetConfig, ImageLoadError, NuScenesPlanningDataset
from ..data.sample import COMMAND_RULE, STEP_SECONDS
from ..data.splits import SplitError
from ..eval.baselines import ConstantVelocity, EgoMLP, EgoMLPConfig, cached_ego_mlp, train_ego_mlp
from ..eval.compare import run_compare
from ..eval.evaluate import Shard, evaluate, format_table
from ..eval.plots import plot_bev, plot_method_bars
from ..eval.qa import constant_answers, evaluate_qa, scene_frames, teacher_forced
from ..inference import load_planner
from ..qa.factual import QTYPES
from ..runtime.reasoning import DEFAULT_MAX_NEW_TOKENS, MLLMEngine, ModelLoadError

from .. import resources
from ..resources import DEFAULT_CHECKPOINT, STAGE2_CHECKPOINT

BASELINES = ("const_vel", "ego_mlp", "ego_mlp_noego")
DEFAULT_STAGE2_CHECKPOINT = STAGE2_CHECKPOINT  # dima eval --qa: the MLLM lives there


def resolve_default_checkpoint(value: str) -> Path:
    """A relative checkpoint path from the working directory, else from the repository."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.is_dir():
        return p
    q = resources.repo_path(p)
    return q if q.is_dir() else p


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataroot", required=True, help="nuScenes-format dataroot")
    parser.add_argument("--version", default="v1.0-mini", help="table folder, e.g. v1.0-mini, v1.0-trainval")
    parser.add_argument("--split", default="val", help="scene split to score (train, val, test, all)")
    parser.add_argument("--train-split", default="train", help="split the ego-MLP baseline is fitted on")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"planner checkpoint (default {DEFAULT_CHECKPOINT}; 'none': baselines only)")
    parser.add_argument("--baselines", nargs="*", default=["const_vel", "ego_mlp"], choices=BASELINES,
                        help="baselines to score (none: --baselines with no value)")
    parser.add_argument("--mlp-weights", default=None,
                        help="ego-MLP safetensors to load; trained on --train-split and saved in --out if absent")
    parser.add_argument("--mlp-config", default=None, help="YAML with EgoMLPConfig fields (params/eval_mlp.yaml)")
    parser.add_argument("--out", default="runs/eval", help="output folder")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help='also write the metrics JSON here (with --qa: {"qa": {"overall_exact_match", '
                             '"per_type", "num_questions", ...}})')
    parser.add_argument("--also", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="score another planner checkpoint in the same run under NAME (repeatable), "
                             "e.g. planner_camera_only=checkpoints/dima_tiny_camera_only")
    parser.add_argument("--convention", choices=("vad", "uniad", "both"), default="both",
                        help="metric convention(s); VAD is DiMA's main table")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-plots", type=int, default=4, help="BEV figures of the first valid samples")
    parser.add_argument("--cache-dir", default=None, help="annotation cache folder (default ~/.cache/dima)")
    parser.add_argument("--dual", action="store_true",
                        help="DiMA Dual inference: the MLLM's ego feature max-pooled into the planning head")
    parser.add_argument("--mllm-checkpoint", default=None,
                        help="MLLM checkpoint for --dual (default: --checkpoint, as stage 2 writes it)")
    parser.add_argument("--llm-path", default=None, help="LLM folder for --dual (default: the one in mllm.yaml)")
    parser.add_argument("--device", default="cpu", help="torch device for the checkpoint (cpu, cuda)")
    parser.add_argument("--qa", action="store_true",
                        help="score the reasoning node instead: factual QA exact match per question type "
                             f"(eval/qa.py) of --checkpoint (default {DEFAULT_STAGE2_CHECKPOINT}) on --split")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="--qa: generation limit (default: the reasoning node's max_new_tokens default)")
    parser.add_argument("--threads", type=int, default=2, help="--qa: torch CPU threads (latency is measured with them)")
    parser.add_argument("--qa-stride", type=int, default=1, metavar="K",
                        help="--qa: ask about every K-th frame only (the temporal BEV still sees every frame)")
    parser.add_argument("--no-free-text", action="store_true",
                        help="--qa: skip the free-text planning reasoning (its well-formedness)")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=CHECKPOINT[:dual]",
                        help="compare checkpoints instead (eval/compare.py): per-sample L2 avg of each, paired "
                             "moving-block bootstrap CIs against every --reference (repeatable)")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME",
                        help="--method: the method the others are compared with, paired (repeatable)")
    parser.add_argument("--block", type=int, default=5, help="--method: keyframes per bootstrap block")
    parser.add_argument("--reuse", action="append", default=[], metavar="JSON",
                        help="--method: an earlier --json of the same split; methods with the same "
                             "NAME=CHECKPOINT take their per-sample L2 from it instead of being evaluated again")


def run(args: argparse.Namespace) -> int:
    if args.qa:
        return run_qa(args)
    if args.method:
        return run_compare(args)
    out = Path(args.out)
    conventions = ("vad", "uniad") if args.convention == "both" else (args.convention,)
    if args.checkpoint and args.checkpoint.lower() != "none":
        args.checkpoint = str(resolve_default_checkpoint(args.checkpoint))
    else:
        args.checkpoint = None
    if not args.checkpoint and not args.baselines:
        print("dima eval: nothing to score (give --checkpoint and/or --baselines)", file=sys.stderr)
        return 2
    if args.dual and not args.checkpoint:
        print("dima eval: --dual needs --checkpoint", file=sys.stderr)
        return 2
    shard = Shard(args.device)
    try:
        return _run(args, out, conventions, shard, load_yaml, DataRootError, DatasetConfig, ImageLoadError,
                    NuScenesPlanningDataset, SplitError, ConstantVelocity, EgoMLP, EgoMLPConfig, train_ego_mlp,
                    evaluate, format_table, plot_bev, plot_method_bars)
    finally:
        shard.close()


def _run(args, out, conventions, shard, load_yaml, DataRootError, DatasetConfig, ImageLoadError,  # noqa: N803
         NuScenesPlanningDataset, SplitError, ConstantVelocity, EgoMLP, EgoMLPConfig, train_ego_mlp,
         evaluate, format_table, plot_bev, plot_method_bars) -> int:
    if shard.main:
        out.mkdir(parents=True, exist_ok=True)

    def dataset(split: str, images: bool, model_cfg=None) -> NuScenesPlanningDataset:
        # The checkpoint's image size and fit: the dataset resizes through data/inputs.py as in training.
        kw = {}
        if model_cfg is not None:
            kw = {"image_size": list(model_cfg.image_size), "image_fit": getattr(model_cfg, "image_fit", "stretch")}
        return NuScenesPlanningDataset(DatasetConfig(dataroot=args.dataroot, version=args.version, split=split,
                                                     load_images=images, cache_dir=args.cache_dir, **kw))

    try:
        plain = dataset(args.split, images=False)
        methods = {}
        if "const_vel" in args.baselines:
            methods["const_vel"] = ConstantVelocity().predict
        def fit_mlp(name: str, weights: Path) -> EgoMLP:
            cfg = load_yaml(EgoMLPConfig, args.mlp_config) if args.mlp_config else EgoMLPConfig()
            cfg.use_ego_status = name == "ego_mlp"
            model = train_ego_mlp(dataset(args.train_split, images=False), cfg)
            print(f"trained {name} on split {args.train_split!r} -> {weights}")
            return model

        for name in ("ego_mlp", "ego_mlp_noego"):
            if name not in args.baselines:
                continue
            weights = Path(args.mlp_weights) if args.mlp_weights and name == "ego_mlp" else out / f"{name}.safetensors"
            # Every rank sees the same answer to "exists?" (nobody writes between the
            # barriers); then only rank 0 fits and saves, and the others load its file.
            shard.barrier()
            existed = weights.exists()
            shard.barrier()
            if shard.main:
                model = cached_ego_mlp(weights, lambda: fit_mlp(name, weights))
            if not existed:
                shard.barrier()
            if not shard.main:
                model = EgoMLP.load(weights)
            methods[name] = model.predict
        sh = shard if shard.world > 1 else None
        results = {name: evaluate(fn, plain, conventions, batch_size=args.batch_size, keep_predictions=True, shard=sh)
                   for name, fn in methods.items()}
        if args.checkpoint:
            device = f"cuda:{shard.rank % max(1, _cuda_count())}" if args.device.startswith("cuda") and sh else args.device
            planner = load_planner(args.checkpoint, device, dual=args.dual, mllm_checkpoint=args.mllm_checkpoint,
                                   llm_path=args.llm_path)
            results["planner_dual" if args.dual else "planner"] = evaluate(
                planner.predict, dataset(args.split, images=True, model_cfg=planner.cfg), conventions,
                batch_size=args.batch_size, keep_predictions=True, shard=sh)
        for spec in args.also:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--also takes NAME=CHECKPOINT, got {spec!r}")
            other = load_planner(str(resolve_default_checkpoint(path)), args.device)
            results[name] = evaluate(other.predict, dataset(args.split, images=True, model_cfg=other.cfg),
                                     conventions, batch_size=args.batch_size, keep_predictions=True, shard=sh)
    except (DataRootError, SplitError, ImageLoadError, FileNotFoundError, ValueError) as e:  # CheckpointError too
        print(f"dima eval: {e}", file=sys.stderr)
        return 2
    if not shard.main:
        return 0

    preds = {name: res.pop("predictions") for name, res in results.items()}
    speed = speed_errors(plain, preds)
    for name, v in speed.items():
        results[name]["speed_mae"] = v  # |planned - true| speed over the first 0.5 s, m/s
    doc = json.dumps({"split": args.split, "version": args.version, "dataroot": str(args.dataroot),
                      "checkpoint": args.checkpoint, "command": COMMAND_RULE, "methods": results}, indent=2)
    (out / "metrics.json").write_text(doc)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(doc)
    tags = sorted({t for res in results.values() for t in res[conventions[0]]["subsets"]})
    tables = [format_table(results, c) for c in conventions]
    tables += [format_table(results, conventions[0], t) for t in tags]
    tables.append("Speed error over the first 0.5 s (m/s, mean absolute): "
                  + ", ".join(f"{n} {v:.3f}" for n, v in speed.items()))
    tables.append(f"Driving command given to every method: {COMMAND_RULE}")
    (out / "metrics.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))
    for c in conventions:
        plot_method_bars(results, out / f"bars_{c}.png", c)
    shown = 0
    for i in range(len(plain)):
        if shown >= args.num_plots:
            break
        s = plain[i]
        if s.valid:
            plot_bev(s, {n: p[s.token] for n, p in preds.items()}, out / f"bev_{shown}.png")
            shown += 1
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and {len(conventions) + shown} figures")
    return 0


def run_qa(args: argparse.Namespace) -> int:
    """`dima eval --qa`: the reasoning node's factual QA on --split (eval/qa.py)."""
    # --qa scores the MLLM branch: without an explicit --checkpoint, the stage-2 one.
    given = args.checkpoint and args.checkpoint not in (DEFAULT_CHECKPOINT, "none")
    ckpt = str(resolve_default_checkpoint(args.checkpoint if given else DEFAULT_STAGE2_CHECKPOINT))
    max_new = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    torch.set_num_threads(max(1, args.threads))
    try:
        planner = load_planner(ckpt, args.device)

        def dataset(split: str, images: bool) -> NuScenesPlanningDataset:
            # The checkpoint's image size and fit, as the planning evaluation above does.
            m = planner.cfg
            kw = {"image_size": list(m.image_size), "image_fit": getattr(m, "image_fit", "stretch")}
            return NuScenesPlanningDataset(DatasetConfig(dataroot=args.dataroot, version=args.version, split=split,
                                                         load_images=images, cache_dir=args.cache_dir, **kw))

        engine = MLLMEngine(llm_path=args.llm_path or "", checkpoint=args.mllm_checkpoint or ckpt,
                            device=args.device, num_threads=max(1, args.threads))
        constant = constant_answers(dataset(args.train_split, images=False))
        frames = scene_frames(planner, dataset(args.split, images=True))
    except (DataRootError, SplitError, ImageLoadError, FileNotFoundError, ValueError, CheckpointError,
            ModelLoadError) as e:
        print(f"dima eval --qa: {e}", file=sys.stderr)
        return 2
    frames = frames[:: max(1, args.qa_stride)]
    if not frames:
        print(f"dima eval --qa: split {args.split!r} has no samples", file=sys.stderr)
        return 2
    bev_hw = tuple(engine.cfg.bev_hw)
    res = evaluate_qa(engine, frames, bev_hw, constant, max_new, free_text=not args.no_free_text)
    if len({f.scene for f in frames}) > 1:
        branch = engine.branch_for(frames[0].beam, bev_hw)
        res["teacher_forced_token_accuracy"] = teacher_forced(branch, frames)
    res.update({"checkpoint": str(ckpt), "split": args.split, "num_frames": len(frames),
                "num_scenes": len({f.scene for f in frames}), "threads": args.threads})
    base = res["constant_baseline"]
    print(f"factual QA on {args.split} ({res['num_frames']} frames of {res['num_scenes']} scenes, "
          f"{res['num_questions']} questions), checkpoint {ckpt}")
    print(f"{'question type':<16}{'exact match':>12}{'constant':>10}")
    for t in QTYPES:
        print(f"{t:<16}{100 * res['per_type'][t]:>11.1f}%{100 * base['per_type'][t]:>9.1f}%")
    print(f"{'overall':<16}{100 * res['overall_exact_match']:>11.1f}%{100 * base['overall_exact_match']:>9.1f}%")
    lo, hi = res["overall_exact_match_ci95"]
    dlo, dhi = res["minus_constant_ci95"]
    print(f"overall 95 % CI [{lo:.1f}, {hi:.1f}]; minus the constant answer "
          f"{100 * (res['overall_exact_match'] - base['overall_exact_match']):+.1f} points [{dlo:+.1f}, {dhi:+.1f}] "
          f"(scenes resampled)")
    wf = res["well_formed"]
    print(f"well-formed: factual {100 * wf['factual']:.1f}%"
          + (f", planning reasoning {100 * wf['planning_free_text']:.1f}% of {wf['num_free_texts']} as the node "
             f"decodes it (answer grammar {'on' if wf['answer_grammar'] else 'off'}), "
             f"{100 * wf['planning_free_text_unconstrained']:.1f}% decoded freely"
             if wf["planning_free_text"] is not None else ""))
    slots = res.get("planning_slots", {})
    if slots.get("num"):
        print(f"planning reasoning says what the reference says ({slots['num']} texts): " + ", ".join(
            f"{k} {100 * slots[k]['accuracy']:.1f}% (constant {100 * slots[k]['constant']:.1f}%)"
            for k in ("action", "route", "reason_kind", "reason")))
    if "teacher_forced_token_accuracy" in res:
        tf = res["teacher_forced_token_accuracy"]
        print(f"teacher-forced answer-token accuracy: own scene tokens {100 * tf['own_tokens']:.1f}%, "
              f"another scene's {100 * tf['other_scene_tokens']:.1f}%")
    print(f"references longer than max_new_tokens={max_new}: {res['references_longer_than_max_new_tokens']}; "
          f"latency per answer p50 {res['latency_ms']['p50']:.0f} ms, p90 {res['latency_ms']['p90']:.0f} ms "
          f"({args.threads} threads)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"qa": res}, indent=2))
        print(f"wrote {args.json}")
    return 0


def speed_errors(dataset, preds: dict[str, dict[str, list]]) -> dict[str, float]:
    """Mean |planned speed - true speed| over the first 0.5 s step of valid samples (m/s):
    how well a method knows how fast the ego goes (a camera-only planner must see it)."""
    out = {}
    recs = [r for r in dataset.records if np.all(r["ego_fut_mask"] > 0)]
    for name, p in preds.items():
        errs = [abs(np.hypot(*np.asarray(p[r["token"]])[0]) - np.hypot(*r["ego_fut_traj"][0])) / STEP_SECONDS
                for r in recs if r["token"] in p]
        out[name] = float(np.mean(errs)) if errs else float("nan")
    return out


def _cuda_count() -> int:
    return torch.cuda.device_count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima eval", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
