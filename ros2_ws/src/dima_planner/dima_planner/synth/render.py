"""Camera renderer: projects the 3-D town through a pinhole camera with PIL polygons.

Order (painter's algorithm): sky above the horizon, far ground, ground layers (grass,
sidewalk, asphalt), markings, then boxes sorted far-to-near by the distance to their
nearest footprint point, each box's camera-facing faces shaded by their normal.
Polygons are clipped against the near plane in camera space before projection, so
geometry passing beside or behind the camera never wraps around.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

NEAR = 0.15
SKY = (150, 185, 220)
FAR_GROUND = (95, 105, 85)
SUN = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])

# Unit box corners (x along length, y along width, z up from 0..1) and outward faces.
_CORNERS = np.array([[x, y, z] for z in (0, 1) for y in (-0.5, 0.5) for x in (-0.5, 0.5)])
_FACES = [  # (corner indices, outward normal in box frame)
    ((0, 1, 3, 2), (0, 0, -1)), ((4, 6, 7, 5), (0, 0, 1)),
    ((0, 4, 5, 1), (0, -1, 0)), ((2, 3, 7, 6), (0, 1, 0)),
    ((0, 2, 6, 4), (-1, 0, 0)), ((1, 5, 7, 3), (1, 0, 0)),
]
_FACE_IDX = np.array([f[0] for f in _FACES])
_FACE_N = np.array([f[1] for f in _FACES], float)


@dataclass
class RenderBox:
    """A solid box on the ground: centre (x, y) and base z, yaw, length/width/height."""
    x: float
    y: float
    z0: float
    yaw: float
    length: float
    width: float
    height: float
    color: tuple[int, int, int]
    group: int = -1  # sub-boxes of one agent share a group and are drawn together


@dataclass
class GroundBatch:
    """Ground polygons (z = 0) in draw order, concatenated for vectorised transforms."""
    verts: np.ndarray  # (M, 3)
    starts: np.ndarray  # (P,) first vertex of each polygon
    colors: list[tuple[int, int, int]]


def ground_batch(polys: list[np.ndarray], colors: list[tuple[int, int, int]]) -> GroundBatch:
    lens = np.array([len(p) for p in polys], int)
    verts = np.zeros((int(lens.sum()), 3))
    if len(polys):
        verts[:, :2] = np.concatenate(polys)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int) if len(polys) else np.zeros(0, int)
    return GroundBatch(verts, starts, list(colors))


def clip_near(P: np.ndarray, near: float = NEAR) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-space polygon (N, 3) to z >= near."""
    z = P[:, 2]
    inside = z >= near
    if inside.all():
        return P
    if not inside.any():
        return P[:0]
    Pn = np.roll(P, -1, 0)
    zn = Pn[:, 2]
    cross = inside != (zn >= near)
    t = np.where(cross, (near - z) / np.where(cross, zn - z, 1.0), 0.0)
    inter = P + t[:, None] * (Pn - P)
    out = np.stack([P, inter], 1).reshape(-1, 3)
    keep = np.stack([inside, cross], 1).reshape(-1)
    return out[keep]


class Renderer:
    def __init__(self, K: np.ndarray, width: int, height: int):
        self.K = np.asarray(K, float)
        self.W, self.H = width, height

    def _project(self, Pc: np.ndarray) -> np.ndarray:
        z = Pc[:, 2:3]
        uv = Pc[:, :2] / z * [self.K[0, 0], self.K[1, 1]] + [self.K[0, 2], self.K[1, 2]]
        return uv

    def render(self, world2cam: np.ndarray, ground: GroundBatch, boxes: list[RenderBox]) -> Image.Image:
        W, H = self.W, self.H
        R, t = world2cam[:3, :3], world2cam[:3, 3]
        img = Image.new("RGB", (W, H), FAR_GROUND)
        draw = ImageDraw.Draw(img)
        self._sky(draw, R)
        # Ground: one vectorised transform, then per-polygon clipping only where needed.
        if len(ground.starts):
            Pc = ground.verts @ R.T + t
            zmax = np.maximum.reduceat(Pc[:, 2], ground.starts)
            zmin = np.minimum.reduceat(Pc[:, 2], ground.starts)
            uv = self._project(np.where(Pc[:, 2:3] >= NEAR, Pc, [0, 0, 1.0]))
            umin = np.minimum.reduceat(uv, ground.starts)
            umax = np.maximum.reduceat(uv, ground.starts)
            ends = np.append(ground.starts[1:], len(Pc))
            for i in np.nonzero(zmax >= NEAR)[0]:
                if zmin[i] >= NEAR:
                    if umax[i, 0] < 0 or umin[i, 0] > W or umax[i, 1] < 0 or umin[i, 1] > H:
                        continue
                    pts = uv[ground.starts[i]:ends[i]]
                else:
                    P = clip_near(Pc[ground.starts[i]:ends[i]])
                    if len(P) < 3:
                        continue
                    pts = self._project(P)
                draw.polygon(pts.ravel().tolist(), fill=ground.colors[i])
        self._draw_boxes(draw, boxes, R, t)
        return img

    def _draw_boxes(self, draw, boxes: list[RenderBox], R, t) -> None:
        """All boxes transformed and culled at once; only visible faces reach PIL."""
        if not boxes:
            return
        W, H = self.W, self.H
        p = np.array([[b.x, b.y, b.z0, b.yaw, b.length, b.width, b.height, b.group] for b in boxes])
        c, s = np.cos(p[:, 3]), np.sin(p[:, 3])
        local = _CORNERS[None] * p[:, None, 4:7]  # (B, 8, 3)
        corners = np.stack([c[:, None] * local[..., 0] - s[:, None] * local[..., 1] + p[:, None, 0],
                            s[:, None] * local[..., 0] + c[:, None] * local[..., 1] + p[:, None, 1],
                            local[..., 2] + p[:, None, 2]], -1)
        Pc = corners @ R.T + t
        z = Pc[..., 2]
        cam_pos = -R.T @ t
        # Painter's key: distance from the camera to the nearest footprint point (per agent group).
        d = cam_pos[:2] - p[:, :2]
        lx, ly = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
        dist = np.hypot(lx - np.clip(lx, -p[:, 4] / 2, p[:, 4] / 2), ly - np.clip(ly, -p[:, 5] / 2, p[:, 5] / 2))
        for g in np.unique(p[:, 7][p[:, 7] >= 0]):
            m = p[:, 7] == g
            dist[m] = dist[m].min()
        front = z.min(1) >= NEAR
        uv = Pc[..., :2] / np.where(z >= NEAR, z, 1.0)[..., None] * [self.K[0, 0], self.K[1, 1]] + [self.K[0, 2], self.K[1, 2]]
        off = front & ((uv[..., 0].max(1) < 0) | (uv[..., 0].min(1) > W) | (uv[..., 1].max(1) < 0) | (uv[..., 1].min(1) > H))
        keep = (z.max(1) >= NEAR) & ~off
        normals = np.stack([np.stack([c, s, 0 * c], -1), np.stack([-s, c, 0 * c], -1)], 1)  # local x, y in world
        n_world = _FACE_N[None, :, 0:1] * normals[:, None, 0] + _FACE_N[None, :, 1:2] * normals[:, None, 1]
        n_world[..., 2] = _FACE_N[None, :, 2]
        centres = corners[:, _FACE_IDX].mean(2)  # (B, 6, 3)
        facing = np.einsum("bfj,bfj->bf", n_world, cam_pos - centres) > 0
        shade = 0.55 + 0.45 * np.maximum(0.0, n_world @ SUN)  # (B, 6)
        for i in sorted(np.nonzero(keep)[0], key=lambda i: (-dist[i], i)):
            col = boxes[i].color
            for f in np.nonzero(facing[i])[0]:
                if front[i]:
                    pts = uv[i, _FACE_IDX[f]]
                else:
                    P = clip_near(Pc[i, _FACE_IDX[f]])
                    if len(P) < 3:
                        continue
                    pts = self._project(P)
                k = shade[i, f]
                draw.polygon(pts.ravel().tolist(), fill=(int(col[0] * k), int(col[1] * k), int(col[2] * k)))

    def _sky(self, draw, R) -> None:
        """Fill above the horizon: the image line of ground-plane directions at infinity."""
        fwd = R.T @ [0, 0, 1.0]  # optical axis in world
        f = np.array([fwd[0], fwd[1], 0.0])
        if np.linalg.norm(f) < 1e-6:
            return
        f /= np.linalg.norm(f)
        left = np.array([-f[1], f[0], 0.0])
        pts = []
        for d in (f + 0.5 * left, f - 0.5 * left):
            dc = R @ d
            if dc[2] <= 1e-6:
                return
            pts.append(self.K @ (dc / dc[2]))
        (u1, v1, _), (u2, v2, _) = pts
        if abs(u2 - u1) < 1e-9:
            return
        slope = (v2 - v1) / (u2 - u1)
        yl = v1 + slope * (-1 - u1)
        yr = v1 + slope * (self.W + 1 - u1)
        draw.polygon([(-1, -1), (self.W + 1, -1), (self.W + 1, yr), (-1, yl)], fill=SKY)
