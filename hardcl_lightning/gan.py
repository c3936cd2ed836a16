"""Generator and discriminator for the generator methods, and their adversarial losses.

Our choices (Wu et al., arXiv 2202.06464, publish no architecture): a DCGAN-style generator
(Radford et al. 2016: transposed convolutions, BatchNorm, ReLU, tanh output) and an
SNGAN-style discriminator (Miyato et al. 2018: spectral normalisation on every layer,
LeakyReLU 0.1), trained with the hinge loss (SNGAN eq. 16/17). Both work at 32, 64 and 96 px:
the generator starts from a 4 x 4 map (6 x 6 for 96 px) and doubles it per block.

Image convention: the generator returns images in [0, 1] pixel range (the range the
differentiable augmentations take); the discriminator maps [0, 1] to [-1, 1] itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from hardcl_lightning.data.differentiable import DIFFAUGMENT_OPS, check_diffaugment_policy, diffaugment
from hardcl_lightning.optim import SCHEDULES

#: image side -> (start side, upsampling blocks)
GAN_RESOLUTIONS = {32: (4, 3), 64: (4, 4), 96: (6, 4)}


def _plan(image_size: int) -> tuple[int, int]:
    if image_size not in GAN_RESOLUTIONS:
        raise ValueError(f"the generator supports image sizes {sorted(GAN_RESOLUTIONS)}, got image_size={image_size}")
    return GAN_RESOLUTIONS[image_size]


class Generator(nn.Module):
    """DCGAN-style generator: z [B, latent_dim] -> images [B, 3, S, S] in [0, 1].

    Args:
        latent_dim: size of the Gaussian latent.
        image_size: 32, 64 or 96.
        base_channels: channels of the last block; block i from the end has base x 2^i.
    """

    def __init__(self, latent_dim: int = 128, image_size: int = 32, base_channels: int = 64) -> None:
        super().__init__()
        if latent_dim < 1 or base_channels < 1:
            raise ValueError(f"latent_dim and base_channels must be >= 1, got {latent_dim}, {base_channels}")
        start, blocks = _plan(image_size)
        self.latent_dim, self.image_size, self.start = latent_dim, image_size, start
        ch = base_channels * 2 ** (blocks - 1)
        self.fc = nn.Linear(latent_dim, ch * start * start)
        self.fc_norm = nn.BatchNorm2d(ch)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            out = max(base_channels, ch // 2)
            layers += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            ch = out
        layers += [nn.Conv2d(ch, 3, 3, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], -1, self.start, self.start)
        return (self.blocks(F.relu(self.fc_norm(h))) + 1) / 2


class Discriminator(nn.Module):
    """SNGAN-style discriminator: images [B, 3, S, S] in [0, 1] -> realism scores [B].

    Args:
        image_size: 32, 64 or 96.
        base_channels: channels of the first block, doubled per downsampling block.
    """

    def __init__(self, image_size: int = 32, base_channels: int = 64) -> None:
        super().__init__()
        if base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {base_channels}")
        start, blocks = _plan(image_size)
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(3, base_channels, 3, padding=1)), nn.LeakyReLU(0.1)]
        ch = base_channels
        for _ in range(blocks):
            out = ch * 2
            layers += [
                spectral_norm(nn.Conv2d(ch, ch, 3, padding=1)), nn.LeakyReLU(0.1),
                spectral_norm(nn.Conv2d(ch, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),
            ]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(ch * start * start, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(2 * x - 1).flatten(1)).squeeze(1)


def discriminator_hinge_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))] (SNGAN eq. 16), in float32."""
    return F.relu(1 - real_scores.float()).mean() + F.relu(1 + fake_scores.float()).mean()


def generator_hinge_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))] (SNGAN eq. 17), in float32."""
    return -fake_scores.float().mean()


class GAN(nn.Module):
    """A generator, its discriminator and the DiffAugment policy both see; shared by GAN
    pre-training and the joint methods, so that a pre-training checkpoint loads into them.

    Args:
        latent_dim: generator latent size.
        image_size: 32, 64 or 96.
        g_channels: generator width (``Generator.base_channels``).
        d_channels: discriminator width (``Discriminator.base_channels``).
        diffaugment_policy: DiffAugment ops applied to real and fake images before D (empty: none).
    """

    def __init__(
        self,
        latent_dim: int = 128,
        image_size: int = 32,
        g_channels: int = 64,
        d_channels: int = 64,
        diffaugment_policy: Sequence[str] = DIFFAUGMENT_OPS,
    ) -> None:
        super().__init__()
        self.generator = Generator(latent_dim, image_size, g_channels)
        self.discriminator = Discriminator(image_size, d_channels)
        self.policy = tuple(diffaugment_policy)
        diffaugment(torch.zeros(1, 3, 8, 8), self.policy)  # validates the policy names now, not mid-run
        self.latent_dim = latent_dim

    def latent(self, n: int, truncation: float | None = None, device: torch.device | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I) [n, latent_dim]; with ``truncation`` each coordinate is redrawn until |z_i| <= it
        (the truncation trick, Brock et al. 2019, sec. 3.1: fewer, more typical samples)."""
        device = device or next(self.generator.parameters()).device
        if truncation is None:
            return torch.randn(n, self.latent_dim, device=device, generator=generator)
        if truncation <= 0:
            raise ValueError(f"truncation must be > 0 (a bound on |z_i|) or None, got {truncation}")
        z = torch.empty(n, self.latent_dim, device=device)
        return nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=generator)

    def sample(self, n: int, device: torch.device | None = None, generator: torch.Generator | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """Images G(z), z from ``latent``, [n, 3, S, S] in [0, 1] (with gradient into G)."""
        return self.generator(self.latent(n, truncation, device, generator))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """D's realism score of images in [0, 1], after DiffAugment."""
        return self.discriminator(diffaugment(x, self.policy) if self.policy else x)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hinge loss of D on real images and (detached) fakes; also the mean scores (real, fake)."""
        real_scores, fake_scores = self.score(real), self.score(fake.detach())
        return discriminator_hinge_loss(real_scores, fake_scores), real_scores.detach().mean(), fake_scores.detach().mean()

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Adversarial (realism) loss of G on its samples."""
        return generator_hinge_loss(self.score(fake))


@dataclasses.dataclass(frozen=True)
class GANOptions:
    """The GAN's architecture and training options: one argument (``gan:``) of GAN pre-training and
    of every generator method, so that a pre-training run and the joint run it initialises are
    configured by the same block (the joint run's architecture must equal its checkpoint's).

    Args:
        latent_dim: the generator's latent size.
        g_channels: the generator's width (DCGAN-style, transposed convolutions).
        d_channels: the discriminator's width (SNGAN-style, spectral norm).
        diffaugment_policy: DiffAugment ops (``color``, ``translation``, ``cutout``) on real and fake
            images before D (Zhao et al. 2020); empty: none.
        g_lr: Adam LR of the generator (SNGAN's 2e-4).
        d_lr: Adam LR of the discriminator (SNGAN's 2e-4).
        betas: Adam betas of G and D (SNGAN's (0, 0.9)).
        lr_schedule: ``constant``, ``linear`` or ``cosine`` decay of both LRs to 0 over training.
        pixel_mean: normalisation mean of the datamodule's images, undone before D and G's views
            (None: the datamodule's own).
        pixel_std: normalisation std of the datamodule's images (None: the datamodule's own).
    """

    latent_dim: int = 128
    g_channels: int = 64
    d_channels: int = 64
    diffaugment_policy: tuple[str, ...] = DIFFAUGMENT_OPS
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.9)
    lr_schedule: str = "constant"
    pixel_mean: tuple[float, float, float] | None = None
    pixel_std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("latent_dim", "g_channels", "d_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"gan.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("g_lr", "d_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"gan.{name} must be > 0, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"gan.betas must be two values in [0, 1), got {tuple(self.betas)}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown gan.lr_schedule {self.lr_schedule!r}; choose one of {list(SCHEDULES)}")
        if (self.pixel_mean is None) != (self.pixel_std is None):
            raise ValueError("give both gan.pixel_mean and gan.pixel_std, or neither (then the datamodule's are used)")
        for name in ("pixel_mean", "pixel_std"):
            v = getattr(self, name)
            if v is not None and len(v) != 3:
                raise ValueError(f"gan.{name} must have 3 values (one per RGB channel), got {tuple(v)}")
        check_diffaugment_policy(self.diffaugment_policy)  # names checked now, not mid-run (and no RNG drawn)
        for name in ("diffaugment_policy", "betas", "pixel_mean", "pixel_std"):  # YAML lists -> tuples
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def build(self, image_size: int) -> GAN:
        return GAN(self.latent_dim, image_size, self.g_channels, self.d_channels, self.diffaugment_policy)

    def hparams(self) -> dict[str, Any]:
        """Plain values, for a checkpoint's hyperparameters (read back with ``weights_only`` loads)."""
        return dataclasses.asdict(self)


#: the GAN options' flat argument names before they became one ``gan`` argument -> their field
LEGACY_GAN_ARGUMENTS = {"latent_dim": "latent_dim", "g_channels": "g_channels", "d_channels": "d_channels",
                        "diffaugment_policy": "diffaugment_policy", "g_lr": "g_lr", "d_lr": "d_lr",
                        "gan_betas": "betas", "gan_lr_schedule": "lr_schedule", "pixel_mean": "pixel_mean",
                        "pixel_std": "pixel_std"}


def gan_options(gan: GANOptions | Mapping[str, Any] | None, legacy: Mapping[str, Any] | None = None) -> GANOptions:
    """``gan`` as ``GANOptions`` (a mapping: a checkpoint's hyperparameters), with ``legacy`` flat
    arguments (``latent_dim=``, ``gan_betas=`` ...: checkpoints written before the options were
    grouped) folded in; both at once is an error, naming them."""
    given = sorted(legacy or {})
    legacy = {LEGACY_GAN_ARGUMENTS[k]: v for k, v in (legacy or {}).items()}
    if gan is None:
        gan = GANOptions()
    if isinstance(gan, Mapping):
        unknown = sorted(set(gan) - {f.name for f in dataclasses.fields(GANOptions)})
        if unknown:
            raise ValueError(f"unknown gan option(s) {unknown}; accepted: {[f.name for f in dataclasses.fields(GANOptions)]}")
        gan = GANOptions(**gan)
    if not isinstance(gan, GANOptions):
        raise TypeError(f"gan must be GANOptions or a mapping of its fields, got {type(gan).__name__}")
    merged = GANOptions(**{**gan.hparams(), **legacy}) if legacy else gan
    if gan != GANOptions() and merged != gan:
        raise ValueError(f"give the GAN options once: as gan=GANOptions(...) or as the flat arguments {given}, not both")
    return merged


def fold_legacy_gan_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyperparameters with the old flat GAN arguments as one ``gan`` mapping (what
    a run of today records), so that ``--resume auto`` still finds a run saved before the change."""
    flat = {k: v for k, v in hparams.items() if k in LEGACY_GAN_ARGUMENTS}
    if not flat or "gan" in hparams:
        return dict(hparams)
    rest = {k: v for k, v in hparams.items() if k not in LEGACY_GAN_ARGUMENTS}
    return {**rest, "gan": gan_options(None, flat).hparams()}
