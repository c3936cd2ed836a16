"""The backbone zoo: ``build_backbone(name, ...) -> (module, feature_dim)``.

Every backbone maps images [B, 3, H, W] to features [B, feature_dim] (global pooled for
ResNets, the class token for ViTs). Weights are randomly initialised: SSL pre-training starts
from scratch, and nothing is downloaded.
"""

from __future__ import annotations

import difflib
import importlib
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock


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
    "resnet_tiny": _tiny_resnet,
    "vit_tiny": _vit("vit_tiny"),
    "vit_small": _vit("vit_small"),
}
"""This package's own backbones; every other name is looked up as described in ``build_backbone``."""

# Classification models whose builder adds auxiliary heads by default (their forward then returns a
# tuple in training mode): an SSL backbone wants the plain features.
_NO_AUX_LOGITS = ("googlenet", "inception_v3")


def _reject_unknown(name: str, kwargs: dict, accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"backbone {name!r} got unknown option(s) {unknown}; it accepts {list(accepted) or 'no extra options'}"
        )


def _apply_cifar_stem(name: str, model: nn.Module) -> None:
    """3x3 stride-1 first conv and no max-pool: the standard change of a ResNet for 32 px inputs."""
    conv1, maxpool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv1, nn.Conv2d) or maxpool is None:
        raise ValueError(
            f"cifar_stem applies to ResNet-style backbones (a Conv2d `conv1` and a `maxpool`); {name!r} has "
            "no such stem: set cifar_stem: false (and mind that its stem downsamples small images)"
        )
    model.conv1 = nn.Conv2d(3, conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _drop_classifier(name: str, model: nn.Module) -> int:
    """Replace the model's last ``nn.Linear`` (its classifier) by the identity; return its input width.

    torchvision's classifiers are the last Linear in module order whatever they are called (``fc``,
    ``classifier[-1]``, ``heads.head``, ``head``), and what precedes them is pooling and flattening.
    """
    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = module_name
    if last is None:
        raise ValueError(
            f"backbone {name!r} has no Linear classifier to remove (e.g. SqueezeNet's is a convolution); "
            "give a model that returns [B, D] features through a class path instead"
        )
    parent_name, _, child = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    dim = getattr(parent, child).in_features
    if isinstance(parent, nn.Sequential) and child.isdigit():
        parent[int(child)] = nn.Identity()
    else:
        setattr(parent, child, nn.Identity())
    return dim


def _torchvision_backbone(name: str, cifar_stem: bool, image_size: int, kwargs: dict) -> tuple[nn.Module, int]:
    kwargs = dict(kwargs)
    if name.startswith("vit_"):
        kwargs.setdefault("image_size", image_size)  # torchvision's ViTs fix their input size at build
    if name in _NO_AUX_LOGITS:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except TypeError as err:
        raise ValueError(f"backbone {name!r} (torchvision) does not take the option(s) {sorted(kwargs)}: {err}") from None
    if cifar_stem:
        _apply_cifar_stem(name, model)
    return model, _drop_classifier(name, model)


def _timm_backbone(name: str, cifar_stem: bool, kwargs: dict) -> tuple[nn.Module, int]:
    try:
        import timm
    except ImportError:
        raise ImportError(
            f"backbone 'timm:{name}' needs timm: pip install 'hardcl_lightning[timm]' (or pip install timm)"
        ) from None
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ValueError(f"unknown timm model {name!r}" + (f"; did you mean {close}?" if close else ""))
    # num_classes=0: timm's own way to return pooled features; nothing is downloaded (pretrained=False)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if cifar_stem:
        _apply_cifar_stem(f"timm:{name}", model)
    return model, int(model.num_features)


def _class_path_backbone(path: str, image_size: int, kwargs: dict) -> tuple[nn.Module, int]:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"backbone class path {path!r} cannot be imported: {err}") from None
    model = cls(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"backbone class path {path!r} built a {type(model).__name__}, not a torch.nn.Module")
    dim = getattr(model, "feature_dim", None) or getattr(model, "num_features", None)
    if dim is None:  # measure it: the backbone's contract is images [B, 3, H, W] -> features [B, D]
        was_training = model.training
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, 3, image_size, image_size))
        model.train(was_training)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"backbone {path!r} must map images [B, 3, H, W] to features [B, D]; it returned {shape} "
                "(pool and flatten inside it, or give it a `feature_dim` attribute)"
            )
        dim = out.shape[1]
    return model, int(dim)


def build_backbone(name: str, cifar_stem: bool = False, image_size: int = 224, **kwargs) -> tuple[nn.Module, int]:
    """Build a randomly initialised backbone and return it with its feature dimension.

    ``name`` is one of this package's ``BACKBONES`` (``resnet_tiny``, ``vit_tiny``, ``vit_small``),
    any torchvision classification model (``torchvision.models.list_models``: ``resnet18``,
    ``resnet50``, ``convnext_tiny``, ``vit_b_16``, ...; its classifier removed), ``timm:<name>`` for
    any timm model (the ``timm`` extra; ``num_classes=0``), or the import path of an ``nn.Module``
    class (``my_pkg.nets.MyNet``; built with ``kwargs``; its ``feature_dim`` or ``num_features``
    attribute, else measured on a dummy batch). ``kwargs`` go to the builder (e.g.
    ``zero_init_residual`` for ResNets). ``cifar_stem`` swaps a ResNet-style stem for a 3x3 stride-1
    conv without max-pool.
    """
    if name in BACKBONES:
        if name.startswith("vit"):
            return BACKBONES[name](image_size=image_size, **kwargs)
        return BACKBONES[name](cifar_stem=cifar_stem, **kwargs)
    if name.startswith("timm:"):
        return _timm_backbone(name[len("timm:"):], cifar_stem, kwargs)
    torchvision_names = torchvision.models.list_models(module=torchvision.models)
    if name in torchvision_names:
        return _torchvision_backbone(name, cifar_stem, image_size, kwargs)
    if "." in name:
        if cifar_stem:
            raise ValueError(f"cifar_stem does not apply to a class-path backbone ({name!r}): build the stem you want")
        return _class_path_backbone(name, image_size, kwargs)
    close = difflib.get_close_matches(name, [*BACKBONES, *torchvision_names], n=3)
    raise ValueError(
        f"unknown backbone {name!r}"
        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
        + f" Accepted: {sorted(BACKBONES)}, any torchvision model (e.g. resnet18, convnext_tiny), "
        "'timm:<name>' (pip install timm), or an nn.Module class path (my_pkg.nets.MyNet)"
    )
