"""Closed-loop simulator core (no ROS): scenarios of the generated world, a kinematic
bicycle tracking a planned trajectory, IDM traffic that brakes for the ego, and scores.

`dima_planner.ros.sim_node` puts it on ROS 2 topics; `dima sim` (cli/sim.py) runs routes and benches.
"""
from .config import ControllerConfig, RouteSpec, ScoringConfig, SimConfig, VehicleConfig
from .engine import Plan, Simulator
from .scenario import Scenario, build_scenario

__all__ = ["SimConfig", "VehicleConfig", "ControllerConfig", "ScoringConfig", "RouteSpec", "Simulator", "Plan",
           "Scenario", "build_scenario"]
