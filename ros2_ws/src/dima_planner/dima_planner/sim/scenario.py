"""Scenarios: the generator's town and agents for a route, exactly as `dima synth` makes them.

A world scene `scene-000N` is rebuilt from the world's SynthConfig (dima_meta.json) with the
generator's own random stream for scene N-1, so the simulator starts from the very state the
world's images were rendered from. Generated routes use the streams of scene indices the
world does not have. Every scenario kind is the generator's own (synth/config.py SCENARIOS:
the braking lead, the pedestrian stepping out and the cut-in are scripted in synth/agents.py),
so a route of kind K drives exactly what the training scenes of kind K show.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dima_planner.config import ConfigError, from_dict
from dima_planner.synth import agents as ag_mod
from dima_planner.synth.config import SCENARIOS, SynthConfig
from dima_planner.synth.generate import META_NAME
from dima_planner.synth.roads import RoadNetwork, build_network

from .config import RouteSpec


@dataclass
class Turn:
    """A junction turn of the route (geometry only: the command comes from route_command)."""
    s0: float  # route coordinate where the manoeuvre starts / ends
    s1: float
    left: bool


@dataclass
class Scenario:
    name: str
    kind: str
    synth: SynthConfig  # the world's config: town, rig, renderer
    net: RoadNetwork
    agents: list[ag_mod.Agent]  # index 0 is the ego (its path is the route)
    route_s0: float  # where the ego starts on its route
    route_s1: float  # where the route ends (the scripted ego's position after `seconds`)
    seconds: float
    turns: list[Turn]
    expert_times: np.ndarray  # the generator's open-loop run (for reference plots)

    @property
    def route(self) -> ag_mod.Path:
        return self.agents[0].path

    @property
    def route_length(self) -> float:
        return self.route_s1 - self.route_s0


def world_config(world: str | Path) -> tuple[SynthConfig, dict]:
    meta_path = Path(world) / META_NAME
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{meta_path}: not a generated world ({e}); run `dima synth --out {world}`") from None
    return from_dict(SynthConfig, meta["config"], str(meta_path)), meta


def find_turns(path: ag_mod.Path, s0: float, s1: float) -> list[Turn]:
    """Junction manoeuvres along the route: stretches of curvature turning > 45 degrees."""
    curv = path.curv
    bent = np.abs(curv) > 0.02
    out: list[Turn] = []
    i = 0
    n = len(curv)
    while i < n:
        if not bent[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and bent[j + 1]:
            j += 1
        dyaw = float(path.heading[j] - path.heading[i])
        a, b = float(path.s[i]), float(path.s[j])
        if abs(dyaw) > np.radians(45) and b > s0 and a < s1 + 30.0:
            out.append(Turn(a, b, dyaw > 0))
        i = j + 1
    return out


def build_scenario(spec: RouteSpec, world: str | Path) -> Scenario:
    synth, meta = world_config(world)
    if spec.scene:
        names = [s["name"] for s in meta["scenes"]]
        if spec.scene not in names:
            have = f"{names[0]}..{names[-1]}" if names else "none"
            raise ConfigError(f"route {spec.name!r}: {world} has no scene {spec.scene!r} (it has {have})")
        index = names.index(spec.scene)
        kind = meta["scenes"][index]["scenario"]
    else:
        index, kind = spec.index, spec.kind
        if kind not in SCENARIOS:
            raise ConfigError(f"route {spec.name!r}: unknown kind {kind!r} (known: {', '.join(SCENARIOS)})")
    net = build_network(synth.seed, synth.grid_nodes)
    rng = np.random.default_rng([synth.seed, 7, index])  # the generator's stream of scene `index`
    agents = ag_mod.make_scene_agents(net, synth, kind, rng)
    # The generator's open-loop run: where the scripted ego is after `seconds` ends the route.
    ref = copy.deepcopy(agents)
    times = ag_mod.simulate(ref, spec.seconds)
    k = int(np.searchsorted(times, spec.seconds))
    ego = ref[0]
    travelled = float(np.sum(np.linalg.norm(np.diff(ego.xy[: k + 1], axis=0), axis=1)))
    s0 = agents[0].s0
    s1 = min(s0 + travelled, agents[0].path.length - 5.0)
    return Scenario(spec.name, kind, synth, net, agents, s0, s1, spec.seconds,
                    find_turns(agents[0].path, s0, s1), times)


def with_scale(cfg: SynthConfig, scale: float) -> SynthConfig:
    """The world's config rendering at another resolution (town and agents do not depend on it)."""
    return replace(cfg, scale=scale)
