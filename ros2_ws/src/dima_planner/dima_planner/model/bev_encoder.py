"""BEV encoder (BEVFormer/VAD style) in plain PyTorch: no compiled deformable-attention ops.

Each layer = temporal self-attention -> spatial cross-attention -> FFN (post-norm), as in
VAD. "Deformable" attention here means: every query predicts a few sampling offsets
around its reference point(s) plus softmax weights, and `F.grid_sample` reads the value
map at those locations (bilinear, zeros outside). That is the exact math of
MSDeformAttn for a single feature level.

Frames: the BEV grid lives in the current LiDAR frame (x right, y forward). Flattened
index q = row * bev_w + col, row along +y, col along +x; cell centres at
x = -Rx + (col + 0.5) * 2Rx / W, y = -Ry + (row + 0.5) * 2Ry / H.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from ..data.ego_motion import CAN_BUS_DIM


def bev_cell_centres(cfg: ModelConfig) -> torch.Tensor:
    """(H*W, 2) x, y of each BEV cell centre in the LiDAR frame (metres)."""
    xs = (torch.arange(cfg.bev_w) + 0.5) / cfg.bev_w * 2 * cfg.bev_range_x - cfg.bev_range_x
    ys = (torch.arange(cfg.bev_h) + 0.5) / cfg.bev_h * 2 * cfg.bev_range_y - cfg.bev_range_y
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], -1).view(-1, 2)


def pillar_points(cfg: ModelConfig) -> torch.Tensor:
    """(H*W, Z, 3) reference points: each BEV cell centre at every pillar height."""
    xy = bev_cell_centres(cfg)
    z = torch.tensor(cfg.pillar_heights, dtype=torch.float32)
    q, nz = xy.shape[0], z.shape[0]
    return torch.cat([xy[:, None, :].expand(q, nz, 2), z[None, :, None].expand(q, nz, 1)], -1)


def project_to_cameras(points: torch.Tensor, lidar2img: torch.Tensor, image_size: tuple[int, int],
                       eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Project LiDAR points into every camera.

    points (Q, Z, 3); lidar2img (B, N, 4, 4) for images of `image_size` (H, W).
    Returns normalised image locations (B, N, Q, Z, 2) in [0, 1] (x = (u + 0.5) / W, so
    pixel centres land on grid_sample's align_corners=False centres) and a hit mask
    (B, N, Q, Z): in front of the camera and inside the image.
    """
    h, w = image_size
    q, z, _ = points.shape
    homog = torch.cat([points, torch.ones_like(points[..., :1])], -1).view(1, 1, q * z, 4)
    cam = torch.einsum("bnij,bnkj->bnki", lidar2img.float(), homog.expand(*lidar2img.shape[:2], -1, -1))
    depth = cam[..., 2:3]
    uv = cam[..., :2] / depth.clamp(min=eps)
    loc = (uv + 0.5) / uv.new_tensor([w, h])
    mask = (depth[..., 0] > eps) & (loc > 0).all(-1) & (loc < 1).all(-1)
    b, n = lidar2img.shape[:2]
    return loc.view(b, n, q, z, 2), mask.view(b, n, q, z)


def deformable_sample(value: torch.Tensor, loc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear sampling, one feature level.

    value (N, heads, Ch, h, w); loc (N, Q, heads, K, 2) in [0, 1] (x, y); weight (N, Q, heads, K).
    Returns (N, Q, heads * Ch).
    """
    n, nh, ch, h, w = value.shape
    q, k = loc.shape[1], loc.shape[3]
    grid = loc.permute(0, 2, 1, 3, 4).reshape(n * nh, q, k, 2) * 2 - 1
    sampled = F.grid_sample(value.reshape(n * nh, ch, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (n*nh, ch, q, k)
    wgt = weight.permute(0, 2, 1, 3).reshape(n * nh, 1, q, k)
    out = (sampled * wgt).sum(-1)  # (n*nh, ch, q)
    return out.view(n, nh * ch, q).transpose(1, 2)


class SpatialCrossAttention(nn.Module):
    """BEV query -> image features of the cameras its pillar projects into (VAD's SCA).

    Like VAD (which gathers, per camera, only the queries that hit it), work is spent
    only where a pillar is seen: each query samples its `max_cams` cameras with the most
    hits (a pillar is seen by ~1 camera, 2 where fields of view overlap). The six camera
    maps are stacked one above the other, each followed by a row of zeros, and one 2-D
    `grid_sample` reads them: a sample is shifted into its camera's stripe, the zero row
    (and the zero padding above the first) reproduces per-camera zero padding at the
    stripe edges, and a sample farther outside its camera is masked. This equals sampling
    each camera map on its own, and exports to ONNX/TensorRT as a plain GridSample (the
    volumetric 5-D form has no TorchScript ONNX export and runs 20x slower in ONNX Runtime).
    """

    def __init__(self, dim: int, heads: int, num_z: int, points: int, max_cams: int = 2):
        super().__init__()
        self.heads, self.num_z, self.points, self.max_cams = heads, num_z, points, max_cams
        self.offsets = nn.Linear(dim, heads * num_z * points * 2)
        self.weights = nn.Linear(dim, heads * num_z * points)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.offsets.weight)
        nn.init.uniform_(self.offsets.bias, -1.0, 1.0)  # a small spread of pixels around each hit
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def forward(self, query: torch.Tensor, feats: torch.Tensor, ref_cam: torch.Tensor,
                hit: torch.Tensor) -> torch.Tensor:
        # query (B, Q, C); feats (B, N, C, h, w); ref_cam (B, N, Q, Z, 2); hit (B, N, Q, Z)
        b, n, c, h, w = feats.shape
        q, nh, nz, p = query.shape[1], self.heads, self.num_z, self.points
        k = min(self.max_cams, n)
        # The k cameras with the most hits per query (ties and misses get zero weight below).
        cams = hit.sum(-1).topk(k, dim=1).indices  # (B, k, Q)
        ref = ref_cam.gather(1, cams[..., None, None].expand(-1, -1, -1, nz, 2))  # (B, k, Q, Z, 2)
        sel_hit = hit.gather(1, cams[..., None].expand(-1, -1, -1, nz))  # (B, k, Q, Z)
        value = self.value(feats.permute(0, 1, 3, 4, 2))  # (B, N, h, w, C)
        value = value.view(b, n, h, w, nh, c // nh).permute(0, 4, 5, 1, 2, 3)  # (B, nh, Ch, N, h, w)
        # Stripes of h + 1 rows: camera i's map, then a zero row.
        value = F.pad(value, (0, 0, 0, 1)).reshape(b * nh, c // nh, n * (h + 1), w)
        # Offsets are predicted in feature pixels and shared by all cameras, as in VAD.
        off = self.offsets(query).view(b, 1, q, nh, nz, p, 2) / feats.new_tensor([w, h])
        loc = ref[:, :, :, None, :, None, :] + off  # (B, k, Q, nh, Z, P, 2) in [0, 1] of the camera map
        y = loc[..., 1:] * h  # (pixel row + 0.5) in the camera map
        # Outside (-1, h) a camera's own sample reads only its zero padding: mask it, since in
        # the stack it would read a neighbouring stripe.
        inside = ((y > -0.5) & (y < h + 0.5)).to(loc.dtype)
        stripe = cams.to(loc.dtype)[:, :, :, None, None, None, None] * (h + 1)
        y_stack = (stripe + y) / (n * (h + 1))
        grid = torch.cat([loc[..., :1], y_stack], -1) * 2 - 1
        grid = grid.permute(0, 3, 2, 1, 4, 5, 6).reshape(b * nh, q, k * nz * p, 2)
        sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (B*nh, Ch, Q, k*Z*P)
        attn = self.weights(query).view(b, q, nh, nz * p).softmax(-1).view(b, 1, q, nh, nz, p)
        attn = attn * sel_hit[:, :, :, None, :, None].to(attn.dtype)  # a missed height contributes nothing
        attn = attn * inside[..., 0]
        attn = attn.permute(0, 3, 2, 1, 4, 5).reshape(b * nh, 1, q, k * nz * p)
        out = (sampled * attn).sum(-1).view(b, c, q).transpose(1, 2)
        # Average over the cameras that see the pillar (a pillar seen by none stays zero).
        count = sel_hit.any(-1).sum(1).clamp(min=1).to(out.dtype)  # (B, Q)
        return self.out(out / count[..., None])


class TemporalSelfAttention(nn.Module):
    """Deformable attention over the queue [aligned previous BEV, current BEV query] (VAD's TSA)."""

    def __init__(self, dim: int, heads: int, points: int):
        super().__init__()
        self.heads, self.points = heads, points
        self.offsets = nn.Linear(2 * dim, 2 * heads * points * 2)
        self.weights = nn.Linear(2 * dim, 2 * heads * points)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.offsets.weight)
        nn.init.uniform_(self.offsets.bias, -1.0, 1.0)
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def forward(self, query: torch.Tensor, prev: torch.Tensor, ref: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        # query, prev (B, Q, C) (prev already aligned to the current frame); ref (Q, 2) in [0, 1]
        b, q, c = query.shape
        h, w = hw
        nh, p = self.heads, self.points
        qcat = torch.cat([prev, query], -1)
        value = self.value(torch.stack([prev, query], 1))  # (B, 2, Q, C)
        value = value.view(b * 2, h, w, nh, c // nh).permute(0, 3, 4, 1, 2)
        off = self.offsets(qcat).view(b, q, 2, nh, p, 2).transpose(1, 2) / query.new_tensor([w, h])
        loc = ref.view(1, 1, q, 1, 1, 2) + off  # (B, 2, Q, nh, P, 2)
        attn = self.weights(qcat).view(b, q, 2, nh, p).softmax(-1).transpose(1, 2)
        out = deformable_sample(value, loc.reshape(b * 2, q, nh, p, 2), attn.reshape(b * 2, q, nh, p))
        return self.out(out.view(b, 2, q, c).mean(1))


def rigid_inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (..., 4, 4): [R t; 0 1]^-1 = [R^T -R^T t; 0 1].

    prev2cur is an ego motion (rotation + translation), so the closed form is exact, needs
    no pivoting, and exports to ONNX/TensorRT (a general `linalg_inv` has no ONNX op)."""
    r_t = m[..., :3, :3].transpose(-1, -2)
    t = -(r_t @ m[..., :3, 3:])
    top = torch.cat([r_t, t], -1)
    return torch.cat([top, m.new_tensor([0.0, 0.0, 0.0, 1.0]).expand_as(m[..., 3:, :])], -2)


def align_prev_bev(prev_bev: torch.Tensor, prev2cur: torch.Tensor, cfg: ModelConfig
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp the previous BEV (B, Q, C) into the current frame with prev2cur (B, 4, 4).

    Each current cell centre is mapped into the previous LiDAR frame (cur2prev =
    inverse(prev2cur)) and the previous grid is sampled there. Returns (aligned, valid):
    valid (B, Q) is True where the source point lies inside the previous grid. Reads clamp to
    the border, so that valid cells never blend in padding, and the caller gives the invalid
    ones the current query (as at a scene start): no padding strip encodes the ego's
    displacement.
    """
    b, q, c = prev_bev.shape
    xy = bev_cell_centres(cfg).to(prev_bev)
    homog = torch.cat([xy, torch.zeros_like(xy[:, :1]), torch.ones_like(xy[:, :1])], -1)  # (Q, 4)
    cur2prev = rigid_inverse(prev2cur.float()).to(prev_bev)
    p = torch.einsum("bij,qj->bqi", cur2prev, homog)[..., :2]
    grid = p / p.new_tensor([cfg.bev_range_x, cfg.bev_range_y])  # [-1, 1] at the grid edges
    valid = (grid.abs() <= 1).all(-1)
    grid = grid.view(b, cfg.bev_h, cfg.bev_w, 2)
    img = prev_bev.transpose(1, 2).reshape(b, c, cfg.bev_h, cfg.bev_w)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.flatten(2).transpose(1, 2), valid


class CanBusMLP(nn.Module):
    """VAD/BEVFormer's can_bus_mlp: Linear-ReLU-Linear-ReLU-LayerNorm, added to every BEV query."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim // 2), nn.ReLU(inplace=True), nn.Linear(dim // 2, dim),
                                 nn.ReLU(inplace=True), nn.LayerNorm(dim))

    def forward(self, can_bus: torch.Tensor) -> torch.Tensor:
        return self.net(can_bus.float())


class BEVLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.tsa = TemporalSelfAttention(d, cfg.num_heads, cfg.tsa_points)
        self.sca = SpatialCrossAttention(d, cfg.num_heads, len(cfg.pillar_heights), cfg.sca_points, cfg.sca_max_cams)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn_dim, d))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x, pos, prev, ref2d, hw, feats, ref_cam, hit):
        x = self.norm1(x + self.tsa(x + pos, prev, ref2d, hw))
        x = self.norm2(x + self.sca(x + pos, feats, ref_cam, hit))
        return self.norm3(x + self.ffn(x))


class BEVEncoder(nn.Module):
    """Multi-camera features + previous BEV -> current BEV tokens (B, H*W, C)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        q = cfg.bev_h * cfg.bev_w
        self.queries = nn.Parameter(torch.randn(q, cfg.embed_dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(q, cfg.embed_dim) * 0.02)
        self.layers = nn.ModuleList(BEVLayer(cfg) for _ in range(cfg.bev_layers))
        self.can_bus_mlp = CanBusMLP(CAN_BUS_DIM, cfg.embed_dim) if cfg.can_bus else None
        self.register_buffer("pillars", pillar_points(cfg), persistent=False)
        ref2d = (bev_cell_centres(cfg) / torch.tensor([cfg.bev_range_x, cfg.bev_range_y]) + 1) / 2
        self.register_buffer("ref2d", ref2d, persistent=False)

    def forward(self, feats: torch.Tensor, lidar2img: torch.Tensor, prev_bev: torch.Tensor | None = None,
                prev2cur: torch.Tensor | None = None, has_prev: torch.Tensor | None = None,
                can_bus: torch.Tensor | None = None) -> torch.Tensor:
        """feats (B, N, C, h, w); lidar2img (B, N, 4, 4) for the model's image size;
        prev_bev (B, Q, C) in the previous frame; has_prev (B,) bool, False at scene starts;
        can_bus (B, CAN_BUS_DIM) (data/ego_motion.py), required when cfg.can_bus."""
        cfg = self.cfg
        b = feats.shape[0]
        x = self.queries[None].expand(b, -1, -1)
        if self.can_bus_mlp is not None:
            if can_bus is None:
                raise ValueError("this model takes ego motion (model.can_bus): pass can_bus (B, "
                                 f"{CAN_BUS_DIM}), see dima_planner.data.ego_motion")
            x = x + self.can_bus_mlp(can_bus.to(x.device))[:, None, :].to(x.dtype)
        pos = self.pos[None]
        # Without a usable previous BEV the queue holds the query itself (as BEVFormer/VAD do).
        prev = x
        if cfg.use_temporal and prev_bev is not None:
            if prev2cur is None:
                raise ValueError("prev_bev was given without prev2cur")
            aligned, keep = align_prev_bev(prev_bev, prev2cur, cfg)
            if has_prev is not None:
                keep = keep & has_prev.view(b, 1).bool()
            prev = torch.where(keep[..., None], aligned, x)
        ref_cam, hit = project_to_cameras(self.pillars, lidar2img, cfg.image_size)
        for layer in self.layers:
            x = layer(x, pos, prev, self.ref2d, (cfg.bev_h, cfg.bev_w), feats, ref_cam, hit)
        return x
