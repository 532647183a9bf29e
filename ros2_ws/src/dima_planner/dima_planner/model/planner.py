"""VisionPlanner: VAD-style camera-only planner = scene encoder + planning transformer.

    images (B, 6, 3, H, W) --ImageEncoder--> features --BEVEncoder(+prev BEV)--> BEV tokens
    BEV --AgentHead--> agent tokens, boxes    BEV --MapHead--> map tokens, polylines
    BEV --EgoEncoder--> ego token             agents x map --> multi-modal motion
    [ego, agent, map, BEV] --PlanningHead--> 3 command trajectories (B, 3, 6, 2) --command--> (B, 6, 2)

The scene encoder's output `BeamTokens` (BEV, Ego, Agent, Map) is what the MLLM branch
(model/mllm) consumes; `ego_feat` is the planning head's penultimate ego feature that
DiMA distils into, and `extra_ego_feat` is the Dual-mode input.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.sample import EGO_STATUS_FIELDS
from .backbone import ImageEncoder
from .bev_encoder import BEVEncoder
from .config import ModelConfig
from .heads import AgentHead, EgoEncoder, MapHead, PlanningHead


@dataclass
class BeamTokens:
    """Scene-encoder tokens. bev (B, H*W, C), ego (B, 1, C), agent (B, Na, C), map (B, Nm, C)."""

    bev: torch.Tensor
    ego: torch.Tensor
    agent: torch.Tensor
    map: torch.Tensor


@dataclass
class SceneEncoding:
    beam: BeamTokens
    perception: dict[str, torch.Tensor]  # agent_logits/boxes, motion_traj/logits, map_logits/points


class VisionPlanner(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(cfg)
        self.bev_encoder = BEVEncoder(cfg)
        self.agent_head = AgentHead(cfg)
        self.map_head = MapHead(cfg)
        self.ego_encoder = EgoEncoder(cfg, len(EGO_STATUS_FIELDS))
        self.planning_head = PlanningHead(cfg)

    # ---- scene encoder -------------------------------------------------------------
    def encode_bev(self, images: torch.Tensor, lidar2img: torch.Tensor, prev_bev: torch.Tensor | None = None,
                   prev2cur: torch.Tensor | None = None, has_prev: torch.Tensor | None = None,
                   can_bus: torch.Tensor | None = None) -> torch.Tensor:
        """images float (B, 6, 3, H, W) in [0, 1] at cfg.image_size -> BEV (B, H*W, C)."""
        h, w = self.cfg.image_size
        if tuple(images.shape[-2:]) != (h, w):
            raise ValueError(f"images are {tuple(images.shape[-2:])}, this model takes {(h, w)} (H, W)")
        return self.bev_encoder(self.image_encoder(images), lidar2img, prev_bev, prev2cur, has_prev, can_bus)

    @torch.no_grad()
    def history_bev(self, history: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """VAD's temporal training: the BEV of a queue of earlier frames (oldest first), each
        computed without gradients from the one before it, exactly as evaluation and the node
        chain the BEV frame after frame. Each entry: images, lidar2img, prev2cur (from the entry
        before), can_bus, valid (B,) bool (False: no such frame, the chain restarts).
        Returns (BEV of the newest entry, its validity) for the current frame's prev_bev/has_prev."""
        if not history or not self.cfg.use_temporal:
            return None, None
        was = self.training
        self.eval()  # dropout off: the queue stands in for what inference carried (VAD: eval mode)
        bev, valid = None, None
        for h in history:
            bev = self.encode_bev(h["images"], h["lidar2img"], bev, h["prev2cur"] if bev is not None else None,
                                  valid, h.get("can_bus"))
            valid = h["valid"].bool()
        self.train(was)
        return bev, valid

    def encode(self, images: torch.Tensor, lidar2img: torch.Tensor, prev_bev: torch.Tensor | None = None,
               prev2cur: torch.Tensor | None = None, has_prev: torch.Tensor | None = None,
               ego_status: torch.Tensor | None = None, can_bus: torch.Tensor | None = None) -> SceneEncoding:
        bev = self.encode_bev(images, lidar2img, prev_bev, prev2cur, has_prev, can_bus)
        bev_pos = self.bev_encoder.pos[None]
        agent, det = self.agent_head(bev, bev_pos)
        map_tokens, vec = self.map_head(bev, bev_pos)
        motion = self.agent_head.decode_motion(agent, map_tokens, det["agent_boxes"][..., :2])
        ego = self.ego_encoder(bev, bev_pos, ego_status, can_bus)
        return SceneEncoding(BeamTokens(bev, ego, agent, map_tokens), {**det, **vec, **motion})

    # ---- planning transformer ----------------------------------------------------------
    def plan(self, enc: SceneEncoding, command: torch.Tensor,
             extra_ego_feat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        p = enc.perception
        out = self.planning_head(enc.beam.ego, enc.beam.agent, p["agent_boxes"][..., :2], enc.beam.map,
                                 p["map_points"].mean(-2), enc.beam.bev, self.bev_encoder.pos[None], extra_ego_feat)
        idx = command.long().view(-1, 1, 1, 1).expand(-1, 1, *out["plan_all"].shape[2:])
        out["plan"] = out["plan_all"].gather(1, idx)[:, 0]  # (B, 6, 2), the commanded trajectory
        return out

    def forward(self, images: torch.Tensor, lidar2img: torch.Tensor, command: torch.Tensor,
                prev_bev: torch.Tensor | None = None, prev2cur: torch.Tensor | None = None,
                has_prev: torch.Tensor | None = None, ego_status: torch.Tensor | None = None,
                can_bus: torch.Tensor | None = None, history: list[dict[str, torch.Tensor]] | None = None,
                extra_ego_feat: torch.Tensor | None = None) -> dict[str, torch.Tensor | BeamTokens]:
        """One step. For training pass `history`, the chained queue of earlier frames
        (history_bev); at inference pass the carried `prev_bev` instead."""
        if history:
            prev_bev, hist_valid = self.history_bev(history)
            has_prev = hist_valid if has_prev is None or hist_valid is None else has_prev.bool() & hist_valid
        enc = self.encode(images, lidar2img, prev_bev, prev2cur, has_prev, ego_status, can_bus)
        out = self.plan(enc, command, extra_ego_feat)
        return {**enc.perception, **out, "beam": enc.beam, "bev": enc.beam.bev}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
