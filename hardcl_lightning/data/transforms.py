"""Multi-view augmentation pipelines that record each view's crop box.

A view is ``RandomResizedCrop -> flip -> colour jitter -> grayscale -> blur -> solarize ->
normalise``. The crop box ``(x0, y0, x1, y1)`` is recorded in source-image pixel coordinates
(flips do not change which region was taken), so that HVS can measure the IoU of the pairs it
selects (Ferreira et al., sec. 5: selected pairs overlap less).

Recipes (``augmentation=``):
- ``simclr``: Chen et al. 2020, crop scale (0.08, 1), jitter 0.8*s/0.8*s/0.8*s/0.2*s, p=0.8.
- ``mocov2``: MoCo v2 "aug+": crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1), p=0.8, blur p=0.5.
- ``byol`` / ``dino``: two asymmetric streams, A (blur always) and B (blur p=0.1, solarize
  p=0.2); view v uses stream A when v is even, B when odd. ``dino`` adds local crops.
- ``linear``: the linear-evaluation protocol's training view: crop (0.08, 1) and flip only.
- ``none``: the whole image, resized.
Images enter as uint8 tensors [3, H, W] or PIL images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

AUGMENTATIONS = ("simclr", "mocov2", "byol", "dino", "linear", "none")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewSpec:
    """Parameters of one augmented view."""

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    solarize_prob: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not (0 < lo <= hi <= 1):
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.size < 1:
            raise ValueError(f"view size must be >= 1, got {self.size}")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")


def to_uint8_tensor(img: Image.Image | torch.Tensor) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected a uint8 [3, H, W] image tensor, got {img.dtype} {tuple(img.shape)}")
        return img
    return TF.pil_to_tensor(img.convert("RGB"))


def to_pil_rgb(img: Image.Image | torch.Tensor) -> Image.Image:
    """The image as an RGB PIL image (the view pipeline's working format)."""
    if isinstance(img, torch.Tensor):
        return TF.to_pil_image(to_uint8_tensor(img))
    return img if img.mode == "RGB" else img.convert("RGB")


class ViewAugmentation:
    """One random view of an image, and the crop box it came from.

    The geometric and colour operations run on PIL images: PIL's C kernels make a CIFAR view
    about 30% cheaper than the same torchvision ops on uint8 tensors (the hue shift's RGB <-> HSV
    round trip dominates), which matters because data loading shares the CPU with training.
    """

    def __init__(self, spec: ViewSpec, mean: Sequence[float], std: Sequence[float]) -> None:
        self.spec = spec
        ops: list = [v2.RandomHorizontalFlip(spec.flip_prob)]
        if spec.jitter_prob > 0:
            jitter = v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)
            ops.append(v2.RandomApply([jitter], p=spec.jitter_prob))
        if spec.grayscale_prob > 0:
            ops.append(v2.RandomGrayscale(spec.grayscale_prob))
        if spec.blur_prob > 0:
            k = max(3, int(0.1 * spec.size) // 2 * 2 + 1)
            ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=spec.blur_prob))
        if spec.solarize_prob > 0:
            ops.append(v2.RandomSolarize(threshold=128, p=spec.solarize_prob))
        ops += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        self.pixel_ops = v2.Compose(ops)

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        top, left, h, w = RandomResizedCrop.get_params(img, list(self.spec.crop_scale), list(self.spec.crop_ratio))
        crop = TF.resized_crop(img, top, left, h, w, [self.spec.size, self.spec.size], antialias=True)
        box = torch.tensor([left, top, left + w, top + h], dtype=torch.float32)
        return self.pixel_ops(crop), box


class MultiViewTransform:
    """Applies a list of view augmentations to one image.

    Returns ``(views, boxes)``: a list of V normalised float tensors and a [V, 4] tensor of
    crop boxes ``(x0, y0, x1, y1)`` in the source image's pixels.
    """

    def __init__(self, view_specs: Sequence[ViewSpec], mean: Sequence[float], std: Sequence[float]) -> None:
        if len(view_specs) < 1:
            raise ValueError("a multi-view transform needs at least one view")
        self.view_specs = list(view_specs)
        self.views = [ViewAugmentation(s, mean, std) for s in view_specs]

    def __call__(self, img: Image.Image | torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        img = to_pil_rgb(img)
        out = [aug(img) for aug in self.views]
        return [v for v, _ in out], torch.stack([b for _, b in out])


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], resize_ratio: float = 1.0) -> v2.Compose:
    """Un-augmented view for kNN banks and validation: resize (by ``resize_ratio``) and centre crop."""
    ops: list = [v2.Lambda(to_uint8_tensor)]
    resize = int(round(image_size * resize_ratio))
    ops += [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def view_specs_for(
    augmentation: str,
    num_views: int,
    image_size: int,
    crop_scale: tuple[float, float] | None = None,
    color_jitter_strength: float = 1.0,
    blur_prob: float | None = None,
    solarize_prob: float | None = None,
    num_local_crops: int = 0,
    local_crop_size: int | None = None,
    local_crop_scale: tuple[float, float] = (0.05, 0.4),
) -> list[ViewSpec]:
    """The view specs of a recipe: ``num_views`` full-size views, then ``num_local_crops`` small ones.

    ``None`` options take the recipe's default. ``color_jitter_strength`` scales the jitter
    (SimCLR's ``s``); CIFAR recipes usually switch blur off (``blur_prob=0``).
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; choose one of {list(AUGMENTATIONS)}")
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if num_local_crops < 0:
        raise ValueError(f"num_local_crops must be >= 0, got {num_local_crops}")
    s = color_jitter_strength
    if augmentation == "none":
        base = ViewSpec(image_size, crop_scale=crop_scale or (1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                        jitter_prob=0.0, grayscale_prob=0.0)
        streams = [base, base]
    elif augmentation == "linear":
        base = ViewSpec(image_size, crop_scale or (0.08, 1.0), jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
        streams = [base, base]
    elif augmentation == "simclr":
        base = ViewSpec(image_size, crop_scale or (0.08, 1.0), brightness=0.8 * s, contrast=0.8 * s,
                        saturation=0.8 * s, hue=0.2 * s, blur_prob=0.5 if blur_prob is None else blur_prob,
                        solarize_prob=solarize_prob or 0.0)
        streams = [base, base]
    elif augmentation == "mocov2":
        base = ViewSpec(image_size, crop_scale or (0.2, 1.0), brightness=0.4 * s, contrast=0.4 * s,
                        saturation=0.4 * s, hue=0.1 * s, blur_prob=0.5 if blur_prob is None else blur_prob,
                        solarize_prob=solarize_prob or 0.0)
        streams = [base, base]
    else:  # byol, dino: two asymmetric streams
        default_scale = (0.08, 1.0) if augmentation == "byol" else (0.4, 1.0)
        a = ViewSpec(image_size, crop_scale or default_scale, brightness=0.4 * s, contrast=0.4 * s,
                     saturation=0.2 * s, hue=0.1 * s, blur_prob=1.0 if blur_prob is None else blur_prob,
                     solarize_prob=0.0)
        b = replace(a, blur_prob=0.1 if blur_prob is None else blur_prob,
                    solarize_prob=0.2 if solarize_prob is None else solarize_prob)
        streams = [a, b]
    specs = [streams[v % 2] for v in range(num_views)]
    if num_local_crops:
        local_size = local_crop_size or max(8, int(round(image_size * 96 / 224)))
        local = replace(streams[0], size=local_size, crop_scale=local_crop_scale,
                        blur_prob=0.5 if blur_prob is None else blur_prob, solarize_prob=0.0)
        specs += [local] * num_local_crops
    return specs
