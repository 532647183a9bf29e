"""Drives -> a nuScenes world (tables, JPEGs, LiDAR, maps) with the expert's plans as labels.

The drives are written by the generator's own scene writer (synth/generate.py write_scene):
the same cameras, LiDAR, annotations and map records as `dima synth`, from the trajectories
the closed loop recorded. The ego's recorded future is the mixture's, not a demonstration, so
each keyframe's target is the expert's plan from there, in <root>/dima_plan_labels.json,
which the dataset (data/nuscenes_dataset.py) reads in place of the recorded future. A trainer
therefore reads these worlds through the one dataset and input function as any other.
"""
from __future__ import annotations

import copy
import json
import shutil
import zlib
from pathlib import Path

import numpy as np

from ..config import to_dict
from ..data.nuscenes_dataset import PLAN_LABELS_FILE
from ..data.splits import INCOMPLETE_FILE
from ..synth.config import GENERATOR_VERSION, SynthConfig
from ..synth.generate import EPOCH_US, META_NAME, _Generator, mark_incomplete
from ..synth.nuscenes_writer import Tokens, calibrated_sensors, static_tables, write_tables
from ..synth.towns import world_towns
from .rollout import Drive


def _recorded_agents(d: Drive) -> tuple[list, np.ndarray]:
    """The scenario's agents carrying the closed loop's trajectories (xy, yaw, speed on log.t)."""
    log = d.sim.log
    agents = copy.deepcopy(d.sim.sc.agents)
    ego = np.asarray(log.ego, float)
    agents[0].xy, agents[0].yaw, agents[0].speed = ego[:, :2], np.unwrap(ego[:, 2]), ego[:, 3]
    xy, yaw, v = np.stack(log.agents_xy, 1), np.stack(log.agents_yaw, 1), np.stack(log.agents_v, 1)
    for j, a in enumerate(agents[1:]):
        a.xy, a.yaw, a.speed = xy[j], np.unwrap(yaw[j]), v[j]
    return agents, np.asarray(log.t, float)


def write_world(root: str | Path, synth: SynthConfig, world_meta: dict, drives: list[Drive], key: str,
                progress: bool = True) -> Path:
    """Write `drives` (each with >= 1 keyframe) as the training scenes of a world at `root`,
    in the towns they drove (which must be training towns of the source world). `key` makes
    the tokens unique among the worlds a trainer aggregates."""
    from tqdm import tqdm

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    mark_incomplete(root)
    gen = _Generator(synth, root, progress=False)
    gen.tok = Tokens(f"{synth.seed}-{key}")  # tokens unique to this world (aggregated beside others)
    gen.tables.update(static_tables(gen.tok))
    gen.cat_token = {c["name"]: c["token"] for c in gen.tables["category"]}
    gen.attr_token = {a["name"]: a["token"] for a in gen.tables["attribute"]}
    towns = {t.name: t for t in world_towns(synth)}
    used = sorted({d.sim.sc.town.name for d in drives})
    logs = {}
    for n, name in enumerate(used):
        if towns[name].role != "train":
            raise ValueError(f"drive in {name!r}, a {towns[name].role} town: on-policy data comes from training towns only")
        logs[name] = {"token": gen.tok("log", name), "logfile": f"dima-{key}-{n:02d}", "vehicle": "dima-n015",
                      "date_captured": "2018-09-01", "location": name}
        gen.tables["log"].append(logs[name])
        gen.tables["calibrated_sensor"].extend(calibrated_sensors(gen.tok, logs[name]["token"], gen.rig, gen.K))
    for name in used:
        gen._use_town(towns[name])
        gen._write_maps(towns[name], [logs[name]["token"]])
    labels, scenes = {}, []
    rng = np.random.default_rng(zlib.crc32(key.encode()))  # LiDAR noise and keyframe jitter
    for i, d in enumerate(tqdm(drives, desc="writing drives", unit="drive", disable=not progress)):
        if not d.kf_t:
            continue
        gen._use_town(d.sim.sc.town)
        agents, times = _recorded_agents(d)
        scene_name = f"{key}-{i:03d}-{d.name}"
        tags = gen.write_scene(i, logs[d.sim.sc.town.name], agents, times, d.sim.sc.kind, d.kf_t,
                               EPOCH_US + i * 3_600_000_000, rng, name=scene_name)
        samples = [r for r in gen.tables["sample"] if r["scene_token"] == gen.tok("scene", i)]
        for s, lab in zip(sorted(samples, key=lambda r: r["timestamp"]), d.labels):
            labels[s["token"]] = np.round(lab, 4).tolist()
        scenes.append({"name": scene_name, "token": gen.tok("scene", i), "split": "train", "town": d.sim.sc.town.name,
                       "scenario": d.sim.sc.kind, "tags": tags, "start": d.start.kind,
                       "expert_frames": d.expert_frames, "learner_frames": d.learner_frames,
                       "end": d.sim.log.end_reason})
    write_tables(root / synth.version, gen.tables)
    (root / PLAN_LABELS_FILE).write_text(json.dumps(labels))
    meta = {"generator": "dima_planner.dagger", "generator_version": GENERATOR_VERSION, "config": to_dict(synth),
            "version": synth.version, "seed": synth.seed, "scale": synth.scale,
            "image_size": world_meta.get("image_size"), "towns": world_meta["towns"], "scenes": scenes,
            "plan_labels": PLAN_LABELS_FILE}
    (root / META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True))
    (root / INCOMPLETE_FILE).unlink()
    return root
