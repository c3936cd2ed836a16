"""Batched augmentations of image tensors: generated samples' views, and every view on the device.

The generator methods (Wu et al., arXiv 2202.06464) need the contrastive loss's gradient to
reach the generator *through* the augmentations, and ``augment_on: device`` makes real images'
views on the accelerator, so views are made with tensor ops, per-sample random parameters and
one batched call:

- ``DifferentiableViewAugmentation``: the SSL view recipe of a ``ViewSpec`` (the same numbers
  the real-image pipeline uses): resized crop + flip as one resampling, brightness / contrast /
  saturation / hue jitter, grayscale, Gaussian blur and solarisation, then the dataset
  normalisation.
- ``diffaugment``: DiffAugment (Zhao et al., NeurIPS 2020, "Differentiable Augmentation for
  Data-Efficient GAN Training"): colour, translation and cutout applied to both real and fake
  images before the discriminator, so that it does not overfit a small training set.

Images enter in [0, 1] pixel range, [B, 3, H, W]. Why our own ops rather than kornia: the whole
recipe is ~250 lines of batched tensor code, it adds no dependency to a CPU CI, and it takes
its magnitudes straight from ``ViewSpec`` so real and generated views cannot drift apart.
With ``match_torchvision=True`` (``augment_on: device``, real images) every op is drawn and
applied as the CPU pipeline's torchvision ops are: whole-pixel crop boxes by
``RandomResizedCrop.get_params``, antialiased resizing, the jitter ops in a random order per
image, the HSV hue shift. Without it (the generator methods) three smooth variants stand in,
stated: the jitter ops run in a fixed order; hue is a rotation of the chroma plane in YIQ space
(the HSV hue shift has no useful gradient at grey pixels); crops whose sampled aspect does not
fit are clamped to the image instead of re-drawn, and resampled bilinearly without antialiasing.
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
# each channel's offset n in the closed-form HSV -> RGB of shift_hue_hsv
_CHANNEL_OFFSET = (5.0, 3.0, 1.0)
_ON_DEVICE: dict[tuple, torch.Tensor] = {}


def device_constant(values: Sequence[float] | torch.Tensor, like: torch.Tensor, shape: Sequence[int] = (-1,)) -> torch.Tensor:
    """``values`` as a tensor of ``shape`` on ``like``'s device and dtype, copied there once per
    device and dtype. Why: a blocking host-to-device copy waits for every kernel queued before it,
    so a constant copied afresh in each op of a batch stalls the accelerator that often (the view
    recipe had 16 such copies per batch)."""
    flat = tuple(values.flatten().tolist()) if torch.is_tensor(values) else tuple(float(v) for v in values)
    key = (flat, tuple(shape), like.device, like.dtype)
    constant = _ON_DEVICE.get(key)
    if constant is None:
        constant = _ON_DEVICE[key] = torch.tensor(flat, dtype=like.dtype).view(*shape).to(like.device)
    return constant


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype, generator=generator) * (hi - lo) + lo


def _bernoulli(n: int, p: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(n, device=like.device, generator=generator) < p).to(like.dtype)


def luma(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] grayscale of [B, 3, H, W] images."""
    return (x * device_constant(_GRAY, x, (1, 3, 1, 1))).sum(1, keepdim=True)


def mean_luma(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, 1, 1] mean grayscale of each image (what contrast blends with), from the channel means."""
    return (x.mean(dim=(2, 3)) @ device_constant(_GRAY, x)).view(-1, 1, 1, 1)


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


def random_resized_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], like: torch.Tensor,
    generator: torch.Generator | None = None, attempts: int = 10,
) -> torch.Tensor:
    """``RandomResizedCrop.get_params`` for ``n`` crops at once: boxes ``(x0, y0, x1, y1)`` [n, 4] in
    whole pixels of a ``height`` x ``width`` image.

    As torchvision: up to ``attempts`` draws of area ~ U(scale) * H W and log aspect ~ U(log ratio),
    sides rounded to whole pixels; the first draw that fits is placed uniformly; when none fits, the
    centred crop of the largest box whose aspect lies in ``ratio``. All draws are made at once and
    the first that fits is picked per sample, so the distribution is torchvision's.
    """
    kw = dict(device=like.device, dtype=torch.float32)
    area = torch.rand(n, attempts, generator=generator, **kw) * (scale[1] - scale[0]) + scale[0]
    log_ratio = math.log(ratio[0]), math.log(ratio[1])
    aspect = (torch.rand(n, attempts, generator=generator, **kw) * (log_ratio[1] - log_ratio[0]) + log_ratio[0]).exp()
    target = area * (height * width)
    w, h = (target * aspect).sqrt().round(), (target / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first draw that fits (0 when none does)
    found = fits.any(dim=1)
    in_ratio = width / height  # torchvision's fallback: a centred crop, aspect clamped into ratio
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w.gather(1, first).squeeze(1), torch.full_like(found, fw, dtype=torch.float32))
    h = torch.where(found, h.gather(1, first).squeeze(1), torch.full_like(found, fh, dtype=torch.float32))
    # offsets uniform over the positions that fit (torch.randint(0, H - h + 1)), centred for the fallback
    u = torch.rand(n, 2, generator=generator, **kw)
    top = torch.minimum((u[:, 0] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((u[:, 1] * (width - w + 1)).floor(), width - w)
    top = torch.where(found, top, ((height - h) / 2).floor())
    left = torch.where(found, left, ((width - w) / 2).floor())
    return torch.stack([left, top, left + w, top + h], dim=1)


def _resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """[n, out_size, in_size] weights that resample pixels ``[start, start + length)`` of each row to
    ``out_size``: PIL's bilinear filter, a triangle widened by the downscale factor (antialiasing)
    and renormalised inside the crop, as ``resize(antialias=True)``; plain bilinear when enlarging."""
    scale = (length / out_size).view(-1, 1, 1)
    support = scale.clamp(min=1.0)
    out = torch.arange(out_size, device=start.device, dtype=start.dtype).view(1, -1, 1)
    centre = start.view(-1, 1, 1) + (out + 0.5) * scale
    pixel = torch.arange(in_size, device=start.device, dtype=start.dtype).view(1, 1, -1) + 0.5
    weights = (1 - ((pixel - centre) / support).abs()).clamp(min=0)
    inside = (pixel > start.view(-1, 1, 1)) & (pixel < (start + length).view(-1, 1, 1))
    weights = weights * inside
    return weights / weights.sum(dim=-1, keepdim=True)


def resized_crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's pixel box [B, 4] resized to ``size`` x ``size``, mirrored where ``flip`` [B] is set:
    torchvision's ``resized_crop(..., antialias=True)`` per sample, as two batched matmuls with
    per-sample separable weights (the crop's sides differ per sample, so no single resize serves)."""
    x0, y0, x1, y1 = boxes.unbind(1)
    wx = _resample_weights(x0, x1 - x0, x.shape[-1], size)  # [B, size, W]
    wy = _resample_weights(y0, y1 - y0, x.shape[-2], size)  # [B, size, H]
    if flip is not None:
        wx = torch.where(flip.view(-1, 1, 1), wx.flip(1), wx)
    rows = torch.matmul(x, wx.transpose(1, 2).unsqueeze(1).to(x.dtype))  # [B, C, H, size]
    return torch.matmul(wy.unsqueeze(1).to(x.dtype), rows)  # [B, C, size, size]


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_brightness`` with a per-sample factor [B] (1 = identity)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_contrast``: a blend with the image's mean luma, per-sample factor [B]."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean_luma(x)).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_saturation``: a blend with the per-pixel luma, per-sample factor [B]."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * luma(x)).clamp(0, 1)


def rotate_hue_yiq(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """A hue shift by ``hue`` turns [B] as a rotation of the YIQ chroma plane: smooth everywhere,
    unlike the HSV shift, whose hue is undefined at grey pixels (the generators' choice)."""
    angle = hue * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    rgb2yiq, yiq2rgb = device_constant(_RGB2YIQ, x, (3, 3)), device_constant(_YIQ2RGB, x, (3, 3))
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = yiq2rgb @ rot @ rgb2yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)


def shift_hue_hsv(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` (an HSV hue shift by ``hue`` turns) with a per-sample shift [B].

    In sixths of a turn: H6 = (g - b) / C, 2 + (b - r) / C or 4 + (r - g) / C by the largest
    channel (r first on ties, as torchvision), C = max - min; back to RGB by the closed form
    ``c_n = max - C clamp(min(k, 4 - k), 0, 1)``, ``k = (n + H6 + 6 hue) mod 6``, n = 5, 3, 1 for
    R, G, B (grey pixels, C = 0, stay as they are).
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h6 = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    k = (h6.unsqueeze(1) + device_constant(_CHANNEL_OFFSET, x, (1, 3, 1, 1)) + 6 * hue.view(-1, 1, 1, 1)).remainder(6)
    return maxc.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)


def color_jitter(
    x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor
) -> torch.Tensor:
    """Brightness, contrast, saturation, then a YIQ hue rotation, in this fixed order, per-sample
    factors [B] (1 = identity for the first three; hue in turns, 0 = identity). The generators'
    jitter: one smooth path for the gradient to G."""
    x = adjust_saturation(adjust_contrast(adjust_brightness(x, brightness), contrast), saturation)
    return rotate_hue_yiq(x, hue)


def color_jitter_random_order(
    x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor,
    order: torch.Tensor,
) -> torch.Tensor:
    """torchvision's ``ColorJitter``: the four ops in a per-sample order ``order`` [B, 4] (a
    permutation of 0..3 = brightness, contrast, saturation, HSV hue), per-sample factors [B].

    Batched with one hue shift for the whole batch: brightness, contrast and saturation are each
    ``clamp(f x + (1 - f) r)`` with r = 0, the image's mean luma or the pixel's luma, so one
    blend per position serves whichever of the three a sample has there (f = 1 where it has
    none); three positions' blends before each sample's hue, the hue shift, three after it.
    """
    hue_at = (order == 3).to(torch.uint8).argmax(dim=1, keepdim=True)
    positions = torch.arange(4, device=order.device)
    none = torch.full_like(order[:, :3], -1)
    ops = torch.cat([torch.where(hue_at > positions[:3], order[:, :3], none),  # before the hue shift
                     torch.where(hue_at < positions[1:], order[:, 1:], none)], dim=1)  # after it; [B, 6]
    f = torch.where(ops == 0, brightness[:, None], torch.where(ops == 1, contrast[:, None],
                    torch.where(ops == 2, saturation[:, None], torch.ones_like(ops, dtype=x.dtype))))
    to_mean, to_luma = ((ops == 1) * (1 - f)).T.reshape(6, -1, 1, 1, 1), ((ops == 2) * (1 - f)).T.reshape(6, -1, 1, 1, 1)
    f = f.T.reshape(6, -1, 1, 1, 1)
    for i in range(6):
        if i == 3:
            x = shift_hue_hsv(x, hue)
        x = (f[i] * x).add_(to_mean[i] * mean_luma(x)).addcmul_(to_luma[i], luma(x)).clamp_(0, 1)
    return x


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
        match_torchvision: draw and apply every op as the CPU (torchvision/PIL) pipeline does:
            whole-pixel crop boxes by ``RandomResizedCrop.get_params`` (ten tries, centred
            fallback) resized with antialiasing, the jitter ops in a random order per image,
            hue as an HSV shift, solarize at 128/255. What ``augment_on: device`` uses for real
            images. Off (the generator methods): continuous boxes clamped to the image, bilinear
            resampling, a fixed jitter order and a YIQ hue rotation, the smooth variants that the
            generated samples' gradient goes through.
    """

    def __init__(self, spec: ViewSpec, mean: Sequence[float], std: Sequence[float], match_torchvision: bool = False) -> None:
        self.spec, self.match_torchvision = spec, match_torchvision
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(v) for v in std)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Views [B, 3, size, size] (normalised) and crop boxes [B, 4] ``(x0, y0, x1, y1)`` in input pixels."""
        s, n = self.spec, x.shape[0]
        if self.match_torchvision:
            boxes = random_resized_crop_boxes(n, x.shape[-2], x.shape[-1], s.crop_scale, s.crop_ratio, x, generator)
            out = resized_crop_boxes(x, boxes, s.size, flip=_bernoulli(n, s.flip_prob, x, generator) > 0)
        else:
            params = crop_flip_params(n, s.crop_scale, s.crop_ratio, s.flip_prob, x, generator)
            out = resized_crop(x, params, s.size)
            boxes = params[:, :4] * device_constant([x.shape[-1], x.shape[-2]] * 2, x)
        if s.jitter_prob > 0:
            on = _bernoulli(n, s.jitter_prob, x, generator)
            # ColorJitter's factor ranges: [max(0, 1 - m), 1 + m] (m = 0: the identity)
            factor = lambda m: 1 + on * _uniform(n, max(-m, -1.0), m, x, generator)  # noqa: E731
            factors = factor(s.brightness), factor(s.contrast), factor(s.saturation), on * _uniform(n, -s.hue, s.hue, x, generator)
            if self.match_torchvision:
                order = torch.rand(n, 4, device=x.device, generator=generator).argsort(dim=1)  # torch.randperm(4) per image
                out = color_jitter_random_order(out, *factors, order=order)
            else:
                out = color_jitter(out, *factors)
        if s.grayscale_prob > 0:
            g = _bernoulli(n, s.grayscale_prob, x, generator).view(-1, 1, 1, 1)
            out = g * luma(out).expand_as(out) + (1 - g) * out
        if s.blur_prob > 0:
            k = max(3, int(0.1 * s.size) // 2 * 2 + 1)
            sigma = _bernoulli(n, s.blur_prob, x, generator) * _uniform(n, 0.1, 2.0, x, generator)
            out = gaussian_blur(out, sigma, k)
        if s.solarize_prob > 0:
            sol = _bernoulli(n, s.solarize_prob, x, generator).view(-1, 1, 1, 1)
            threshold = 128 / 255 if self.match_torchvision else 0.5  # RandomSolarize(threshold=128) on uint8
            out = sol * torch.where(out >= threshold, 1 - out, out) + (1 - sol) * out
        out = (out - device_constant(self.mean, out, (1, 3, 1, 1))) / device_constant(self.std, out, (1, 3, 1, 1))
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
