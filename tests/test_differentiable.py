"""Differentiable augmentations against torchvision's ops, and the GAN networks and losses."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from hardcl_lightning.data.differentiable import (
    DifferentiableViewAugmentation,
    color_jitter,
    color_jitter_random_order,
    crop_flip_params,
    diffaugment,
    gaussian_blur,
    luma,
    random_resized_crop_boxes,
    resized_crop,
    resized_crop_boxes,
    shift_hue_hsv,
)
from hardcl_lightning.data.transforms import ViewSpec
from hardcl_lightning.gan import GAN, Discriminator, Generator, discriminator_hinge_loss, generator_hinge_loss


def images(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_resized_crop_equals_crop_then_bilinear_resize():
    x = images(2)
    box = torch.tensor([8, 4, 24, 28]) / 32  # x0, y0, x1, y1 as image fractions
    params = torch.cat([box, torch.tensor([1.0])]).expand(2, 5)
    got = resized_crop(x, params, 16)
    ref = F.interpolate(x[..., 4:28, 8:24], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(got, ref, atol=1e-5)


def test_full_box_is_identity_and_flip_mirrors():
    x = images(2)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]] * 2)
    assert torch.allclose(resized_crop(x, full, 32), x, atol=1e-5)
    flipped = full.clone()
    flipped[:, 4] = -1
    assert torch.allclose(resized_crop(x, flipped, 32), torch.flip(x, dims=[-1]), atol=1e-5)


def test_crop_params_follow_the_scale_and_ratio_ranges():
    p = crop_flip_params(4000, (0.2, 0.6), (3 / 4, 4 / 3), 0.5, torch.zeros(1), torch.Generator().manual_seed(0))
    w, h = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    assert torch.all(p[:, :4] >= 0) and torch.all(p[:, :4] <= 1 + 1e-6)
    assert torch.all(w * h <= 0.6 + 1e-5) and torch.all(w * h >= 0.2 - 1e-5)
    assert torch.all(w / h >= 3 / 4 - 1e-4) and torch.all(w / h <= 4 / 3 + 1e-4)
    assert abs((p[:, 4] < 0).float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize("b,c,s", [(1.3, 1.0, 1.0), (1.0, 0.6, 1.0), (1.0, 1.0, 0.3), (0.7, 1.4, 1.6)])
def test_brightness_contrast_saturation_match_torchvision(b, c, s):
    x = images(3)
    got = color_jitter(x, torch.full((3,), b), torch.full((3,), c), torch.full((3,), s), torch.zeros(3))
    ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s)
    assert torch.allclose(got, ref, atol=1e-5)


def test_hue_rotation_keeps_luma_and_inverts():
    x = images(3) * 0.5 + 0.25  # away from the clamp
    one = torch.ones(3)
    shifted = color_jitter(x, one, one, one, torch.full((3,), 0.05))
    assert not torch.allclose(shifted, x, atol=1e-3)
    yiq_y = lambda t: (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)  # noqa: E731
    assert torch.allclose(yiq_y(shifted), yiq_y(x), atol=1e-4)
    back = color_jitter(shifted, one, one, one, torch.full((3,), -0.05))
    assert torch.allclose(back, x, atol=1e-4)
    assert torch.allclose(color_jitter(x, one, one, one, torch.zeros(3)), x, atol=1e-6)


def test_hsv_hue_shift_matches_torchvision_also_at_grey_pixels():
    x = images(3, size=20)
    x[:, :, :5] = x[:, :1, :5]  # grey rows: hue undefined, the image must stay as it is
    for hue in (0.0, 0.1, -0.3, 0.5):
        assert torch.allclose(shift_hue_hsv(x, torch.full((3,), hue)), TF.adjust_hue(x, hue), atol=1e-5)
    per_sample = shift_hue_hsv(x, torch.tensor([0.1, -0.2, 0.0]))
    assert torch.allclose(per_sample[1], TF.adjust_hue(x[1], -0.2), atol=1e-5)


def test_random_order_jitter_applies_each_images_permutation_as_torchvision_ops():
    x = images(4)
    order = torch.tensor([[3, 0, 1, 2], [0, 3, 1, 2], [2, 1, 0, 3], [1, 2, 3, 0]])
    b, c, s, h = torch.tensor([1.3, 0.7, 1.1, 0.4]), torch.tensor([0.6, 1.4, 1.0, 1.8]), \
        torch.tensor([0.3, 1.6, 1.2, 0.0]), torch.tensor([0.05, -0.1, 0.02, 0.1])
    got = color_jitter_random_order(x, b, c, s, h, order)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(4):
        ref = x[i]
        for op_id in order[i].tolist():  # torchvision's ColorJitter loop over fn_idx
            ref = ops[op_id](ref, (b, c, s, h)[op_id][i].item())
        assert torch.allclose(got[i], ref, atol=1e-5), i
    # the order matters: brightness before contrast is not contrast before brightness
    swapped = order[:, [1, 0, 2, 3]]
    assert not torch.allclose(color_jitter_random_order(x, b, c, s, h, swapped), got, atol=1e-3)


@pytest.mark.parametrize("size", [16, 32, 64])  # shrinking (antialiased), the same size, enlarging
def test_box_crops_equal_torchvision_resized_crop_with_antialias(size):
    x = images(3, size=40)[..., :, :36]  # 40 x 36: a non-square source
    boxes = torch.tensor([[5.0, 3.0, 25.0, 33.0], [0.0, 0.0, 36.0, 40.0], [10.0, 2.0, 33.0, 38.0]])
    flip = torch.tensor([False, True, False])
    got = resized_crop_boxes(x, boxes, size, flip)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(x[i], y0, x0, y1 - y0, x1 - x0, [size, size], antialias=True)
        assert torch.allclose(got[i], ref.flip(-1) if flip[i] else ref, atol=1e-5), i


def _ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    at = torch.cat([a, b]).unique()
    return (torch.searchsorted(a, at, right=True) / len(a) - torch.searchsorted(b, at, right=True) / len(b)).abs().max().item()


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.08, 1.0)), (30, 48, (0.2, 1.0)), (96, 96, (0.05, 0.4))])
def test_crop_boxes_follow_torchvisions_get_params_distribution(height, width, scale):
    """A two-sample KS test per box statistic (area, aspect, top, left) against 4,000 draws of
    ``RandomResizedCrop.get_params``, at the 0.1 % level; the generators' clamped sampler, which
    does not redraw boxes that stick out, fails the same test where boxes stick out often."""
    n, ratio = 4000, (3 / 4, 4 / 3)
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    ref = torch.tensor([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)], dtype=torch.float32)
    top, left, h, w = ref.unbind(1)
    boxes = random_resized_crop_boxes(n, height, width, scale, ratio, torch.zeros(1), torch.Generator().manual_seed(1))
    assert torch.equal(boxes, boxes.round()) and (boxes[:, :2] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    critical = 1.95 * (2 / n) ** 0.5  # KS critical value, alpha = 0.001, two samples of n
    for name, ours, theirs in [("area", bw * bh, w * h), ("aspect", bw / bh, w / h), ("top", boxes[:, 1], top),
                               ("left", boxes[:, 0], left)]:
        assert _ks_statistic(ours, theirs) < critical, name
    if scale[1] == 1.0:  # large boxes stick out: clamping instead of redrawing shows
        p = crop_flip_params(n, scale, ratio, 0.5, torch.zeros(1), torch.Generator().manual_seed(1))
        clamped_area = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1]) * height * width
        assert _ks_statistic(clamped_area, w * h) > critical


def test_the_fallback_is_torchvisions_centred_crop():
    """No draw fits a 10 x 100 strip with ratio (3/4, 4/3) at scale 1: the centred fallback."""
    boxes = random_resized_crop_boxes(5, 10, 100, (1.0, 1.0), (3 / 4, 4 / 3), torch.zeros(1))
    top, left, h, w = RandomResizedCrop.get_params(torch.zeros(3, 10, 100), [1.0, 1.0], [3 / 4, 4 / 3])
    assert torch.equal(boxes, torch.tensor([[left, top, left + w, top + h]], dtype=torch.float32).expand(5, 4))


def test_grayscale_blur_solarize_match_torchvision():
    x = images(2)
    assert torch.allclose(luma(x), TF.rgb_to_grayscale(x), atol=1e-6)
    got = gaussian_blur(x, torch.tensor([1.2, 0.0]), 5)
    assert torch.allclose(got[0], TF.gaussian_blur(x[0], [5, 5], [1.2, 1.2]), atol=1e-5)
    assert torch.allclose(got[1], x[1], atol=1e-6)  # sigma 0: untouched
    spec = ViewSpec(32, crop_scale=(1, 1), crop_ratio=(1, 1), flip_prob=0, jitter_prob=0, grayscale_prob=0, solarize_prob=1.0)
    aug = DifferentiableViewAugmentation(spec, (0, 0, 0), (1, 1, 1))
    got, _ = aug(x)
    assert torch.allclose(got, TF.solarize(x, 0.5), atol=1e-5)


def test_views_are_normalised_boxed_and_carry_gradient():
    spec = ViewSpec(16, crop_scale=(0.3, 1.0), blur_prob=0.5, solarize_prob=0.2)
    aug = DifferentiableViewAugmentation(spec, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    x = images(8).requires_grad_(True)
    views, boxes = aug(x, torch.Generator().manual_seed(0))
    assert views.shape == (8, 3, 16, 16) and boxes.shape == (8, 4)
    assert torch.all(boxes[:, 2:] > boxes[:, :2]) and torch.all(boxes >= 0) and torch.all(boxes <= 32)
    views.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # per-sample randomness: the same image twice gets two different views
    same = images(1).expand(2, -1, -1, -1)
    v, _ = aug(same, torch.Generator().manual_seed(1))
    assert not torch.allclose(v[0], v[1])


def _shift(x, dy, dx):
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_diffaugment_translation_is_an_integer_shift_with_zero_fill():
    x = images(6, 16) + 0.1
    out = diffaugment(x, ["translation"], torch.Generator().manual_seed(0))
    for i in range(6):
        matches = [(dy, dx) for dy, dx in itertools.product(range(-2, 3), repeat=2) if torch.equal(out[i], _shift(x[i], dy, dx))]
        assert matches, f"sample {i} is not a shift of at most 1/8 of the side"


def test_diffaugment_cutout_zeroes_one_square_of_at_most_a_quarter():
    x = images(50, 16) + 0.1
    out = diffaugment(x, ["cutout"], torch.Generator().manual_seed(0))
    zero = out.eq(0).all(dim=1)  # [n, h, w]
    assert torch.all(zero.float().mean(dim=(1, 2)) <= 0.25)
    assert zero.float().mean() > 0.1
    kept = ~zero.unsqueeze(1).expand_as(x)
    assert torch.equal(out[kept], x[kept])
    with pytest.raises(ValueError, match="unknown DiffAugment ops.*'flip'"):
        diffaugment(x, ["flip"])


def test_diffaugment_color_is_differentiable():
    x = images(4).requires_grad_(True)
    diffaugment(x, ["color", "translation", "cutout"]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [32, 64, 96])
def test_generator_and_discriminator_sizes(size):
    g, d = Generator(16, size, base_channels=8), Discriminator(size, base_channels=8)
    x = g(torch.randn(3, 16))
    assert x.shape == (3, 3, size, size) and x.min() >= 0 and x.max() <= 1
    assert d(x).shape == (3,)


def test_gan_rejects_unsupported_sizes():
    with pytest.raises(ValueError, match="image sizes \\[32, 64, 96\\].*48"):
        Generator(16, 48)


def test_hinge_losses_hand_computed():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, .5, 2] -> 5/6 ; relu(1 + fake) = [0, 1, 2.5] -> 7/6
    assert math.isclose(discriminator_hinge_loss(real, fake).item(), 5 / 6 + 7 / 6, rel_tol=1e-6)
    assert math.isclose(generator_hinge_loss(fake).item(), 0.5 / 3, rel_tol=1e-6)  # -mean(-2, 0, 1.5)


def test_discriminator_loss_does_not_reach_the_generator():
    gan = GAN(16, 32, 8, 8)
    fake = gan.sample(4)
    loss, _, _ = gan.discriminator_loss(images(4), fake)
    loss.backward()
    assert all(p.grad is None for p in gan.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gan.discriminator.parameters())
