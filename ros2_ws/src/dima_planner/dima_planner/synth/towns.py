"""The towns of a world and the scenes each holds: a location-disjoint split.

A world has `towns.train` training towns, `towns.val` validation towns and `towns.heldout`
held-out towns, each its own road network drawn from the world seed (roads.build_network).
Every scene is first given its split (train/val, as `val_fraction`, `stratified_split` and
`val_only_scenarios` say), then a town of that role, in turn. So no validation scene drives
a road of a training town, and no scene at all drives a held-out town: those are for the
closed-loop bench (sim/scenario.py builds its routes there). Everything here is a pure
function of the SynthConfig: the generator, the dataset split and the simulator agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dima_planner.config import ConfigError

from .config import TOWN_ROLES, SynthConfig
from .roads import Town

PER_LOG = 4  # scenes per log (a log has one location, as in nuScenes)


def world_towns(cfg: SynthConfig) -> list[Town]:
    """The world's towns, training towns first, then validation, then held-out ones."""
    t = cfg.towns
    out = []
    for code, role in enumerate(TOWN_ROLES):
        for j in range(getattr(t, role)):
            # The stream depends on (seed, role, j) only: adding a held-out town leaves the others as they were.
            out.append(Town(name=f"dima-{cfg.seed}-{role}-{j}", role=role, seed=(cfg.seed, 1001, code, j),
                            grid_nodes=tuple(t.grid_nodes), block_length=tuple(t.block_length),
                            skew_deg=t.skew_deg, jitter=t.jitter, rotate=t.rotate))
    return out


def find_town(cfg: SynthConfig, town: str) -> Town:
    """A town by name, or the first town of a role ("train", "val", "heldout")."""
    towns = world_towns(cfg)
    for tw in towns:
        if tw.name == town:
            return tw
    if town in TOWN_ROLES:
        of_role = [tw for tw in towns if tw.role == town]
        if of_role:
            return of_role[0]
        raise ConfigError(f"the world has no {town} town (towns: {', '.join(tw.name for tw in towns)})")
    raise ConfigError(f"the world has no town {town!r} (towns: {', '.join(tw.name for tw in towns)}; "
                      f"or a role: {', '.join(TOWN_ROLES)})")


def towns_of(cfg: SynthConfig, which: str) -> list[Town]:
    """Every town of a role, or the one town of that name."""
    of_role = [tw for tw in world_towns(cfg) if tw.role == which]
    return of_role if which in TOWN_ROLES and of_role else [find_town(cfg, which)]


def scene_splits(cfg: SynthConfig, n: int) -> list[str]:
    """Per scene "train"/"val". stratified_split or val_only_scenarios: val_only_scenarios all
    go to val; of every other scenario, val_fraction of its scenes (at least one where it has
    two or more), seeded. Otherwise a seeded random val_fraction of the scenes."""
    rng = np.random.default_rng([cfg.seed, 77])
    if not (cfg.stratified_split or cfg.val_only_scenarios):
        n_val = int(round(n * cfg.val_fraction))
        if cfg.val_fraction > 0 and n >= 2:
            n_val = max(1, min(n - 1, n_val))
        val = set(rng.permutation(n)[:n_val].tolist())
        return ["val" if i in val else "train" for i in range(n)]
    out = ["train"] * n
    for scenario in dict.fromkeys(cfg.scenarios):
        idx = [i for i in range(n) if cfg.scenarios[i % len(cfg.scenarios)] == scenario]
        if scenario in cfg.val_only_scenarios:
            chosen = idx
        else:
            k = int(round(len(idx) * cfg.val_fraction))
            k = max(1, min(len(idx) - 1, k)) if len(idx) >= 2 and cfg.val_fraction > 0 else k
            chosen = rng.permutation(idx)[:k].tolist()
        for i in chosen:
            out[i] = "val"
    return out


@dataclass(frozen=True)
class ScenePlace:
    split: str  # "train" | "val"
    town: Town
    log: int  # index into scene_logs(cfg)


def scene_places(cfg: SynthConfig) -> list[ScenePlace]:
    """Split, town and log of every scene: the scenes of a split go to the towns of that role in turn."""
    splits = scene_splits(cfg, cfg.num_scenes)
    towns = world_towns(cfg)
    by_role = {role: [tw for tw in towns if tw.role == role] for role in TOWN_ROLES}
    count = {role: 0 for role in TOWN_ROLES}
    town_of = []
    for split in splits:
        if not by_role[split]:
            raise ConfigError(f"the world has {split} scenes but no {split} town (set towns.{split} >= 1)")
        town_of.append(by_role[split][count[split] % len(by_role[split])])
        count[split] += 1
    # Logs: each town's scenes in order, PER_LOG to a log.
    logs = scene_logs(cfg, town_of)
    log_of = {}
    for li, (tw, members) in enumerate(logs):
        for i in members:
            log_of[i] = li
    return [ScenePlace(splits[i], town_of[i], log_of[i]) for i in range(cfg.num_scenes)]


def scene_logs(cfg: SynthConfig, town_of: list[Town]) -> list[tuple[Town, list[int]]]:
    out = []
    for tw in world_towns(cfg):
        members = [i for i, t in enumerate(town_of) if t == tw]
        for k in range(0, len(members), PER_LOG):
            out.append((tw, members[k:k + PER_LOG]))
    return out


def scene_ego_tracks(cfg: SynthConfig, indices: list[int], seconds: float | None = None) -> list[np.ndarray]:
    """(K, 3) x, y, yaw of the ego every 0.5 s over `seconds` (default scene_seconds) in each
    scene of `indices`, from the generator's own streams and towns, without rendering:
    where the world's scenes drive, for measuring what they share (data.splits.lane_overlap)."""
    from . import agents as ag_mod
    from .roads import build_network

    places = scene_places(cfg)
    nets: dict[str, object] = {}
    seconds = cfg.scene_seconds if seconds is None else seconds
    out = []
    for i in indices:
        town = places[i].town
        net = nets.setdefault(town.name, build_network(town))
        rng = np.random.default_rng([cfg.seed, 7, i])  # scene i's stream, as the generator draws it
        agents = ag_mod.make_scene_agents(net, cfg, cfg.scenarios[i % len(cfg.scenarios)], rng)
        times = ag_mod.simulate(agents, seconds)
        ts = np.arange(0.0, seconds + 1e-9, 0.5)
        out.append(np.array([ag_mod.interp_state(agents[0], times, t)[:3] for t in ts]))
    return out
