"""Traffic that reacts to the ego as it actually drives (the closed-loop rules of synth/agents.py
Traffic for an external ego), on the benchmark world's routes (params/synth_bench.yaml, held-out
towns). Before these rules the expert hit a crossing car that had stopped with its nose in the
ego's lane on stop-and-go-b (DS 50), and the blind route follower drove through ped-step-out-b
unharmed (DS 100): that pedestrian, from the far side, started when the ego was 32 m away at
its starting speed and reached the lane two seconds after the ego had passed.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from dima_planner.config import load_yaml, to_dict
from dima_planner.sim import RouteSpec, SimConfig, build_scenario
from dima_planner.sim.config import BenchConfig
from dima_planner.sim.planners import Expert, RouteFollower
from dima_planner.sim.runner import drive, route_result
from dima_planner.sim.scenario import bench_routes
from dima_planner.synth import agents as ag_mod
from dima_planner.synth.config import SynthConfig

from dds_harness import REPO

PERCEPTION_CRITICAL = ("stop_and_go", "lead_brake", "ped_step_out", "overtake", "cut_in")


@pytest.fixture(scope="module")
def bench_world(tmp_path_factory):
    """The benchmark world's identity (its SynthConfig): routes need nothing else."""
    root = tmp_path_factory.mktemp("bench_world")
    cfg = load_yaml(SynthConfig, REPO / "params/synth_bench.yaml")
    (root / "dima_meta.json").write_text(json.dumps({"config": to_dict(cfg), "scenes": []}))
    return root


def _bench_route(world, name: str) -> RouteSpec:
    routes = bench_routes(load_yaml(BenchConfig, REPO / "params/sim/bench.yaml").routes, world)
    return next(r for r in routes if r.name == name)


def _scores(world, spec: RouteSpec) -> dict[str, dict]:
    cfg = SimConfig(world=str(world), frame_hz=4.0, substeps=6)
    return {p.name: route_result(spec.name, drive(build_scenario(spec, world), p.plan, cfg), cfg, None)
            for p in (Expert(), RouteFollower())}


def test_a_crossing_car_yields_before_the_ego_lane(bench_world):
    res = _scores(bench_world, _bench_route(bench_world, "stop-and-go-b"))
    assert res["expert"]["driving_score"] == 100.0, res["expert"]
    assert res["route_follower"]["driving_score"] < 80.0, res["route_follower"]


def test_a_pedestrian_steps_out_on_the_ego_as_it_drives(bench_world):
    res = _scores(bench_world, _bench_route(bench_world, "ped-step-out-b"))
    assert res["expert"]["driving_score"] == 100.0, res["expert"]
    follower = res["route_follower"]
    assert follower["driving_score"] < 80.0 and follower["end"] == "collision", follower
    assert follower["collision_events"][0]["kind"] == "pedestrian", follower


def test_the_generator_keeps_its_own_rules(bench_world):
    """Without an external ego (the generator) the pedestrian still waits for the scripted ego
    to come within step_out_dist: the worlds `dima synth` writes do not change."""
    spec = _bench_route(bench_world, "ped-step-out-b")
    sc = build_scenario(spec, bench_world)
    agents = copy.deepcopy(sc.agents)
    times = ag_mod.simulate(agents, 12.0)
    ped = next(a for a in agents if a.step_out_dist is not None)
    moved = np.linalg.norm(ped.xy - ped.xy[0], axis=1) > 1e-6
    start = int(np.argmax(moved)) - 1  # the last step at the kerb
    d = np.linalg.norm(agents[0].xy[start] - ped.conflict)
    assert moved.any() and start > 0 and ped.step_out_dist - 1.5 <= d <= ped.step_out_dist, (times[start], d)


def test_time_to_cover():
    ttc = ag_mod.time_to_cover
    assert ttc(10.0, 5.0, 0.0, 10.0) == pytest.approx(2.0)
    assert ttc(10.0, 0.0, 2.0, 10.0) == pytest.approx(np.sqrt(10.0))
    assert ttc(30.0, 8.0, 2.0, 10.0) == pytest.approx(1.0 + (30.0 - 9.0) / 10.0)  # speed capped after 1 s
    assert ttc(10.0, 4.0, -2.0, 10.0) == np.inf  # stops after 4 m
    assert ttc(5.0, 0.0, 0.0, 10.0) == np.inf


@pytest.mark.slow
def test_every_bench_route_the_expert_drives_and_the_blind_follower_fails_where_perception_matters(bench_world):
    """All 16 routes of `dima sim --bench` (about 3 minutes)."""
    routes = bench_routes(load_yaml(BenchConfig, REPO / "params/sim/bench.yaml").routes, bench_world)
    failed = []
    for spec in routes:
        res = _scores(bench_world, spec)
        if res["expert"]["driving_score"] != 100.0:
            failed.append(f"{spec.name}: expert {res['expert']['driving_score']} ({res['expert']['end']})")
        if spec.kind in PERCEPTION_CRITICAL and res["route_follower"]["driving_score"] >= 80.0:
            failed.append(f"{spec.name}: route follower {res['route_follower']['driving_score']}")
    assert not failed, failed
