"""A node's console entry point in its own process, and the wait until its model is loaded:
how `dima demo` and `dima sim` start the planner and MLLM nodes."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

from ..node_process import node_command, start_node, stop_node


class NodeProcess:
    """A ROS 2 node's console entry point in its own process, logging to a file."""

    def __init__(self, executable: str, params: list[str | Path], overrides: dict[str, object], log: Path):
        """params: parameter files (absolute, or relative to the working directory)."""
        cmd = node_command("", params, overrides, executable=Path(sys.executable).with_name(executable))
        self.name = executable
        self.log = log
        self.proc = start_node(cmd, os.environ, log=log, new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        stop_node(self.proc, 15.0)
        return self.proc.returncode


def wait_ready(node, procs: dict[str, NodeProcess], timeout: float) -> None:
    """Until every node (by ROS name) reports its model loaded on /diagnostics.

    The planner says "loaded (active)" once configured and activated; the MLLM node says
    "loaded <model id>" once its LLM is in memory.
    """
    waiting = set(procs)

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            name, _, part = st.name.partition(": ")  # fully qualified node name: "/dima_planner: model"
            name = name.lstrip("/")
            if part == "model" and st.level == DiagnosticStatus.OK and st.message.startswith("loaded") \
                    and (name != "dima_planner" or "active" in st.message):
                waiting.discard(name)

    sub = node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    deadline = time.monotonic() + timeout
    while waiting:
        for name in waiting:
            if not procs[name].alive():
                raise RuntimeError(f"{procs[name].name} exited during start-up; see {procs[name].log}")
        if time.monotonic() > deadline:
            logs = ", ".join(str(procs[name].log) for name in sorted(waiting))
            raise RuntimeError(f"{', '.join(sorted(waiting))} not ready within {timeout:.0f} s; see {logs}")
        rclpy.spin_once(node, timeout_sec=0.2)
    node.destroy_subscription(sub)
