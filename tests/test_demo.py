"""The main job end to end on the tiny world: world -> bags -> planner node process -> metrics.

`make demo` runs the same code on the default world; this keeps every stage honest:
the node must plan the replayed keyframes, and the scores must be the bag's own GT.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dima_planner import demo

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "dima_tiny"


@pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").exists(), reason="default checkpoint not trained yet")
def test_demo_on_the_tiny_world(tmp_path, capsys):
    parser = __import__("argparse").ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--set", f"synth_config={REPO / 'params/synth_tiny.yaml'}", f"world={tmp_path / 'world'}",
                              f"out={tmp_path / 'out'}", "with_mllm=false", "max_scenes=1", "num_plots=1",
                              f"domain_id={150 + __import__('os').getpid() % 50}"])
    assert demo.run(args) == 0
    printed = capsys.readouterr().out
    assert "DiMA (node)" in printed and "const. velocity" in printed and "ego-status MLP" in printed

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    node = metrics["methods"]["DiMA (node)"]["vad"]
    # The node planned every keyframe of the replayed scene (the replay waits for the node
    # instead of running ahead of it and leaving keyframes unplanned), and the demo's scores
    # (dataset GT) agree with `dima bag eval` (GT carried in the bag) on the same plans.
    assert metrics["planned_keyframes"] == metrics["keyframes"] > 0 and metrics["unplanned"] == {}
    assert node["l2_avg"] == pytest.approx(metrics["bag_eval"]["l2_avg"], abs=1e-6)
    assert node["col_avg"] == pytest.approx(metrics["bag_eval"]["col_avg"], abs=1e-9)
    for name, res in metrics["methods"].items():
        assert 0.0 <= res["vad"]["l2_avg"] < 50.0, name
    assert (tmp_path / "out" / "bars_vad.png").stat().st_size > 1000
    assert (tmp_path / "out" / "bev_0.png").stat().st_size > 1000
    # The closed-loop step: the node drove a validation scene of the world and the picture exists.
    loop = json.loads((tmp_path / "out" / "closed_loop.json").read_text())
    assert loop["missed_plans"] <= 2 and loop["progress_m"] > 10.0
    # It ends at the route's end, or early for a reason it names (left the route, collision...).
    assert loop["plans"] >= 20 or loop["end"] in ("route_deviation", "collision", "blocked")
    assert f"the route ended after {loop['sim_seconds']:.1f} s of sim time: {loop['end_detail']}" in printed
    assert (tmp_path / "out" / "closed_loop.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "closed_loop.gif").stat().st_size > 10_000
