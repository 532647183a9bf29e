"""Scenarios: the generator's town and agents for a route, exactly as `dima synth` makes them.

A world scene `scene-000N` is rebuilt from the world's SynthConfig (dima_meta.json) with the
generator's own random stream for scene N-1, so the simulator starts from the very state the
world's images were rendered from. Generated routes use the streams of scene indices the
world does not have. Two kinds are derived here from the generator's: `lead_brake` (the
stop-and-go lead vehicle brakes mid-block instead of queueing at a light) and
`ped_step_out` (a pedestrian crosses mid-block without waiting for traffic).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dima_planner.config import ConfigError, from_dict
from dima_planner.data.sample import CMD_LEFT, CMD_RIGHT, CMD_STRAIGHT
from dima_planner.synth import agents as ag_mod
from dima_planner.synth.config import SCENARIOS, SynthConfig
from dima_planner.synth.generate import META_NAME
from dima_planner.synth.roads import HALF_W, SIDEWALK_W, RoadNetwork, build_network

from .config import SIM_KINDS, RouteSpec

_BASE_KIND = {"lead_brake": "stop_and_go", "ped_step_out": "straight"}


@dataclass
class Turn:
    s0: float  # route coordinate where the manoeuvre starts / ends
    s1: float
    command: int  # CMD_LEFT / CMD_RIGHT


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

    def command_at(self, s: float, speed: float) -> int:
        """The manoeuvre at the next junction, as CARLA's navigation commands, issued once the
        turn is within the 3 s horizon the planner was trained with (at least 12 m)."""
        horizon = max(12.0, 3.0 * speed)
        for t in self.turns:
            if t.s1 > s and t.s0 - s <= horizon:
                return t.command
        return CMD_STRAIGHT


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
            out.append(Turn(a, b, CMD_LEFT if dyaw > 0 else CMD_RIGHT))
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
        if kind not in (*SCENARIOS, *SIM_KINDS):
            raise ConfigError(f"route {spec.name!r}: unknown kind {kind!r} (known: {', '.join((*SCENARIOS, *SIM_KINDS))})")
    net = build_network(synth.seed, synth.grid_nodes)
    rng = np.random.default_rng([synth.seed, 7, index])  # the generator's stream of scene `index`
    agents = ag_mod.make_scene_agents(net, synth, _BASE_KIND.get(kind, kind), rng)
    if kind == "lead_brake":
        _lead_brake(agents)
    elif kind == "ped_step_out":
        _ped_step_out(agents, net, synth, rng)
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


def _lead_brake(agents: list[ag_mod.Agent]) -> None:
    """The stop-and-go lead no longer waits at the light: at 3.5 s it brakes hard to a stop
    ~10 m ahead of where it is, stands for 5 s, then drives on."""
    lead = next(a for a in agents[1:] if a.stop_s is not None)
    li = agents.index(lead)
    lead.red_t, lead.green_t = 3.5, 8.5
    ref = copy.deepcopy(agents)
    ref[li].stop_s = None
    times = ag_mod.simulate(ref, lead.red_t)
    k = int(np.searchsorted(times, lead.red_t))
    moved = float(np.sum(np.linalg.norm(np.diff(ref[li].xy[: k + 1], axis=0), axis=1)))
    lead.stop_s = lead.s0 + moved + lead.size[1] / 2 + 10.0


def _ped_step_out(agents: list[ag_mod.Agent], net: RoadNetwork, cfg: SynthConfig, rng) -> None:
    """A pedestrian walks across the ego's road mid-block without waiting for traffic: it
    reaches the ego's lane centre 1 s before the generator's scripted ego (the expert's
    pace) would pass there, 9 s into the route. Not reacting means hitting it."""
    ego = agents[0]
    t_arrive = 9.0
    ref = copy.deepcopy(agents)
    times = ag_mod.simulate(ref, t_arrive + 1.0)
    k = int(np.searchsorted(times, t_arrive))
    s_cross = ego.s0 + float(np.sum(np.linalg.norm(np.diff(ref[0].xy[: k + 1], axis=0), axis=1)))
    p, h = ego.path.at(s_cross)
    right = np.array([np.sin(h), -np.cos(h)])
    # The path is the lane centre; the road's centre line lies lane_off to its left.
    lane_off = _centre_line_offset(p, net)
    to_kerb = HALF_W - lane_off + SIDEWALK_W / 2
    start = p + right * to_kerb
    end = p - right * (lane_off + HALF_W + SIDEWALK_W / 2)
    speed = 1.3
    ped = ag_mod.Agent("pedestrian", np.array([0.65, 0.7, 1.75]), (230, 60, 40),
                       path=ag_mod.Path(np.array([start, end])), s0=0.0, v0=speed, vmax=speed,
                       start_t=max(0.0, t_arrive - 1.0 - to_kerb / speed))
    agents.append(ped)


def _centre_line_offset(p: np.ndarray, net: RoadNetwork) -> float:
    """Distance from point p to the nearest road centre line (an edge of the road graph)."""
    best = np.inf
    for a, b in net.edges():
        pa, pb = net.nodes[a], net.nodes[b]
        d = pb - pa
        t = np.clip(np.dot(p - pa, d) / np.dot(d, d), 0, 1)
        best = min(best, float(np.linalg.norm(p - (pa + t * d))))
    return best


def with_scale(cfg: SynthConfig, scale: float) -> SynthConfig:
    """The world's config rendering at another resolution (town and agents do not depend on it)."""
    return replace(cfg, scale=scale)
