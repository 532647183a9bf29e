"""VAD's collision occupancy: the BEV grid and future agent boxes rasterised into it.

The dataset stores it with each sample and the metrics (eval/metrics.py) read it; the
quirks are VAD's, kept on purpose (docs/METHOD.md section 3): corners rounded with np.round
(column = round((x + 50) / 0.5), row = round((50 - y) / 0.5)) and drawn with cv2.fillPoly.
Frame: the current LiDAR frame, x right, y forward (m).
"""
from __future__ import annotations

import cv2
import numpy as np

GRID = 200  # cells per side
DX = 0.5  # metres per cell
BX = -49.75  # centre of the first cell (m): the ego footprint's origin
BEV_HALF = 50.0  # grid covers [-50, 50) m


def box_corners(x: float, y: float, yaw: float, length: float, width: float) -> np.ndarray:
    """(4, 2) corners of a box in the LiDAR frame, VAD's corner order."""
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array(
        [[length / 2, -length / 2, -length / 2, length / 2], [width / 2, width / 2, -width / 2, -width / 2]]
    )
    rot = np.array([[c, -s], [s, c]])
    return (rot @ local + np.array([[x], [y]])).T


def _corner_pixels(corners: np.ndarray) -> np.ndarray:
    """Corners (4, 2) in metres -> int32 (col, row) pixels, VAD's np.round mapping."""
    col = (corners[:, 0] + BEV_HALF) / DX
    row = (BEV_HALF - corners[:, 1]) / DX
    return np.round(np.stack([col, row], axis=-1)).astype(np.int32)


def occupancy_from_boxes(boxes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rasterise future agent boxes into VAD's collision occupancy.

    boxes: float (T, K, 5) = x, y, yaw, length, width (LiDAR frame, yaw ccw from +x);
    mask: bool (T, K), True where the agent exists at step t.
    Returns bool (T, 200, 200), indexed [t, row, col] with row 0 at y = +50 m.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    mask = np.asarray(mask)
    if boxes.ndim != 3 or boxes.shape[-1] != 5:
        raise ValueError(f"occupancy_from_boxes: boxes must have shape (T, K, 5), got {boxes.shape}")
    if mask.shape != boxes.shape[:2]:
        raise ValueError(f"occupancy_from_boxes: mask shape {mask.shape} does not match boxes {boxes.shape[:2]}")
    mask = mask.astype(bool)
    if not np.all(np.isfinite(boxes[mask])):
        raise ValueError("occupancy_from_boxes: a masked-in box has NaN or infinite values")
    occ = np.zeros((boxes.shape[0], GRID, GRID), dtype=np.uint8)
    for t in range(boxes.shape[0]):
        for k in np.flatnonzero(mask[t]):
            pts = _corner_pixels(box_corners(*boxes[t, k]))
            # cv2 clips polygons partly outside the image; coordinates far out would overflow
            # cv2's fixed-point maths, so bound them well outside the grid first.
            pts = np.clip(pts, -10 * GRID, 11 * GRID)
            cv2.fillPoly(occ[t], [pts], color=1)
    return occ.astype(bool)
