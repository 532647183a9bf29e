"""node_process: the one way dima starts and stops a node process (demo, tests, benchmarks)."""
from __future__ import annotations

import os
import sys
import time

import pytest

from dima_planner.node_process import cpu_seconds, node_command, start_node, stop_node, wait_while_running

# Stands in for a node: says it is up, then runs until SIGINT and says it stopped.
CHILD = """
import signal, sys, time
def stop(*_):
    print("stopped on SIGINT", flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, stop)  # as rclpy does: whatever SIGINT disposition it inherited
print("up", sys.argv[1:], flush=True)
while True:
    time.sleep(0.05)
"""


def wait_until(predicate, proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None and time.monotonic() < deadline, "the child never came up"
        time.sleep(0.05)


def test_command_line_carries_params_files_and_overrides():
    cmd = node_command("dima_planner.ros.planner_node", ["a.yaml", "b.yaml"], {"checkpoint": "c", "num_threads": 2},
                       python="py", extra=["-r", "__ns:=/x"])
    assert cmd == ["py", "-m", "dima_planner.ros.planner_node", "--ros-args", "--params-file", "a.yaml",
                   "--params-file", "b.yaml", "-p", "checkpoint:=c", "-p", "num_threads:=2", "-r", "__ns:=/x"]
    assert node_command("", ["a.yaml"], executable="/bin/dima_planner_node") == [
        "/bin/dima_planner_node", "--ros-args", "--params-file", "a.yaml"]


def test_captured_output_and_sigint_shutdown(tmp_path):
    proc = start_node([sys.executable, "-c", CHILD, "arg"], os.environ)
    wait_until(lambda: proc.output_lines, proc)
    assert cpu_seconds(proc.pid) >= 0
    out = stop_node(proc, 10.0)
    assert "up ['arg']" in out and "stopped on SIGINT" in out and proc.returncode == 0


def test_logged_output_goes_to_the_file(tmp_path):
    log = tmp_path / "node.log"
    proc = start_node([sys.executable, "-c", CHILD], os.environ, log=log, new_session=True)
    wait_until(lambda: "up" in log.read_text(), proc)
    assert stop_node(proc, 10.0) == "" and proc.returncode == 0
    assert "stopped on SIGINT" in log.read_text()


def test_waiting_ends_on_the_predicate_a_dead_process_or_the_timeout():
    alive = start_node([sys.executable, "-c", CHILD], os.environ)
    dead = start_node([sys.executable, "-c", "pass"], os.environ)
    dead.wait(30)
    try:
        wait_while_running(lambda: True, {"node": alive}, 1.0, "nothing")
        with pytest.raises(RuntimeError, match="node exited"):
            wait_while_running(lambda: False, {"alive": alive, "node": dead}, 5.0, "the plan")
        with pytest.raises(RuntimeError, match="timed out waiting for the plan"):
            wait_while_running(lambda: False, {"node": alive}, 0.3, "the plan")
    finally:
        stop_node(alive, 10.0)
