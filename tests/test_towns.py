"""Towns: several road networks per world, a location-disjoint split, bench routes in held-out towns."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dima_planner.config import ConfigError, load_yaml, to_dict
from dima_planner.data.splits import SplitError, lane_overlap, scenes_in_split
from dima_planner.synth.config import SCENARIOS, SynthConfig, TownsConfig
from dima_planner.synth.roads import build_network
from dima_planner.synth.towns import scene_ego_tracks, scene_places, world_towns

REPO = Path(__file__).resolve().parents[1]


def _bench_cfg() -> SynthConfig:
    return load_yaml(SynthConfig, REPO / "params" / "synth_bench.yaml")


def test_bench_world_has_distinct_towns_per_role():
    cfg = _bench_cfg()
    towns = world_towns(cfg)
    roles = [t.role for t in towns]
    assert roles.count("train") >= 2 and roles.count("val") >= 1 and roles.count("heldout") >= 2
    assert len({t.name for t in towns}) == len(towns)
    nets = [build_network(t) for t in towns]
    # The layouts differ: grid sizes, junction angles off 90 degrees.
    assert len({len(n.nodes) for n in nets}) >= 2
    angles = []
    for n in nets:
        for b in n.adj:
            nb = n.adj[b]
            for i in range(len(nb)):
                for j in range(i + 1, len(nb)):
                    c = float(np.dot(n.direction(b, nb[i]), n.direction(b, nb[j])))
                    angles.append(np.degrees(np.arccos(np.clip(c, -1, 1))))
    perpendicular = [a for a in angles if 45 < a < 135]
    assert max(abs(a - 90) for a in perpendicular) > 3.0
    # Every town can hold every scenario (an edge long enough for overtakes and cut-ins).
    for n in nets:
        assert max(n.edge_length(a, b) for a, b in n.edges()) > 136.0
    # Scenes: only in train and val towns, each split in its own towns.
    places = scene_places(cfg)
    assert {p.split for p in places} == {"train", "val"}
    assert all(p.town.role == p.split for p in places)
    assert not any(p.town.role == "heldout" for p in places)


def test_validation_drives_no_training_lane():
    """Geometric, blind to town names: the share of validation drives on a lane that training
    drives use (one town before: 90-100 %). Control: scenes of one town do share lanes."""
    # Small towns and no traffic: the ego's drives alone, cheap to simulate, covering their town.
    cfg = SynthConfig(seed=8, num_scenes=20, scene_seconds=20.0, val_fraction=0.2,
                      towns=TownsConfig(train=1, val=1, heldout=1, grid_nodes=(3,)), traffic_vehicles=0,
                      parked_vehicles=0, pedestrians=0)
    places = scene_places(cfg)
    train = [i for i, p in enumerate(places) if p.split == "train"]
    val = [i for i, p in enumerate(places) if p.split == "val"]
    tracks = dict(zip(train + val, scene_ego_tracks(cfg, train + val)))
    assert lane_overlap([tracks[i] for i in val], [tracks[i] for i in train]) < 0.05
    same_town = [i for i in train if places[i].town == places[train[0]].town]
    half = len(same_town) // 2
    assert lane_overlap([tracks[i] for i in same_town[:half]], [tracks[i] for i in same_town[half:]]) > 0.15


def test_split_refuses_a_world_that_is_not_location_disjoint():
    meta = {"towns": [{"name": "a", "role": "train"}, {"name": "b", "role": "val"}],
            "scenes": [{"name": "s1", "token": "t1", "split": "train", "town": "a"},
                       {"name": "s2", "token": "t2", "split": "val", "town": "b"}]}
    assert scenes_in_split("val", "v", ["s1", "s2"], ["t1", "t2"], meta, ["a", "b"]) == {"s2"}
    # The devkit's log.location decides: a val scene recorded in a training town is refused.
    with pytest.raises(SplitError, match="not location-disjoint"):
        scenes_in_split("train", "v", ["s1", "s2"], ["t1", "t2"], meta, ["a", "a"])
    with pytest.raises(SplitError, match="none of the world's towns"):
        scenes_in_split("train", "v", ["s1", "s2"], ["t1", "t2"], meta, ["a", "c"])
    # A world without towns (or real nuScenes metadata) keeps its scene-level split.
    legacy = {"scenes": {"s1": {"split": "train"}, "s2": {"split": "val"}}}
    assert scenes_in_split("train", "v", ["s1", "s2"], ["t1", "t2"], legacy, ["x", "x"]) == {"s1"}


def test_val_scenes_need_a_val_town():
    with pytest.raises(ConfigError, match="towns.val"):
        SynthConfig(num_scenes=4, val_fraction=0.5, towns=TownsConfig(val=0))
    SynthConfig(num_scenes=4, val_fraction=0.0, towns=TownsConfig(val=0))  # no validation, no val town


@pytest.fixture(scope="module")
def bench_world(tmp_path_factory):
    """The benchmark world's identity (its SynthConfig in dima_meta.json): routes need nothing else."""
    from dima_planner.synth.config import GENERATOR_VERSION

    root = tmp_path_factory.mktemp("bench_world")
    (root / "dima_meta.json").write_text(json.dumps({"config": to_dict(_bench_cfg()), "scenes": [],
                                                     "generator_version": GENERATOR_VERSION}))
    return root


def test_bench_routes_every_kind_twice_in_heldout_towns(bench_world):
    from dima_planner.sim.config import BenchConfig
    from dima_planner.sim.scenario import bench_routes, build_scenario

    cfg = load_yaml(BenchConfig, REPO / "params" / "sim" / "bench.yaml")
    routes = bench_routes(cfg.routes, bench_world)
    assert len(routes) >= 14 and len({r.name for r in routes}) == len(routes)
    assert sorted(r.kind for r in routes) == sorted(SCENARIOS * 2)
    heldout = [t.name for t in world_towns(_bench_cfg()) if t.role == "heldout"]
    assert {r.town for r in routes} == set(heldout)  # spread over every held-out town
    # Where the training scenes drive: the ego's route does not depend on the traffic drawn
    # after it, so the tracks are the world's, simulated without the (costly) traffic.
    synth = replace(_bench_cfg(), traffic_vehicles=0, parked_vehicles=0, pedestrians=0)
    train = [i for i, p in enumerate(scene_places(synth)) if p.split == "train"]
    train_tracks = scene_ego_tracks(synth, train)
    shares = []
    for spec in routes[::4]:  # a sample of routes (tools/lane_overlap.py measures all of them)
        sc = build_scenario(spec, bench_world)
        assert sc.town.role == "heldout" and sc.kind == spec.kind
        shares.append(lane_overlap([sc.route_track()[::4]], train_tracks))
    # Location-blind, so what remains is chance: another town's road that happens to lie on
    # the same line of the shared global frame for a stretch (one town: 68 % of a route).
    assert np.mean(shares) < 0.05 and max(shares) < 0.15, shares


def test_route_spec_towns(bench_world):
    from dima_planner.sim.config import RouteSpec
    from dima_planner.sim.scenario import build_scenario

    spec = RouteSpec.parse("straight:5@val")
    assert (spec.kind, spec.index, spec.town) == ("straight", 5, "val")
    assert build_scenario(spec, bench_world).town.role == "val"
    assert build_scenario(RouteSpec.parse("straight:5"), bench_world).town.role == "heldout"
    with pytest.raises(ConfigError, match="no town"):
        build_scenario(RouteSpec.parse("straight:5@nowhere"), bench_world)
    with pytest.raises(ConfigError, match="town"):
        RouteSpec(scene="scene-0001", town="val")
