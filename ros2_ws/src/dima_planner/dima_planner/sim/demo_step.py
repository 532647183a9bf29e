"""The closed-loop step of `dima demo`: the planner node drives one route (~20 s of sim time)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from dima_planner import resources
from dima_planner.config import load_yaml

from .config import BenchConfig, RoutesConfig, RouteSpec



def demo_route(world: Path, seconds: float = 20.0) -> RouteSpec:
    """A validation scene of the world, preferably one that turns."""
    from .scenario import world_config

    _, meta = world_config(world)
    val = [s for s in meta["scenes"] if s["split"] == "val"] or meta["scenes"]
    turns = [s for s in val if s["scenario"].startswith("turn")]
    return RouteSpec(name="closed_loop", scene=(turns or val)[0]["name"], seconds=seconds)


def closed_loop_demo(out: Path, checkpoint: Path, world: Path, console, route: RouteSpec | None = None) -> dict:
    """Drive `route` with dima_planner_node in lockstep over DDS; write closed_loop.{json,png,gif}."""
    from .cli import DimaInTheLoop
    from .runner import expert_log, route_result
    from .viz import VideoWriter, plot_route

    route = route or demo_route(world)

    console.rule("[bold]closed loop: dima_planner_node drives a route of the world (dima_sim, lockstep)")
    cfg = load_yaml(BenchConfig, resources.repo_path("params/sim/bench.yaml"))
    cfg = replace(cfg, sim=replace(cfg.sim, world=str(world)), checkpoint=str(checkpoint), routes=RoutesConfig(extra=[route]))
    out.mkdir(parents=True, exist_ok=True)
    video = VideoWriter(out / f"{route.name}.gif", cfg.sim.frame_hz, every=1)
    dima = DimaInTheLoop(cfg, out, console)
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
