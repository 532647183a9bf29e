"""Training-time image augmentation as VAD uses it: photometric distortion (mmdet's
PhotoMetricDistortionMultiViewImage) and GridMask (BEVFormer/VAD, on the current frame's
images before the backbone). Float images (B, N, 3, H, W) in [0, 1]; randomness from an
explicit torch.Generator so that a resumed run draws the same augmentations."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugmentConfig:
    photometric: bool = False
    brightness: float = 32 / 255  # +- additive
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: float = 18 / 360  # +- fraction of a turn
    grid_mask: bool = False
    grid_mask_prob: float = 0.7  # VAD: GridMask(use_h, use_w, rotate=1, ratio=0.5, mode=1, prob=0.7)
    grid_ratio: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.photometric or self.grid_mask


def _rand(shape, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(shape, generator=g) * (hi - lo) + lo).to(device)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images (..., 3, H, W) by `shift` turns (YIQ rotation)."""
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    rgb = torch.linalg.inv(yiq)
    th = shift * 2 * torch.pi
    c, s = th.cos(), th.sin()
    rot = torch.zeros(*shift.shape, 3, 3, device=x.device)
    rot[..., 0, 0] = 1
    rot[..., 1, 1], rot[..., 1, 2], rot[..., 2, 1], rot[..., 2, 2] = c, -s, s, c
    m = rgb @ rot @ yiq  # (..., 3, 3)
    return torch.einsum("...ij,...jhw->...ihw", m, x)


def photometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Per image: brightness, contrast, saturation and hue, each applied with probability 0.5."""
    shape = x.shape[:-3]
    dev = x.device

    def gate():
        return (torch.rand(shape, generator=g) < 0.5).to(dev).float()[..., None, None, None]

    x = x + gate() * _rand(shape, -cfg.brightness, cfg.brightness, g, dev)[..., None, None, None]
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    a = _rand(shape, *cfg.contrast, g, dev)[..., None, None, None]
    x = torch.lerp(x, (x - mean) * a + mean, gate())
    gray = (0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :])
    a = _rand(shape, *cfg.saturation, g, dev)[..., None, None, None]
    x = torch.lerp(x, (x - gray) * a + gray, gate())
    x = torch.lerp(x, _hue_shift(x, _rand(shape, -cfg.hue, cfg.hue, g, dev)), gate())
    return x.clamp(0.0, 1.0)


def grid_mask(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """GridMask (mode 1: zero squares of side d * (1 - ratio) on a grid of period d, keep the lines),
    each image with probability grid_mask_prob; period d in [2, min(H, W)) as BEVFormer."""
    *lead, c, h, w = x.shape
    flat = x.reshape(-1, c, h, w)
    out = flat.clone()
    ys, xs = torch.arange(h), torch.arange(w)
    for i in range(flat.shape[0]):
        if float(torch.rand((), generator=g)) >= cfg.grid_mask_prob:
            continue
        d = int(torch.randint(2, max(3, min(h, w)), (), generator=g))
        keep = max(1, int(d * cfg.grid_ratio + 0.5))
        oy, ox = int(torch.randint(0, d, (), generator=g)), int(torch.randint(0, d, (), generator=g))
        rows = ((ys + oy) % d) < keep
        cols = ((xs + ox) % d) < keep
        mask = (rows[:, None] | cols[None, :]).to(x.device, x.dtype)  # mode 1: zero the squares
        out[i] = flat[i] * mask
    return out.view(*lead, c, h, w)


def augment_inputs(inputs: dict, cfg: AugmentConfig, g: torch.Generator) -> dict:
    """Model inputs (data/inputs.batch_inputs) with augmented images: photometric on every
    frame of the temporal queue, GridMask on the current frame only (VAD computes the queue's
    BEVs in eval mode, where GridMask is off)."""
    if not cfg.enabled:
        return inputs
    out = dict(inputs)
    imgs = out["images"]
    if cfg.photometric:
        imgs = photometric(imgs, cfg, g)
        out["history"] = [{**h, "images": photometric(h["images"], cfg, g)} for h in out.get("history") or []]
    if cfg.grid_mask:
        imgs = grid_mask(imgs, cfg, g)
    out["images"] = imgs
    return out
