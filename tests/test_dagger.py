"""On-policy training (DAgger): drives labelled by the privileged expert, written as a world the
dataset reads, one tiny iteration end to end (no ROS)."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dima_planner.config import load_yaml
from dima_planner.dagger.config import DaggerConfig
from dima_planner.dagger.rollout import Start, draw_start, drive, expert_label, lidar_pose
from dima_planner.sim import RouteSpec, SimConfig, build_scenario
from dima_planner.sim.engine import lidar2ego
from dima_planner.sim.planners import Expert

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(training_world):
    """conftest's tiny world (a training, a validation and a held-out town; two 4-s scenes)."""
    return training_world


def _sim(world) -> SimConfig:
    return SimConfig(world=str(world), frame_hz=4.0, substeps=6, image_scale=0.1)


def test_expert_label_on_route_is_the_trajectory_it_then_drives(world):
    """On the route with the road free, the expert's plan from a state is where the car then
    goes: the label equals the drive's own future LiDAR positions (the dataset's GT rule)."""
    sc = build_scenario(RouteSpec(kind="straight", index=2000, town="train", seconds=8.0), world)
    sc = replace(sc, agents=sc.agents[:1])  # the road free: the ego alone (traffic reacts to the ego)
    d = drive("straight", sc, _sim(world), 1.0, None, Start(), 2.0, np.random.default_rng(0))
    l2e, sim = lidar2ego(), d.sim
    checked = 0
    for t, label in zip(d.kf_t, d.labels):
        if t + 3.0 > sim.t:
            continue
        w2l = np.linalg.inv(lidar_pose(*sim.pose_at(t), l2e))
        driven = np.array([(w2l @ lidar_pose(*sim.pose_at(t + 0.5 * k), l2e))[:2, 3] for k in range(1, 7)])
        # Lateral: the same line to the centimetre (frames, axes, mount offset); along the
        # route: the controller's tracking of the speed profile (within 1.5 % of the distance).
        assert np.abs(label[:, 0] - driven[:, 0]).max() < 0.05, (t, label, driven)
        assert np.all(np.abs(label[:, 1] - driven[:, 1]) < 0.1 + 0.015 * np.abs(driven[:, 1])), (t, label, driven)
        checked += 1
    assert checked >= 6
    assert d.sim.log.end_reason == "completed"


def test_drives_are_written_as_a_world_whose_ground_truth_is_the_expert_label(world, tmp_path):
    """Expert and perturbed drives -> a nuScenes world the dataset reads (the trainer's one input
    path): one sample per keyframe, its GT the label, its command the rule applied to it."""
    from dima_planner.dagger.loop import ConcatPlanningDataset, dataset
    from dima_planner.dagger.world import write_world
    from dima_planner.data.sample import route_command
    from dima_planner.sim.scenario import world_config
    from dima_planner.train.data import TemporalPairs, collate_pairs

    cfg = load_yaml(DaggerConfig, REPO / "params/dagger/tiny_cpu.yaml", {"sim.world": str(world)})
    drives = [drive(f"r{k}", build_scenario(RouteSpec(kind="straight", index=2010 + k, town="train", seconds=4.0), world),
                    replace(_sim(world), timeout_slack=1.0), 1.0, None, start, 2.0, np.random.default_rng(k))
              for k, start in enumerate([Start(), Start("offset", 1.0, 0.3), Start("rest", speed=0.0)])]
    synth, meta = world_config(world)
    root = write_world(tmp_path / "w", synth, meta, drives, key="test", progress=False)
    labels = json.loads((root / "dima_plan_labels.json").read_text())
    ds = dataset(root, cfg)
    assert len(ds) == len(labels) == sum(len(d.kf_t) for d in drives) >= 12
    # The offset start's first label turns back towards the route, to the right (x > 0).
    first = min((i for i, r in enumerate(ds.records) if r["scene_name"].endswith("-r1")),
                key=lambda i: ds.records[i]["timestamp"])
    assert ds[first].ego_fut_traj[-1, 0] > 0.5
    # Aggregated with the world's own training split, through the trainer's temporal queue.
    agg = ConcatPlanningDataset([dataset(world, cfg), ds])
    pairs = TemporalPairs(agg, False, None, cfg.train.data.queue_length)
    batch = collate_pairs([pairs[len(agg) - 1], pairs[0]])
    assert batch["inputs"]["images"].shape[0] == 2 and len(batch["inputs"]["history"]) == cfg.train.data.queue_length - 1


def test_expert_label_from_an_off_centre_misaligned_state_leads_back_to_the_route(world):
    sc = build_scenario(RouteSpec(kind="straight", index=2001, town="train", seconds=8.0), world)
    from dima_planner.sim.engine import Simulator

    start = Start("offset", lateral_m=1.5, heading_rad=math.radians(30))
    sim = Simulator(sc, _sim(world), start.state(sc))
    label = expert_label(sim, Expert(), lidar2ego())
    # Misaligned 30 degrees to the left: the route lies to the right of the car's axis (x > 0),
    # and the label ends on it (the route's centre, seen from the car, right of the axis).
    assert label[-1, 0] > 2.0
    assert np.all(np.diff(label[:, 1]) > 0)  # moving forward all along


def test_perturbed_starts_draw_offsets_rests_and_fast_starts(world):
    from dima_planner.dagger.config import PerturbConfig

    rng = np.random.default_rng(0)
    cfg = PerturbConfig(share=1.0)
    starts = [draw_start(cfg, rng) for _ in range(60)]
    kinds = {s.kind for s in starts}
    assert kinds == {"offset", "rest", "fast"}
    for s in starts:
        if s.kind == "offset":
            assert 0.5 <= abs(s.lateral_m) <= 1.5 and math.radians(5) <= abs(s.heading_rad) <= math.radians(30)
        if s.kind == "fast":
            assert 10.0 <= s.speed <= 13.0
    sc = build_scenario(RouteSpec(kind="straight", index=2002, town="train", seconds=6.0), world)
    st = Start("rest", speed=0.0).state(sc)
    p, h = sc.route.at(sc.route_s0)
    assert st.v == 0.0 and np.hypot(st.x - p[0], st.y - p[1]) < 1e-6
    st = Start("offset", lateral_m=-1.0, heading_rad=0.2).state(sc)
    assert abs(np.hypot(st.x - p[0], st.y - p[1]) - 1.0) < 1e-6 and abs(st.yaw - h - 0.2) < 1e-9
    assert draw_start(PerturbConfig(share=0.0), rng).kind == "none"


def _config(world, tmp_path, init: Path) -> DaggerConfig:
    cfg = load_yaml(DaggerConfig, REPO / "params/dagger/tiny_cpu.yaml", {
        "iterations": 1, "betas": [0.5], "steps_per_iteration": 2, "out_dir": str(tmp_path / "dagger"),
        "export_dir": str(tmp_path / "exported"), "init_from": str(init), "sim.world": str(world),
        "sim.image_scale": 0.1, "segment_s": 1.0,
        "routes.kinds": {"straight": 1, "stop_and_go": 1}, "routes.seconds": 4.0,
        "eval_routes.kinds": {"straight": 1}, "eval_routes.seconds": 4.0, "eval_routes.first_index": 3000,
        "perturb.share": 1.0, "sim.timeout_slack": 2.0,
        "train.data.dataroot": str(world), "train.data.batch_size": 2, "train.logging.progress": False,
        # A small model: the path, not the planner, is under test.
        "train.model.image_size": [48, 80], "train.model.embed_dim": 32, "train.model.ffn_dim": 64,
        "train.model.bev_h": 12, "train.model.bev_w": 12, "train.model.num_agent_queries": 8,
        "train.model.num_map_queries": 4, "train.model.backbone_width": 8,
    })
    return cfg


@pytest.mark.slow  # 7 min under load 13; test_drives_are_written_as_a_world... covers the data path fast
def test_one_tiny_dagger_iteration_writes_expert_labelled_frames_that_train_and_score(world, tmp_path):
    """One iteration end to end: the learner (a 30-m checkpoint, re-ranged to the config's 45-m
    BEV) and the expert drive, the frames are written as a world whose ground truth is the
    expert's plan, the dataset reads them, the fine-tune runs on the aggregate, the result is
    scored in closed loop and logged; a rerun resumes without redoing anything."""
    from dima_planner.checkpoint import read_model_config, save_checkpoint
    from dima_planner.dagger.loop import ConcatPlanningDataset, dataset, run_dagger
    from dima_planner.data.sample import route_command
    from dima_planner.model.planner import VisionPlanner
    from dima_planner.train.data import TemporalPairs, collate_pairs

    assert load_yaml(DaggerConfig, REPO / "params/dagger/tiny_cpu.yaml").train.model.bev_range_y >= 45.0
    cfg = _config(world, tmp_path, tmp_path / "init30")
    init = save_checkpoint(tmp_path / "init30", VisionPlanner(replace(cfg.train.model, bev_range_y=30.0)))
    assert cfg.init_from == str(init)
    log = run_dagger(cfg, progress=False)
    out = Path(cfg.out_dir)
    assert [r["iteration"] for r in log["iterations"]] == [-1, 0]
    row = log["iterations"][1]
    assert row["learner_frames"] > 0 and row["expert_frames"] > 0 and row["onpolicy_frames"] >= 6
    assert read_model_config(out / "init").bev_range_y == 45.0
    assert read_model_config(tmp_path / "exported").bev_range_y == 45.0
    assert json.loads((out / "iter_00" / "eval.json").read_text())["routes"][0]["name"] == "straight-a"
    assert list((out / "tb").glob("events.*"))

    # The written world: every keyframe is a sample whose GT is the expert's label, commanded by the rule.
    world0 = out / "iter_00" / "world"
    labels = json.loads((world0 / "dima_plan_labels.json").read_text())
    ds = dataset(world0, cfg)
    assert len(ds) == len(labels) == row["onpolicy_frames"]
    for i in range(len(ds)):
        s = ds[i]
        np.testing.assert_allclose(s.ego_fut_traj, labels[s.token], atol=1e-4)
        assert s.ego_fut_mask.min() == 1.0 and s.command == route_command(s.ego_fut_traj)
        assert s.images.shape[0] == 6 and s.images.std() > 0
    # Aggregated with the world's own training split, through the trainer's temporal queue.
    agg = ConcatPlanningDataset([dataset(world, cfg), ds])
    pairs = TemporalPairs(agg, False, None, cfg.train.data.queue_length)
    batch = collate_pairs([pairs[len(agg) - 1], pairs[0]])
    assert batch["inputs"]["images"].shape[0] == 2 and len(batch["inputs"]["history"]) == cfg.train.data.queue_length - 1

    # Rerun: every stage is done, nothing is redone (the world's files stay as they were).
    mtime = (world0 / "dima_plan_labels.json").stat().st_mtime_ns
    run_dagger(cfg, progress=False)
    assert (world0 / "dima_plan_labels.json").stat().st_mtime_ns == mtime


def test_dagger_config_refuses_what_it_cannot_do(tmp_path):
    from dima_planner.config import ConfigError

    with pytest.raises(ConfigError, match="betas"):
        load_yaml(DaggerConfig, REPO / "params/dagger/tiny_cpu.yaml", {"iterations": 2})
    with pytest.raises(ConfigError, match="perturb.weights"):
        load_yaml(DaggerConfig, REPO / "params/dagger/tiny_cpu.yaml", {"perturb.weights": {"spin": 1.0}})
