"""Shapes10: an embedded, procedural 10-class image dataset that needs no download.

Each image is one shape (the class) drawn over a random background. Everything else varies
within a class: the shape's colour, scale, position, rotation and aspect, the background's two
colours, gradient direction and noise. Colour says nothing about the class, so a network has
to learn shape to classify it; random-init features mostly encode colour, which is what makes
kNN accuracy rise visibly with SSL training. Generation is vectorised and deterministic given
the seed: 10k 32 px images take about a second.

``grayscale=True`` renders the same scenes (same shapes, positions, sizes and labels) in
luminance only, with a minimum shape/background contrast; the quickstart and the tiny configs use
it. On the colour images an image's two views share its palette colours, which survive crops and
moderate jitter, so matching views is solved by colour: negative-free methods (SimSiam, BYOL,
DINO) barely learn shape for tens of epochs and SimCLR learns it only halfway (README, "What
`make quickstart` shows"). Without colour every method learns shape within a few epochs.
"""

from __future__ import annotations

import math

import torch

CLASSES = (
    "disk",
    "square",
    "triangle",
    "ring",
    "cross",
    "diamond",
    "hollow_square",
    "two_dots",
    "crescent",
    "bar",
)


PALETTE = torch.tensor(
    [
        [0.9, 0.2, 0.2],
        [0.2, 0.7, 0.3],
        [0.2, 0.3, 0.9],
        [0.95, 0.85, 0.2],
        [0.6, 0.3, 0.7],
        [0.2, 0.8, 0.85],
        [0.95, 0.95, 0.95],
        [0.15, 0.15, 0.15],
    ]
)


def _shape_mask(label: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Soft-free boolean masks [N, H, W] of each sample's shape in its own (u, v) frame."""
    r = torch.sqrt(u**2 + v**2)
    cheb = torch.maximum(u.abs(), v.abs())
    masks = torch.stack(
        [
            r < 0.85,
            cheb < 0.72,
            (v < 0.65) & (v > -0.75) & (u.abs() < (0.65 - v) * 0.62),
            (r < 0.95) & (r > 0.55),
            ((u.abs() < 0.28) & (v.abs() < 0.95)) | ((v.abs() < 0.28) & (u.abs() < 0.95)),
            (u.abs() + v.abs()) < 0.95,
            (cheb < 0.9) & (cheb > 0.55),
            (torch.sqrt((u + 0.5) ** 2 + v**2) < 0.4) | (torch.sqrt((u - 0.5) ** 2 + v**2) < 0.4),
            (r < 0.9) & (torch.sqrt((u - 0.45) ** 2 + v**2) > 0.7),
            (u.abs() < 0.95) & (v.abs() < 0.22),
        ],
        dim=1,
    )  # [N, C, H, W]
    return masks[torch.arange(label.shape[0]), label]


#: ITU-R BT.601 luma weights (torchvision's ``rgb_to_grayscale``), for ``grayscale=True``
LUMA = torch.tensor([0.299, 0.587, 0.114])
#: grayscale images keep at least this luminance gap between shape and mean background colour
MIN_LUMA_CONTRAST = 0.3


def make_shapes(
    num_images: int, image_size: int = 32, seed: int = 0, chunk: int = 2048, grayscale: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num_images`` uint8 images [N, 3, S, S] and int64 labels [N] (balanced classes)."""
    images, labels, _ = make_shapes_with_factors(num_images, image_size, seed, chunk, grayscale)
    return images, labels


#: the nuisance factors ``make_shapes_with_factors`` reports, each an int64 label per image
FACTORS = ("foreground_colour", "background_colour", "position", "size")


def make_shapes_with_factors(
    num_images: int, image_size: int = 32, seed: int = 0, chunk: int = 2048, grayscale: bool = False
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``make_shapes`` (the same images and labels for the same seed) plus what else varies.

    The factors say what a representation encodes besides the class, e.g. whether a
    self-supervised backbone learned shape or only colour (``benchmarks/short_runs.py``):
    ``foreground_colour`` (palette index, ``len(PALETTE)`` where the foreground took the
    background's complement), ``background_colour`` (palette index of the gradient's first
    colour), ``position`` (quadrant of the shape's centre: 2 * (below centre) + (right of centre)),
    ``size`` (1 when the shape's scale is above the middle of its range), and ``mask`` (bool
    [N, S, S], the shape's pixels).

    ``grayscale``: the same scenes (every random draw is the same) in luminance, all three channels
    equal; a shape within ``MIN_LUMA_CONTRAST`` of its background's mean luminance is drawn that
    far lighter (dark backgrounds) or darker (light ones), and its ``foreground_colour`` is then
    ``len(PALETTE)``, as for a complemented colour.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % len(CLASSES)
    labels = labels[torch.randperm(num_images, generator=g)]
    images = torch.empty(num_images, 3, image_size, image_size, dtype=torch.uint8)
    factors = {name: torch.empty(num_images, dtype=torch.int64) for name in FACTORS}
    factors["mask"] = torch.empty(num_images, image_size, image_size, dtype=torch.bool)
    lin = torch.linspace(-1, 1, image_size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    for start in range(0, num_images, chunk):
        lab = labels[start : start + chunk]
        n = lab.shape[0]
        rnd = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        scale = 0.5 + 0.35 * rnd(n, 1, 1)
        aspect = 0.8 + 0.4 * rnd(n, 1, 1)
        cx = (rnd(n, 1, 1) * 2 - 1) * (1 - scale) * 0.9
        cy = (rnd(n, 1, 1) * 2 - 1) * (1 - scale) * 0.9
        theta = (rnd(n, 1, 1) * 2 - 1) * math.radians(25)
        dx, dy = xx - cx, yy - cy
        u = (dx * torch.cos(theta) + dy * torch.sin(theta)) / (scale * aspect)
        v = (-dx * torch.sin(theta) + dy * torch.cos(theta)) / (scale / aspect)
        mask = _shape_mask(lab, u, v).unsqueeze(1).float()  # [n, 1, H, W]

        # Colours come from a small palette (plus a little jitter), drawn independently of the
        # class: colour then separates neither classes nor instances, so instance discrimination
        # has to use shape. Continuous random colours let SSL solve its task by colour alone.
        pick = lambda: torch.randint(len(PALETTE), (n,), generator=g)  # noqa: E731
        bg_a_idx, bg_b_idx = pick(), pick()
        bg_a, bg_b = PALETTE[bg_a_idx].view(n, 3, 1, 1), PALETTE[bg_b_idx].view(n, 3, 1, 1)
        phi = rnd(n, 1, 1, 1) * 2 * math.pi
        ramp = ((xx * torch.cos(phi) + yy * torch.sin(phi)) + 1.5) / 3.0  # [n, 1, H, W] in [0, 1]
        background = bg_a + (bg_b - bg_a) * ramp
        fg_idx = pick()
        fg = PALETTE[fg_idx].view(n, 3, 1, 1)
        # keep the shape visible: a foreground too close to the background takes its complement
        bg_mean = 0.5 * (bg_a + bg_b)
        too_close = (fg - bg_mean).abs().amax(dim=1, keepdim=True) < 0.3
        fg = torch.where(too_close, 1.0 - bg_mean, fg)
        fg = (fg + 0.05 * torch.randn(n, 3, 1, 1, generator=g)).clamp(0, 1)
        noise = 0.06 * torch.randn(n, 3, image_size, image_size, generator=g)
        if grayscale:
            w = LUMA.view(1, 3, 1, 1)
            background, bg_l, fg_l = ((t * w).sum(1, keepdim=True) for t in (background, bg_mean, fg))
            dim = (fg_l - bg_l).abs() < MIN_LUMA_CONTRAST
            lift = torch.where(bg_l < 0.5, MIN_LUMA_CONTRAST, -MIN_LUMA_CONTRAST)
            fg = torch.where(dim, bg_l + lift, fg_l)
            too_close = too_close | dim
            noise = noise[:, :1]
        img = background * (1 - mask) + fg * mask + noise  # [n, 1 or 3, H, W]
        images[start : start + n] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        sl = slice(start, start + n)
        factors["foreground_colour"][sl] = torch.where(too_close.flatten(), len(PALETTE), fg_idx)
        factors["background_colour"][sl] = bg_a_idx
        factors["position"][sl] = 2 * (cy.flatten() > 0).long() + (cx.flatten() > 0).long()
        factors["size"][sl] = (scale.flatten() > 0.675).long()
        factors["mask"][sl] = mask[:, 0].bool()
    return images, labels, factors


class ShapesDataset(torch.utils.data.Dataset):
    """Map-style view of ``make_shapes``; items are ``(uint8 image [3, S, S], label)``."""

    def __init__(self, num_images: int, image_size: int = 32, seed: int = 0, grayscale: bool = False) -> None:
        self.images, self.labels, factors = make_shapes_with_factors(num_images, image_size, seed, grayscale=grayscale)
        #: nuisance factors per image (``FACTORS``), to probe what features encode besides the class
        self.factors = {name: factors[name] for name in FACTORS}
        self.targets = self.labels.tolist()
        self.classes = list(CLASSES)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
