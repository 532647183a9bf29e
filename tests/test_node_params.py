"""Every node's parameters are one ParamSpec table, validated: the planner's, the MLLM node's
and the simulator node's (which once took any value and failed, or not, later)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dima_planner.ros import mllm_node, sim_node
from dima_planner.ros.env import pid_domain_id
from dima_planner.runtime.params import PARAMS, CoreParams, ParamSpec, flatten_ros_params, unknown_parameters
from dima_planner.runtime.params import validate as planner_validate

REPO = Path(__file__).resolve().parents[1]
TABLES = {"dima_planner": PARAMS, "dima_mllm": mllm_node.PARAMS, "dima_sim": sim_node.PARAMS}


@pytest.mark.parametrize("node", list(TABLES))
def test_tables_are_paramspecs_whose_defaults_pass_their_own_checks(node):
    table = TABLES[node]
    assert table and all(isinstance(s, ParamSpec) and s.name == n for n, s in table.items())
    assert [s.check(s.default) for s in table.values()] == [None] * len(table)


def test_shipped_params_files_name_declared_parameters_with_valid_values():
    seen = set()
    for path in sorted((REPO / "params" / "ros").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for node, table in TABLES.items():
            values = flatten_ros_params(doc, node)
            seen |= {node} if values else set()
            assert unknown_parameters(values, table) == [], (path.name, node)
            validate = {"dima_planner": planner_validate, "dima_mllm": mllm_node.validate,
                        "dima_sim": sim_node.validate}[node]
            assert [r for n, v in values.items() if (r := validate(n, v))] == [], (path.name, node)
    assert seen == set(TABLES)  # each node has a params file to check


@pytest.mark.parametrize("name, value, words", [
    ("mode", "fast", "mode='fast' is not one of"),
    ("frame_hz", 120.0, "frame_hz=120.0 is outside [1.0, 50.0]"),  # SimConfig's range, now at start-up
    ("jpeg_quality", 0, "jpeg_quality=0 is outside"),
    ("seconds", 20, "seconds must be a float"),  # strict like rclpy: write 20.0
    ("nope", 1, "unknown parameter 'nope'"),
])
def test_sim_node_refuses_bad_values(name, value, words):
    assert words in sim_node.validate(name, value)


def test_core_params_are_the_tables_defaults_and_the_given_values():
    p = CoreParams.from_values({"max_input_age": 0.2, "cameras.CAM_BACK.frame_id": "rear"})
    assert p.max_input_age == 0.2 and p.sync_tolerance == PARAMS["sync_tolerance"].default
    assert p.camera_frames["CAM_BACK"] == "rear" and p.camera_frames["CAM_FRONT"] == ""
    assert p.camera_rectified == {c: False for c in p.camera_rectified}


@pytest.mark.ros
def test_sim_node_with_a_bad_parameter_exits_with_one_line():
    env = dict(os.environ, ROS_DOMAIN_ID=str(pid_domain_id(91)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    proc = subprocess.run([sys.executable, "-m", "dima_planner.ros.sim_node", "--ros-args",
                           "-p", "mode:=fast", "-p", "world:=/nonexistent"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("dima_sim_node: invalid parameters: ") and line.count("invalid parameters") == 1, line
    assert "mode='fast'" in line and "Traceback" not in proc.stderr, line
