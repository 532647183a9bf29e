"""Test-wide safety and shared fixtures.

DDS must never leave loopback: before any test can touch rclpy, discovery is limited to
localhost and the domain id is set per test session (child processes inherit it).
"""
from __future__ import annotations

import os

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)


def pytest_sessionfinish(session, exitstatus):
    """Remove the Fast DDS shared-memory segments of processes that died without cleaning
    up: tests SIGKILL nodes on purpose, and each such node leaves its 128 MiB segment
    (params/fastdds_shm.xml) in /dev/shm, which is RAM. `fastdds shm clean` removes only
    segments that no live process holds, so concurrent DDS users are untouched."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(sys.executable).with_name("fastdds")
    tool = str(tool) if tool.exists() else shutil.which("fastdds")
    if tool:
        subprocess.run([tool, "shm", "clean"], capture_output=True, timeout=60, check=False)


def small_world(tmp_path_factory, name: str, **fields):
    """A small generated world in a fresh temporary folder: two scenes, keyframe cameras only,
    one per split; `fields` set the rest of its SynthConfig (seed, length, scale, scenarios)."""
    from dima_planner.synth.config import SynthConfig
    from dima_planner.synth.generate import generate

    root = tmp_path_factory.mktemp(name)
    generate(SynthConfig(**{"num_scenes": 2, "val_fraction": 0.5, "camera_sweeps": False, **fields}), root,
             progress=False)
    return root


@pytest.fixture(scope="session")
def training_world(tmp_path_factory):
    """A tiny generated world (2 scenes of 4 s, keyframes only) for the training tests."""
    return small_world(tmp_path_factory, "training_world", seed=1, scene_seconds=4.0, scale=0.1,
                       traffic_vehicles=3, parked_vehicles=2, pedestrians=2, scenarios=("straight", "stop_and_go"))
