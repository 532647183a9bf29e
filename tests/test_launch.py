"""Launch files, ROS params and Docker files checked without launch/launch_ros installed.

Launch files are parsed with `ast`: every dima_planner executable must be a console entry
point, every package-share file they name must exist in the repository and be installed
by setup.py, parameter keys they set must be declared by the node, and discovery must
default to LOCALHOST. Every key of params/ros/*.yaml must be declared by the node (the
table in dima_planner.ros.params) with a value the node accepts.
"""
from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from dima_planner.ros.params import BUILTIN_PARAMS, NODE_NAME, PARAMS, flatten_ros_params, validate

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "ros2_ws" / "src" / "dima_planner" / "setup.py"
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PARAM_FILES = sorted((REPO / "params" / "ros").glob("*.yaml"))
# params/ros also holds other nodes' files (mllm.yaml): the planner's are those with its section.
PLANNER_PARAM_FILES = [p for p in PARAM_FILES if flatten_ros_params(yaml.safe_load(p.read_text()))]


def console_scripts() -> dict[str, str]:
    text = SETUP.read_text()
    return dict(re.findall(r'"(\w+)\s*=\s*([\w.]+:\w+)"', text))


def installed_patterns() -> list[str]:
    """Repository-relative globs that setup.py installs under share/dima_planner (same layout)."""
    return re.findall(r'_rel\("([^"]+)"\)', SETUP.read_text())


def _const(node):
    return node.value if isinstance(node, ast.Constant) else None


def launch_nodes(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("Node", "LifecycleNode")]


def share_paths(tree: ast.AST) -> list[str]:
    """Paths built as PathJoinSubstitution([share, "a", "b"]) -> "a/b"."""
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "PathJoinSubstitution":
            parts = n.args[0].elts
            if isinstance(parts[0], ast.Name) and parts[0].id == "share":
                out.append("/".join(_const(p) for p in parts[1:]))
    return out


def included_launch_files(tree: ast.AST) -> set[str]:
    """Launch files an IncludeLaunchDescription names as share paths ("launch/x.launch.py")."""
    return {p for p in share_paths(tree) if p.startswith("launch/") and p.endswith(".launch.py")}


def test_there_are_launch_and_params_files():
    names = {p.name for p in LAUNCH_FILES}
    assert {"planner.launch.py", "planner_mllm.launch.py", "nuscenes_replay.launch.py", "autoware.launch.py",
            "carla.launch.py"} <= names
    assert {"planner.yaml", "replay.yaml", "carla.yaml", "autoware.yaml", "autoware_carla.yaml"} <= {
        p.name for p in PLANNER_PARAM_FILES}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_consistent(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    scripts = console_scripts()
    nodes = launch_nodes(tree)
    includes = included_launch_files(tree)
    assert nodes or includes, f"{path.name} starts no node and includes no launch file"
    args = {_const(n.args[0]): n for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DeclareLaunchArgument"}
    for call in nodes:
        kw = {k.arg: k.value for k in call.keywords}
        if _const(kw["package"]) != "dima_planner":
            continue
        exe = _const(kw["executable"])
        assert exe in scripts, f"{path.name}: {exe} is not a console entry point in setup.py"
        if exe == "dima_planner_node":
            assert getattr(call.func, "id") == "LifecycleNode", "the planner is a lifecycle node"
            assert _const(kw["name"]) == NODE_NAME, "params files are keyed by the node name"
            for param_dict in (e for e in kw["parameters"].elts if isinstance(e, ast.Dict)):
                for key in param_dict.keys:
                    assert _const(key) in PARAMS or _const(key) in BUILTIN_PARAMS, f"{path.name}: {_const(key)!r}"
    patterns = installed_patterns()
    for rel in share_paths(tree):
        assert (REPO / rel).exists(), f"{path.name} names {rel}, which does not exist"
        files = [str(f.relative_to(REPO)) for f in (REPO / rel).iterdir()] if (REPO / rel).is_dir() else [rel]
        assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), f"setup.py does not install {rel}"
    if not nodes:  # a profile of planner.launch.py: it starts the node, with its discovery default
        assert includes <= {"launch/planner.launch.py"}, includes
        assert "namespace" in args, f"{path.name} has no namespace argument (several vehicles on one graph)"
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "IncludeLaunchDescription":
                passed = {_const(k) for k in ast.walk(call) if isinstance(k, ast.Dict) for k in k.keys}
                assert {"overlay_params_file", "namespace"} <= passed, f"{path.name} passes {passed}"
        return
    # network safety: LOCALHOST discovery by default, overridable by a launch argument
    env = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "SetEnvironmentVariable"]
    assert any(_const(n.args[0]) == "ROS_AUTOMATIC_DISCOVERY_RANGE" for n in env)
    default = {k.arg: k.value for k in args["discovery_range"].keywords}["default_value"]
    assert _const(default) == "LOCALHOST"


def test_entry_point_targets_exist():
    target = console_scripts()["dima_planner_node"]
    module, func = target.split(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("path", PLANNER_PARAM_FILES, ids=lambda p: p.name)
def test_params_file_keys_are_declared_and_valid(path: Path):
    doc = yaml.safe_load(path.read_text())
    flat = flatten_ros_params(doc)
    assert flat, f"{path.name} sets no parameters"
    for key, value in flat.items():
        assert key in PARAMS or key in BUILTIN_PARAMS, f"{path.name}: {key} is not declared by the node"
        assert validate(key, value) is None, f"{path.name}: {validate(key, value)}"


def test_base_params_file_sets_every_declared_parameter():
    """planner.yaml documents the full table: a new parameter must be added there too."""
    flat = flatten_ros_params(yaml.safe_load((REPO / "params" / "ros" / "planner.yaml").read_text()))
    assert set(PARAMS) == set(flat)
    for key, spec in PARAMS.items():
        assert flat[key] == spec.default, f"planner.yaml {key}={flat[key]!r} differs from the node default"


def test_flatten_rejects_unknown_keys_through_validate():
    doc = {"dima_planner": {"ros__parameters": {"sync_tolerance": 1, "cameras": {"CAM_FRONT": {"colour": "x"}}}}}
    flat = flatten_ros_params(doc)
    assert "must be a float" in validate("sync_tolerance", flat["sync_tolerance"])
    assert "unknown parameter" in validate("cameras.CAM_FRONT.colour", flat["cameras.CAM_FRONT.colour"])


def test_docker_files_match_the_repository():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM ros:jazzy" in dockerfile
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        for src in line.split()[:-1]:  # every source; the last word is the destination
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "colcon build --packages-select dima_msgs dima_planner" in dockerfile
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"planner", "mllm", "player"} <= set(services)
    scripts = console_scripts()
    launch_names = {p.name for p in LAUNCH_FILES}
    for name, svc in services.items():
        cmd = svc["command"]
        if cmd[:2] == ["ros2", "launch"]:
            assert cmd[3] in launch_names, f"compose {name}: no launch file {cmd[3]}"
            for arg in cmd[4:]:
                key, _, value = arg.partition(":=")
                if "/share/dima_planner/" in value:
                    assert (REPO / value.split("/share/dima_planner/")[1]).is_file(), value
        if cmd[:2] == ["ros2", "run"]:
            assert cmd[3] in scripts, f"compose {name}: {cmd[3]} is not an entry point"
        assert svc["environment"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
