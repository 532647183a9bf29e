#!/usr/bin/env python3
"""How much of a world's validation drives and bench routes run on lanes its training scenes drive.

    .venv/bin/python tools/lane_overlap.py [--config params/synth_bench.yaml] [--bench params/sim/bench.yaml]
                                           [--seconds 20] [--json FILE]

No rendering: each scene's ego track comes from the generator's own stream in its town
(synth.towns.scene_ego_tracks), each bench route's from the simulator's scenario
(sim.scenario.build_scenario). The measure (data.splits.lane_overlap) is geometric and
blind to town names: the share of a drive's length within half a lane (1.75 m) of a
training drive, heading within 30 degrees. Printed: validation vs training, every
training town vs the other training scenes of the same town (a control: lanes that are
shared are found), and the bench routes vs training.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "params" / "synth_bench.yaml"))
    p.add_argument("--bench", default=str(REPO / "params" / "sim" / "bench.yaml"))
    p.add_argument("--seconds", type=float, default=None, help="seconds of each scene (default: the world's)")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from tqdm import tqdm

    from dima_planner.config import load_yaml, to_dict
    from dima_planner.data.splits import lane_overlap
    from dima_planner.sim.config import BenchConfig
    from dima_planner.sim.scenario import bench_routes, build_scenario
    from dima_planner.synth.config import GENERATOR_VERSION, SynthConfig
    from dima_planner.synth.towns import scene_ego_tracks, scene_places, world_towns

    t0 = time.time()
    cfg = load_yaml(SynthConfig, args.config)
    places = scene_places(cfg)
    idx = list(range(cfg.num_scenes))
    tracks = [scene_ego_tracks(cfg, [i], args.seconds)[0] for i in tqdm(idx, desc="scene ego tracks", unit="scene")]
    train = [i for i in idx if places[i].split == "train"]
    val = [i for i in idx if places[i].split == "val"]
    res = {"config": args.config, "generator_version": GENERATOR_VERSION,
           "towns": {t.name: t.role for t in world_towns(cfg)},
           "val_vs_train": lane_overlap([tracks[i] for i in val], [tracks[i] for i in train])}
    # Control: within one training town, half of its scenes against the other half.
    control = {}
    for town in sorted({places[i].town.name for i in train}):
        mine = [i for i in train if places[i].town.name == town]
        half = len(mine) // 2
        control[town] = lane_overlap([tracks[i] for i in mine[:half]], [tracks[i] for i in mine[half:]])
    res["train_half_vs_half_same_town"] = control
    bench = load_yaml(BenchConfig, args.bench)
    import tempfile

    with tempfile.TemporaryDirectory() as world:
        (Path(world) / "dima_meta.json").write_text(json.dumps({"config": to_dict(cfg), "scenes": [],
                                                                "generator_version": GENERATOR_VERSION}))
        per_route = {}
        for spec in tqdm(bench_routes(bench.routes, world), desc="bench routes", unit="route"):
            sc = build_scenario(spec, world)
            per_route[spec.name] = {"town": sc.town.name, "role": sc.town.role,
                                    "overlap": lane_overlap([sc.route_track()], [tracks[i] for i in train])}
    res["bench_routes_vs_train"] = per_route
    res["bench_routes_vs_train_mean"] = float(np.mean([r["overlap"] for r in per_route.values()]))
    res["wall_s"] = round(time.time() - t0, 1)
    print(f"validation vs training lanes: {100 * res['val_vs_train']:.1f} % of validation drive length")
    for town, v in control.items():
        print(f"  control, training town {town}: half of its scenes vs the other half {100 * v:.1f} %")
    print(f"bench routes vs training lanes: mean {100 * res['bench_routes_vs_train_mean']:.1f} %, max "
          f"{100 * max(r['overlap'] for r in per_route.values()):.1f} % over {len(per_route)} routes "
          f"(towns: {', '.join(sorted({r['town'] for r in per_route.values()}))})")
    print(f"({res['wall_s']:.0f} s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
