"""Typed config of `dima dagger` (params/train/dagger_*.yaml; strict: typos are errors)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError
from ..sim.config import RoutesConfig, SimConfig
from ..train.config import TrainConfig


@dataclass
class PerturbConfig:
    """ChauffeurNet-style perturbed starts: the share of routes that start off the demonstration,
    and how. Each perturbed route draws one of the kinds by `weights`:
    offset (lateral offset and heading error), rest (standing still: a restart) and fast
    (10-13 m/s: braking from speed wherever the route needs it)."""
    share: float = 0.5
    weights: dict[str, float] = field(default_factory=lambda: {"offset": 0.5, "rest": 0.25, "fast": 0.25})
    lateral_m: tuple[float, float] = (0.5, 1.5)  # |offset| range, either side
    heading_deg: tuple[float, float] = (5.0, 30.0)  # |heading error| range, either way
    fast_mps: tuple[float, float] = (10.0, 13.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"perturb.share must be in [0, 1], got {self.share}")
        bad = set(self.weights) - {"offset", "rest", "fast"}
        if bad or not self.weights or min(self.weights.values()) < 0 or sum(self.weights.values()) <= 0:
            raise ConfigError(f"perturb.weights: non-negative weights of offset, rest and fast, got {self.weights}")


@dataclass
class DaggerConfig:
    """DAgger (Ross et al., 2011) on the generated world.

    Iteration i: drive `routes` (training towns) with the mixture of the expert (share
    betas[i] of the driving, drawn per `segment_s`) and the learner (iteration i-1's model;
    `init_from` for i = 0); label every keyframe the learner reached with the expert's plan
    from there; write the drives as a nuScenes world with those labels; fine-tune the learner
    on the benchmark world's training split plus every iteration's drives so far (aggregation)
    for `steps_per_iteration`; score it in closed loop on `eval_routes` (validation towns:
    the bench's held-out towns stay unseen). `export_dir` gets the iteration that scored best
    there."""
    train: TrainConfig = field(default_factory=TrainConfig)  # what each fine-tune runs (schedule.steps ignored)
    sim: SimConfig = field(default_factory=SimConfig)
    routes: RoutesConfig = field(default_factory=lambda: RoutesConfig(towns="train", first_index=2000))
    eval_routes: RoutesConfig = field(default_factory=lambda: RoutesConfig(towns="val", first_index=3000))
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    init_from: str = "checkpoints/dima_tiny"  # iteration 0's learner
    iterations: int = 3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.0])
    segment_s: float = 2.0  # the driver (expert or learner) is drawn per segment of this length
    steps_per_iteration: int = 150
    seed: int = 0
    out_dir: str = "runs/dagger"
    export_dir: str | None = "checkpoints/dima_dagger"
    eval_init: bool = True  # also score the starting learner on eval_routes (iteration -1)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError("iterations must be >= 1")
        if len(self.betas) != self.iterations or not all(0.0 <= b <= 1.0 for b in self.betas):
            raise ConfigError(f"betas: one expert share in [0, 1] per iteration ({self.iterations}), got {self.betas}")
        if self.segment_s <= 0 or self.steps_per_iteration < 1:
            raise ConfigError("segment_s must be > 0 and steps_per_iteration >= 1")
        if self.train.stage != 1:
            raise ConfigError("dagger fine-tunes the stage-1 planner (train.stage: 1)")
        if not self.routes.kinds:
            raise ConfigError("routes.kinds: at least one route kind to drive")
