"""Differentiable augmentations of image tensors, for generated samples.

The generator methods (Wu et al., arXiv 2202.06464) need the contrastive loss's gradient to
reach the generator *through* the augmentations, so the views of generated images are made
with tensor ops, per-sample random parameters and one batched call:

- ``DifferentiableViewAugmentation``: the SSL view recipe of a ``ViewSpec`` (the same numbers
  the real-image pipeline uses): resized crop + flip as one affine resampling
  (``affine_grid``/``grid_sample``), brightness / contrast / saturation / hue jitter, grayscale,
  Gaussian blur and solarisation, then the dataset normalisation.
- ``diffaugment``: DiffAugment (Zhao et al., NeurIPS 2020, "Differentiable Augmentation for
  Data-Efficient GAN Training"): colour, translation and cutout applied to both real and fake
  images before the discriminator, so that it does not overfit a small training set.

Images enter in [0, 1] pixel range, [B, 3, H, W]. Why our own ops rather than kornia: the whole
recipe is ~150 lines of batched tensor code, it adds no dependency to a CPU CI, and it takes
its magnitudes straight from ``ViewSpec`` so real and generated views cannot drift apart.
Deviations from torchvision's PIL-style pipeline, stated: the jitter ops run in a fixed order
(torchvision shuffles it per image); hue is a rotation of the chroma plane in YIQ space (a
smooth approximation of the HSV hue shift, which has no useful gradient at grey pixels); crops
whose sampled aspect does not fit are clamped to the image instead of re-drawn.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from hardcl_lightning.data.transforms import ViewSpec

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
# RGB <-> YIQ (NTSC); hue rotation = rotating the (I, Q) plane
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype, generator=generator) * (hi - lo) + lo


def _bernoulli(n: int, p: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(n, device=like.device, generator=generator) < p).to(like.dtype)


def luma(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] grayscale of [B, 3, H, W] images."""
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def crop_flip_params(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], flip_prob: float, like: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample crop boxes ``(x0, y0, x1, y1)`` in [0, 1] image fractions and a flip sign: [n, 5].

    Area fraction ~ U(scale), log aspect ~ U(log ratio), as ``RandomResizedCrop``; a box that
    does not fit is clamped to the image side.
    """
    area = _uniform(n, scale[0], scale[1], like, generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), like, generator)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)
    h = (area / aspect).sqrt().clamp(max=1.0)
    x0 = torch.rand(n, device=like.device, dtype=like.dtype, generator=generator) * (1 - w)
    y0 = torch.rand(n, device=like.device, dtype=like.dtype, generator=generator) * (1 - h)
    flip = 1 - 2 * _bernoulli(n, flip_prob, like, generator)  # -1 flips
    return torch.stack([x0, y0, x0 + w, y0 + h, flip], dim=1)


def resized_crop(x: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resample of each image's box (and flip) to ``size`` x ``size``: one ``grid_sample``."""
    x0, y0, x1, y1, flip = params.unbind(1)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = (x1 - x0) * flip  # output x in [-1, 1] -> input x in [2 x0 - 1, 2 x1 - 1], mirrored when flipped
    theta[:, 0, 2] = x0 + x1 - 1
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = y0 + y1 - 1
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(
    x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor
) -> torch.Tensor:
    """Per-sample factors [B] (1 = identity for the first three; hue in turns, 0 = identity).

    Brightness scales, contrast blends with the image's mean luma, saturation blends with the
    per-pixel luma (torchvision's definitions); hue rotates the YIQ chroma plane.
    """
    v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    x = (x * v(brightness)).clamp(0, 1)
    mean = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (v(contrast) * x + (1 - v(contrast)) * mean).clamp(0, 1)
    x = (v(saturation) * x + (1 - v(saturation)) * luma(x)).clamp(0, 1)
    angle = hue * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    rgb2yiq, yiq2rgb = _RGB2YIQ.to(x), _YIQ2RGB.to(x)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = yiq2rgb @ rot @ rgb2yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma [B] (sigma <= 0 leaves the image as it is)."""
    b, c, h, w = x.shape
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    s = sigma.clamp(min=1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    identity = torch.zeros_like(k)
    identity[:, r] = 1
    k = torch.where((sigma > 0).view(-1, 1), k, identity)
    k = k.repeat_interleave(c, dim=0)  # [B*C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


class DifferentiableViewAugmentation:
    """One random view per image of a batch, by the recipe of ``spec``; differentiable in the images.

    Args:
        spec: the real-image pipeline's view recipe (crop scale/ratio, flip, jitter magnitudes
            and probability, grayscale, blur, solarize, output size).
        mean, std: the dataset normalisation applied last (as the real views have it).
    """

    def __init__(self, spec: ViewSpec, mean: Sequence[float], std: Sequence[float]) -> None:
        self.spec = spec
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Views [B, 3, size, size] (normalised) and crop boxes [B, 4] in input pixels."""
        s, n = self.spec, x.shape[0]
        params = crop_flip_params(n, s.crop_scale, s.crop_ratio, s.flip_prob, x, generator)
        out = resized_crop(x, params, s.size)
        if s.jitter_prob > 0:
            on = _bernoulli(n, s.jitter_prob, x, generator)
            factor = lambda m: 1 + on * _uniform(n, -m, m, x, generator)  # noqa: E731  (m=0 -> identity)
            hue = on * _uniform(n, -s.hue, s.hue, x, generator)
            out = color_jitter(out, factor(s.brightness), factor(s.contrast), factor(s.saturation), hue)
        if s.grayscale_prob > 0:
            g = _bernoulli(n, s.grayscale_prob, x, generator).view(-1, 1, 1, 1)
            out = g * luma(out).expand_as(out) + (1 - g) * out
        if s.blur_prob > 0:
            k = max(3, int(0.1 * s.size) // 2 * 2 + 1)
            sigma = _bernoulli(n, s.blur_prob, x, generator) * _uniform(n, 0.1, 2.0, x, generator)
            out = gaussian_blur(out, sigma, k)
        if s.solarize_prob > 0:
            sol = _bernoulli(n, s.solarize_prob, x, generator).view(-1, 1, 1, 1)
            out = sol * torch.where(out >= 0.5, 1 - out, out) + (1 - sol) * out
        out = (out - self.mean.to(out)) / self.std.to(out)
        boxes = params[:, :4] * torch.tensor([x.shape[-1], x.shape[-2]] * 2, device=x.device, dtype=x.dtype)
        return out, boxes


DIFFAUGMENT_OPS = ("color", "translation", "cutout")


def check_diffaugment_policy(policy: Sequence[str]) -> None:
    unknown = set(policy) - set(DIFFAUGMENT_OPS)
    if unknown:
        raise ValueError(f"unknown DiffAugment ops {sorted(unknown)}; choose from {list(DIFFAUGMENT_OPS)}")


def diffaugment(x: torch.Tensor, policy: Sequence[str] = DIFFAUGMENT_OPS, generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020, sec. 3): the same random family for real and fake images.

    ``color``: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]; ``translation``: shift by
    up to 1/8 of the side with zero padding; ``cutout``: zero a random square of half the side.
    Input and output in [0, 1] pixel range.
    """
    check_diffaugment_policy(policy)
    n, _, h, w = x.shape
    v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    if "color" in policy:
        x = x + v(_uniform(n, -0.5, 0.5, x, generator))
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * v(_uniform(n, 0.0, 2.0, x, generator)) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - m) * v(_uniform(n, 0.5, 1.5, x, generator)) + m
    if "translation" in policy:
        dy = (torch.rand(n, device=x.device, generator=generator) * (h // 4 + 1)).long() - h // 8
        dx = (torch.rand(n, device=x.device, generator=generator) * (w // 4 + 1)).long() - w // 8
        rows = (torch.arange(h, device=x.device).view(1, h) - dy.view(n, 1))  # source row of each output row
        cols = (torch.arange(w, device=x.device).view(1, w) - dx.view(n, 1))
        valid = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
        idx_r = rows.clamp(0, h - 1).view(n, 1, h, 1).expand(n, x.shape[1], h, w)
        x = torch.gather(x, 2, idx_r)
        idx_c = cols.clamp(0, w - 1).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        x = torch.gather(x, 3, idx_c) * valid
    if "cutout" in policy:  # a (h/2 x w/2) square centred anywhere in the image (it may stick out)
        ch, cw = h // 2, w // 2
        y0 = (torch.rand(n, device=x.device, generator=generator) * (h + 1)).long().view(n, 1, 1) - ch // 2
        x0 = (torch.rand(n, device=x.device, generator=generator) * (w + 1)).long().view(n, 1, 1) - cw // 2
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
        x = x * (~inside).unsqueeze(1).to(x.dtype)
    return x
