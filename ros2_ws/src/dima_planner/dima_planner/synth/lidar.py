"""A coarse ray-cast LIDAR_TOP scan: ground plane plus boxes (agents and buildings).

Beams follow the HDL-32E layout of nuScenes (32 rings, -30.67 to +10.67 degrees).
Points are returned in the sensor frame as nuScenes .pcd.bin rows x, y, z, intensity, ring.
"""
from __future__ import annotations

import numpy as np

MAX_RANGE = 70.0


def beam_directions(beams: int, az_step_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (R, 3) in the lidar frame and their ring index (R,)."""
    elev = np.radians(np.linspace(-30.67, 10.67, beams))
    az = np.radians(np.arange(0.0, 360.0, az_step_deg))
    E, A = np.meshgrid(elev, az, indexing="ij")
    d = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1).reshape(-1, 3)
    ring = np.repeat(np.arange(beams), len(az))
    return d, ring


def cast(origin: np.ndarray, R_l2w: np.ndarray, dirs_l: np.ndarray, ring: np.ndarray,
         boxes: np.ndarray, box_intensity: np.ndarray, rng: np.random.Generator):
    """Ray-cast from the lidar.

    boxes: (B, 7) world x, y, z_bottom, length, width, height, yaw.
    Returns points (N, 5) float32 in the lidar frame, hit box index per point (-1 ground),
    and per box the number of rays that would hit it without occlusion.
    """
    D = dirs_l @ R_l2w.T  # world directions
    t_best = np.full(len(D), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(D[:, 2] < -1e-6, -origin[2] / D[:, 2], np.inf)
    t_best = np.minimum(t_best, t_ground)
    hit = np.full(len(D), -1)
    n_any = np.zeros(len(boxes), int)
    if len(boxes):
        c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
        rel = origin[None, :2] - boxes[:, :2]  # (B, 2)
        ox = c * rel[:, 0] + s * rel[:, 1]
        oy = -s * rel[:, 0] + c * rel[:, 1]
        oz = origin[2] - boxes[:, 2]
        dx = D[:, None, 0] * c + D[:, None, 1] * s  # (R, B)
        dy = -D[:, None, 0] * s + D[:, None, 1] * c
        dz = np.broadcast_to(D[:, None, 2], dx.shape)
        lo = [-boxes[:, 3] / 2, -boxes[:, 4] / 2, np.zeros(len(boxes))]
        hi = [boxes[:, 3] / 2, boxes[:, 4] / 2, boxes[:, 5]]
        t0 = np.zeros(dx.shape)
        t1 = np.full(dx.shape, MAX_RANGE)
        with np.errstate(divide="ignore", invalid="ignore"):
            for o, d, l, h in ((ox, dx, lo[0], hi[0]), (oy, dy, lo[1], hi[1]), (oz, dz, lo[2], hi[2])):
                inv = 1.0 / np.where(np.abs(d) < 1e-9, 1e-9, d)
                ta, tb = (l - o) * inv, (h - o) * inv
                t0 = np.maximum(t0, np.minimum(ta, tb))
                t1 = np.minimum(t1, np.maximum(ta, tb))
        ok = t0 <= t1
        t_box = np.where(ok, t0, np.inf)
        n_any = ok.sum(0)
        j = np.argmin(t_box, 1)
        tb_min = t_box[np.arange(len(D)), j]
        better = tb_min < t_best
        hit[better] = j[better]
        t_best = np.where(better, tb_min, t_best)
    valid = t_best < MAX_RANGE
    t = t_best[valid] + rng.normal(0.0, 0.015, int(valid.sum()))
    pts = dirs_l[valid] * t[:, None]
    h = hit[valid]
    inten = np.where(h < 0, 8.0, box_intensity[np.maximum(h, 0)] if len(boxes) else 8.0)
    inten = inten + rng.uniform(0, 6, len(inten))
    out = np.concatenate([pts, inten[:, None], ring[valid][:, None]], 1).astype(np.float32)
    return out, h, n_any


def visibility_level(n_first: int, n_any: int) -> str:
    """nuScenes visibility token '1'..'4' (0-40, 40-60, 60-80, 80-100 % visible)."""
    if n_any == 0:
        return "1"
    r = n_first / n_any
    return "1" if r < 0.4 else "2" if r < 0.6 else "3" if r < 0.8 else "4"
