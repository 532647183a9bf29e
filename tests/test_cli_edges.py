"""Command-line rough edges a ROS user hits first: Ctrl-C on `dima bag record` finishes the
bag quietly, `dima demo` keeps the user's ROS_DOMAIN_ID, a bad parameter is one clear line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dima_planner.ros.env import pid_domain_id

REPO = Path(__file__).resolve().parents[1]
DIMA = Path(sys.executable).parent / "dima"


def _env(domain: int) -> dict[str, str]:
    return dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                PYTHONUNBUFFERED="1")


@pytest.mark.ros
def test_ctrl_c_on_bag_record_finishes_the_bag_without_a_traceback(tmp_path):
    from dima_planner.bags import bag_info

    out = tmp_path / "rec"
    proc = subprocess.Popen([str(DIMA), "bag", "record", "--out", str(out), "--topics",
                             "/dima_probe:=std_msgs/msg/String"], env=_env(pid_domain_id(81)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "metadata.yaml").exists() and not list(out.glob("*.mcap")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the writer creates the MCAP file when it opens
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "ExternalShutdownException" not in stderr, stderr
    assert "recorded 0 messages" in stdout
    info = bag_info.read_info(out)
    assert [t[0] for t in info.topics] == ["/dima_probe"] and info.chunk_compression in ([], ["zstd"])


def test_demo_keeps_the_users_domain_id(monkeypatch):
    from dima_planner.config import load_yaml
    from dima_planner.demo import DEMO_DOMAIN_ID, DemoConfig
    from dima_planner.ros.env import apply_ros_env_defaults

    cfg = load_yaml(DemoConfig, REPO / "params" / "demo.yaml")
    assert cfg.domain_id is None and DemoConfig().domain_id is None
    monkeypatch.setenv("ROS_DOMAIN_ID", "77")
    assert apply_ros_env_defaults(cfg.domain_id, DEMO_DOMAIN_ID)["ROS_DOMAIN_ID"] == "77"
    monkeypatch.delenv("ROS_DOMAIN_ID")
    # the demo is the project's own run: its own domain where none was exported
    assert apply_ros_env_defaults(cfg.domain_id, DEMO_DOMAIN_ID)["ROS_DOMAIN_ID"] == "42"


@pytest.mark.ros
def test_invalid_parameter_is_one_clear_line():
    proc = subprocess.run([str(Path(sys.executable).parent / "dima_planner_node"), "--ros-args",
                           "-p", "sync_tolerance:=5.0", "-p", "warmup:=false"], env=_env(pid_domain_id(83)),
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("dima_planner_node: invalid parameters: "), line
    assert line.count("invalid parameters") == 1 and "sync_tolerance" in line, line


@pytest.mark.parametrize("module", ["dima_planner.cli.sim", "dima_planner.demo"])
def test_repeated_set_flags_keep_every_override(module):
    """`--set a=1 --set b=2` used to keep only b=2 (nargs='*' overwrites): a closed-loop bench
    with --set checkpoint=X --set out=Y silently drove the default checkpoint."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    args = parser.parse_args(["--set", "checkpoint=x", "--set", "out=y", "z=1"])
    assert args.set == ["checkpoint=x", "out=y", "z=1"]
    assert parser.parse_args([]).set == []
