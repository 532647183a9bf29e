"""The one model-input path: camera frame -> what VisionPlanner eats.

Training (data/nuscenes_dataset.py), `dima eval` (inference.Planner.predict on dataset
batches) and the node (inference.Planner.plan) all call these functions, so a camera frame
becomes the same tensor wherever it enters:

    decode_image(jpeg bytes | path | HxWx3 uint8, (H, W))  -> uint8 (H, W, 3) RGB
    scale_intrinsics(K, (H0, W0), (H, W))                  -> K for the resized image
    lidar2img(intrinsics (N, 3, 3), cam2lidar (N, 4, 4))    -> (N, 4, 4)
    prepare_frame(images, intrinsics, cam2lidar, (H, W))    -> the three above for a rig
    normalise(uint8 (..., H, W, 3) | (..., 3, H, W) tensor) -> float in [0, 1], channels first
    batch_inputs(collated batch, device)                    -> VisionPlanner keyword arguments

Resizing: a JPEG is decoded with libjpeg's DCT scaling (cv2.IMREAD_REDUCED_COLOR_2/4/8) at
the largest reduction that still leaves the image at least the target size, then resized
with cv2.INTER_AREA; an array is resized with INTER_AREA. Both keep the pixel-corner
convention (pixel i covers [i, i+1) scaled by the same factor), so intrinsics scale with
(W'/W0, H'/H0) on (fx, cx) and (fy, cy).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .geometry import fitted_size, scale_intrinsics

REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
JPEG_MAGIC = b"\xff\xd8"


class ImageDecodeError(ValueError):
    """A camera image cannot be read or decoded (the message names it)."""


def _reduction(h0: int, w0: int, size: tuple[int, int]) -> int:
    """The largest libjpeg scale-down (8, 4, 2 or 1) whose output is still >= size."""
    h, w = size
    for f, _ in REDUCED_FLAGS:
        if -(-h0 // f) >= h and -(-w0 // f) >= w:  # libjpeg rounds scaled sizes up
            return f
    return 1


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(H, W) from a JPEG's start-of-frame header without decoding it; None when the data is
    not a JPEG or its marker segments end (or break) before a frame header."""
    b = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    if len(b) < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    i, n = 2, len(b)
    while i + 4 <= n:  # walk the marker segments up to the first start-of-frame
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        seg = (b[i + 2] << 8) | b[i + 3]
        if marker in _SOF and i + 9 <= n:
            return (b[i + 5] << 8) | b[i + 6], (b[i + 7] << 8) | b[i + 8]
        if marker == 0xDA or seg < 2:  # scan data before any frame header: broken
            return None
        i += 2 + seg
    return None




def resize_array(rgb: np.ndarray, size: tuple[int, int] | None, fit: str = "stretch") -> np.ndarray:
    """uint8 (H0, W0, 3) -> (H, W, 3) with cv2.INTER_AREA (unchanged when already that size);
    fit="pad" keeps the aspect ratio and zero-pads at the bottom / right."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) == 0:
        raise ImageDecodeError(f"an image must be uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    if size is None or tuple(rgb.shape[:2]) == tuple(size):
        return np.ascontiguousarray(rgb)
    h, w = fitted_size(rgb.shape[0], rgb.shape[1], size, fit)
    out = rgb if (h, w) == rgb.shape[:2] else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    if (h, w) != tuple(size):
        out = cv2.copyMakeBorder(out, 0, int(size[0]) - h, 0, int(size[1]) - w, cv2.BORDER_CONSTANT, value=0)
    return out


def decode_image(src: bytes | bytearray | memoryview | str | Path | np.ndarray,
                 size: Sequence[int] | None, fit: str = "stretch") -> np.ndarray:
    """Camera frame -> uint8 (H, W, 3) RGB at `size` (H, W); None keeps the original size.

    src: encoded bytes (JPEG gets DCT-scaled decoding; PNG etc. are decoded fully), a file
    path holding such bytes, or an already decoded RGB array."""
    size = None if size is None else (int(size[0]), int(size[1]))
    if isinstance(src, np.ndarray):
        return resize_array(src, size, fit)
    if isinstance(src, (str, Path)):
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise ImageDecodeError(f"cannot read camera image {src}: {e}") from None
        return _decode_bytes(data, size, str(src), fit)
    return _decode_bytes(bytes(src), size, "camera image bytes", fit)


def _decode_bytes(data: bytes, size: tuple[int, int] | None, what: str, fit: str = "stretch") -> np.ndarray:
    flag = cv2.IMREAD_COLOR
    if size is not None and data[:2] == JPEG_MAGIC:
        hw = jpeg_size(data)
        if hw is not None:
            f = _reduction(hw[0], hw[1], fitted_size(hw[0], hw[1], size, fit))
            flag = dict(REDUCED_FLAGS).get(f, cv2.IMREAD_COLOR)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if bgr is None:
        raise ImageDecodeError(f"cannot decode {what} ({len(data)} bytes)")
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    return resize_array(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, fit)




def lidar2img(intrinsics: np.ndarray, cam2lidar: np.ndarray) -> np.ndarray:
    """(N, 4, 4) LiDAR point -> homogeneous pixel: K @ inverse(cam2lidar)."""
    intrinsics = np.asarray(intrinsics, np.float64)
    k4 = np.tile(np.eye(4), (intrinsics.shape[0], 1, 1))
    k4[:, :3, :3] = intrinsics
    return k4 @ np.linalg.inv(np.asarray(cam2lidar, np.float64))


def prepare_frame(images: Sequence[Any], intrinsics: np.ndarray, cam2lidar: np.ndarray,
                  size: Sequence[int] | None, original_hw: Sequence[Sequence[int]] | None = None,
                  fit: str = "stretch") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One rig frame -> (uint8 images (N, H, W, 3), intrinsics (N, 3, 3), lidar2img (N, 4, 4)).

    images: per camera, encoded bytes, a path or an RGB array (decode_image). intrinsics
    are those of the original images, whose (H0, W0) are read from the decoded array or
    the JPEG header, or given as `original_hw` (the dataset knows them from its tables)."""
    intrinsics = np.asarray(intrinsics, np.float64)
    cam2lidar = np.asarray(cam2lidar, np.float64)
    n = len(images)
    if intrinsics.shape != (n, 3, 3) or cam2lidar.shape != (n, 4, 4):
        raise ValueError(f"{n} images need intrinsics ({n}, 3, 3) and cam2lidar ({n}, 4, 4), "
                         f"got {intrinsics.shape} and {cam2lidar.shape}")
    if not (np.isfinite(intrinsics).all() and np.isfinite(cam2lidar).all()):
        raise ValueError("intrinsics / cam2lidar contain NaN or infinite values")
    out, ks = [], []
    for i, src in enumerate(images):
        hw0 = tuple(original_hw[i]) if original_hw is not None else _source_hw(src)
        img = decode_image(src, size, fit)
        out.append(img)
        ks.append(scale_intrinsics(intrinsics[i], hw0, img.shape[:2], fit))
    ks = np.stack(ks)
    return np.stack(out), ks, lidar2img(ks, cam2lidar)


def _source_hw(src: Any) -> tuple[int, int]:
    if isinstance(src, np.ndarray):
        return int(src.shape[0]), int(src.shape[1])
    data = Path(src).read_bytes() if isinstance(src, (str, Path)) else bytes(src)
    hw = jpeg_size(data)
    if hw is None:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ImageDecodeError(f"cannot decode camera image ({len(data)} bytes)")
        hw = img.shape[:2]
    return int(hw[0]), int(hw[1])


def normalise(images: np.ndarray | torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], channels first (..., 3, H, W).

    channels_last: None infers it (last axis of size 3 and third-last not 3)."""
    x = torch.as_tensor(images)
    if channels_last is None:
        channels_last = x.shape[-1] == 3 and x.shape[-3] != 3
    if channels_last:
        x = x.movedim(-1, -3)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def batch_inputs(batch: dict[str, Any], device: torch.device | str, use_ego_status: bool,
                 use_can_bus: bool | None = None) -> dict[str, torch.Tensor]:
    """Collated batch (data.nuscenes_dataset.collate: uint8 images channels first) ->
    VisionPlanner.forward keyword arguments; the temporal queue (`history`, train.data) is
    carried over. use_can_bus None: the ego motion vector whenever the batch has one (a model
    without model.can_bus ignores it)."""
    if use_can_bus is None:
        use_can_bus = "can_bus" in batch
    device = torch.device(device)
    out = {
        "images": normalise(batch["images"], channels_last=False).to(device),
        "lidar2img": batch["lidar2img"].to(device).float(),
        "command": batch["command"].to(device),
        "prev2cur": batch["prev2cur"].to(device).float(),
        "ego_status": batch["ego_status"].to(device).float() if use_ego_status else None,
        "can_bus": batch["can_bus"].to(device).float() if use_can_bus and "can_bus" in batch else None,
    }
    if "history" in batch:  # the chained temporal queue of training (oldest first)
        out["history"] = [{k: (normalise(v, channels_last=False) if k == "images" else v.float()).to(device)
                           if k != "valid" else v.to(device) for k, v in h.items()} for h in batch["history"]]
    return out


__all__ = ["ImageDecodeError", "batch_inputs", "decode_image", "fitted_size", "jpeg_size", "lidar2img", "normalise",
           "prepare_frame", "resize_array", "scale_intrinsics"]
