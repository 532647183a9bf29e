"""Typed configs of the closed-loop simulator (params/sim/*.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field

from dima_planner.config import ConfigError
from dima_planner.resources import STAGE2_CHECKPOINT


@dataclass
class VehicleConfig:
    """Kinematic bicycle about the box centre (= base_link of the generated world's ego poses)."""
    length: float = 4.6  # the generator's ego box
    width: float = 1.85
    wheelbase: float = 2.85
    max_steer: float = 0.6  # rad
    max_steer_rate: float = 0.8  # rad/s
    max_accel: float = 3.0  # m/s^2
    max_decel: float = 8.0  # m/s^2 (positive)
    max_jerk: float = 15.0  # m/s^3, rate limit on the acceleration actuator
    max_speed: float = 20.0


@dataclass
class ControllerConfig:
    lateral: str = "pure_pursuit"  # pure_pursuit | stanley
    lookahead_min: float = 4.0  # m
    lookahead_time: float = 0.7  # s, lookahead = max(min, time x speed)
    stanley_gain: float = 1.5
    speed_gain: float = 1.5  # 1/s on the speed error
    position_gain: float = 0.6  # 1/s^2 on the along-track position error (timing of the plan)
    accel_feedforward: float = 1.0  # x the speed profile's acceleration
    accel_window: float = 0.5  # s, the profile's acceleration is its mean over this window
    preview_time: float = 0.1  # s ahead on the profile (the actuator's jerk-limited lag)
    stop_distance: float = 0.4  # a plan that moves less than this over its horizon means stop
    hold_heading_distance: float = 1.0  # m; a plan shorter than this keeps the wheels straight

    def __post_init__(self) -> None:
        if self.lateral not in ("pure_pursuit", "stanley"):
            raise ConfigError(f"controller.lateral must be pure_pursuit or stanley, got {self.lateral!r}")


@dataclass
class ScoringConfig:
    # CARLA leaderboard infraction penalties (multiplicative).
    penalty_pedestrian: float = 0.5
    penalty_vehicle: float = 0.6
    penalty_static: float = 0.65  # parked vehicles
    red_flag_ttc: float = 1.0  # s
    lane_half_width: float = 1.75  # ego centre further than this from the route's lane centre = departure
    lane_width: float = 3.5  # a commanded lane change may put the ego one lane to that side
    # Route deviation (CARLA: 30 m from the route ends it). Kept at CARLA's 30 m: a car that far
    # from a 150-250 m route has left it; off-road share already costs completion before that.
    route_deviation_m: float = 30.0
    # Agent blocked (CARLA: 180 s below 0.1 m/s ends the route). These routes last 20-35 s, so
    # 10 s without 1 m of progress, with nothing in the route's corridor within 20 m.
    blocked_seconds: float = 10.0
    blocked_progress_m: float = 1.0
    blocked_free_gap_m: float = 20.0
    # NAVSIM comfort bounds.
    max_lon_accel: float = 2.40
    min_lon_accel: float = -4.05
    max_lat_accel: float = 4.89
    max_jerk: float = 4.13
    max_yaw_rate: float = 0.95
    max_yaw_accel: float = 1.93


@dataclass
class RouteSpec:
    """One route: a scene of the world (`scene: scene-0003`, in that scene's town) or a generated
    scenario (`kind` + `index`: the generator's random stream of scene `index`, driven in `town`).
    `town` is a town name of the world or a role (train | val | heldout: the first town of it);
    empty: the world's first held-out town (roads no scene of the world drives), else its
    first town."""
    name: str = ""
    scene: str = ""
    kind: str = ""
    index: int = 0
    town: str = ""
    seconds: float = 20.0  # the route is what the generator's scripted ego drives in this time

    def __post_init__(self) -> None:
        if bool(self.scene) == bool(self.kind):
            raise ConfigError(f"route {self.name!r}: give exactly one of scene or kind")
        if self.scene and self.town:
            raise ConfigError(f"route {self.name!r}: a scene route drives in its scene's town; leave town empty")
        if not 4.0 <= self.seconds <= 60.0:
            raise ConfigError(f"route {self.name!r}: seconds must be in [4, 60]")
        if not self.name:
            self.name = self.scene or f"{self.kind}-{self.index}" + (f"@{self.town}" if self.town else "")

    @classmethod
    def parse(cls, text: str, seconds: float = 20.0) -> "RouteSpec":
        """`scene-000N`, `KIND:INDEX` or `KIND:INDEX@TOWN` (TOWN: a town name or role)."""
        if ":" not in text:
            return cls(scene=text, seconds=seconds)
        kind, rest = text.split(":", 1)
        index, _, town = rest.partition("@")
        try:
            index = int(index)
        except ValueError:
            raise ConfigError(f"route {text!r}: expected KIND:INDEX or KIND:INDEX@TOWN") from None
        return cls(kind=kind, index=index, town=town, seconds=seconds)


@dataclass
class RoutesConfig:
    """The bench's routes, built in whatever world `sim.world` is: for each scenario kind, `count`
    routes from the generator's own agents and streams, in the towns `towns` names (a role,
    train | val | heldout, or one town's name), spread over those towns in turn. Stream indices
    start at `first_index` (past any scene index, so no route replays a scene of the world).
    `extra` routes are added as given (a scene of the world, or KIND + INDEX)."""
    kinds: dict[str, int] = field(default_factory=dict)
    towns: str = "heldout"
    seconds: float = 20.0
    first_index: int = 1000
    extra: list[RouteSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        for kind, count in self.kinds.items():
            if count < 0:
                raise ConfigError(f"routes.kinds.{kind}: count must be >= 0, got {count}")
        if not 4.0 <= self.seconds <= 60.0:
            raise ConfigError("routes.seconds must be in [4, 60]")
        if self.first_index < 0:
            raise ConfigError("routes.first_index must be >= 0")


@dataclass
class SimConfig:
    world: str = "data/world"  # the generated world whose town, rig and renderer are used
    frame_hz: float = 12.0  # camera frames (and plans in lockstep) per simulated second
    substeps: int = 2  # physics steps per frame
    image_scale: float = 0.25  # 1.0 = 1600x900 (nuScenes); 0.25 = 400x225 (the default world)
    timeout_slack: float = 15.0  # s after the route's nominal duration before the route is abandoned (>= 0)
    vehicle: VehicleConfig = field(default_factory=VehicleConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        if not 1.0 <= self.frame_hz <= 50.0:
            raise ConfigError(f"frame_hz must be in [1, 50], got {self.frame_hz}")
        if self.substeps < 1:
            raise ConfigError("substeps must be >= 1")
        if not 0.05 <= self.image_scale <= 1.0:
            raise ConfigError(f"image_scale must be in [0.05, 1], got {self.image_scale}")

    @property
    def dt(self) -> float:
        return 1.0 / (self.frame_hz * self.substeps)


@dataclass
class BenchConfig:
    sim: SimConfig = field(default_factory=SimConfig)
    routes: RoutesConfig = field(default_factory=RoutesConfig)
    planners: list[str] = field(default_factory=lambda: ["expert", "route_follower", "stand_still", "const_vel",
                                                         "ego_mlp", "dima", "dima_dual"])
    checkpoint: str = STAGE2_CHECKPOINT
    node_params: list[str] = field(default_factory=lambda: ["params/ros/planner.yaml"])
    # `dima_dual`: the planner node in dual_mode (its MLLM branch from the same stage-2
    # checkpoint: Dual pools the two ego features, so they must be one pair) and
    # dima_mllm_node commenting beside it.
    dual_checkpoint: str = STAGE2_CHECKPOINT
    mllm_params: list[str] = field(default_factory=lambda: ["params/ros/mllm.yaml"])
    # Wall seconds between two commentaries. The commentary never changes a plan, so in
    # lockstep it only costs wall time.
    dual_commentary_period: float = 30.0
    plan_timeout: float = 10.0  # wall seconds to wait for the plan of a frame in lockstep
    node_ready_timeout: float = 180.0
    domain_id: int = 63
    out: str = "out/sim"
    world_synth_config: str = "params/synth_bench.yaml"  # what builds sim.world (named in errors)
    mlp_config: str = "params/eval_mlp.yaml"
    video: bool = True  # GIF of front camera + BEV per route (dima only; others have no cameras)
