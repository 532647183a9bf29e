"""Closed-loop simulator core: scenarios, tracking, scoring, determinism (no ROS)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dima_planner.config import to_dict
from dima_planner.sim import RouteSpec, SimConfig, Simulator, build_scenario
from dima_planner.sim.engine import Plan
from dima_planner.sim.planners import (TIMES, ConstVelPlanner, Expert, RouteFollower, StandStill, lidar2ego,
                                       lidar_track_to_plan)
from dima_planner.sim.runner import drive, route_result
from dima_planner.synth.config import SynthConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world's identity for the simulator: its SynthConfig (the default world's) in dima_meta.json.
    Routes of generated scenarios need nothing else: the town and agents come from the generator."""
    root = tmp_path_factory.mktemp("sim_world")
    (root / "dima_meta.json").write_text(json.dumps({"config": to_dict(SynthConfig()), "scenes": []}))
    return str(root)


def _cfg(world: str, **kw) -> SimConfig:
    return SimConfig(world=world, frame_hz=4.0, substeps=6, **kw)


def test_expert_completes_a_turn_with_score_100(world):
    cfg = _cfg(world)
    sc = build_scenario(RouteSpec(kind="turn_left", index=101), world)
    assert sc.turns and sc.turns[0].left  # the route turns left at its first junction
    sim = drive(sc, Expert().plan, cfg)
    res = route_result("t", sim, cfg, None)
    assert res["end"] == "completed"
    assert res["driving_score"] == 100.0 and res["route_completion"] == 100.0
    assert res["collisions"] == 0 and res["offroad_s"] == 0 and res["lane_departure_s"] == 0
    assert res["progress_m"] >= res["route_length_m"] - 0.5


def _creep(sim: Simulator) -> Plan:
    """Along the route at 0.45 m/s: moving, never blocked, never getting anywhere."""
    xy, _ = sim.sc.route.at(sim.s_route + 0.45 * TIMES)
    return Plan(sim.t, TIMES.copy(), xy, "creep")


# lead_brake (12 s) is slow: straight covers the ranking in `make test`.
@pytest.mark.parametrize("kind, index", [("straight", 100), pytest.param("lead_brake", 102, marks=pytest.mark.slow)])
def test_standing_still_or_creeping_ranks_below_every_planner_that_drives(world, kind, index):
    cfg = _cfg(world)
    res = {}
    for name, fn in (("expert", lambda: Expert().plan), ("route_follower", lambda: RouteFollower().plan),
                     ("const_vel", lambda: ConstVelPlanner().plan), ("stand_still", lambda: StandStill().plan),
                     ("creep", lambda: _creep)):
        sim = drive(build_scenario(RouteSpec(kind=kind, index=index, seconds=14.0), world), fn(), cfg)
        expert = None if name == "expert" else res["expert"][1]
        res[name] = (route_result(name, sim, cfg, expert), sim.log if name == "expert" else None)
    r = {k: v[0] for k, v in res.items()}
    assert r["stand_still"]["end"] == "blocked"  # the lane ahead was free: CARLA's agent blocked
    assert r["stand_still"]["progress_vs_expert"] < 0.1 and r["creep"]["progress_vs_expert"] < 0.3
    for metric in ("driving_score", "route_completion"):
        for lazy in ("stand_still", "creep"):
            for driver in ("expert", "route_follower", "const_vel"):
                assert r[lazy][metric] < r[driver][metric], (metric, lazy, driver, r[lazy][metric], r[driver][metric])


def test_leaving_the_route_ends_it(world):
    """Straight on where the route turns left: 30 m from the route it is over (CARLA's route
    deviation), and the stretch driven off-road does not count toward completion."""
    cfg = _cfg(world)
    sc = build_scenario(RouteSpec(kind="turn_left", index=101), world)

    def straight_on(sim):
        d = np.array([np.cos(sim.state.yaw), np.sin(sim.state.yaw)])
        return Plan(sim.t, TIMES.copy(), np.array([sim.state.x, sim.state.y]) + 8.0 * TIMES[:, None] * d)

    sim = drive(sc, straight_on, cfg)
    res = route_result("d", sim, cfg, None)
    assert res["end"] == "route_deviation" and "left the route" in res["end_detail"]
    assert max(sim.log.route_dist) > cfg.scoring.route_deviation_m
    assert res["route_completion"] < res["route_completion_raw"] < 100.0


def test_a_commanded_lane_change_is_not_a_lane_departure():
    from dima_planner.data.sample import CMD_LEFT, CMD_RIGHT, CMD_STRAIGHT
    from dima_planner.sim.config import ScoringConfig
    from dima_planner.sim.scoring import lane_departure

    lat = np.array([0.0, 3.5, 3.5, -3.5, -3.5, 7.0])  # left positive, metres from the route's lane centre
    cmd = np.array([CMD_STRAIGHT, CMD_STRAIGHT, CMD_LEFT, CMD_LEFT, CMD_RIGHT, CMD_LEFT])
    np.testing.assert_array_equal(lane_departure(lat, cmd, ScoringConfig()), [False, True, False, True, False, True])


@pytest.mark.parametrize("kind, index", [("lead_brake", 102), ("ped_step_out", 110), ("cut_in", 111),
                                         ("stop_and_go", 103), ("overtake", 107)])
def test_routes_where_perception_matters_expose_a_blind_route_follower(world, kind, index):
    """The expert (who sees the agents) drives them perfectly; knowing only the route does not."""
    cfg = _cfg(world)
    scores = {}
    for planner in (Expert(), RouteFollower()):
        sim = drive(build_scenario(RouteSpec(kind=kind, index=index), world), planner.plan, cfg)
        scores[planner.name] = route_result(kind, sim, cfg, None)
    assert scores["expert"]["driving_score"] == 100.0, scores["expert"]
    assert scores["route_follower"]["driving_score"] < 80.0, scores["route_follower"]


def test_driving_straight_into_a_parked_car_is_a_collision(world):
    """Overtake route: the lane is blocked by a parked car; keeping straight at constant speed hits it."""
    cfg = _cfg(world)
    sc = build_scenario(RouteSpec(kind="overtake", index=107), world)
    sim = drive(sc, ConstVelPlanner().plan, cfg)
    res = route_result("o", sim, cfg, None)
    assert res["collisions"] == 1 and res["collision_events"][0]["kind"] == "static"
    assert res["collision_events"][0]["ego_fault"] and res["end"] == "collision"
    assert res["driving_score"] <= 0.65 * res["route_completion"] + 0.01  # (both rounded to 0.01)
    expert = drive(build_scenario(RouteSpec(kind="overtake", index=107), world), Expert().plan, cfg)
    assert route_result("o", expert, cfg, None)["collisions"] == 0  # the route itself is passable


def test_a_braking_lead_vehicle_is_hit_by_a_planner_that_ignores_it(world):
    cfg = _cfg(world)
    sim = drive(build_scenario(RouteSpec(kind="lead_brake", index=102), world), RouteFollower().plan, cfg)
    res = route_result("l", sim, cfg, None)
    hit = res["collision_events"][0]  # into the lead (a pedestrian it stopped for may be hit in the same step)
    assert res["end"] == "collision" and hit["kind"] == "car" and hit["ego_fault"] and res["red_flags"] >= 1


def test_lockstep_runs_are_deterministic(world):
    cfg = _cfg(world)
    runs = []
    for _ in range(2):
        sc = build_scenario(RouteSpec(kind="stop_and_go", index=103, seconds=8.0), world)
        sim = drive(sc, Expert().plan, cfg)
        runs.append((np.array(sim.log.ego), np.array(sim.log.agents_xy), route_result("s", sim, cfg, None)))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]


def test_missed_plans_keep_the_last_plan(world):
    cfg = _cfg(world)
    sc = build_scenario(RouteSpec(kind="straight", index=100, seconds=6.0), world)
    expert = Expert()
    sim = drive(sc, lambda s: expert.plan(s) if s.frame % 2 == 0 else None, cfg)
    res = route_result("m", sim, cfg, None)
    assert res["missed_plans"] == res["plans"] or abs(res["missed_plans"] - res["plans"]) == 1
    assert res["collisions"] == 0 and res["progress_m"] > 30.0


def test_lidar_waypoints_become_the_centre_track():
    """A LiDAR-frame plan straight ahead (x right, y forward) is a centre track straight ahead,
    the LiDAR mount offset removed: the same convention as the node's PlannedTrajectory."""
    l2e = lidar2ego()
    yaw = 0.7
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    centre0 = np.array([10.0, 20.0])
    lidar0 = centre0 + rot @ l2e[:2, 3]
    ahead = np.array([[np.cos(yaw), np.sin(yaw)]]) * (5.0 * np.arange(1, 7))[:, None]
    plan = lidar_track_to_plan(lidar0 + ahead, yaw, lidar0, l2e, 0.0, np.arange(1, 7) * 0.5, "t")
    np.testing.assert_allclose(plan.xy, centre0 + ahead, atol=1e-9)


def test_a_plan_that_stops_stops_the_car(world):
    cfg = _cfg(world)
    sc = build_scenario(RouteSpec(kind="straight", index=100, seconds=6.0), world)
    sim = Simulator(sc, cfg)
    x0 = np.array([sim.state.x, sim.state.y])
    for _ in range(int(6 * cfg.frame_hz)):
        x, y, yaw = sim.pose_at(sim.t)
        stop_at = np.array([x, y]) + 8.0 * np.array([np.cos(yaw), np.sin(yaw)])
        sim.advance(Plan(sim.t, np.arange(1, 7) * 0.5, np.repeat(stop_at[None], 6, 0)) if sim.frame == 0 else None)
    assert sim.state.v < 0.05
    assert np.linalg.norm(np.array([sim.state.x, sim.state.y]) - x0) < 8.5


def test_route_spec_and_config_errors(world):
    from dima_planner.config import ConfigError

    with pytest.raises(ConfigError):
        RouteSpec(scene="scene-0001", kind="straight")
    with pytest.raises(ConfigError):
        build_scenario(RouteSpec(kind="fly", index=1), world)
    with pytest.raises(ConfigError):
        build_scenario(RouteSpec(scene="scene-0099"), world)
    with pytest.raises(ConfigError):
        SimConfig(frame_hz=0.0)


def test_planner_messages_become_the_same_plan(world):
    """PlannedTrajectory and nav_msgs/Path, as conversions.py builds them in the planner node,
    give the same world track, straight ahead of the ego for a straight LiDAR-frame plan."""
    from dima_planner.ros import conversions as conv
    from dima_planner.ros.sim_node import plan_from_msg

    l2e = lidar2ego()
    sim = Simulator(build_scenario(RouteSpec(kind="straight", index=100, seconds=6.0), world), _cfg(world))
    traj = np.stack([np.zeros(6), 4.0 * np.arange(1, 7)], 1)  # LiDAR frame: y forward
    poses = conv.trajectory_lidar_to_base(traj, l2e)
    offset = 1000 * 10**9
    msgs = [conv.build_trajectory(poses, conv.lidar_points_to_base(np.zeros(2), l2e), offset, "base_link", 2, 0.0,
                                  0.0, "m"), conv.build_path(poses, offset, "base_link")]
    plans = [plan_from_msg(m, sim, offset, l2e) for m in msgs]
    np.testing.assert_allclose(plans[0].xy, plans[1].xy, atol=1e-6)
    np.testing.assert_allclose(plans[0].times, np.arange(1, 7) * 0.5)
    st = sim.state
    d = plans[0].xy - [st.x, st.y]
    # (the LIDAR_TOP mount is rotated by a few mrad: its y axis is not exactly base_link x)
    np.testing.assert_allclose(d @ [np.cos(st.yaw), np.sin(st.yaw)], 4.0 * np.arange(1, 7), atol=0.05)
    np.testing.assert_allclose(d @ [-np.sin(st.yaw), np.cos(st.yaw)], 0.0, atol=0.1)
    msgs[0].time_from_start = msgs[0].time_from_start[::-1]
    with pytest.raises(ValueError):
        plan_from_msg(msgs[0], sim, offset, l2e)


def test_a_missing_world_names_the_command_that_builds_it(tmp_path, capsys):
    """`dima sim --bench` without its world: the error says how to build that world (the
    benchmark world's own synth config), it does not suggest a command that writes another."""
    from dima_planner.cli import sim as cli

    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    rc = cli.run(parser.parse_args(["--bench", "--planner", "expert", "--set", f"sim.world={tmp_path / 'nowhere'}",
                                    f"out={tmp_path / 'out'}"]))
    printed = " ".join(capsys.readouterr().out.split())
    assert rc == 2
    assert f"dima synth --config params/synth_bench.yaml --out {tmp_path / 'nowhere'}" in printed
