"""The simulation loop: frames, physics substeps, traffic, and what happened (the log).

    sim = Simulator(scenario, cfg)
    while not sim.done:
        sim.advance(planner.plan(sim))   # None = no plan for this frame: the last one is kept

Infractions are detected online, as the CARLA leaderboard defines them; scoring.py turns the
log into the route's scores. What ends a route early:

* a collision the ego is at fault for (the car would have stopped there);
* route deviation: the ego centre more than `route_deviation_m` (CARLA: 30 m) from the route;
* agent blocked: less than `blocked_progress_m` of progress along the route in the last
  `blocked_seconds` while the lane ahead was free (no agent in the route's corridor within
  `blocked_free_gap_m`); CARLA uses 180 s, far longer than these 20-35 s routes.

Off-road driving and lane departure (outside the route's lane; one lane to the side the command
announces is allowed: a commanded lane change) are logged per physics step. The generated world
has no traffic lights for the ego (its virtual stop lines only hold other agents), so there is
no red-light infraction to detect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.prepared import prep

from dima_planner.data.geometry import ego_matrix, load_rig
from dima_planner.data.sample import COMMAND_HORIZON_S, route_command
from dima_planner.synth import agents as ag_mod
from dima_planner.synth.nuscenes_writer import CAMERA_OFFSETS

from .config import SimConfig
from .controller import TrackedPlan, control
from .scenario import Scenario
from .vehicle import VehicleState, step as vehicle_step


def end_reason_text(reason: str, cfg: SimConfig) -> str:
    """Why a route ended, in words (for consoles and reports)."""
    sc = cfg.scoring
    return {"completed": "reached the end of the route",
            "collision": "collision the ego was at fault for",
            "route_deviation": f"left the route: more than {sc.route_deviation_m:g} m from it",
            "blocked": (f"agent blocked: less than {sc.blocked_progress_m:g} m of progress in {sc.blocked_seconds:g} s "
                        f"with the lane ahead free for {sc.blocked_free_gap_m:g} m"),
            "timeout": f"out of time ({cfg.timeout_slack:g} s after the route's nominal duration)",
            }.get(reason, reason or "not ended")


@dataclass
class Plan:
    """Where the planner wants the ego centre (world x, y) at `times` seconds after `stamp`."""
    stamp: float
    times: np.ndarray  # (N,)
    xy: np.ndarray  # (N, 2) world
    source: str = ""


@dataclass
class Event:
    t: float
    kind: str  # collision | red_flag
    agent: int = -1
    agent_kind: str = ""
    ego_fault: bool = True
    detail: str = ""
    x: float = 0.0
    y: float = 0.0


@dataclass
class SimLog:
    """Physics-step arrays (index k at time t[k]) and per-frame records."""
    t: list[float] = field(default_factory=list)
    ego: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)  # x y yaw v accel steer
    route_s: list[float] = field(default_factory=list)
    route_lat: list[float] = field(default_factory=list)
    route_dist: list[float] = field(default_factory=list)  # ego centre to the nearest point of the route
    command: list[int] = field(default_factory=list)  # the command in force (frame-held)
    offroad: list[bool] = field(default_factory=list)
    agents_xy: list[np.ndarray] = field(default_factory=list)
    agents_yaw: list[np.ndarray] = field(default_factory=list)
    agents_v: list[np.ndarray] = field(default_factory=list)
    frames: list[dict] = field(default_factory=list)  # t, plan xy (world), command, missed
    events: list[Event] = field(default_factory=list)
    reasoning: list[dict] = field(default_factory=list)  # t (sim s of the scene), text: an MLLM node's commentary
    end_reason: str = ""

    def array(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, name))


def lidar2ego() -> np.ndarray:
    """LIDAR_TOP -> base_link of the rig the world is rendered with."""
    return load_rig().lidar2ego


def box_polygon(x: float, y: float, yaw: float, length: float, width: float):
    c, s = math.cos(yaw), math.sin(yaw)
    hl, hw = length / 2, width / 2
    pts = [(x + c * dx - s * dy, y + s * dx + c * dy) for dx, dy in ((hl, hw), (-hl, hw), (-hl, -hw), (hl, -hw))]
    return shapely.Polygon(pts)


class Simulator:
    def __init__(self, scenario: Scenario, cfg: SimConfig, start: VehicleState | None = None):
        """start: the ego's initial state (default: on the route at route_s0, at the scripted
        ego's speed); perturbed starts (off-centre, misaligned, at rest) give it."""
        self.sc, self.cfg = scenario, cfg
        ego = scenario.agents[0]
        p, h = scenario.route.at(scenario.route_s0)
        self.state = start or VehicleState(float(p[0]), float(p[1]), float(h), float(ego.v0))
        self.traffic = ag_mod.Traffic(scenario.agents, external=(0,))
        self.traffic.set_external(0, self.state.x, self.state.y, self.state.yaw, self.state.v,
                                         self.state.accel)
        self.t = 0.0
        self.frame = 0
        self.plan: TrackedPlan | None = None
        self.plans = 0
        self.missed = 0
        self.s_route = scenario.route_s0
        self.log = SimLog()
        self.l2e = lidar2ego()
        self._drivable = prep(scenario.net.drivable)
        self._contacts: set[int] = set()
        self._flagged: set[int] = set()
        self._done_reason = ""
        s_lo = max(0.0, scenario.route_s0 - 5.0)
        pts, _ = scenario.route.at(np.arange(s_lo, min(scenario.route.length, scenario.route_s1 + 5.0), 0.5))
        self._route_geom = shapely.LineString(pts)
        self._command = self.command()
        self._record()

    # ---- what planners and the node read ------------------------------------------------
    @property
    def done(self) -> bool:
        return bool(self._done_reason)

    @property
    def time_limit(self) -> float:
        return self.sc.seconds + self.cfg.timeout_slack

    def command(self) -> int:
        """The command of the training data (data.sample.route_command) on the route ahead: its
        point as far along as the car gets in the planning horizon at its current speed, seen
        from the current LiDAR frame."""
        st = self.state
        reach, _ = self.sc.route.at(self.s_route + COMMAND_HORIZON_S * st.v)
        w2l = np.linalg.inv(ego_matrix(st.x, st.y, st.yaw) @ self.l2e)
        return route_command(w2l[:2, :2] @ reach + w2l[:2, 3])

    def pose_at(self, t: float) -> tuple[float, float, float]:
        """Ego (x, y, yaw) at a past time t (interpolated in the log; clamped to its span)."""
        ts = self.log.t
        if t >= ts[-1] or len(ts) == 1:
            e = self.log.ego[-1]
            return e[0], e[1], e[2]
        k = int(np.searchsorted(ts, t))
        if k == 0:
            e = self.log.ego[0]
            return e[0], e[1], e[2]
        a, b = self.log.ego[k - 1], self.log.ego[k]
        w = (t - ts[k - 1]) / (ts[k] - ts[k - 1])
        dyaw = (b[2] - a[2] + math.pi) % (2 * math.pi) - math.pi
        return a[0] + w * (b[0] - a[0]), a[1] + w * (b[1] - a[1]), a[2] + w * dyaw

    def camera_poses(self) -> dict[str, tuple[float, float, float]]:
        """Ego pose at each camera's firing time (nuScenes offsets before the frame time)."""
        return {ch: self.pose_at(self.t + off) for ch, off in CAMERA_OFFSETS.items()}

    def agent_states(self) -> list[tuple[float, float, float]]:
        """(x, y, yaw) of the other agents now."""
        xy, yaw = self.traffic.poses()
        return [(float(xy[i, 0]), float(xy[i, 1]), float(yaw[i])) for i in range(1, len(xy))]

    # ---- stepping -----------------------------------------------------------------------
    def advance(self, plan: Plan | None) -> None:
        """Take this frame's plan (None: missed, keep the last one) and simulate one frame period."""
        if plan is None:
            self.missed += 1
        else:
            self.plans += 1
            x, y, yaw = self.pose_at(plan.stamp)
            self.plan = TrackedPlan(plan.stamp, plan.times, plan.xy, np.array([x, y]), yaw)
        self._command = self.command()
        self.log.frames.append({"t": self.t, "command": self._command, "missed": plan is None,
                                "plan": None if plan is None else np.asarray(plan.xy, float).copy()})
        cfg = self.cfg
        for _ in range(cfg.substeps):
            if self.done:
                break
            if self.plan is not None:
                steer, accel = control(self.state, self.plan, self.t, cfg.controller, cfg.vehicle)
            else:
                steer, accel = 0.0, 0.0  # no plan yet: hold the wheel and the speed
            self.traffic.step(self.t, cfg.dt)  # the others react to the ego as it is now
            self.state = vehicle_step(self.state, steer, accel, cfg.dt, cfg.vehicle)
            self.traffic.set_external(0, self.state.x, self.state.y, self.state.yaw, self.state.v,
                                         self.state.accel)
            self.t = round(self.t + cfg.dt, 9)
            self._record()
        self.frame += 1

    def _record(self) -> None:
        st, log = self.state, self.log
        self._update_route()
        xy, yaw = self.traffic.poses()
        log.t.append(self.t)
        log.ego.append((st.x, st.y, st.yaw, st.v, st.accel, st.steer))
        log.route_s.append(self.s_route)
        log.route_lat.append(self._lat)
        log.route_dist.append(float(self._route_geom.distance(shapely.Point(st.x, st.y))))
        log.command.append(self._command)
        vc = self.cfg.vehicle
        ego_poly = box_polygon(st.x, st.y, st.yaw, vc.length, vc.width)
        log.offroad.append(not self._drivable.contains(ego_poly))
        log.agents_xy.append(xy[1:].copy())
        log.agents_yaw.append(yaw[1:].copy())
        log.agents_v.append(self.traffic.v[1:].copy())
        self._collisions(ego_poly, xy, yaw)
        if not self._done_reason:
            sc = self.cfg.scoring
            if self.s_route >= self.sc.route_s1 - 0.5:
                self._done_reason = "completed"
            elif log.route_dist[-1] > sc.route_deviation_m:
                self._done_reason = "route_deviation"
            elif self._blocked():
                self._done_reason = "blocked"
            elif self.t >= self.time_limit - 1e-9:
                self._done_reason = "timeout"
        log.end_reason = self._done_reason

    def _blocked(self) -> bool:
        """No progress for blocked_seconds with the lane ahead free (CARLA's ActorBlockedTest)."""
        sc, log = self.cfg.scoring, self.log
        if self.t < sc.blocked_seconds:
            return False
        k = int(np.searchsorted(log.t, self.t - sc.blocked_seconds))
        if log.route_s[-1] - log.route_s[k] >= sc.blocked_progress_m:
            return False
        gap, _ = self.traffic.leader(0, self.s_route)
        return gap > sc.blocked_free_gap_m

    def _update_route(self) -> None:
        path = self.sc.route
        lo = max(0.0, self.s_route - 3.0)
        ss = np.arange(lo, min(path.length, self.s_route + 15.0), 0.25)
        pts, hs = path.at(ss)
        d = np.hypot(pts[:, 0] - self.state.x, pts[:, 1] - self.state.y)
        k = int(np.argmin(d))
        # Progress never goes backwards (a car reversing is not possible anyway).
        self.s_route = max(self.s_route, float(ss[k]))
        n = np.array([-math.sin(hs[k]), math.cos(hs[k])])
        self._lat = float((np.array([self.state.x, self.state.y]) - pts[k]) @ n)

    def _collisions(self, ego_poly, xy, yaw) -> None:
        agents = self.sc.agents
        st, vc = self.state, self.cfg.vehicle
        near = np.nonzero(np.hypot(xy[1:, 0] - st.x, xy[1:, 1] - st.y) < 12.0)[0] + 1
        now = set()
        for i in near:
            a = agents[i]
            if ego_poly.intersects(box_polygon(xy[i, 0], xy[i, 1], yaw[i], a.size[1], a.size[0])):
                now.add(int(i))
        for i in sorted(now - self._contacts):
            a = agents[i]
            # In the ego frame: contact at the ego's rear while it is slow = hit from behind.
            c, s = math.cos(st.yaw), math.sin(st.yaw)
            rel = (xy[i, 0] - st.x) * c + (xy[i, 1] - st.y) * s
            from_behind = rel < -vc.length / 2 + 0.3
            ego_fault = not (st.v < 0.5 or from_behind)
            kind = "static" if a.parked or (a.path is None and a.kind != "pedestrian") else a.kind
            self.log.events.append(Event(self.t, "collision", i - 1, kind, ego_fault,
                                         "ego standing or hit from behind" if not ego_fault else "",
                                         float(st.x), float(st.y)))
            if ego_fault and not self._done_reason:
                self._done_reason = "collision"
        self._contacts = now
        self._red_flags(xy, yaw)

    def _red_flags(self, xy, yaw) -> None:
        """Time to collision < red_flag_ttc with both moving at constant velocity."""
        st, vc = self.state, self.cfg.vehicle
        if st.v < 0.5:
            return
        horizon = self.cfg.scoring.red_flag_ttc
        taus = np.arange(0.1, horizon + 1e-9, 0.1)
        v_others = self.traffic.v
        near = np.nonzero(np.hypot(xy[1:, 0] - st.x, xy[1:, 1] - st.y) < st.v * horizon + 20.0)[0] + 1
        flagged = set()
        c, s = math.cos(st.yaw), math.sin(st.yaw)
        for i in near:
            # Only what is ahead of the ego's front axle counts (as NAVSIM: not agents behind).
            if i in self._contacts or (xy[i, 0] - st.x) * c + (xy[i, 1] - st.y) * s < 0.0:
                continue
            a = self.sc.agents[i]
            for tau in taus:
                ex = st.x + st.v * math.cos(st.yaw) * tau
                ey = st.y + st.v * math.sin(st.yaw) * tau
                ax = xy[i, 0] + v_others[i] * math.cos(yaw[i]) * tau
                ay = xy[i, 1] + v_others[i] * math.sin(yaw[i]) * tau
                if math.hypot(ex - ax, ey - ay) > 8.0:
                    continue
                if box_polygon(ex, ey, st.yaw, vc.length, vc.width).intersects(
                        box_polygon(ax, ay, yaw[i], a.size[1], a.size[0])):
                    flagged.add(int(i))
                    break
        for i in sorted(flagged - self._flagged):
            self.log.events.append(Event(self.t, "red_flag", i - 1, self.sc.agents[i].kind,
                                         x=float(st.x), y=float(st.y)))
        self._flagged = flagged
