"""`dima sim`: drive routes of the generated world in closed loop and score them.

    dima sim --bench                       # every planner on the benchmark routes, one table
    dima sim --bench --json out/sim/bench.json
    dima sim --route turn_left:101 --planner dima --video

The `dima` planner is the real `dima_planner_node` in its own process (default checkpoint,
use_sim_time), driven over DDS on loopback by the simulator node running in this process,
in lockstep. `dima_dual` is DiMA's Dual inference: the planner node with `dual_mode` (the
MLLM branch of the stage-2 checkpoint `dual_checkpoint` in its process, ego features
max-pooled into the planning head, exactly as `dima eval --dual`) drives, and
`dima_mllm_node` runs beside it on the planner's scene tokens, commenting. The expert and
the open-loop baselines run in-process through the same simulator and controller.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from .. import resources
from ..config import ConfigError, add_set_argument, load_yaml, parse_overrides
from ..data.sample import COMMAND_RULE
from ..ros.env import apply_ros_env_defaults
from ..ros.in_the_loop import DimaInTheLoop
from ..sim.config import BenchConfig, RouteSpec
from ..sim.planners import ConstVelPlanner, EgoMLPPlanner, Expert, RouteFollower, StandStill, fit_ego_mlp
from ..sim.runner import drive, route_result
from ..sim.scenario import bench_routes, build_scenario
from ..sim.scoring import route_bootstrap_ci
from ..sim.viz import VideoWriter, plot_route

PLANNERS = ("expert", "route_follower", "stand_still", "const_vel", "ego_mlp", "dima", "dima_dual")
# In every bench, whatever the config lists: the privileged expert (the simulator's sanity
# check), the route follower (what knowing the route alone scores) and standing still (what
# doing nothing scores): a planner is only worth its distance above these.
REFERENCES = ("expert", "route_follower", "stand_still")
NODE_PLANNERS = ("dima", "dima_dual")
MIN_RATED_SHARE = 0.5  # collisions/km only for a planner that drove at least this share of the routes


_path = resources.repo_path  # config paths are the repository's (the bench runs from anywhere)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="params/sim/bench.yaml", help="BenchConfig YAML")
    parser.add_argument("--bench", action="store_true", help="run every planner on every route of the config")
    parser.add_argument("--route", nargs="*", default=None, metavar="ROUTE",
                        help="routes instead of the config's: scene-000N, KIND:INDEX or KIND:INDEX@TOWN "
                             "(TOWN: a town name or role of the world; default its first held-out town), "
                             "or a route name of the config")
    parser.add_argument("--planner", "--planners", dest="planners", nargs="*", default=None, choices=PLANNERS,
                        help="planners (default: the config's with --bench, else dima)")
    parser.add_argument("--also", nargs="*", default=[], metavar="NAME=CHECKPOINT",
                        help="more planner nodes in the same run, each with its own checkpoint (e.g. "
                             "dima_stage1=checkpoints/dima_tiny_ego): paired CIs against every other planner")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--video", action="store_true", help="GIF of front camera + BEV per route (camera planners)")
    add_set_argument(parser)


def _routes(cfg: BenchConfig, names: list[str] | None) -> list[RouteSpec]:
    config_routes = bench_routes(cfg.routes, _path(cfg.sim.world))
    if not names:
        return config_routes
    by_name = {r.name: r for r in config_routes}
    return [by_name[n] if n in by_name else RouteSpec.parse(n) for n in names]


def add_paired_cis(results: dict[str, dict]) -> None:
    """Each learned planner's driving score minus each baseline's on the same routes, with
    a paired 95 % CI over routes (an interval containing 0 is noise)."""
    for name, r in results.items():
        if name == "expert":
            continue
        ds = [x["driving_score"] for x in r["routes"]]
        r["paired_vs"] = {}
        for other, o in results.items():
            if other in (name, "expert") or [x["name"] for x in o["routes"]] != [x["name"] for x in r["routes"]]:
                continue
            od = [x["driving_score"] for x in o["routes"]]
            r["paired_vs"][other] = {"diff": round(float(np.mean(ds) - np.mean(od)), 2),
                                     "ci95": route_bootstrap_ci(ds, od)}


def run(args: argparse.Namespace) -> int:
    console = Console(width=max(Console().width, 110))
    cfg = load_yaml(BenchConfig, _path(args.config), parse_overrides(args.set))
    cfg = replace(cfg, sim=replace(cfg.sim, world=str(_path(cfg.sim.world))))
    if not (Path(cfg.sim.world) / "dima_meta.json").exists():
        console.print(f"[red]dima sim: {cfg.sim.world} holds no generated world. Build it with "
                      f"`dima synth --config {cfg.world_synth_config} --out {cfg.sim.world}` (`make bench`).[/]")
        return 2
    planners = args.planners or (cfg.planners if args.bench else ["dima"])
    if args.bench:
        planners = [*REFERENCES, *[p for p in planners if p not in REFERENCES]]
    also = {}
    for spec in args.also:
        name, sep, ckpt = spec.partition("=")
        if not sep or not name or not ckpt or name in PLANNERS or name in also:
            console.print(f"[red]dima sim: --also takes NAME=CHECKPOINT with a new NAME, got {spec!r}[/]")
            return 2
        also[name] = ckpt
    planners = [*planners, *also]
    routes = _routes(cfg, args.route)
    if not routes:
        console.print("[red]dima sim: no routes (give --route or routes in the config)[/]")
        return 2
    apply_ros_env_defaults(cfg.domain_id)
    out = _path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    video = args.video or (args.bench and cfg.video)

    console.rule(f"[bold]closed loop: {len(routes)} route(s) x {', '.join(planners)}")
    bench_t0 = time.monotonic()
    scenarios, experts, expert_sims = {}, {}, {}
    ref_t0 = time.monotonic()
    try:
        for spec in tqdm(routes, desc="scenarios + expert reference", unit="route"):
            scenarios[spec.name] = build_scenario(spec, cfg.sim.world)
            # The expert's drive is the reference (progress_vs_expert) and its own result.
            expert_sims[spec.name] = drive(build_scenario(spec, cfg.sim.world), Expert().plan, cfg.sim)
            experts[spec.name] = expert_sims[spec.name].log
    except ConfigError as e:
        console.print(f"[red]dima sim: {e}[/]")
        return 2
    ref_wall = time.monotonic() - ref_t0
    results: dict[str, dict] = {}
    timing: dict[str, dict] = {}
    for name in planners:
        t0 = time.monotonic() - (ref_wall if name == "expert" else 0.0)  # the expert drove in the reference pass
        rows = []
        dima = None
        try:
            if name in also:
                dima = DimaInTheLoop(replace(cfg, checkpoint=also[name]), out, console, _path,
                                     log_name=f"planner_node_{name}.log")
            elif name in NODE_PLANNERS:
                dima = DimaInTheLoop(cfg, out, console, _path, dual=name == "dima_dual")
            elif name == "ego_mlp":
                with console.status("ego-status MLP baseline (fitted on the world's train split once, cached)"):
                    mlp = EgoMLPPlanner(fit_ego_mlp(cfg.sim.world, out, _path(cfg.mlp_config)))
            for spec in tqdm(routes, desc=name, unit="route", leave=False, disable=dima is not None):
                sc = scenarios[spec.name]
                if dima is not None:
                    writer = VideoWriter(out / f"{spec.name}_{name}.gif", cfg.sim.frame_hz, every=1) if video else None
                    bar = tqdm(total=round(sc.seconds + cfg.sim.timeout_slack, 1), desc=f"{name} {spec.name}",
                               unit="sim s", leave=False, bar_format="{l_bar}{bar}| {n:.1f}/{total} sim s [{elapsed}]")

                    def tick(sim, bar=bar):
                        bar.update(round(sim.t - bar.n, 3))

                    sim = dima.drive(spec, writer, tick)
                    bar.close()
                    if writer is not None:
                        writer.close()
                elif name == "expert":
                    sim = expert_sims[spec.name]
                else:
                    fresh = build_scenario(spec, cfg.sim.world)  # agents carry no state, but be explicit
                    planner = {"expert": Expert, "route_follower": RouteFollower, "stand_still": StandStill,
                               "const_vel": ConstVelPlanner}.get(name)
                    sim = drive(fresh, (planner() if planner else mlp).plan, cfg.sim)
                res = route_result(spec.name, sim, cfg.sim, experts[spec.name])
                rows.append(res)
                plot_route(sim, out / f"{spec.name}_{name}.png", f"{spec.name} ({sc.kind}): {name}", res,
                           experts[spec.name])
        except RuntimeError as e:
            console.print(f"[red]dima sim: {name}: {e}[/]")
            return 1
        finally:
            if dima is not None:
                dima.close()
        km = sum(r["distance_km"] for r in rows)
        route_km = sum(r["route_length_m"] for r in rows) / 1000.0
        results[name] = {
            "mean_driving_score": round(float(np.mean([r["driving_score"] for r in rows])), 2),
            "driving_score_ci95": route_bootstrap_ci([r["driving_score"] for r in rows]),
            "mean_route_completion": round(float(np.mean([r["route_completion"] for r in rows])), 2),
            # A rate over the distance driven: a planner that hardly drives has none (None), not 0.
            "collisions_per_km": (round(sum(r["collisions"] for r in rows) / km, 3)
                                  if km >= MIN_RATED_SHARE * route_km else None),
            "ends": {e: sum(r["end"] == e for r in rows) for e in sorted({r["end"] for r in rows})},
            "routes": rows,
        }
        timing[name] = {"wall_s": round(time.monotonic() - t0, 1),
                        "sim_s": round(sum(r["sim_seconds"] for r in rows), 1)}

    ckpts = f"{Path(cfg.checkpoint).name} for dima" + (
        f", {Path(cfg.dual_checkpoint).name} for dima_dual" if "dima_dual" in planners else "") + "".join(
        f", {Path(c).name} for {n}" for n, c in also.items())
    table = Table(title=f"closed loop, {len(routes)} routes ({cfg.sim.frame_hz:g} Hz lockstep, {ckpts})")
    add_paired_cis(results)
    for col in ("planner", "driving score [95% CI]", "route compl. (%)", "collisions/km", "routes DS >= 80",
                "route ends", "wall s / sim s"):
        table.add_column(col, justify="left" if col == "planner" else "right")
    for name, r in results.items():
        passed = sum(x["driving_score"] >= 80 for x in r["routes"])
        lo, hi = r["driving_score_ci95"]
        cpk = "n/a" if r["collisions_per_km"] is None else f"{r['collisions_per_km']:.2f}"
        ends = ", ".join(f"{n} {e}" for e, n in r["ends"].items())
        table.add_row(name, f"{r['mean_driving_score']:.1f} [{lo:.1f}, {hi:.1f}]", f"{r['mean_route_completion']:.1f}",
                      cpk, f"{passed}/{len(r['routes'])}", ends,
                      f"{timing[name]['wall_s'] / max(timing[name]['sim_s'], 1e-6):.2f}")
    console.print(table)
    console.print(f"  collisions/km: n/a where the planner drove less than {MIN_RATED_SHARE:.0%} of the routes' "
                  "length. No red-light infraction: the world has no traffic lights for the ego.")
    per_route = Table(title="driving score per route")
    per_route.add_column("route")
    for name in results:
        per_route.add_column(name, justify="right")
    for i, spec in enumerate(routes):
        per_route.add_row(spec.name, *[f"{results[n]['routes'][i]['driving_score']:.0f}" for n in results])
    console.print(per_route)
    wall = time.monotonic() - bench_t0
    doc = {"planners": results, "config": str(_path(args.config)), "frame_hz": cfg.sim.frame_hz,
           "checkpoint": cfg.checkpoint, "timing": timing, "wall_s": round(wall, 1), "command": COMMAND_RULE}
    if "dima_dual" in planners:
        doc["dual_checkpoint"] = cfg.dual_checkpoint
    if also:
        doc["also"] = also
    path = Path(args.json) if args.json else out / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    sim_s = sum(t["sim_s"] for t in timing.values())
    console.print(f"  wall time {wall:.0f} s for {sim_s:.0f} simulated seconds ({wall / max(sim_s, 1e-6):.2f} s per "
                  f"simulated second over all planners; per planner in the table)")
    console.print(f"  wrote {path}, one PNG per route and planner in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dima sim", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
