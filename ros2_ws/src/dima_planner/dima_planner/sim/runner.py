"""Driving a route with an in-process planner, and scoring it against the expert."""
from __future__ import annotations

from collections.abc import Callable

from .config import SimConfig
from .engine import Plan, SimLog, Simulator, end_reason_text
from .scenario import Scenario
from .scoring import score


def drive(scenario: Scenario, plan_fn: Callable[[Simulator], Plan | None], cfg: SimConfig,
          on_frame: Callable[[Simulator], None] | None = None) -> Simulator:
    """Run the route to its end (completed, collision or timeout) in lockstep with plan_fn."""
    sim = Simulator(scenario, cfg)
    while not sim.done:
        if on_frame is not None:
            on_frame(sim)
        sim.advance(plan_fn(sim))
    return sim


def expert_log(scenario: Scenario, cfg: SimConfig) -> SimLog:
    from .planners import Expert

    return drive(scenario, Expert().plan, cfg).log


def route_result(name: str, sim: Simulator, cfg: SimConfig, expert: SimLog | None) -> dict:
    sc = sim.sc
    res = {"name": name, "kind": sc.kind}
    res.update(score(sim.log, sc.route_s0, sc.route_length, cfg.scoring, expert))
    res["end_detail"] = end_reason_text(sim.log.end_reason, cfg)
    res["plans"] = sim.plans
    res["missed_plans"] = sim.missed
    if sim.log.reasoning:
        res["reasoning"] = sim.log.reasoning
    return res
