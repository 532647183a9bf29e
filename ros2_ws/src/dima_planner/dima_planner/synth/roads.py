"""The town: a grid road network, its drawable surfaces and markings, and map vectors.

Roads are axis-aligned with 2 travel lanes per direction plus a parking strip, right-hand
traffic. Perimeter nodes of the grid are T-junctions/corners, interior nodes are 4-way;
one interior road is removed (seeded) to add interior T-junctions. Global coordinates
are positive metres so the devkit's map mask (origin at the PNG's bottom-left) covers it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon, box
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
    size: np.ndarray  # (3,) length (x), width (y), height
    color: tuple[int, int, int]


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


def build_network(seed: int, grid_nodes: int = 4) -> RoadNetwork:
    rng = np.random.default_rng([seed, 1001])
    n = grid_nodes
    # Varied block sizes; at least one long road so an overtake fits between junctions.
    sx = rng.uniform(100.0, 140.0, n - 1)
    sy = rng.uniform(100.0, 140.0, n - 1)
    sx[rng.integers(n - 1)] = 150.0
    xs = MARGIN + np.concatenate([[0.0], np.cumsum(sx)])
    ys = MARGIN + np.concatenate([[0.0], np.cumsum(sy)])
    nodes = np.array([[x, y] for y in ys for x in xs])
    idx = lambda i, j: j * n + i  # noqa: E731
    adj: dict[int, list[int]] = {k: [] for k in range(n * n)}
    edges = []
    for j in range(n):
        for i in range(n):
            if i + 1 < n:
                edges.append((idx(i, j), idx(i + 1, j)))
            if j + 1 < n:
                edges.append((idx(i, j), idx(i, j + 1)))
    interior = [e for e in edges if _is_interior(e, n)]
    removed = {interior[int(rng.integers(len(interior)))]} if interior else set()
    for a, b in edges:
        if (a, b) in removed:
            continue
        adj[a].append(b)
        adj[b].append(a)
    extent = (float(xs[-1] + MARGIN), float(ys[-1] + MARGIN))
    net = RoadNetwork(location=f"dima-synth-town-{seed}", nodes=nodes, adj=adj,
                      drivable=Polygon(), extent=extent)
    rects = []
    for a, b in net.edges():
        p, q = nodes[a], nodes[b]
        rects.append(box(min(p[0], q[0]) - HALF_W, min(p[1], q[1]) - HALF_W,
                         max(p[0], q[0]) + HALF_W, max(p[1], q[1]) + HALF_W))
    # Closing rounds the concave (kerb) corners at junctions, keeps the convex ones.
    drivable = unary_union(rects).buffer(KERB_RADIUS, join_style=1).buffer(-KERB_RADIUS, join_style=1)
    net.drivable = drivable.simplify(0.05)
    _ground_layers(net)
    _markings_and_vectors(net)
    _buildings(net, rng)
    return net


def _is_interior(e: tuple[int, int], n: int) -> bool:
    (ai, aj), (_, bj) = divmod(e[0], n)[::-1], divmod(e[1], n)[::-1]
    if aj == bj:  # horizontal road: not on the top/bottom rows
        return 0 < aj < n - 1
    return 0 < ai < n - 1


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
    """Box buildings set back inside each block: strong parallax cues for cameras."""
    palette = [(150, 120, 100), (170, 160, 140), (120, 125, 135), (160, 110, 90), (185, 180, 170)]
    out = []
    for hole in net.drivable.interiors:
        block = Polygon(hole.coords).buffer(-(SIDEWALK_W + 3.0), join_style=2)
        if block.is_empty:
            continue
        x0, y0, x1, y1 = block.bounds
        # Buildings along the block perimeter, each ~12-25 m wide.
        for side in range(4):
            horizontal = side < 2
            lo, hi = (x0, x1) if horizontal else (y0, y1)
            t = lo + rng.uniform(0, 4)
            while t < hi - 8:
                w = min(rng.uniform(12, 25), hi - t)
                depth = rng.uniform(10, 18)
                h = rng.uniform(6, 25)
                if horizontal:
                    cy = y0 + depth / 2 if side == 0 else y1 - depth / 2
                    c, size = (t + w / 2, cy), (w, depth, h)
                else:
                    cx = x0 + depth / 2 if side == 2 else x1 - depth / 2
                    c, size = (cx, t + w / 2), (depth, w, h)
                if box(c[0] - size[0] / 2, c[1] - size[1] / 2, c[0] + size[0] / 2, c[1] + size[1] / 2).within(block):
                    out.append(Building(np.array(c), np.array(size), palette[int(rng.integers(len(palette)))]))
                t += w + rng.uniform(2, 8)
    # Corners are claimed twice (horizontal and vertical rows); drop overlapping ones.
    kept: list[Building] = []
    for bld in out:
        fp = box(*(bld.center - bld.size[:2] / 2), *(bld.center + bld.size[:2] / 2))
        if all(not fp.intersects(box(*(k.center - k.size[:2] / 2), *(k.center + k.size[:2] / 2))) for k in kept):
            kept.append(bld)
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
