"""`dima demo`: the main job, end to end through real ROS 2 processes.

1. generate the embedded nuScenes-format world (or reuse it);
2. convert each validation scene to a rosbag2 (MCAP, JPEG cameras at 12 Hz, GT topics);
3. start `dima_planner_node` as its own process with the default checkpoint;
4. replay the bags into it with original timing and `/clock`, recording what it publishes;
   the replay is paced on the node: before the next front image goes out, the node has
   planned the previous one or said (in /diagnostics) why not, so every keyframe is planned
   however slow the machine; a keyframe without a plan is listed with the node's reason
   and fails the demo;
5. score the node's plans (VAD convention) next to the constant-velocity and ego-status
   MLP baselines on the same keyframes, print the table and write PNG figures.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rosbags.rosbag2 import Reader
from torch.utils.data import Subset

from . import resources
from .bags import bag_eval, bag_io
from .bags.bag_convert import GT_FORMAT, convert, load_nuscenes, select_scenes
from .config import add_set_argument, load_yaml, parse_overrides
from .data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset
from .eval.baselines import ConstantVelocity, EgoMLPConfig, world_ego_mlp
from .eval.evaluate import evaluate
from .eval.plots import plot_bev, plot_method_bars
from .ros.demo_replay import replay_into_nodes
from .ros.env import apply_ros_env_defaults
from .ros.in_the_loop import DimaInTheLoop
from .sim.config import BenchConfig, RoutesConfig, RouteSpec
from .sim.runner import expert_log, route_result
from .sim.scenario import demo_route
from .sim.viz import VideoWriter, plot_route
from .synth import SynthConfig, generate

# The demo is the project's own self-contained run: where the user exported no ROS_DOMAIN_ID
# it keeps to this one, away from the default domain (0) of the user's other ROS work.
DEMO_DOMAIN_ID = 42


@dataclass
class DemoConfig:
    synth_config: str = "params/synth.yaml"
    world: str = "data/world"
    checkpoint: str = resources.STAGE2_CHECKPOINT
    out: str = "out/demo"
    split: str = "val"
    max_scenes: int = 3  # validation scenes replayed through the node
    rate: float = 1.0  # playback speed
    # Keyframes only (2 Hz cameras): every replayed front image has ground truth. On a
    # 2-core CPU the node plans at ~4 Hz, so at 12 Hz it would skip most keyframes;
    # BENCHMARKS.md measures the 12 Hz load. Set false on a GPU machine.
    keyframes_only: bool = True
    node_params: list[str] = field(default_factory=lambda: [
        "params/ros/planner.yaml", "params/ros/replay.yaml", "params/ros/demo.yaml"])
    node_ready_timeout: float = 180.0
    frame_timeout: float = 20.0  # longest wait for the node's answer to one front image (s)
    domain_id: int | None = None  # None: the user's ROS_DOMAIN_ID, else DEMO_DOMAIN_ID; a number forces it
    with_mllm: bool = True  # start dima_mllm_node beside the planner and print its reasoning
    mllm_params: list[str] = field(default_factory=lambda: ["params/ros/mllm.yaml"])
    mllm_checkpoint: str = ""  # MLLM branch (Q-Formers, LoRA, heads); "" = the untrained branch
    num_reasoning: int = 3
    num_plots: int = 4
    mlp_config: str = "params/eval_mlp.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="params/demo.yaml", help="DemoConfig YAML")
    add_set_argument(parser)


_path = resources.repo_path  # config paths are the repository's (the demo runs from anywhere)


def _reasoning(run_bag: Path, limit: int) -> list[dict]:
    """The MLLM node's reasoning messages recorded in `run_bag`."""
    store = bag_io.make_typestore()
    out = []
    with Reader(run_bag) as reader:
        conns = [c for c in reader.connections if c.topic == bag_io.REASONING_TOPIC]
        for c, _t, raw in reader.messages(connections=conns):
            m = store.deserialize_cdr(raw, c.msgtype)
            out.append({"input_stamp": m.input_stamp.sec + m.input_stamp.nanosec * 1e-9,
                        "latency": float(m.latency), "text": m.text, "model_id": m.model_id})
    return out[:limit] if limit else out


def _ego_mlp(cfg: DemoConfig, world: Path, out: Path, console: Console):
    """The ego-status MLP baseline, fitted on the train split once per world and cached."""
    return world_ego_mlp(world, out, load_yaml(EgoMLPConfig, _path(cfg.mlp_config)),
                         on_fit=lambda: console.print("  fitting the ego-status MLP baseline on the train split"))


def closed_loop_demo(out: Path, checkpoint: Path, world: Path, console, route: RouteSpec | None = None) -> dict:
    """Drive `route` with dima_planner_node in lockstep over DDS; write closed_loop.{json,png,gif}."""
    route = route or demo_route(world)

    console.rule("[bold]closed loop: dima_planner_node drives a route of the world (dima_sim, lockstep)")
    cfg = load_yaml(BenchConfig, _path("params/sim/bench.yaml"))
    cfg = replace(cfg, sim=replace(cfg.sim, world=str(world)), checkpoint=str(checkpoint), routes=RoutesConfig(extra=[route]))
    out.mkdir(parents=True, exist_ok=True)
    video = VideoWriter(out / f"{route.name}.gif", cfg.sim.frame_hz, every=1)
    dima = DimaInTheLoop(cfg, out, console, _path)
    try:
        with console.status(f"driving {route.name} ({route.scene or route.kind}, {route.seconds:.0f} s of sim time)"):
            sim = dima.drive(route, video)
    finally:
        dima.close()
    expert = expert_log(sim.sc, cfg.sim)
    res = route_result(route.name, sim, cfg.sim, expert)
    (out / f"{route.name}.json").write_text(json.dumps(res, indent=1))
    plot_route(sim, out / f"{route.name}.png", f"{route.scene or route.kind} ({sim.sc.kind}): dima_planner_node",
               res, expert)
    gif = video.close()
    console.print(f"  driving score {res['driving_score']:.1f}, route completion {res['route_completion']:.1f} %, "
                  f"collisions {res['collisions']}, red flags {res['red_flags']}, "
                  f"{res['plans']} plans ({res['missed_plans']} missed)")
    console.print(f"  the route ended after {res['sim_seconds']:.1f} s of sim time: {res['end_detail']}")
    console.print(f"  wrote {out / (route.name + '.png')}, {gif} and {out / (route.name + '.json')}")
    return res


def run(args: argparse.Namespace) -> int:
    console = Console(width=max(Console().width, 100))
    cfg = load_yaml(DemoConfig, _path(args.config), parse_overrides(args.set))
    apply_ros_env_defaults(cfg.domain_id, DEMO_DOMAIN_ID)  # loopback-only DDS, own domain, before any rclpy
    out = _path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    # 1. The world.
    console.rule("[bold]1. embedded nuScenes-format world")
    world = generate(load_yaml(SynthConfig, _path(cfg.synth_config)), _path(cfg.world), progress=True)
    console.print(f"  dataroot {world}")

    # 2. Bags of the validation scenes, one per scene (scenes lie hours apart in time).
    console.rule("[bold]2. validation scenes -> rosbag2 (MCAP)")
    nusc = load_nuscenes(world, None)
    scenes = [s["name"] for s in select_scenes(nusc, world, nusc.version, None, cfg.split)][: cfg.max_scenes]
    bags = []
    for name in scenes:
        bag = out / "bags" / name
        stamp = bag / ".world"
        # Rebuilt when the world, the replay mode or the GT layout changed.
        meta = (world / "dima_meta.json").read_text() + repr((cfg.keyframes_only, GT_FORMAT))
        if not (stamp.exists() and stamp.read_text() == meta):
            convert(world, bag, scenes=[name], compressed=True, keyframes_only=cfg.keyframes_only,
                    overwrite=True, progress=True)
            stamp.write_text(meta)
        bags.append(bag)
    console.print(f"  {len(bags)} bag(s) under {out / 'bags'}: {', '.join(scenes)}")

    # 3-4. The planner node in its own process, fed by the bags.
    console.rule("[bold]3. dima_planner_node" + (" + dima_mllm_node" if cfg.with_mllm else "")
                 + " <- bag replay (real DDS, loopback)")
    run_bag = out / "node_outputs"
    if run_bag.exists():
        shutil.rmtree(run_bag)
    try:
        counts = replay_into_nodes(cfg, bags, run_bag, console, _path)
    except RuntimeError as e:  # a node failed to start: its log says why
        console.print(f"[red]dima demo: {e}[/]")
        return 1
    console.print(f"  recorded {counts['recorded']} from the node")

    # 5. Scores on the same keyframes.
    console.rule("[bold]4. open-loop planning metrics (VAD convention)")
    gts, preds = bag_eval.read_bags([*bags, run_bag], bag_eval.bag_io.TRAJECTORY_TOPIC)
    pairs = bag_eval.match(gts, preds, int(1e6))
    node_plans = {g.token: g.lidar_xy(p[:6]) for g, p in pairs if len(p) >= 6}
    if not node_plans:
        console.print(f"[red]the node published no plan matching a keyframe; see {out / 'planner_node.log'}[/]")
        return 1
    data_cfg = dict(dataroot=str(world), version=nusc.version, load_images=False)
    val = NuScenesPlanningDataset(DatasetConfig(split=cfg.split, **data_cfg))
    index = [i for i, t in enumerate(val.tokens) if t in node_plans]
    subset = Subset(val, index)
    mlp = _ego_mlp(cfg, world, out, console)
    methods = {
        "DiMA (node)": lambda b: np.stack([node_plans[t] for t in b["token"]]),
        "const. velocity": ConstantVelocity().predict,
        "ego-status MLP": mlp.predict,
    }
    results = {name: evaluate(fn, subset, ("vad", "uniad"), keep_predictions=True) for name, fn in methods.items()}
    bag_check = bag_eval.evaluate([*bags, run_bag])

    console.print(f"  {len(index)} of {len(gts)} keyframes planned by the node, {len(scenes)} val scene(s)")
    planned_stamps = {g.stamp_ns for g, p in pairs if len(p) >= 6}
    unplanned = {stamp: counts["skipped"].get(stamp, "planned, but the plan was not recorded")
                 for stamp in sorted(gts) if stamp not in planned_stamps}
    for stamp, reason in unplanned.items():
        console.print(f"  [red]keyframe {stamp / 1e9:.3f} s ({gts[stamp].token}) not planned: {reason}[/]")
    table = Table(title="open-loop planning, VAD convention")
    for col in ("method", "L2 1s", "L2 2s", "L2 3s", "L2 avg (m)", "col 1s", "col 2s", "col 3s", "col avg (%)"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, res in results.items():
        r = res["vad"]
        table.add_row(name, *[f"{r[k]:.3f}" for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg")],
                      *[f"{100 * r[k]:.2f}" for k in ("col_1s", "col_2s", "col_3s", "col_avg")])
    console.print(table)
    console.print(f"  cross-check, `dima bag eval` on the recorded bag alone: L2 avg {bag_check['l2_avg']:.3f} m, "
                  f"col avg {100 * bag_check['col_avg']:.2f} % over {bag_check['matched']} keyframes")

    reasoning = _reasoning(run_bag, 0) if cfg.with_mllm else []
    if cfg.with_mllm:
        console.rule("[bold]5. dima_mllm_node reasoning (/dima/reasoning)")
        if not reasoning:
            console.print(f"[yellow]  no reasoning was published; see {out / 'mllm_node.log'}[/]")
        for r in reasoning[: cfg.num_reasoning]:
            console.print(f"  [dim]input stamp {r['input_stamp']:.3f} s, latency {r['latency']:.2f} s, "
                          f"{r['model_id']}[/]\n  {r['text'].strip()}")

    preds_by_method = {name: res.pop("predictions") for name, res in results.items()}
    (out / "metrics.json").write_text(json.dumps(
        {"methods": results, "bag_eval": bag_check, "scenes": scenes, "keyframes": len(gts),
         "planned_keyframes": len(index), "unplanned": {str(k): v for k, v in unplanned.items()},
         "replay": {k: v for k, v in counts.items() if k != "skipped"}, "reasoning": reasoning},
        indent=2, default=float))
    plot_method_bars(results, out / "bars_vad.png", "vad")
    shown = 0
    for i in index:
        s = val[i]
        if s.valid and shown < cfg.num_plots:
            plot_bev(s, {n: np.asarray(p[s.token]) for n, p in preds_by_method.items()}, out / f"bev_{shown}.png")
            shown += 1
    console.print(f"  wrote {out / 'metrics.json'}, {out / 'bars_vad.png'} and {shown} BEV figure(s) "
                  f"in {time.monotonic() - t_start:.0f} s")

    closed_loop_demo(out, _path(cfg.checkpoint), world, console)
    if unplanned:
        console.print(f"[red]dima demo: {len(unplanned)} of {len(gts)} replayed keyframes were not planned "
                      f"(listed above with the node's reasons)[/]")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima demo", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
