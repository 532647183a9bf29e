"""`dima eval`: score a checkpoint and/or the baselines on a nuScenes-format split.

Writes <out>/metrics.json (every method, both conventions, long-tail subsets),
<out>/metrics.md (tables), <out>/bars_<convention>.png and <out>/bev_<i>.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASELINES = ("const_vel", "ego_mlp", "ego_mlp_noego")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataroot", required=True, help="nuScenes-format dataroot")
    parser.add_argument("--version", default="v1.0-mini", help="table folder, e.g. v1.0-mini, v1.0-trainval")
    parser.add_argument("--split", default="val", help="scene split to score (train, val, test, all)")
    parser.add_argument("--train-split", default="train", help="split the ego-MLP baseline is fitted on")
    parser.add_argument("--checkpoint", default=None, help="planner checkpoint (dima_planner.inference)")
    parser.add_argument("--baselines", nargs="*", default=["const_vel", "ego_mlp"], choices=BASELINES,
                        help="baselines to score (none: --baselines with no value)")
    parser.add_argument("--mlp-weights", default=None,
                        help="ego-MLP safetensors to load; trained on --train-split and saved in --out if absent")
    parser.add_argument("--mlp-config", default=None, help="YAML with EgoMLPConfig fields (params/eval_mlp.yaml)")
    parser.add_argument("--out", default="runs/eval", help="output folder")
    parser.add_argument("--convention", choices=("vad", "uniad", "both"), default="both",
                        help="metric convention(s); VAD is DiMA's main table")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"), default=None,
                        help="image size for the checkpoint (default: the dataset config's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-plots", type=int, default=4, help="BEV figures of the first valid samples")
    parser.add_argument("--cache-dir", default=None, help="annotation cache folder (default ~/.cache/dima)")


def run(args: argparse.Namespace) -> int:
    from ..config import load_yaml
    from ..data.nuscenes_dataset import DataRootError, DatasetConfig, ImageLoadError, NuScenesPlanningDataset
    from ..data.splits import SplitError
    from .baselines import ConstantVelocity, EgoMLP, EgoMLPConfig, train_ego_mlp
    from .evaluate import evaluate, format_table
    from .plots import plot_bev, plot_method_bars

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    conventions = ("vad", "uniad") if args.convention == "both" else (args.convention,)
    if not args.checkpoint and not args.baselines:
        print("dima eval: nothing to score (give --checkpoint and/or --baselines)", file=sys.stderr)
        return 2

    def dataset(split: str, images: bool) -> NuScenesPlanningDataset:
        kw = {"image_size": list(args.image_size)} if args.image_size else {}
        return NuScenesPlanningDataset(DatasetConfig(dataroot=args.dataroot, version=args.version, split=split,
                                                     load_images=images, cache_dir=args.cache_dir, **kw))

    try:
        plain = dataset(args.split, images=False)
        methods = {}
        if "const_vel" in args.baselines:
            methods["const_vel"] = ConstantVelocity().predict
        for name in ("ego_mlp", "ego_mlp_noego"):
            if name not in args.baselines:
                continue
            weights = Path(args.mlp_weights) if args.mlp_weights and name == "ego_mlp" else out / f"{name}.safetensors"
            if weights.exists():
                model = EgoMLP.load(weights)
            else:
                cfg = load_yaml(EgoMLPConfig, args.mlp_config) if args.mlp_config else EgoMLPConfig()
                cfg.use_ego_status = name == "ego_mlp"
                model = train_ego_mlp(dataset(args.train_split, images=False), cfg)
                model.save(weights)
                print(f"trained {name} on split {args.train_split!r} -> {weights}")
            methods[name] = model.predict
        results = {name: evaluate(fn, plain, conventions, batch_size=args.batch_size, keep_predictions=True)
                   for name, fn in methods.items()}
        if args.checkpoint:
            try:
                from ..inference import load_planner
            except ImportError as e:
                print(f"dima eval: model inference is unavailable ({e}); score baselines only", file=sys.stderr)
                return 2
            planner = load_planner(args.checkpoint)
            results["planner"] = evaluate(planner.predict, dataset(args.split, images=True), conventions,
                                          batch_size=args.batch_size, keep_predictions=True)
    except (DataRootError, SplitError, ImageLoadError, FileNotFoundError, ValueError) as e:
        print(f"dima eval: {e}", file=sys.stderr)
        return 2

    preds = {name: res.pop("predictions") for name, res in results.items()}
    (out / "metrics.json").write_text(json.dumps({"split": args.split, "version": args.version,
                                                  "dataroot": str(args.dataroot), "methods": results}, indent=2))
    tables = [format_table(results, c) for c in conventions]
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
