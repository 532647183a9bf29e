"""A town: a road network, its drawable surfaces and markings, and map vectors.

A town is a grid of straight roads, 2 travel lanes per direction plus a parking strip,
right-hand traffic. Each town draws its own layout from its seed: the number of junctions
along each axis, the block lengths, the angle of its two road directions (so junctions meet
at other than 90 degrees), the heading of the whole town and a small offset of every junction. Perimeter nodes are
T-junctions/corners, interior nodes 4-way; one or two interior roads are removed (seeded) to
add interior T-junctions. Global coordinates are positive metres so the devkit's map mask
(origin at the PNG's bottom-left) covers the town.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon
from shapely.ops import unary_union

LANE_W = 3.5
LANES = 2  # per direction
PARK_W = 2.5
HALF_W = LANES * LANE_W + PARK_W  # centre line to kerb
SIDEWALK_W = 3.5
KERB_RADIUS = 6.0
XWALK_NEAR, XWALK_FAR = HALF_W + 6.5, HALF_W + 10.5  # crosswalk span, from the node centre
STOP_DIST = XWALK_FAR + 1.0  # lanes (and their markings) start/end here, from the node centre
MARGIN = 90.0  # world border around the grid

# Ground colours (RGB) by layer, drawn in this order.
GRASS = (86, 110, 70)
SIDEWALK = (150, 148, 140)
ASPHALT = (70, 70, 74)
WHITE = (225, 225, 220)
YELLOW = (215, 180, 60)


@dataclass
class Marking:
    polygon: np.ndarray  # (N, 2) ground polygon, global metres
    color: tuple[int, int, int]


@dataclass
class Building:
    center: np.ndarray  # (2,)
    size: np.ndarray  # (3,) length (along yaw), width, height
    color: tuple[int, int, int]
    yaw: float = 0.0  # set along the block side it fronts

    def footprint(self) -> Polygon:
        u = np.array([np.cos(self.yaw), np.sin(self.yaw)])
        return Polygon(_rect(self.center, u, self.size[0], self.size[1]))


@dataclass(frozen=True)
class Town:
    """What determines one road network: its name (the nuScenes log.location of its scenes),
    its role in the world's split, its random stream and its layout ranges."""
    name: str
    role: str  # "train" | "val" | "heldout" (see synth/towns.py)
    seed: tuple[int, ...]
    grid_nodes: tuple[int, ...] = (4,)  # junctions per axis, drawn from these
    block_length: tuple[float, float] = (100.0, 140.0)  # metres between junctions
    skew_deg: float = 0.0  # each road direction turns by up to this from the axes
    jitter: float = 0.0  # each junction moves by up to this (metres, per axis)
    rotate: bool = False  # turn the whole town by a random heading


@dataclass
class RoadNetwork:
    location: str
    nodes: np.ndarray  # (N, 2)
    adj: dict[int, list[int]]
    drivable: Polygon
    extent: tuple[float, float]  # world size (x, y) in metres, origin at (0, 0)
    ground_layers: list[tuple[Polygon, tuple[int, int, int]]] = field(default_factory=list)
    markings: list[Marking] = field(default_factory=list)
    buildings: list[Building] = field(default_factory=list)
    map_elements: list[dict] = field(default_factory=list)

    def edges(self) -> list[tuple[int, int]]:
        return sorted({(min(a, b), max(a, b)) for a in self.adj for b in self.adj[a]})

    def direction(self, a: int, b: int) -> np.ndarray:
        d = self.nodes[b] - self.nodes[a]
        return d / np.linalg.norm(d)

    def edge_length(self, a: int, b: int) -> float:
        return float(np.linalg.norm(self.nodes[b] - self.nodes[a]))


LONG_BLOCK = 150.0  # every town has a road this long in both directions: overtakes and cut-ins fit


def build_network(town: Town) -> RoadNetwork:
    rng = np.random.default_rng(list(town.seed))
    nx, ny = (int(town.grid_nodes[int(rng.integers(len(town.grid_nodes)))]) for _ in range(2))
    lo, hi = town.block_length
    sx, sy = rng.uniform(lo, hi, nx - 1), rng.uniform(lo, hi, ny - 1)
    sx[rng.integers(nx - 1)] = max(LONG_BLOCK, hi)
    sy[rng.integers(ny - 1)] = max(LONG_BLOCK, hi)
    # The two road directions: the town is turned by `heading` as a whole (towns share no
    # road direction by construction), then x roads turn by alpha, y roads by beta more;
    # junctions meet at 90 + beta - alpha degrees.
    heading = rng.uniform(0.0, 2 * np.pi) if town.rotate else 0.0
    alpha, beta = heading + np.radians(rng.uniform(-town.skew_deg, town.skew_deg, 2))
    ex, ey = np.array([np.cos(alpha), np.sin(alpha)]), np.array([-np.sin(beta), np.cos(beta)])
    X, Y = np.concatenate([[0.0], np.cumsum(sx)]), np.concatenate([[0.0], np.cumsum(sy)])
    nodes = np.array([X[i] * ex + Y[j] * ey for j in range(ny) for i in range(nx)])
    nodes += rng.uniform(-town.jitter, town.jitter, nodes.shape)
    nodes += MARGIN - nodes.min(0)
    idx = lambda i, j: j * nx + i  # noqa: E731
    adj: dict[int, list[int]] = {k: [] for k in range(nx * ny)}
    edges = []
    for j in range(ny):
        for i in range(nx):
            if i + 1 < nx:
                edges.append((idx(i, j), idx(i + 1, j)))
            if j + 1 < ny:
                edges.append((idx(i, j), idx(i, j + 1)))
    interior = [e for e in edges if _is_interior(e, nx, ny)]
    n_removed = min(len(interior), 1 if nx * ny <= 16 else 2)
    removed = {interior[k] for k in rng.permutation(len(interior))[:n_removed]}
    for a, b in edges:
        if (a, b) in removed:
            continue
        adj[a].append(b)
        adj[b].append(a)
    top = nodes.max(0)
    extent = (float(top[0] + MARGIN), float(top[1] + MARGIN))
    net = RoadNetwork(location=town.name, nodes=nodes, adj=adj, drivable=Polygon(), extent=extent)
    rects = []
    for a, b in net.edges():
        # The road's rectangle reaches HALF_W past both junction centres: the junction square.
        mid = (nodes[a] + nodes[b]) / 2
        rects.append(Polygon(_rect(mid, net.direction(a, b), net.edge_length(a, b) + 2 * HALF_W, 2 * HALF_W)))
    # Closing rounds the concave (kerb) corners at junctions, keeps the convex ones.
    drivable = unary_union(rects).buffer(KERB_RADIUS, join_style=1).buffer(-KERB_RADIUS, join_style=1)
    net.drivable = drivable.simplify(0.05)
    _ground_layers(net)
    _markings_and_vectors(net)
    _buildings(net, rng)
    return net


def _is_interior(e: tuple[int, int], nx: int, ny: int) -> bool:
    (ai, aj), (_, bj) = divmod(e[0], nx)[::-1], divmod(e[1], nx)[::-1]
    if aj == bj:  # x road: not on the first/last row
        return 0 < aj < ny - 1
    return 0 < ai < nx - 1


def _ground_layers(net: RoadNetwork) -> None:
    """Hole-free polygons drawn in order, so a renderer without hole support is exact."""
    d = net.drivable
    outer = d.buffer(SIDEWALK_W, join_style=2)
    layers: list[tuple[Polygon, tuple[int, int, int]]] = []
    layers.append((Polygon(outer.exterior.coords), SIDEWALK))
    layers.append((Polygon(d.exterior.coords), ASPHALT))
    for hole in d.interiors:
        block = Polygon(hole.coords)
        layers.append((block, SIDEWALK))
        inner = block.buffer(-SIDEWALK_W, join_style=2)
        if not inner.is_empty:
            layers.append((inner, GRASS))
    net.ground_layers = layers


def _rect(center: np.ndarray, u: np.ndarray, length: float, width: float) -> np.ndarray:
    """Ground rectangle centred at `center`, long side along unit vector u."""
    v = np.array([-u[1], u[0]])
    hl, hw = length / 2, width / 2
    return np.array([center + hl * u + hw * v, center - hl * u + hw * v,
                     center - hl * u - hw * v, center + hl * u - hw * v])


def _markings_and_vectors(net: RoadNetwork) -> None:
    marks: list[Marking] = []
    elems: list[dict] = []
    for a, b in net.edges():
        p = net.nodes[a]
        u = net.direction(a, b)
        left = np.array([-u[1], u[0]])
        length = net.edge_length(a, b)
        s0, s1 = STOP_DIST, length - STOP_DIST
        # Centre line: double solid yellow; lane dividers dashed white; edge lines solid white.
        elems.append({"type": "divider", "points": _line(p, u, left, 0.0, s0, s1)})
        for off in (-0.18, 0.18):
            c = p + u * (s0 + s1) / 2 + left * off
            marks.append(Marking(_rect(c, u, s1 - s0, 0.12), YELLOW))
        for side in (-1, 1):
            off = side * LANE_W
            elems.append({"type": "divider", "points": _line(p, u, left, off, s0, s1)})
            for ds in np.arange(s0 + 1.0, s1 - 3.0, 9.0):
                marks.append(Marking(_rect(p + u * (ds + 1.5) + left * off, u, 3.0, 0.15), WHITE))
            off = side * LANES * LANE_W
            elems.append({"type": "divider", "points": _line(p, u, left, off, s0, s1)})
            marks.append(Marking(_rect(p + u * (s0 + s1) / 2 + left * off, u, s1 - s0, 0.15), WHITE))
        # Stop lines across the incoming lanes (right-hand traffic) and zebra crossings.
        marks.append(Marking(_rect(p + u * (s0 - 0.3) + left * (LANES * LANE_W / 2), left,
                                   LANES * LANE_W, 0.4), WHITE))
        marks.append(Marking(_rect(p + u * (s1 + 0.3) - left * (LANES * LANE_W / 2), left,
                                   LANES * LANE_W, 0.4), WHITE))
        for s_near, s_far in ((XWALK_NEAR, XWALK_FAR), (length - XWALK_FAR, length - XWALK_NEAR)):
            mid = p + u * (s_near + s_far) / 2
            outline = _rect(mid, u, s_far - s_near, 2 * HALF_W)
            elems.append({"type": "ped_crossing",
                          "points": _round(np.vstack([outline, outline[:1]]))})
            for off in np.arange(-HALF_W + 0.5, HALF_W - 0.2, 1.1):
                marks.append(Marking(_rect(mid + left * off, u, s_far - s_near, 0.55), WHITE))
    for ring in [net.drivable.exterior, *net.drivable.interiors]:
        elems.append({"type": "boundary", "points": _round(np.asarray(ring.coords)[:, :2])})
    net.markings = marks
    net.map_elements = elems


def _line(p, u, left, off, s0, s1) -> list[list[float]]:
    return _round(np.array([p + u * s0 + left * off, p + u * s1 + left * off]))


def _round(a: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in a]


def _buildings(net: RoadNetwork, rng: np.random.Generator) -> None:
    """Box buildings set back inside each block, fronting its sides: strong parallax cues."""
    palette = [(150, 120, 100), (170, 160, 140), (120, 125, 135), (160, 110, 90), (185, 180, 170)]
    kept: list[Building] = []
    for hole in net.drivable.interiors:
        taken: list[Polygon] = []  # footprints in this block (blocks do not overlap)
        block = Polygon(hole.coords).buffer(-(SIDEWALK_W + 3.0), join_style=2)
        if block.is_empty or block.geom_type != "Polygon":
            continue
        ring = block.simplify(1.5).exterior
        pts = np.asarray(ring.coords)[:, :2]
        if not ring.is_ccw:  # walk counter-clockwise: the block's inside is on the left
            pts = pts[::-1]
        # Buildings along each side, each ~12-25 m wide; corners are claimed by two sides,
        # overlapping ones are dropped.
        for p, q in zip(pts[:-1], pts[1:]):
            side = float(np.linalg.norm(q - p))
            if side < 12.0:
                continue
            u = (q - p) / side
            inward = np.array([-u[1], u[0]])
            t = rng.uniform(0, 4)
            while t < side - 8:
                w = min(rng.uniform(12, 25), side - t)
                depth = rng.uniform(10, 18)
                h = rng.uniform(6, 25)
                color = palette[int(rng.integers(len(palette)))]
                # 0.5 m in from the side: a footprint on the block's edge fails `within` by rounding.
                bld = Building(p + u * (t + w / 2) + inward * (depth / 2 + 0.5), np.array([w, depth, h]), color,
                               float(np.arctan2(u[1], u[0])))
                fp = bld.footprint()
                if fp.within(block) and not any(fp.intersects(o) for o in taken):
                    kept.append(bld)
                    taken.append(fp)
                t += w + rng.uniform(2, 8)
    net.buildings = kept


def map_vectors(net: RoadNetwork) -> dict:
    return {"location": net.location, "elements": net.map_elements}


def drivable_mask(net: RoadNetwork, resolution: float = 0.1) -> np.ndarray:
    """uint8 raster (255 = drivable), row 0 at the top (max y), as the devkit's MapMask expects."""
    from PIL import Image, ImageDraw

    w, h = int(np.ceil(net.extent[0] / resolution)), int(np.ceil(net.extent[1] / resolution))
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)

    def px(ring):
        c = np.asarray(ring.coords)[:, :2]
        return [(float(x / resolution), float(h - y / resolution)) for x, y in c]

    draw.polygon(px(net.drivable.exterior), fill=255)
    for hole in net.drivable.interiors:
        draw.polygon(px(hole), fill=0)
    return np.asarray(img)
