"""SynthConfig: everything that determines a generated world (and its hash)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from dima_planner.config import ConfigError, to_dict

GENERATOR_VERSION = "1.0.0"
SCENARIOS = ("straight", "turn_left", "turn_right", "stop_and_go", "overtake",
             # where ego history alone cannot predict the future (perception matters):
             "lead_brake",  # the lead vehicle brakes hard to a stop, then drives on
             "ped_step_out",  # a pedestrian steps onto the road mid-block as the ego approaches
             "cut_in")  # a vehicle from the adjacent lane cuts in close ahead and is slower
# Fields added after worlds were generated: left out of the hash at their defaults, so an
# existing world (data/world) keeps its hash.
_NEW_FIELDS_DEFAULTS = {"val_only_scenarios": (), "stratified_split": False}


@dataclass
class SynthConfig:
    seed: int = 0
    num_scenes: int = 14
    scene_seconds: float = 20.0
    scale: float = 0.25  # image scale relative to nuScenes' 1600x900
    version: str = "v1.0-dima"
    val_fraction: float = 0.2
    # Agents spawned around the ego route, per scene.
    traffic_vehicles: int = 10
    parked_vehicles: int = 8
    pedestrians: int = 10
    truck_fraction: float = 0.15
    bicycle_fraction: float = 0.08
    annotation_range: float = 60.0  # metres from the ego at the keyframe
    jpeg_quality: int = 85
    camera_hz: float = 12.0  # 12 Hz like nuScenes; sweeps between keyframes go to sweeps/
    camera_sweeps: bool = True
    lidar_azimuth_step_deg: float = 0.6
    lidar_beams: int = 32
    render_distance: float = 110.0  # metres of world drawn around the ego
    grid_nodes: int = 4  # the town is grid_nodes x grid_nodes intersections
    scenarios: tuple[str, ...] = SCENARIOS  # cycled over scenes
    # Long tail: scenarios only in the validation split (the scenes that draw them are val).
    val_only_scenarios: tuple[str, ...] = ()
    # True: every scenario gets its share of the validation scenes (val_fraction of its scenes,
    # at least one); False: a seeded random choice of scenes.
    stratified_split: bool = False
    workers: int = 2  # processes rendering scenes in parallel (output is identical for any value)

    def __post_init__(self) -> None:
        if self.num_scenes < 1:
            raise ConfigError(f"num_scenes must be >= 1, got {self.num_scenes}")
        if not 2.0 <= self.scene_seconds <= 60.0:
            raise ConfigError(f"scene_seconds must be in [2, 60], got {self.scene_seconds}")
        if not 0.05 <= self.scale <= 1.0:
            raise ConfigError(f"scale must be in [0.05, 1], got {self.scale}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.camera_hz < 2.0 or abs(self.camera_hz / 2.0 - round(self.camera_hz / 2.0)) > 1e-9:
            raise ConfigError(f"camera_hz must be a multiple of the 2 Hz keyframe rate, got {self.camera_hz}")
        if self.grid_nodes < 3:
            raise ConfigError(f"grid_nodes must be >= 3, got {self.grid_nodes}")
        if self.lidar_beams < 1 or self.lidar_azimuth_step_deg <= 0:
            raise ConfigError("lidar_beams must be >= 1 and lidar_azimuth_step_deg > 0")
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise ConfigError(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
        if not self.scenarios:
            raise ConfigError("scenarios must not be empty")
        for s in self.val_only_scenarios:
            if s not in self.scenarios:
                raise ConfigError(f"val_only_scenarios: {s!r} is not one of the world's scenarios")
        for name in ("traffic_vehicles", "parked_vehicles", "pedestrians"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the written JPEGs."""
        return max(1, int(round(1600 * self.scale))), max(1, int(round(900 * self.scale)))

    def config_hash(self) -> str:
        payload = dict(to_dict(self), generator_version=GENERATOR_VERSION)
        payload.pop("workers")  # does not change the output
        for k, default in _NEW_FIELDS_DEFAULTS.items():
            value = payload.get(k)
            if value == default or (isinstance(default, tuple) and tuple(value or ()) == default):
                payload.pop(k, None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
