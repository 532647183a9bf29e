"""Ego routes, traffic and pedestrians, simulated jointly with an IDM car-following model.

Every vehicle follows a precomputed path (lane centrelines joined by Bezier turns, with
smooth lateral offsets for lane changes). Each step a vehicle looks along its path for
the first agent body in its corridor (same-lane leaders, crossing traffic, pedestrians on
crosswalks) and brakes for it; curvature limits its speed ahead of turns. The result is
kinematically plausible: speeds <= ~13.5 m/s, bounded accelerations, heading = path tangent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .roads import HALF_W, LANE_W, LANES, PARK_W, SIDEWALK_W, STOP_DIST, XWALK_FAR, XWALK_NEAR, RoadNetwork

DT = 0.1
STEP = 0.5  # path resampling, metres

CAR_COLORS = [(40, 60, 140), (160, 30, 30), (200, 200, 205), (30, 30, 32), (90, 100, 110),
              (20, 110, 60), (200, 150, 30), (110, 40, 110)]
TRUCK_COLORS = [(230, 230, 225), (200, 90, 20), (60, 90, 60)]
PED_COLORS = [(230, 60, 40), (240, 140, 30), (200, 40, 140), (40, 180, 200)]
BIKE_COLOR = (230, 210, 30)


class Path:
    """Polyline resampled every STEP metres with heading and curvature."""

    def __init__(self, pts: np.ndarray):
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        keep = np.concatenate([[True], seg > 1e-6])
        pts = pts[keep]
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        self.length = float(s[-1])
        self.s = np.arange(0.0, self.length + 1e-9, STEP)
        self.xy = np.stack([np.interp(self.s, s, pts[:, 0]), np.interp(self.s, s, pts[:, 1])], 1)
        d = np.gradient(self.xy, axis=0)
        self.heading = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
        self.curv = np.gradient(self.heading) / STEP

    def at(self, s):
        s = np.clip(s, 0.0, self.length)
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        return np.stack([x, y], -1), np.interp(s, self.s, self.heading)

    def shifted(self, offset_fn) -> "Path":
        """Shift laterally (left positive) by offset_fn(s)."""
        left = np.stack([-np.sin(self.heading), np.cos(self.heading)], 1)
        return Path(self.xy + left * offset_fn(self.s)[:, None])


@dataclass
class Agent:
    kind: str  # "car" | "truck" | "bicycle" | "pedestrian"
    size: np.ndarray  # width, length, height (nuScenes order)
    color: tuple[int, int, int]
    path: Path | None = None  # None: static at pose
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0)  # static x, y, yaw
    s0: float = 0.0
    v0: float = 0.0
    vmax: float = 0.0
    parked: bool = False
    stop_s: float | None = None  # virtual stop line (red light) on its path
    green_t: float = 0.0
    crossing: tuple[float, np.ndarray] | None = None  # pedestrian: kerb s and crosswalk centre
    red_t: float = 0.0  # the virtual stop line holds from red_t to green_t (a lead braking mid-block)
    start_t: float = 0.0  # a pedestrian stands until start_t (one stepping out late)
    # Scripted hard braking (lead_brake): from brake_t for brake_hold s at brake_decel m/s^2
    # (to a stop at most), then the car-following model again.
    brake_t: float | None = None
    brake_hold: float = 0.0
    brake_decel: float = 6.0
    # Pedestrian stepping out (ped_step_out): stands until the ego is within step_out_dist and
    # would reach `conflict` (the middle of its lane on the pedestrian's way) in no more time
    # than the pedestrian needs to get there (step_out_tta): a driver who does not look hits it.
    step_out_dist: float | None = None
    step_out_tta: float = 0.0
    conflict: np.ndarray | None = None
    # Filled by simulate(): (K, 2), (K,), (K,)
    xy: np.ndarray = field(default=None, repr=False)
    yaw: np.ndarray = field(default=None, repr=False)
    speed: np.ndarray = field(default=None, repr=False)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def turn_of(net: RoadNetwork, a: int, b: int, c: int) -> str:
    u, w = net.direction(a, b), net.direction(b, c)
    cross = u[0] * w[1] - u[1] * w[0]
    if abs(cross) < 0.5:
        return "straight" if np.dot(u, w) > 0 else "uturn"
    return "left" if cross > 0 else "right"


def route_path(net: RoadNetwork, seq: list[int], lane_in: int, bike: bool = False) -> Path:
    """Path along node sequence seq, starting on edge seq[0]->seq[1] in lane lane_in.
    Lane 0 is next to the centre line, lane LANES-1 next to the parking strip."""
    pieces = []
    lane = lane_in
    extra = 1.0 if bike else 0.0
    for i in range(len(seq) - 1):
        a, b = seq[i], seq[i + 1]
        u = net.direction(a, b)
        right = np.array([u[1], -u[0]])
        L = net.edge_length(a, b)
        nxt = turn_of(net, a, b, seq[i + 2]) if i + 2 < len(seq) else "straight"
        lane_out = 0 if nxt == "left" else (LANES - 1 if nxt == "right" else lane)
        o_in, o_out = (lane + 0.5) * LANE_W + extra, (lane_out + 0.5) * LANE_W + extra
        s = np.arange(STOP_DIST, L - STOP_DIST + 1e-9, 1.0)
        off = o_in + (o_out - o_in) * _smoothstep((s - STOP_DIST - 5.0) / 20.0)
        pieces.append(net.nodes[a] + u * s[:, None] + right * off[:, None])
        if i + 2 < len(seq):  # connector through the junction at b
            c = seq[i + 2]
            w = net.direction(b, c)
            right_w = np.array([w[1], -w[0]])
            p0 = pieces[-1][-1]
            p2 = net.nodes[b] + w * STOP_DIST + right_w * o_out
            if nxt == "straight":
                ctrl = (p0 + p2) / 2
            else:  # intersection of the two lane lines
                A = np.stack([u, -w], 1)
                t = np.linalg.solve(A, p2 - p0)
                ctrl = p0 + u * t[0]
            tt = np.linspace(0, 1, 40)[1:-1, None]
            pieces.append((1 - tt) ** 2 * p0 + 2 * (1 - tt) * tt * ctrl + tt ** 2 * p2)
        lane = lane_out
    return Path(np.vstack(pieces))


def random_route(net, rng, a, b, min_len, first_turn=None, prefer=None, allowed_first=None):
    """Node sequence from edge a->b; returns None if first_turn is impossible at b."""
    seq, length = [a, b], net.edge_length(a, b)
    while length < min_len:
        p, q = seq[-2], seq[-1]
        opts = [c for c in net.adj[q] if c != p]
        turns = {c: turn_of(net, p, q, c) for c in opts}
        if len(seq) == 2 and first_turn is not None:
            opts = [c for c in opts if turns[c] == first_turn]
        elif len(seq) == 2 and allowed_first is not None:
            opts = [c for c in opts if turns[c] in allowed_first]
        elif prefer is not None and any(turns[c] == prefer for c in opts) and rng.random() < 0.8:
            opts = [c for c in opts if turns[c] == prefer]
        if not opts:
            return None
        c = opts[int(rng.integers(len(opts)))]
        seq.append(c)
        length += net.edge_length(q, c)
    return seq


def _directed_edges(net):
    return [(a, b) for a in net.adj for b in net.adj[a]]


def make_scene_agents(net: RoadNetwork, cfg, scenario: str, rng: np.random.Generator) -> list[Agent]:
    """Ego (index 0) for the scenario, then traffic, parked cars and pedestrians."""
    T = cfg.scene_seconds
    need = 14.0 * T + 120.0
    edges = _directed_edges(net)
    agents: list[Agent] = []
    for _ in range(500):
        a, b = edges[int(rng.integers(len(edges)))]
        straight_len = net.edge_length(a, b) - 2 * STOP_DIST
        if scenario in ("turn_left", "turn_right"):
            turn = scenario.split("_")[1]
            seq = random_route(net, rng, a, b, need, first_turn=turn)
            lane = 0 if turn == "left" else LANES - 1
        elif scenario in ("lead_brake", "ped_step_out", "cut_in"):
            if straight_len < 90:
                continue
            seq = random_route(net, rng, a, b, need, allowed_first=("straight",), prefer="straight")
            lane = LANES - 1
        elif scenario == "overtake":
            if straight_len < 72:
                continue
            seq = random_route(net, rng, a, b, need, allowed_first=("straight", "right"), prefer="straight")
            lane = LANES - 1
        else:
            seq = random_route(net, rng, a, b, need, first_turn="straight", prefer="straight")
            lane = int(rng.integers(LANES))
        if seq is not None:
            break
    else:  # pragma: no cover - the grid always has every manoeuvre
        raise RuntimeError(f"no route for scenario {scenario}")
    path = route_path(net, seq, lane)
    start = float(rng.uniform(0.0, 8.0))
    ego = Agent("ego", np.array([1.85, 4.6, 1.7]), (0, 0, 0), path=path, s0=start,
                v0=float(rng.uniform(6.0, 9.5)), vmax=float(rng.uniform(10.5, 13.5)))
    agents.append(ego)
    occupied = [ego.path.at(start)[0]]
    if scenario == "overtake":
        s_car = start + 44.0
        ego.path = path.shifted(lambda s: LANE_W * (_smoothstep((s - s_car + 30) / 16) -
                                                   _smoothstep((s - s_car - 10) / 16)))
        xy, yaw = path.at(s_car)
        agents.append(Agent("car", _vehicle_size("car", rng), _pick(CAR_COLORS, rng), pose=(*xy, yaw), parked=True))
        occupied.append(xy)
        # A slow vehicle in the lane the ego passes in: the ego must slow behind it to pass the
        # parked car (a driver who only knows the route runs into it).
        # It is beside the parked car when the ego would get there at its starting speed.
        slow_v = float(rng.uniform(3.5, 5.0))
        s_slow = s_car + float(rng.uniform(0.0, 6.0)) - slow_v * (s_car - start) / ego.v0
        slow = Agent("car", _vehicle_size("car", rng), _pick(CAR_COLORS, rng),
                     path=path.shifted(lambda s: np.full_like(s, LANE_W)), s0=s_slow, v0=slow_v, vmax=slow_v)
        agents.append(slow)
        occupied.append(slow.path.at(slow.s0)[0])
    if scenario == "stop_and_go":
        lead = Agent("car", _vehicle_size("car", rng), _pick(CAR_COLORS, rng), path=path,
                     s0=start + float(rng.uniform(18, 24)), v0=ego.v0, vmax=11.0)
        # A red light at the first stop line holds the lead; the ego queues behind it.
        lead.stop_s = net.edge_length(a, b) - 2 * STOP_DIST
        lead.green_t = float(rng.uniform(7.5, 11.0))
        agents.append(lead)
        occupied.append(path.at(lead.s0)[0])
    if scenario == "lead_brake":
        gap = float(rng.uniform(16, 24))
        lead = Agent("car", _vehicle_size("car", rng), _pick(CAR_COLORS, rng), path=path, s0=start + gap,
                     v0=ego.v0, vmax=float(rng.uniform(9.5, 12.0)))
        lead.brake_t = float(rng.uniform(3.0, 11.0))
        lead.brake_hold = float(rng.uniform(1.5, 3.5))
        lead.brake_decel = float(rng.uniform(5.0, 7.0))
        agents.append(lead)
        occupied.append(path.at(lead.s0)[0])
    if scenario == "ped_step_out":
        s_ped = start + float(rng.uniform(45, 75))
        xy, h = path.at(s_ped)
        u = np.array([np.cos(h), np.sin(h)])
        right = np.array([u[1], -u[0]])
        # from a sidewalk (mostly the near, right one, between parked cars) across the road
        side = 1.0 if rng.random() < 0.7 else -1.0
        kerb = HALF_W - side * LANE_W * (LANES - 0.5) - PARK_W / 2  # lane centre -> parking strip centre
        p0 = xy + right * side * kerb
        p1 = p0 - right * side * (2 * HALF_W)
        speed = float(rng.uniform(1.3, 2.0))
        ped = Agent("pedestrian", np.array([rng.uniform(0.55, 0.7), rng.uniform(0.6, 0.8), rng.uniform(1.6, 1.9)]),
                    _pick(PED_COLORS, rng), path=Path(np.array([p0, p1])), v0=speed, vmax=speed)
        ped.step_out_dist = float(rng.uniform(24, 38))
        ped.conflict = xy  # the ego's lane centre on the pedestrian's way, |kerb| from p0
        ped.step_out_tta = abs(kerb) / speed
        agents.append(ped)
        occupied.append(p0)
    if scenario == "cut_in":
        s_car = start + float(rng.uniform(6, 12))
        s_cut = s_car + float(rng.uniform(12, 28))
        other = route_path(net, seq, 0)  # the adjacent (left) lane of the same road
        other = other.shifted(lambda s: -LANE_W * (LANES - 1) * _smoothstep((s - s_cut) / 12))
        car = Agent("car", _vehicle_size("car", rng), _pick(CAR_COLORS, rng), path=other, s0=s_car,
                    v0=ego.v0 + 0.5, vmax=float(rng.uniform(10.0, 12.0)))
        # cuts in, then brakes firmly in front of the ego
        car.brake_t = (s_cut - s_car) / max(car.v0, 1.0) + float(rng.uniform(0.8, 1.6))
        car.brake_hold = float(rng.uniform(0.5, 2.0))
        car.brake_decel = float(rng.uniform(3.5, 5.0))
        agents.append(car)
        occupied.append(other.at(s_car)[0])
    ego_xy0 = occupied[0]
    near = [e for e in edges
            if np.linalg.norm((net.nodes[e[0]] + net.nodes[e[1]]) / 2 - ego_xy0) < 140]
    # Moving traffic.
    tries = 0
    n_traffic = sum(1 for ag in agents[1:] if not ag.parked)
    while n_traffic < cfg.traffic_vehicles + (1 if scenario == "stop_and_go" else 0) and tries < 200:
        tries += 1
        a, b = near[int(rng.integers(len(near)))]
        if scenario == "overtake" and (a, b) == (seq[0], seq[1]):
            continue
        r = rng.random()
        kind = "truck" if r < cfg.truck_fraction else ("bicycle" if r < cfg.truck_fraction + cfg.bicycle_fraction else "car")
        lane = LANES - 1 if kind == "bicycle" else int(rng.integers(LANES))
        tseq = random_route(net, rng, a, b, 12.0 * T + 80)
        if tseq is None:
            continue
        tpath = route_path(net, tseq, lane, bike=kind == "bicycle")
        s0 = float(rng.uniform(0, max(1.0, net.edge_length(a, b) - 2 * STOP_DIST - 5)))
        xy = tpath.at(s0)[0]
        if min(np.linalg.norm(xy - o) for o in occupied) < 14.0:
            continue
        vmax = {"car": rng.uniform(9, 13), "truck": rng.uniform(8, 10.5), "bicycle": rng.uniform(4, 5.5)}[kind]
        agents.append(Agent(kind, _vehicle_size(kind, rng), _color(kind, rng), path=tpath, s0=s0,
                            v0=float(rng.uniform(0.5, 1.0) * vmax), vmax=float(vmax)))
        occupied.append(xy)
        n_traffic += 1
    # Parked vehicles in parking strips.
    n_parked, tries = 0, 0
    while n_parked < cfg.parked_vehicles and tries < 200:
        tries += 1
        a, b = near[int(rng.integers(len(near)))]
        u = net.direction(a, b)
        right = np.array([u[1], -u[0]])
        s = rng.uniform(STOP_DIST + 3, net.edge_length(a, b) - STOP_DIST - 3)
        kind = "truck" if rng.random() < cfg.truck_fraction else "car"
        size = _vehicle_size(kind, rng)
        xy = net.nodes[a] + u * s + right * (HALF_W - PARK_W / 2 + (2.5 - size[0]) / 2 - 0.2)
        if min(np.linalg.norm(xy - o) for o in occupied) < 7.0:
            continue
        agents.append(Agent(kind, size, _color(kind, rng), pose=(xy[0], xy[1], float(np.arctan2(u[1], u[0]))),
                            parked=True))
        occupied.append(xy)
        n_parked += 1
    # Pedestrians: walk along sidewalks; many cross at the crosswalks on the ego's route.
    route_edges = [(seq[i], seq[i + 1]) for i in range(min(3, len(seq) - 1))]
    for k in range(cfg.pedestrians):
        a, b = route_edges[int(rng.integers(len(route_edges)))] if rng.random() < 0.6 else near[int(rng.integers(len(near)))]
        agents.append(_pedestrian(net, rng, a, b, T))
    return agents


def _pick(colors, rng):
    return colors[int(rng.integers(len(colors)))]


def _color(kind, rng):
    return {"car": CAR_COLORS, "truck": TRUCK_COLORS, "bicycle": [BIKE_COLOR]}[kind][int(rng.integers(
        {"car": len(CAR_COLORS), "truck": len(TRUCK_COLORS), "bicycle": 1}[kind]))]


def _vehicle_size(kind, rng) -> np.ndarray:
    if kind == "truck":
        return np.array([rng.uniform(2.4, 2.6), rng.uniform(6.5, 9.0), rng.uniform(2.8, 3.5)])
    if kind == "bicycle":
        return np.array([0.6, 1.75, 1.7])
    return np.array([rng.uniform(1.8, 2.0), rng.uniform(4.2, 4.9), rng.uniform(1.45, 1.8)])


def _pedestrian(net, rng, a, b, T) -> Agent:
    u = net.direction(a, b)
    left = np.array([-u[1], u[0]])
    L = net.edge_length(a, b)
    side = 1.0 if rng.random() < 0.5 else -1.0
    lat = side * (HALF_W + SIDEWALK_W / 2)
    speed = float(rng.uniform(1.1, 1.6))
    size = np.array([rng.uniform(0.55, 0.7), rng.uniform(0.6, 0.8), rng.uniform(1.6, 1.9)])
    s_x = L - (XWALK_NEAR + XWALK_FAR) / 2  # crosswalk centre near b
    mode = rng.random()
    if mode < 0.5:  # cross the road at b's crosswalk, then walk back along the far sidewalk
        t_cross = rng.uniform(1.0, 0.7 * T)
        s_start = max(XWALK_FAR + 1, s_x - speed * t_cross)
        pts = [net.nodes[a] + u * s_start + left * lat, net.nodes[a] + u * s_x + left * lat,
               net.nodes[a] + u * s_x - left * lat, net.nodes[a] + u * (s_x - 40) - left * lat]
        path = Path(np.array(pts))
        kerb_s = s_x - s_start - HALF_W / 4  # wait here for approaching traffic
        centre = net.nodes[a] + u * s_x
        return Agent("pedestrian", size, _pick(PED_COLORS, rng), path=path, s0=0.0, v0=speed, vmax=speed,
                     crossing=(float(max(0.0, kerb_s)), centre))
    s_start = rng.uniform(XWALK_FAR + 1, L - XWALK_FAR - 1)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    s_end = L - XWALK_FAR if direction > 0 else XWALK_FAR
    end = net.nodes[a] + u * s_end + left * lat
    startp = net.nodes[a] + u * s_start + left * lat
    if abs(s_end - s_start) < 1.0 or mode > 0.9:  # standing
        yaw = float(np.arctan2(u[1], u[0])) if direction > 0 else float(np.arctan2(-u[1], -u[0]))
        return Agent("pedestrian", size, _pick(PED_COLORS, rng), pose=(*startp, yaw))
    return Agent("pedestrian", size, _pick(PED_COLORS, rng), path=Path(np.array([startp, end])),
                 v0=speed, vmax=speed)


class Traffic:
    """All agents stepped jointly: IDM along their paths, braking for anything in their corridor.

    `simulate` runs it open loop for the generator; the closed-loop simulator (dima_planner.sim)
    steps it with the ego as an `external` agent whose pose comes from its vehicle model:
    the others see its body and brake for it (they never dodge), pedestrians wait for it.

    Two rules react to an external ego (the generator, whose scripted ego follows its own
    path at its own IDM speed, never meets them, so the worlds it writes are unchanged):

    * vehicles crossing its path, or coming from behind it (one changing into its lane),
      yield to where it is going, not only to where it is: its body EXTERNAL_PREVIEW s
      ahead at its speed counts as an obstacle in their corridor. Braking only for its
      current body lets a car cross in front of a slow ego and stop with its nose in the
      ego's lane once the ego closes up, or change lanes into its rear quarter;
    * a pedestrian stepping out (ped_step_out) starts when the ego, at its current speed and
      acceleration (up to the route's speed limit), would reach the conflict point no
      later than the pedestrian does, and keeps pace with it until it steps into the ego's
      lane: timed on the ego as it actually drives, not on the distance the scripted ego's
      speed implies (`_step_out_speed`).
    """

    LOOK = np.arange(0.0, 40.0, 1.0)
    EXTERNAL_PREVIEW = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # s
    CROSSING = (np.radians(30.0), np.radians(150.0))  # |heading difference| of a crossing vehicle
    STEP_OUT_PACE = (0.6, 2.5)  # m/s, a pedestrian stepping out in closed loop: from a stroll to a jog

    def __init__(self, agents: list[Agent], external: tuple[int, ...] = ()):
        self.agents = agents
        self.external = set(external)
        self.s = np.array([ag.s0 for ag in agents], float)
        self.v = np.array([ag.v0 if ag.path is not None else 0.0 for ag in agents], float)
        self.moving_veh = [i for i, ag in enumerate(agents)
                           if (ag.path is not None or i in self.external) and ag.kind != "pedestrian"]
        self._ext_pose: dict[int, tuple[float, float, float]] = {}
        self._ext_accel: dict[int, float] = {}
        self._stopped_at: dict[int, float] = {}  # scripted brakers: when they came to a stop
        self._released: set[int] = set()
        self._poses: tuple[np.ndarray, np.ndarray] | None = None  # until s or an external pose changes

    def set_external(self, i: int, x: float, y: float, yaw: float, v: float, accel: float = 0.0) -> None:
        self._ext_pose[i] = (x, y, yaw)
        self._ext_accel[i] = accel
        self.v[i] = v
        self._poses = None

    def poses(self) -> tuple[np.ndarray, np.ndarray]:
        if self._poses is None:
            self._poses = self._compute_poses()
        return self._poses[0].copy(), self._poses[1].copy()

    def _compute_poses(self) -> tuple[np.ndarray, np.ndarray]:
        A = len(self.agents)
        xy = np.zeros((A, 2))
        yaw = np.zeros(A)
        for i, ag in enumerate(self.agents):
            if i in self._ext_pose:
                xy[i], yaw[i] = self._ext_pose[i][:2], self._ext_pose[i][2]
            elif ag.path is None:
                xy[i], yaw[i] = ag.pose[:2], ag.pose[2]
            else:
                p, h = ag.path.at(self.s[i])
                xy[i], yaw[i] = p, h
        return xy, yaw

    def step(self, t: float, dt: float = DT) -> None:
        """Advance every non-external agent from time t to t + dt."""
        agents, s, v = self.agents, self.s, self.v
        A = len(agents)
        xy, yaw = self.poses()
        look = self.LOOK
        moving_veh = self.moving_veh
        # Body circles of every agent: three along a vehicle, one for a pedestrian.
        centres, radii, owner = body_circles(agents, xy, yaw)
        gaps = np.full((A, A), np.inf)
        for i in moving_veh:
            if i in self.external:
                continue
            gaps[i] = self.corridor_gaps(i, s[i], centres, radii, owner)
        self._yield_to_external(gaps, xy, yaw)
        acc = np.zeros(A)
        for i in moving_veh:
            if i in self.external:
                continue
            ag = agents[i]
            cand = [(gaps[i, j], j) for j in range(A) if np.isfinite(gaps[i, j])
                    # Mutual blocking (both in each other's corridor): the lower index goes first.
                    and not (np.isfinite(gaps[j, i]) and j > i and agents[j].kind != "pedestrian")]
            gap, v_lead = np.inf, 0.0
            if cand:
                gap, j = min(cand)
                v_lead = max(0.0, v[j] * np.cos(yaw[j] - yaw[i]))
            if (ag.stop_s is not None and ag.red_t <= t < ag.green_t
                    and s[i] + ag.size[1] / 2 < ag.stop_s + 0.5):
                g = ag.stop_s - s[i] - ag.size[1] / 2
                if g < gap:
                    gap, v_lead = max(g, 0.0), 0.0
            acc[i] = idm_accel(ag, s[i], v[i], gap, v_lead)
            if ag.brake_t is not None and t >= ag.brake_t and i not in self._released:
                # scripted (lead_brake, cut_in): brakes hard to a stop, holds it for brake_hold s,
                # then drives on
                if v[i] > 0.05 and i not in self._stopped_at:
                    acc[i] = -ag.brake_decel
                else:
                    self._stopped_at.setdefault(i, t)
                    acc[i], v[i] = 0.0, 0.0
                    if t - self._stopped_at[i] >= ag.brake_hold:
                        self._released.add(i)
            if s[i] >= ag.path.length - 1.0:
                acc[i], v[i] = 0.0, 0.0
        for i, ag in enumerate(agents):
            if ag.path is None or i in self.external:
                continue
            if ag.kind == "pedestrian":
                vi = ag.vmax if t >= ag.start_t else 0.0
                if ag.step_out_dist is not None:  # ped_step_out: waits, unseen by the ego's history
                    vi = self._step_out_speed(i, ag, xy[0], yaw[0], v[0])
                if ag.crossing is not None and abs(s[i] - ag.crossing[0]) < 0.3:
                    # Wait at the kerb while a vehicle approaches the crosswalk.
                    rel = xy[moving_veh] - ag.crossing[1]
                    dist = np.linalg.norm(rel, axis=1)
                    if np.any((dist < 30.0) & (v[moving_veh] > 1.5)):
                        vi = 0.0
                v[i] = vi if s[i] < ag.path.length else 0.0
                s[i] += v[i] * dt
            else:
                v[i] = max(0.0, v[i] + acc[i] * dt)
                s[i] += v[i] * dt
        self._poses = None

    def _step_out_speed(self, i: int, ag: Agent, ego_xy: np.ndarray, ego_yaw: float, ego_v: float) -> float:
        """Walking speed of a ped_step_out pedestrian now (0 while it waits at the kerb).

        Generator: it starts when the scripted ego is within step_out_dist and would reach the
        conflict point (the middle of its lane on the pedestrian's way) at its current speed
        no sooner than the pedestrian, then walks at its speed. Closed loop: it starts when
        the ego's time to that point (time_to_cover: its speed and acceleration, up to the
        route's speed limit) is no more than the pedestrian's, and until it steps into the
        ego's lane it keeps pace with the ego as it drives (between STEP_OUT_PACE): one from
        the far side, with three lanes to cross before the ego's, is not left behind by an ego
        that speeds up."""
        rel = ag.conflict - ego_xy
        d = float(np.linalg.norm(rel))
        if 0 not in self.external:
            if self.s[i] == 0.0 and (d > ag.step_out_dist or d > max(ego_v, 0.5) * ag.step_out_tta):
                return 0.0
            return ag.vmax
        if rel @ np.array([np.cos(ego_yaw), np.sin(ego_yaw)]) <= 0.0:  # the ego is past it
            return 0.0 if self.s[i] == 0.0 else ag.vmax
        t_ego = time_to_cover(d, ego_v, self._ext_accel.get(0, 0.0), max(ego_v, self.agents[0].vmax))
        if self.s[i] == 0.0 and t_ego > ag.step_out_tta:
            return 0.0
        to_conflict = ag.step_out_tta * ag.vmax - self.s[i]
        if to_conflict <= LANE_W / 2:  # in the ego's lane: no more adjusting
            return max(float(self.v[i]), ag.vmax) if self.s[i] == 0.0 else float(self.v[i])
        return float(np.clip(to_conflict / max(t_ego, 1e-3), *self.STEP_OUT_PACE))

    def _yield_to_external(self, gaps: np.ndarray, xy: np.ndarray, yaw: np.ndarray) -> None:
        """Vehicles crossing an external agent's path or behind it treat its body
        EXTERNAL_PREVIEW s ahead (at its speed, along its heading) as in their way: gaps[i, j]
        becomes the nearer of the two. Not oncoming ones, nor those ahead of it (a lead car
        must not brake for where its follower will be)."""
        for j in self.external:
            if self.v[j] < 0.05:
                continue  # standing: its body now is all there is
            ag = self.agents[j]
            d = np.array([np.cos(yaw[j]), np.sin(yaw[j])])
            ahead = [xy[j] + d * self.v[j] * tau for tau in self.EXTERNAL_PREVIEW]
            w, l = ag.size[0], ag.size[1]
            offs = (-(l - w) / 2, 0.0, (l - w) / 2)
            centres = np.array([p + d * o for p in ahead for o in offs])
            radii = np.full(len(centres), w / 2)
            owner = np.full(len(centres), j)
            lo, hi = self.CROSSING
            for i in self.moving_veh:
                if i in self.external:
                    continue
                dyaw = abs((yaw[i] - yaw[j] + np.pi) % (2 * np.pi) - np.pi)
                behind = dyaw < lo and (xy[i] - xy[j]) @ d < 0.0  # e.g. changing into its lane from behind
                if lo <= dyaw <= hi or behind:
                    gaps[i, j] = min(gaps[i, j], self.corridor_gaps(i, self.s[i], centres, radii, owner)[j])

    def corridor_gaps(self, i: int, s_i: float, centres, radii, owner) -> np.ndarray:
        """(A,) distance along agent i's path (from its front, at path coordinate s_i) to the
        first body circle of every other agent inside its corridor; inf where none."""
        ag, look = self.agents[i], self.LOOK
        gaps = np.full(len(self.agents), np.inf)
        pts, _ = ag.path.at(s_i + ag.size[1] / 2 + look)
        # Only circles that can be reached: the look points lie within look[-1] (arc length >=
        # straight distance) of the first one. Exact: the same gaps as testing every circle.
        thr = ag.size[0] / 2 + radii + 0.4
        near = np.hypot(centres[:, 0] - pts[0, 0], centres[:, 1] - pts[0, 1]) < look[-1] + thr + 1e-6
        near &= owner != i
        if not near.any():
            return gaps
        centres, radii, owner, thr = centres[near], radii[near], owner[near], thr[near]
        d = np.hypot(pts[:, None, 0] - centres[None, :, 0], pts[:, None, 1] - centres[None, :, 1])  # (L, C)
        hit = d < thr[None]
        if hit.any():
            first = np.where(hit.any(0), hit.argmax(0), 10 ** 6)
            for c in np.nonzero(first < 10 ** 6)[0]:
                gaps[owner[c]] = min(gaps[owner[c]], look[first[c]])
        return gaps

    def leader(self, i: int, s_i: float, xy: np.ndarray | None = None,
               yaw: np.ndarray | None = None) -> tuple[float, float]:
        """(gap, leader speed along i's heading) for agent i at path coordinate s_i, by the rule
        step() applies (mutual blocking: the lower index goes first); (inf, 0) when free.
        xy/yaw replace the agents' current poses (e.g. where they will be shortly)."""
        if xy is None:
            xy, yaw = self.poses()
        centres, radii, owner = body_circles(self.agents, xy, yaw)
        g = self.corridor_gaps(i, s_i, centres, radii, owner)
        best, v_lead = np.inf, 0.0
        for j in np.nonzero(np.isfinite(g))[0]:
            aj = self.agents[j]
            if j > i and aj.kind != "pedestrian" and j in self.moving_veh and j not in self.external:
                if np.isfinite(self.corridor_gaps(j, self.s[j], centres, radii, owner)[i]):
                    continue
            if g[j] < best:
                best, v_lead = float(g[j]), max(0.0, float(self.v[j] * np.cos(yaw[j] - yaw[i])))
        return best, v_lead


def body_circles(agents: list[Agent], xy: np.ndarray, yaw: np.ndarray):
    """(C, 2) centres, (C,) radii, (C,) owner index: three circles along a vehicle, one per pedestrian."""
    centres, radii, owner = [], [], []
    for j, ag in enumerate(agents):
        w, l = ag.size[0], ag.size[1]
        if ag.kind == "pedestrian":
            offs = [0.0]
        else:
            offs = [-(l - w) / 2, 0.0, (l - w) / 2]
        d = np.array([np.cos(yaw[j]), np.sin(yaw[j])])
        for o in offs:
            centres.append(xy[j] + d * o)
            radii.append(w / 2)
            owner.append(j)
    return np.array(centres), np.array(radii), np.array(owner)


def idm_accel(ag: Agent, s: float, v: float, gap: float, v_lead: float) -> float:
    """IDM acceleration along the agent's path: free-road term limited by the curvature ahead
    (speed reachable with comfortable braking), interaction term for the gap to a leader."""
    look = Traffic.LOOK
    ss = s + look
    kap = np.abs(np.interp(np.clip(ss, 0, ag.path.length), ag.path.s, ag.path.curv))
    vlim = np.minimum(ag.vmax, np.sqrt(2.2 / np.maximum(kap, 1e-4)))
    v0 = max(0.5, float(np.min(np.sqrt(vlim ** 2 + 2 * 2.0 * look))))
    a_max, b = (2.0, 2.5) if ag.kind != "truck" else (1.2, 2.0)
    free = 1 - (v / v0) ** 4
    inter = 0.0
    if np.isfinite(gap):
        s_star = 2.5 + max(0.0, v * 1.2 + v * (v - v_lead) / (2 * np.sqrt(a_max * b)))
        inter = (s_star / max(gap, 0.1)) ** 2
    return float(np.clip(a_max * (free - inter), -7.0, a_max))


def time_to_cover(d: float, v: float, a: float, v_max: float) -> float:
    """Seconds to travel d metres from speed v at constant acceleration a, the speed held
    within [0, v_max]; inf if it stops first."""
    if a > 1e-6 and v < v_max:
        t_cap = (v_max - v) / a
        d_cap = v * t_cap + 0.5 * a * t_cap ** 2
        if d <= d_cap:
            return (-v + np.sqrt(v * v + 2 * a * d)) / a
        return t_cap + (d - d_cap) / v_max
    if a < -1e-6:
        disc = v * v + 2 * a * d
        if disc < 0:
            return np.inf
        return (v - np.sqrt(disc)) / -a
    return d / v if v > 1e-6 else np.inf


def simulate(agents: list[Agent], seconds: float) -> np.ndarray:
    """Integrate all agents; fills agent.xy/yaw/speed on the returned time grid."""
    times = np.arange(0.0, seconds + 1.0 + 1e-9, DT)
    K = len(times)
    A = len(agents)
    xy_hist = np.zeros((A, K, 2))
    yaw_hist = np.zeros((A, K))
    v_hist = np.zeros((A, K))
    traffic = Traffic(agents)
    for k, t in enumerate(times):
        xy_hist[:, k], yaw_hist[:, k] = traffic.poses()
        v_hist[:, k] = traffic.v
        traffic.step(float(t), DT)
    for i, ag in enumerate(agents):
        ag.xy, ag.yaw, ag.speed = xy_hist[i], np.unwrap(yaw_hist[i]), v_hist[i]
    return times


def interp_state(ag: Agent, times: np.ndarray, t: float):
    """(x, y, yaw, speed) at time t (seconds from scene start)."""
    x = np.interp(t, times, ag.xy[:, 0])
    y = np.interp(t, times, ag.xy[:, 1])
    return float(x), float(y), float(np.interp(t, times, ag.yaw)), float(np.interp(t, times, ag.speed))


def scene_tags(ego: Agent, times: np.ndarray, seconds: float, scenario: str) -> list[str]:
    """Tags read off the ego's actual motion (plus the scripted scenario)."""
    m = times <= seconds
    tags = {scenario}
    dyaw = np.diff(ego.yaw[m])
    if np.sum(dyaw[dyaw > 0]) > np.radians(60):
        tags.add("turn_left")
    if -np.sum(dyaw[dyaw < 0]) > np.radians(60):
        tags.add("turn_right")
    if scenario in ("lead_brake", "ped_step_out", "cut_in"):
        tags.add("perception_critical")  # ego history alone cannot predict what follows
    sp = ego.speed[m]
    stopped = np.nonzero(sp < 0.3)[0]
    if len(stopped) and np.any(sp[stopped[0]:] > 3.0) and np.any(sp[:stopped[0] + 1] > 3.0):
        tags.add("stop_and_go")
    return sorted(tags)
