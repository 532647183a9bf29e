"""SynthConfig: everything that determines a generated world (and its hash)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from dima_planner.config import ConfigError, to_dict

# 2.0.0: several towns per world, location-disjoint splits.
GENERATOR_VERSION = "2.0.0"
SCENARIOS = ("straight", "turn_left", "turn_right", "stop_and_go", "overtake",
             # where ego history alone cannot predict the future (perception matters):
             "lead_brake",  # the lead vehicle brakes hard to a stop, then drives on
             "ped_step_out",  # a pedestrian steps onto the road mid-block as the ego approaches
             "cut_in")  # a vehicle from the adjacent lane cuts in close ahead and is slower
# Fields added after worlds were generated: left out of the hash at their defaults, so an
# existing world (data/world) keeps its hash.
_NEW_FIELDS_DEFAULTS = {"val_only_scenarios": (), "stratified_split": False}

TOWN_ROLES = ("train", "val", "heldout")


@dataclass
class TownsConfig:
    """The road networks of a world, by role. Each town is its own network drawn from the
    world seed; a scene belongs to one town (its nuScenes log.location). Training scenes are
    only in `train` towns, validation scenes only in `val` towns, and `heldout` towns hold no
    scene at all: `dima sim --bench` builds its routes there, on roads no model saw."""
    train: int = 1
    val: int = 1
    heldout: int = 1
    grid_nodes: tuple[int, ...] = (3, 4)  # junctions per axis, drawn per town and axis from these
    block_length: tuple[float, float] = (100.0, 140.0)  # metres between junctions, drawn per block
    skew_deg: float = 8.0  # each road direction turns by up to this: junction angles 90 +/- 2x this
    jitter: float = 4.0  # metres each junction moves (per axis): roads kink a little at junctions
    # Each town turned by a random heading as a whole: no two towns' roads run alike in the
    # global frame (nuScenes' maps of different cities share coordinates, not roads).
    rotate: bool = True

    def __post_init__(self) -> None:
        if self.train < 1:
            raise ConfigError(f"towns.train must be >= 1, got {self.train}")
        if self.val < 0 or self.heldout < 0:
            raise ConfigError("towns.val and towns.heldout must be >= 0")
        if not self.grid_nodes or min(self.grid_nodes) < 3:
            raise ConfigError(f"towns.grid_nodes must be values >= 3, got {list(self.grid_nodes)}")
        lo, hi = self.block_length
        if not 80.0 <= lo <= hi <= 300.0:
            raise ConfigError(f"towns.block_length must be a range within [80, 300] m, got {[lo, hi]}")
        if not 0.0 <= self.skew_deg <= 15.0:
            # beyond ~15 degrees a straight-on continuation could read as a turn (agents.turn_of)
            raise ConfigError(f"towns.skew_deg must be in [0, 15], got {self.skew_deg}")
        if not 0.0 <= self.jitter <= 6.0:
            raise ConfigError(f"towns.jitter must be in [0, 6] m, got {self.jitter}")


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
    towns: TownsConfig = field(default_factory=TownsConfig)
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
        if self.towns.val == 0 and (self.val_only_scenarios or (self.val_fraction > 0 and self.num_scenes >= 2)):
            raise ConfigError("the world has validation scenes but towns.val is 0: validation scenes are "
                              "drawn in their own towns (set towns.val >= 1, or val_fraction: 0)")
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
