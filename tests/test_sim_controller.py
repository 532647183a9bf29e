"""The simulator's controller delivers the plan: its acceleration, its stops, its turns.

Everything goes through Simulator.advance (the path every planner takes), so these hold for
the expert, the baselines and the planner node alike."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dima_planner.config import to_dict
from dima_planner.sim import RouteSpec, SimConfig, Simulator, build_scenario
from dima_planner.sim.engine import Plan
from dima_planner.sim.vehicle import VehicleState
from dima_planner.synth.config import SynthConfig

TIMES = np.arange(1, 7) * 0.5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctl_world")
    (root / "dima_meta.json").write_text(json.dumps({"config": to_dict(SynthConfig()), "scenes": []}))
    return str(root)


def _sim(world: str, kind: str = "straight", index: int = 100, seconds: float = 20.0) -> Simulator:
    cfg = SimConfig(world=world, frame_hz=4.0, substeps=6)
    return Simulator(build_scenario(RouteSpec(kind=kind, index=index, seconds=seconds), world), cfg)


def _constant_accel_plan(sim: Simulator, a: float) -> Plan:
    """From the car as it is now: straight ahead at constant acceleration a (until it stops)."""
    st = sim.state
    t_moving = np.minimum(TIMES, -st.v / a) if a < 0 else TIMES
    s = st.v * t_moving + 0.5 * a * t_moving ** 2
    d = np.array([math.cos(st.yaw), math.sin(st.yaw)])
    return Plan(sim.t, TIMES.copy(), np.array([st.x, st.y]) + s[:, None] * d, "test")


@pytest.mark.parametrize("a, v0", [(1.5, 3.0), (-1.5, 9.0)])
def test_a_plan_at_constant_acceleration_is_delivered(world, a, v0):
    """Re-planned at 4 Hz from the car's own state, a +/-1.5 m/s^2 plan must come out at
    +/-1.5 m/s^2 (within 15 %), not at the first segment's mean speed."""
    sim = _sim(world)
    sim.sc.agents[1:] = []  # nothing else on the road: this is about the controller
    sim.traffic = type(sim.traffic)(sim.sc.agents, external=(0,))
    sim.state = VehicleState(sim.state.x, sim.state.y, sim.state.yaw, v0)
    seconds = 4.0
    for _ in range(int(seconds * sim.cfg.frame_hz)):
        sim.advance(_constant_accel_plan(sim, a))
    delivered = (sim.state.v - v0) / seconds
    assert delivered == pytest.approx(a, rel=0.15), f"plan {a} m/s^2, delivered {delivered:.2f} m/s^2"


@pytest.mark.parametrize("jitter", [0.0, 0.05])
def test_a_stop_plan_never_steers_while_standing(world, jitter):
    """A standing car given 'stay here' (exactly, or with a few centimetres of waypoint noise,
    as a learned planner gives it) keeps its wheels straight and does not move."""
    sim = _sim(world)
    yaw = sim.state.yaw + 2.0  # any heading: not the one of a world axis
    sim.state = VehicleState(sim.state.x, sim.state.y, yaw, 0.0)
    start = np.array([sim.state.x, sim.state.y])
    rng = np.random.default_rng(0)
    steers = []
    for _ in range(12):
        here = np.array([sim.state.x, sim.state.y])
        xy = here + rng.uniform(-jitter, jitter, (6, 2))
        sim.advance(Plan(sim.t, TIMES.copy(), xy, "stop"))
        steers += [e[5] for e in sim.log.ego[-sim.cfg.substeps:]]
    assert np.degrees(np.max(np.abs(steers))) <= 2.0
    assert np.linalg.norm(np.array([sim.state.x, sim.state.y]) - start) < 0.2
    assert abs(sim.state.yaw - yaw) < np.radians(1.0)


def _junction_planner(v_cruise: float, v_turn: float, decel: float, stop_for: float):
    """The route's track, timed to brake at `decel` for the 90-degree turn, pass it at v_turn,
    and wait `stop_for` seconds halfway through it (as for someone crossing), announcing the
    wait with the few centimetres of waypoint noise a learned planner's stop plan has."""
    rng = np.random.default_rng(1)
    waited = []

    def plan(sim: Simulator) -> Plan:
        turn = sim.sc.turns[0]
        s, v, out = sim.s_route, sim.state.v, []
        mid = 0.5 * (turn.s0 + turn.s1)
        if s >= mid - 1.0 and len(waited) < stop_for * sim.cfg.frame_hz:
            waited.append(sim.t)
            xy = np.array([sim.state.x, sim.state.y]) + rng.uniform(-0.05, 0.05, (6, 2))
            return Plan(sim.t, TIMES.copy(), xy, "junction")
        dt = 0.05
        for k in range(1, 61):
            limit = v_cruise
            if s < turn.s1:  # into the turn at v_turn, braking at decel
                limit = min(limit, math.sqrt(v_turn ** 2 + 2 * decel * max(0.0, turn.s0 - s)))
            if s < mid and not waited:  # and to a stop halfway through it
                limit = min(limit, math.sqrt(2 * decel * max(0.0, mid - s)))
            target = min(v_cruise, limit)
            v = min(target, v + 1.5 * dt) if v < target else max(target, v - decel * dt)
            s += v * dt
            if k % 10 == 0:
                out.append(s)
        xy, _ = sim.sc.route.at(np.array(out))
        return Plan(sim.t, TIMES.copy(), xy, "junction")
    return plan


def test_lateral_error_is_bounded_through_a_junction_turn(world):
    """A plan that slows from 11 to 4 m/s for a 90-degree left turn, waits halfway through it
    and drives on: the car turns at the speed the plan asks for and stays on the lane."""
    sim = _sim(world, "turn_left", 101, seconds=30.0)
    turn = sim.sc.turns[0]
    sim.sc.agents[1:] = []
    sim.traffic = type(sim.traffic)(sim.sc.agents, external=(0,))
    sim.state = VehicleState(sim.state.x, sim.state.y, sim.state.yaw, 11.0)
    planner = _junction_planner(11.0, 4.0, 2.0, stop_for=2.0)
    while not sim.done and sim.s_route < turn.s1 + 10.0:
        sim.advance(planner(sim))
    s = sim.log.array("route_s")
    lat = np.abs(sim.log.array("route_lat"))
    v = sim.log.array("ego")[:, 3]
    in_turn = (s >= turn.s0) & (s <= turn.s1)
    assert in_turn.any() and sim.s_route >= turn.s1 + 10.0
    assert np.any(v[in_turn] < 0.05)  # it did wait in the junction
    assert lat.max() < 0.5, f"lateral error {lat.max():.2f} m"
    assert v[in_turn & (s < turn.s0 + 3.0)].max() < 5.5, f"entered the turn at {v[in_turn & (s < turn.s0 + 3.0)].max():.1f} m/s"
