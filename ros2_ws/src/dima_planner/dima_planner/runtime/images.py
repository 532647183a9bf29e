"""Camera images -> model-sized RGB arrays, checked before any pixel is decoded (ROS-free).

Messages are read by attribute (sensor_msgs/Image: encoding, height, width, step, data;
sensor_msgs/CompressedImage: format, data), so this module imports no message package.

Why the checks come first: a 261 KB PNG may declare 16384x16384 pixels (768 MB decoded).
The JPEG/PNG header is parsed here, and an image that is too large, too small or of another
format is rejected before cv2 allocates anything.

Why decode straight to the model size: the model sees 160x96 pixels. The pixels come from
data/inputs.py, the one model-input path training uses too, fitted to the model's image
size as the model was trained (its image_fit: stretched, or scaled and zero-padded): a JPEG
is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (much cheaper than a full decode),
then INTER_AREA-resized; a raw image is INTER_AREA-resized. `Decoded.k_scale` maps the
source image's intrinsics to the returned image with geometry.scale_intrinsics' convention.
Sizes are (H, W) throughout, the model's image_size order.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InputError


def _inputs():
    """data/inputs.py, imported on first use: it brings torch (3.4 s of `python -X importtime`
    on the 2-core dev machine, this module alone 0.2 s), which a node loads only when it
    configures (a node process starts, and answers its lifecycle services, in a second)."""
    from ..data import inputs

    return inputs


@dataclass(frozen=True)
class ImageLimits:
    min_side: int = 32  # smaller images carry no usable scene (a 1x1 or 2x2 image is a fault)
    max_pixels: int = 4096 * 4096  # a decompression bomb is rejected from its header


@dataclass
class Decoded:
    rgb: np.ndarray  # uint8 (h, w, 3), at the requested size
    source_hw: tuple[int, int]  # (H, W) of the image as sent (what its CameraInfo describes)
    k_scale: tuple[float, float]  # K_out = diag(sx, sy, 1) @ K_source


# encoding -> (channels, cv2 conversion to RGB or None); cv2 converts in C without the GIL.
_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def compressed_header(data) -> tuple[str, int, int]:
    """(format, H, W) from a JPEG or PNG header, without decoding; InputError otherwise."""
    b = memoryview(data).cast("B")
    if len(b) >= 24 and bytes(b[:8]) == b"\x89PNG\r\n\x1a\n" and bytes(b[12:16]) == b"IHDR":
        w, h = struct.unpack(">II", b[16:24])
        return "png", int(h), int(w)
    if len(b) >= 4 and b[0] == 0xFF and b[1] == 0xD8:
        hw = _inputs().jpeg_size(b)
        if hw is None:
            raise InputError("bad_compressed", "JPEG without a readable frame header")
        return "jpeg", int(hw[0]), int(hw[1])
    raise InputError("bad_compressed", f"compressed data is neither JPEG nor PNG ({len(b)} bytes, "
                                       f"starts {bytes(b[:4]).hex()})")


def check_size(hw: tuple[int, int], limits: ImageLimits, what: str = "image") -> None:
    h, w = hw
    if w < limits.min_side or h < limits.min_side:
        raise InputError("bad_size", f"{what} is {w}x{h}, below the minimum {limits.min_side}x{limits.min_side}")
    if w * h > limits.max_pixels:
        raise InputError("bad_size", f"{what} declares {w}x{h} = {w * h} pixels, above max_image_pixels "
                                     f"{limits.max_pixels}; not decoded")


def _k_scale(source_hw: tuple[int, int], out_hw: tuple[int, int], fit: str) -> tuple[float, float]:
    """(sx, sy) with K_out = diag(sx, sy, 1) K_source, as geometry.scale_intrinsics has it."""
    k = _inputs().scale_intrinsics(np.eye(3), source_hw, out_hw, fit)
    return float(k[0, 0]), float(k[1, 1])


def decode_compressed(msg, limits: ImageLimits = ImageLimits(), out_hw: tuple[int, int] | None = None,
                      fit: str = "stretch") -> Decoded:
    """sensor_msgs/CompressedImage (JPEG/PNG) -> RGB at out_hw (None = as sent), fitted by `fit`."""
    if len(msg.data) == 0:
        raise InputError("bad_compressed", "compressed image has no data")
    fmt, h, w = compressed_header(msg.data)
    check_size((h, w), limits, f"{fmt.upper()} image")
    out_hw = (h, w) if out_hw is None else tuple(out_hw)
    inputs = _inputs()
    try:
        rgb = inputs.decode_image(bytes(msg.data), out_hw, fit)
    except inputs.ImageDecodeError as e:
        raise InputError("bad_compressed", f"{e} (format {msg.format!r})") from None
    return Decoded(rgb, (h, w), _k_scale((h, w), out_hw, fit))


def decode_raw(msg, limits: ImageLimits = ImageLimits(), out_hw: tuple[int, int] | None = None,
               fit: str = "stretch") -> Decoded:
    """sensor_msgs/Image -> RGB at out_hw (None = as sent; always a copy, the message may be
    reused), fitted by `fit`."""
    enc = msg.encoding.lower()
    if enc not in _ENCODINGS:
        raise InputError("bad_encoding", f"unsupported image encoding {msg.encoding!r} "
                                         f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")
    ch, code = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise InputError("bad_size", f"image is {w}x{h}")
    check_size((h, w), limits)
    if step < w * ch:
        raise InputError("bad_size", f"step {step} is less than width {w} x {ch} bytes")
    n = len(msg.data)
    if n != h * step:
        what = "truncated" if n < h * step else "oversized"
        raise InputError("bad_size", f"image data is {what}: {n} bytes, expected height {h} x step {step} = {h * step}")
    # rclpy gives uint8[] as array.array (or bytes): both expose the buffer, no copy here.
    rows = np.frombuffer(msg.data, np.uint8).reshape(h, step)
    pix = rows[:, : w * ch].reshape(h, w, ch) if step == w * ch else np.ascontiguousarray(rows[:, : w * ch]).reshape(h, w, ch)
    out_hw = (h, w) if out_hw is None else tuple(out_hw)
    inputs = _inputs()
    if ch == 3:  # resize first (INTER_AREA works per channel): 100x fewer pixels to convert
        rgb = inputs.resize_array(pix, out_hw, fit)
        if code is not None:
            rgb = cv2.cvtColor(rgb, code)
        elif np.shares_memory(rgb, rows):
            rgb = rgb.copy()
    else:
        rgb = inputs.resize_array(cv2.cvtColor(pix, code), out_hw, fit)
    return Decoded(np.ascontiguousarray(rgb), (h, w), _k_scale((h, w), out_hw, fit))


def decode(msg, limits: ImageLimits = ImageLimits(), out_hw: tuple[int, int] | None = None,
           fit: str = "stretch") -> Decoded:
    """Either kind of image message (told apart by its `format` field) -> RGB at out_hw (H, W),
    fitted by `fit` (the model's image_fit)."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return decode_compressed(msg, limits, out_hw, fit)
    return decode_raw(msg, limits, out_hw, fit)
