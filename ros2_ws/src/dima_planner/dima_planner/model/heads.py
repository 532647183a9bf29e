"""Query decoders on top of the BEV: agents (boxes + motion), map (vectors), ego, and the
planning transformer.

Simplifications against VAD, chosen for CPU size and written down here:
* agent/map queries cross-attend to the BEV with ordinary multi-head attention (VAD uses
  deformable attention around reference points);
* map elements are decoded by one query per instance regressing all MAP_POINTS points
  (VAD uses instance x point hierarchical queries);
* the motion decoder lets agents attend to map tokens once, then each mode embedding is
  decoded into 6 per-step offsets (cumulative, relative to the agent centre).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import AGENT_CLASSES, CAN_BUS_DIM, FUTURE_STEPS, MAP_CLASSES, MAP_POINTS
from .config import ModelConfig

NUM_COMMANDS = 3


def mlp(din: int, dh: int, dout: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers - 1):
        mods += [nn.Linear(din if i == 0 else dh, dh), nn.ReLU(inplace=True)]
    mods.append(nn.Linear(dh if layers > 1 else din, dout))
    return nn.Sequential(*mods)


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention, cross-attention, FFN."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0, self_attn: bool = True):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if self_attn else None
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, x_pos: torch.Tensor | None = None,
                mem_pos: torch.Tensor | None = None) -> torch.Tensor:
        qx = x if x_pos is None else x + x_pos
        if self.self_attn is not None:
            x = self.norm1(x + self.self_attn(qx, qx, x, need_weights=False)[0])
            qx = x if x_pos is None else x + x_pos
        k = mem if mem_pos is None else mem + mem_pos
        x = self.norm2(x + self.cross_attn(qx, k, mem, need_weights=False)[0])
        return self.norm3(x + self.ffn(x))


def to_range(raw: torch.Tensor, rx: float, ry: float) -> torch.Tensor:
    """Unbounded (..., 2) -> metres inside the BEV range (sigmoid keeps early training stable)."""
    return (torch.sigmoid(raw) * 2 - 1) * raw.new_tensor([rx, ry])


class AgentHead(nn.Module):
    """Agent queries -> tokens, 3-D boxes and multi-modal motion."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        self.queries = nn.Parameter(torch.randn(cfg.num_agent_queries, d) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(cfg.num_agent_queries, d) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.agent_layers))
        self.cls = nn.Linear(d, len(AGENT_CLASSES) + 1)  # last logit = no object
        self.box = mlp(d, d, 8)  # x, y (range-bounded), z, log l, log w, log h, sin yaw, cos yaw
        self.map_interaction = DecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, self_attn=False)
        self.mode_emb = nn.Parameter(torch.randn(cfg.motion_modes, d) * 0.02)
        self.motion = mlp(d, d, FUTURE_STEPS * 2)
        self.mode_score = mlp(d, d, 1)

    def forward(self, bev: torch.Tensor, bev_pos: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = bev.shape[0]
        x = self.queries[None].expand(b, -1, -1)
        for layer in self.layers:
            x = layer(x, bev, self.query_pos[None], bev_pos)
        raw = self.box(x)
        centre = to_range(raw[..., :2], self.cfg.bev_range_x, self.cfg.bev_range_y)
        boxes = torch.cat([centre, raw[..., 2:]], -1)
        return x, {"agent_logits": self.cls(x), "agent_boxes": boxes}

    def decode_motion(self, agent: torch.Tensor, map_tokens: torch.Tensor, centre: torch.Tensor) -> dict[str, torch.Tensor]:
        """agent (B, Na, C), map tokens (B, Nm, C), centres (B, Na, 2) -> trajectories (B, Na, M, 6, 2)."""
        x = self.map_interaction(agent, map_tokens)
        mq = x[:, :, None, :] + self.mode_emb[None, None]  # (B, Na, M, C)
        steps = self.motion(mq).view(*mq.shape[:3], FUTURE_STEPS, 2)
        traj = centre[:, :, None, None, :].detach() + steps.cumsum(-2)
        return {"motion_traj": traj, "motion_logits": self.mode_score(mq).squeeze(-1)}


class MapHead(nn.Module):
    """Map queries -> tokens, class logits and MAP_POINTS-point polylines (LiDAR frame, metres)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        self.queries = nn.Parameter(torch.randn(cfg.num_map_queries, d) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(cfg.num_map_queries, d) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.map_layers))
        self.cls = nn.Linear(d, len(MAP_CLASSES) + 1)
        self.pts = mlp(d, d, MAP_POINTS * 2)

    def forward(self, bev: torch.Tensor, bev_pos: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = bev.shape[0]
        x = self.queries[None].expand(b, -1, -1)
        for layer in self.layers:
            x = layer(x, bev, self.query_pos[None], bev_pos)
        pts = to_range(self.pts(x).view(b, -1, MAP_POINTS, 2), self.cfg.bev_range_x, self.cfg.bev_range_y)
        return x, {"map_logits": self.cls(x), "map_points": pts}


class EgoEncoder(nn.Module):
    """The BEAM ego token: a learnable query (plus ego status in the '+' variant) that
    attends to the BEV."""

    def __init__(self, cfg: ModelConfig, ego_status_dim: int):
        super().__init__()
        d = cfg.embed_dim
        self.query = nn.Parameter(torch.randn(1, d) * 0.02)
        self.status = mlp(ego_status_dim, d, d) if cfg.use_ego_status else None
        self.can_bus = mlp(CAN_BUS_DIM, d, d) if cfg.ego_can_bus else None
        self.layer = DecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, self_attn=False)

    def forward(self, bev: torch.Tensor, bev_pos: torch.Tensor, ego_status: torch.Tensor | None,
                can_bus: torch.Tensor | None = None) -> torch.Tensor:
        x = self.query[None].expand(bev.shape[0], -1, -1)
        if self.can_bus is not None:
            if can_bus is None:
                raise ValueError("this model was built with model.ego_can_bus and needs can_bus")
            x = x + self.can_bus(can_bus.to(x.device).float())[:, None].to(x.dtype)
        if self.status is not None:
            if ego_status is None:
                raise ValueError("this model was built with use_ego_status=True and needs ego_status")
            x = x + self.status(ego_status.float())[:, None]
        return self.layer(x, bev, None, bev_pos)


class PlanningHead(nn.Module):
    """Planning transformer: ego token attends to agents, map and BEV; one 6-step
    trajectory per driving command (cumulative LiDAR-frame positions)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.agent_pos = mlp(2, d, d)
        self.map_pos = mlp(2, d, d)
        self.ego_agent = nn.ModuleList(DecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, False) for _ in range(cfg.plan_layers))
        self.ego_map = nn.ModuleList(DecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, False) for _ in range(cfg.plan_layers))
        self.ego_bev = nn.ModuleList(DecoderLayer(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, False) for _ in range(cfg.plan_layers))
        self.penultimate = mlp(2 * d, d, d)  # DiMA distils the MLLM's ego feature into this output
        self.traj = nn.Linear(d, NUM_COMMANDS * FUTURE_STEPS * 2)

    def forward(self, ego: torch.Tensor, agent: torch.Tensor, agent_centre: torch.Tensor, map_tokens: torch.Tensor,
                map_centre: torch.Tensor, bev: torch.Tensor, bev_pos: torch.Tensor,
                extra_ego_feat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        scale = agent_centre.new_tensor(30.0)  # keep the position MLP inputs near unit scale
        apos = self.agent_pos(agent_centre.detach() / scale)
        mpos = self.map_pos(map_centre.detach() / scale)
        x = ego
        for ea, em, eb in zip(self.ego_agent, self.ego_map, self.ego_bev):
            x = ea(x, agent, None, apos)
            x = em(x, map_tokens, None, mpos)
            x = eb(x, bev, None, bev_pos)
        # The pre-activation feature is what DiMA's distillation matches: after the ReLU
        # about half of its channels are exactly zero, so a KL there compares mostly zeros.
        pre = self.penultimate(torch.cat([x, ego], -1)[:, 0])  # (B, C)
        feat = F.relu(pre)
        if extra_ego_feat is not None:
            # DiMA "Dual" inference: max-pool with the MLLM's penultimate ego feature.
            feat = torch.maximum(feat, extra_ego_feat.to(feat))
        return {"ego_feat": feat, "ego_feat_pre": pre, "plan_all": self.trajectories(feat)}

    def trajectories(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, C) ego feature -> (B, NUM_COMMANDS, FUTURE_STEPS, 2) cumulative LiDAR-frame
        positions: the last layer alone, which Dual calibration fits the MLLM feature to."""
        return self.traj(feat).view(-1, NUM_COMMANDS, FUTURE_STEPS, 2).cumsum(-2)
