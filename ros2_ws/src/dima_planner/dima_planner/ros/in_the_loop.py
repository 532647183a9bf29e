"""The planner node in the closed loop: `dima sim` and `dima demo` drive routes of the
generated world with the real dima_planner_node (its own process) and the simulator node in
this process, in lockstep over DDS."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import rclpy
from rclpy.executors import MultiThreadedExecutor

from ..sim.config import BenchConfig, RouteSpec
from .node_process import NodeProcess, wait_ready
from .sim_node import SimBridge


class DimaInTheLoop:
    """The planner node process (+ the MLLM node in Dual mode) and the simulator node in
    this process, in lockstep over DDS."""

    def __init__(self, cfg: BenchConfig, out: Path, console, path: Callable[[str], Path], dual: bool = False,
                 log_name: str = ""):
        """`path` resolves the config's relative paths (checkpoints, parameter files)."""
        rclpy.init()
        checkpoint = path(cfg.dual_checkpoint if dual else cfg.checkpoint)
        self.node = SimBridge(cfg.sim)
        overrides = {"checkpoint": checkpoint} | ({"dual_mode": "true"} if dual else {})
        self.procs = {"dima_planner": NodeProcess(
            "dima_planner_node", [path(p) for p in cfg.node_params], overrides,
            out / (log_name or ("planner_node_dual.log" if dual else "planner_node.log")))}
        if dual:
            self.procs["dima_mllm"] = NodeProcess(
                "dima_mllm_node", [path(p) for p in cfg.mllm_params],
                {"checkpoint": checkpoint, "min_period": cfg.dual_commentary_period}, out / "mllm_node_dual.log")
        try:
            with console.status(f"starting {' and '.join(p.name for p in self.procs.values())} (loading the models)"):
                wait_ready(self.node, self.procs, cfg.node_ready_timeout)
        except BaseException:
            self.close()
            raise
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self.timeout = cfg.plan_timeout
        self.routes_done = 0

    def drive(self, spec: RouteSpec, video=None, progress=None):
        for proc in self.procs.values():
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited; see {proc.log}")
        self.node.frames_hook = video.add if video is not None else None
        # Each route at its own time, 1000 s after the last: the node resets its temporal state.
        self.routes_done += 1
        return self.node.drive(spec, offset_s=1000.0 * self.routes_done, plan_timeout=self.timeout,
                               progress=progress)

    def close(self) -> None:
        if hasattr(self, "executor"):
            self.executor.shutdown()
        for proc in self.procs.values():
            proc.stop()
        self.node.destroy_node()
        rclpy.try_shutdown()
