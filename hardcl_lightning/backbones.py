"""The backbone zoo: ``build_backbone(name, ...) -> (module, feature_dim)``.

Every backbone maps images [B, 3, H, W] to features [B, feature_dim] (global pooled for
ResNets, the class token for ViTs). Weights are randomly initialised: SSL pre-training starts
from scratch, and nothing is downloaded.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock


def _cifar_stem(model: torchvision.models.ResNet) -> None:
    """3x3 stride-1 first conv and no max-pool: the standard change for 32 px inputs."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _torchvision_resnet(arch: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(cifar_stem: bool = False, zero_init_residual: bool = False, **kwargs) -> tuple[nn.Module, int]:
        _reject_unknown(arch, kwargs, ())
        model = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
        if cifar_stem:
            _cifar_stem(model)
        dim = model.fc.in_features
        model.fc = nn.Identity()
        return model, dim

    return build


class TinyResNet(nn.Module):
    """A ResNet with BasicBlocks and narrow widths, for CPU tests and the quickstart.

    Same structure as torchvision's ResNet (stem, four stages, global pool) so that it behaves
    like the real thing under BN and augmentations, at a fraction of the cost.
    """

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (16, 32, 64, 128),
        blocks: tuple[int, int, int, int] = (1, 1, 1, 1),
        cifar_stem: bool = True,
        norm: str = "batch",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = _norm_layer(norm)
        w0 = widths[0]
        if cifar_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 1, 1, bias=False), norm_layer(w0), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, w0, 7, 2, 3, bias=False), norm_layer(w0), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        layers: list[nn.Module] = []
        in_ch = w0
        for stage, (w, n) in enumerate(zip(widths, blocks)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                down = None
                if stride != 1 or in_ch != w:
                    down = nn.Sequential(nn.Conv2d(in_ch, w, 1, stride, bias=False), norm_layer(w))
                layers.append(BasicBlock(in_ch, w, stride=stride, downsample=down, norm_layer=norm_layer))
                in_ch = w
        self.layers = nn.Sequential(*layers)
        if zero_init_residual:  # each block starts as the identity (torchvision's ResNet option)
            for block in layers:
                if isinstance(block.bn2, nn.BatchNorm2d):
                    nn.init.zeros_(block.bn2.weight)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(self.stem(x))).flatten(1)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda c: nn.GroupNorm(min(8, c), c)
    if norm == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"norm must be one of 'batch', 'group', 'none', got {norm!r}")


def _tiny_resnet(cifar_stem: bool = True, **kwargs) -> tuple[nn.Module, int]:
    _reject_unknown("resnet_tiny", kwargs, ("widths", "blocks", "norm", "zero_init_residual"))
    model = TinyResNet(cifar_stem=cifar_stem, **kwargs)
    return model, model.feature_dim


class ViTBackbone(nn.Module):
    """torchvision's VisionTransformer returning the class token, at any input size.

    Position embeddings are bicubically interpolated to the input's patch grid, so DINO's
    small local crops go through the same network as the global ones.
    """

    def __init__(self, image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"image_size {image_size} is not divisible by the ViT patch_size {patch_size}")
        self.vit = torchvision.models.VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=4 * hidden_dim,
        )
        self.vit.heads = nn.Identity()
        self.patch_size = patch_size
        self.feature_dim = hidden_dim

    def _pos_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.vit.encoder.pos_embedding  # [1, 1 + n*n, D]
        n = int(math.sqrt(pos.shape[1] - 1))
        if grid_h == n and grid_w == n:
            return pos
        cls, patches = pos[:, :1], pos[:, 1:]
        patches = patches.reshape(1, n, n, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"ViT input {h}x{w} is not divisible by patch_size {p}")
        tokens = self.vit.conv_proj(x).flatten(2).transpose(1, 2)  # [B, N, D]
        tokens = torch.cat([self.vit.class_token.expand(b, -1, -1), tokens], dim=1)
        enc = self.vit.encoder
        tokens = enc.dropout(tokens + self._pos_embedding(h // p, w // p))
        return enc.ln(enc.layers(tokens))[:, 0]


VIT_SIZES = {"vit_tiny": (12, 3, 192), "vit_small": (12, 6, 384)}


def _vit(arch: str) -> Callable[..., tuple[nn.Module, int]]:
    def build(image_size: int = 224, patch_size: int = 16, cifar_stem: bool = False, **kwargs) -> tuple[nn.Module, int]:
        _reject_unknown(arch, kwargs, ())
        layers, heads, dim = VIT_SIZES[arch]
        model = ViTBackbone(image_size, patch_size, layers, heads, dim)
        return model, dim

    return build


BACKBONES: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet50": _torchvision_resnet("resnet50"),
    "resnet_tiny": _tiny_resnet,
    "vit_tiny": _vit("vit_tiny"),
    "vit_small": _vit("vit_small"),
}


def _reject_unknown(name: str, kwargs: dict, accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"backbone {name!r} got unknown option(s) {unknown}; it accepts {list(accepted) or 'no extra options'}"
        )


def build_backbone(name: str, cifar_stem: bool = False, image_size: int = 224, **kwargs) -> tuple[nn.Module, int]:
    """Build a randomly initialised backbone and return it with its feature dimension."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if name.startswith("vit"):
        return BACKBONES[name](image_size=image_size, **kwargs)
    return BACKBONES[name](cifar_stem=cifar_stem, **kwargs)
