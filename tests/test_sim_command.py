"""One command definition: what training saw is what the simulator sends on the same route."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import small_world

from dima_planner.data.sample import CMD_STRAIGHT
from dima_planner.sim import RouteSpec, SimConfig, Simulator, build_scenario
from dima_planner.sim.vehicle import VehicleState
from dima_planner.synth import agents as ag


@pytest.fixture(scope="module")
def lane_change_world(tmp_path_factory):
    """Two 12-s scenes whose routes leave the lane without a junction (an overtake) and turn at one."""
    return small_world(tmp_path_factory, "command_world", seed=5, scene_seconds=12.0, scale=0.05,
                       traffic_vehicles=2, parked_vehicles=2, pedestrians=2, scenarios=("overtake", "turn_left"))


def test_training_and_simulator_commands_agree_on_the_same_route(lane_change_world):
    """Every evaluated keyframe of the dataset (its command: the recorded future, VAD's rule) against the
    simulator's command with the car where the recorded ego was, at its speed, on that
    scene's route. An overtake's lane change must be announced in both."""
    from dima_planner.data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset

    world = str(lane_change_world)
    recs = []
    for split in ("train", "val"):
        recs += NuScenesPlanningDataset(DatasetConfig(dataroot=world, version="v1.0-dima", split=split,
                                                      load_images=False, cache_dir=None)).records
    cfg = SimConfig(world=world)
    pairs = []
    for name in sorted({r["scene_name"] for r in recs}):
        sc = build_scenario(RouteSpec(scene=name, seconds=12.0), world)
        ref = copy.deepcopy(sc.agents)
        times = ag.simulate(ref, 13.0)  # the recorded drive: the generator's own run
        sim = Simulator(sc, cfg)
        scene = sorted((r for r in recs if r["scene_name"] == name), key=lambda r: r["timestamp"])
        for k, r in enumerate(scene):
            if not np.all(r["ego_fut_mask"] > 0):
                continue  # the scene ends before the horizon: its recorded route is cut short
            x, y, yaw, v = ag.interp_state(ref[0], times, 0.5 * k)
            sim.state = VehicleState(x, y, yaw, v)
            sim.s_route = float(sc.route.s[np.argmin(np.hypot(*(sc.route.xy - [x, y]).T))])
            pairs.append((sc.kind, r["command"], sim.command()))
    kinds, data, simulated = map(np.array, zip(*pairs))
    turning = data != CMD_STRAIGHT
    assert turning[kinds == "overtake"].any() and turning[kinds == "turn_left"].any()
    # Left/right frames of training: the simulator says the same (the lane change included).
    assert np.mean(simulated[turning] == data[turning]) >= 0.9, list(zip(kinds, data, simulated))
    assert np.mean(simulated == data) >= 0.9


def test_closed_loop_baselines_get_the_ego_status_of_the_dataset(tmp_path):
    """The ego-status MLP was fitted on 0.5-s backward differences of the LiDAR poses (the
    world's keyframes): accelerating at 1.5 m/s^2, its speed input lags the car's by 0.375 m/s,
    and its acceleration input is the change between the last two 0.5-s intervals."""
    import json

    from dima_planner.config import to_dict
    from dima_planner.sim.engine import Plan
    from dima_planner.sim.planners import TIMES, ConstVelPlanner
    from dima_planner.synth.config import SynthConfig

    (tmp_path / "dima_meta.json").write_text(json.dumps({"config": to_dict(SynthConfig()), "scenes": []}))
    sim = Simulator(build_scenario(RouteSpec(kind="straight", index=100), str(tmp_path)),
                    SimConfig(world=str(tmp_path), frame_hz=4.0, substeps=6))
    for _ in range(12):
        st = sim.state
        d = np.array([np.cos(st.yaw), np.sin(st.yaw)])
        s = st.v * TIMES + 0.75 * TIMES ** 2
        sim.advance(Plan(sim.t, TIMES.copy(), np.array([st.x, st.y]) + s[:, None] * d))
    planner = ConstVelPlanner()
    status = planner.batch(sim)["ego_status"][0]
    lidar = [(sim.pose_at(sim.t - k * 0.5)) for k in (0, 1, 2)]
    off = planner.l2e[:2, 3]
    pts = [np.array([x, y]) + [np.cos(h) * off[0] - np.sin(h) * off[1], np.sin(h) * off[0] + np.cos(h) * off[1]]
           for x, y, h in lidar]
    v1, v2 = np.linalg.norm(pts[0] - pts[1]) / 0.5, np.linalg.norm(pts[1] - pts[2]) / 0.5
    assert status[5] == pytest.approx(v1, abs=0.01)
    assert abs(status[5] - sim.state.v) > 0.2  # not the simulator's instantaneous speed
    assert status[3] == pytest.approx((v1 - v2) / 0.5, abs=0.05)  # ay: y is forward in the LiDAR frame
