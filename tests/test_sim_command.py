"""One command definition: what training saw is what the simulator sends on the same route."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from dima_planner.data.sample import CMD_STRAIGHT
from dima_planner.sim import RouteSpec, SimConfig, Simulator, build_scenario
from dima_planner.sim.vehicle import VehicleState
from dima_planner.synth import agents as ag


@pytest.fixture(scope="module")
def lane_change_world(tmp_path_factory):
    """Two 12-s scenes whose routes leave the lane without a junction (an overtake) and turn at one."""
    from dima_planner.synth.config import SynthConfig
    from dima_planner.synth.generate import generate

    root = tmp_path_factory.mktemp("command_world")
    cfg = SynthConfig(seed=5, num_scenes=2, scene_seconds=12.0, scale=0.05, val_fraction=0.5,
                      traffic_vehicles=2, parked_vehicles=2, pedestrians=2, camera_sweeps=False,
                      scenarios=("overtake", "turn_left"))
    generate(cfg, root, progress=False)
    return root


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
