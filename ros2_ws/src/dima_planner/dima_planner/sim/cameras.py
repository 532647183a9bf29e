"""The six cameras of the simulated ego, drawn by the generator's renderer (one source of truth)."""
from __future__ import annotations

import numpy as np

from dima_planner.synth.generate import scene_generator
from dima_planner.synth.nuscenes_writer import CAMERA_CHANNELS

from .engine import Simulator
from .scenario import Scenario, with_scale


class CameraRig:
    """Renders a frame of the simulation as the world's images were rendered.

    The ground window (a shapely cut of the town around the ego) is reused while the ego stays
    within `reuse_m` of its centre: the window reaches `render_distance` (110 m) each way.
    """

    def __init__(self, scenario: Scenario, scale: float, reuse_m: float = 10.0):
        self.gen = scene_generator(with_scale(scenario.synth, scale), town=scenario.town.name)
        self.width, self.height = self.gen.W, self.gen.H
        self.intrinsics = {ch: self.gen.K[ch] for ch in CAMERA_CHANNELS}
        self.cam2ego = {ch: self.gen.cam2ego[ch] for ch in (*CAMERA_CHANNELS, "LIDAR_TOP")}
        self.others = scenario.agents[1:]
        self.reuse_m = reuse_m
        self._ground = None
        self._centre = np.array([np.inf, np.inf])

    def render(self, sim: Simulator) -> dict[str, np.ndarray]:
        poses = sim.camera_poses()
        c = np.array(poses["CAM_FRONT"][:2])
        if np.max(np.abs(c - self._centre)) > self.reuse_m:
            self._ground, self._centre = self.gen.ground_window(*c), c
        return self.gen.render_cameras(poses, self.others, sim.agent_states(), self._ground)
