"""A ROS 2 node as a child process, without importing ROS: the demo, the tests and the
benchmarks start and stop dima's nodes through here.

    proc = start_node(node_command("dima_planner.ros.planner_node", ["params/ros/planner.yaml"],
                                   {"checkpoint": "checkpoints/dima_tiny"}), env, log=Path("planner.log"))
    ...
    stop_node(proc)

The caller owns the environment (ROS_DOMAIN_ID, loopback discovery: ros/env.py).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def node_command(module: str, params_files: Iterable[str | Path] = (), overrides: Mapping[str, Any] | None = None,
                 python: str | Path | None = None, extra: Iterable[str] = (),
                 executable: str | Path | None = None) -> list[str]:
    """`python -m <module> --ros-args --params-file F ... -p k:=v ... <extra>` (with
    `executable`, a console entry point, instead of `python -m <module>`)."""
    cmd = [str(executable) if executable else str(python or sys.executable), *([] if executable else ["-m", module]),
           "--ros-args"]
    for f in params_files:
        cmd += ["--params-file", str(f)]
    for k, v in (overrides or {}).items():
        cmd += ["-p", f"{k}:={v}"]
    return [*cmd, *extra]


def start_node(cmd: list[str], env: Mapping[str, str], cwd: str | Path | None = None, log: str | Path | None = None,
               new_session: bool = False) -> subprocess.Popen:
    """Start `cmd`. With `log`, its output goes to that file; without, it is captured into
    `proc.output_lines` as it comes (a node that logs more than a pipe buffer, 64 KiB,
    would otherwise block in its logger). new_session: out of the caller's process group
    (a Ctrl-C in the terminal reaches the caller only, which then stops the node)."""
    if log is not None:
        out = open(log, "w")
        proc = subprocess.Popen(cmd, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=new_session)
        proc.log_file = out
        return proc
    proc = subprocess.Popen(cmd, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=new_session)
    proc.output_lines = []
    proc.reader = threading.Thread(target=lambda: proc.output_lines.extend(iter(proc.stdout.readline, "")),
                                   daemon=True)
    proc.reader.start()
    return proc


def stop_node(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """SIGINT (a node's normal shutdown path), SIGKILL after `timeout` s. Returns the
    captured output ("" for a node logging to a file)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = getattr(proc, "log_file", None)
    if log is not None:
        log.close()
    reader = getattr(proc, "reader", None)
    if reader is None:
        return proc.stdout.read() if proc.stdout else ""
    reader.join(timeout=10)
    return "".join(proc.output_lines)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads; Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_while_running(predicate, procs: Mapping[str, subprocess.Popen], timeout: float, what: str,
                       lock=None, logs: str | Path = "its log") -> None:
    """Until predicate() is true (called under `lock`, if given). RuntimeError if one of
    `procs` ({name: process}) exits first, or after `timeout` s; the message names `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lock if lock is not None else contextlib.nullcontext():
            if predicate():
                return
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}; see {logs}")
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}; logs in {logs}")
