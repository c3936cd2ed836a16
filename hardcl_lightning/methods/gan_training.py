"""GAN training mechanics, shared by GAN pre-training and the generator methods: loading a
pre-trained GAN (refusing one trained on other images), the GAN's two optimisers and their LR
schedule, the conversion of the datamodule's normalised images to D's pixel range, and D's steps.

``GANPretrain`` trains the GAN alone (stage 1 of Wu et al.'s recipe); the joint game is
``generative.HardSampleMixin``'s, the positive-pair objective ``positive_pairs.PositivePairMixin``'s.
Step counts: under manual optimisation Lightning's ``global_step`` counts every optimiser's steps.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn

from hardcl_lightning.checkpointing import ResumableState
from hardcl_lightning.data.differentiable import device_constant
from hardcl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hardcl_lightning.gan import GAN, GANOptions, gan_options
from hardcl_lightning.methods.base import NonFiniteLossGuard, sync_lambda_schedules
from hardcl_lightning.optim import ramp


def load_gan_state(gan: GAN, path: str, train_subset: dict[str, Any] | None = None) -> None:
    """Load G and D from a Lightning checkpoint of any module that holds a ``gan`` (``GANPretrain``
    or a joint method); a clear error when the file or the architecture does not match, or when
    the GAN was trained on other images than ``train_subset`` (this run's ``SSLDataModule.train_subset``):
    a GAN pre-trained on the full set would leak the rest of it into a data-efficiency run."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"generator_checkpoint={path!r} does not exist; give a GANPretrain checkpoint (.ckpt)")
    try:  # weights_only: unpickling a checkpoint must never run code it carries
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"generator_checkpoint={path!r} does not load as plain tensors and values (torch.load "
                         f"weights_only=True), so it is not read: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    saved = ckpt.get("train_subset")
    if train_subset is not None and saved is None:
        warnings.warn(f"generator_checkpoint={path!r} does not say which images its GAN was trained on (an older "
                      "checkpoint): it cannot be checked against this run's training subset")
    elif train_subset is not None and saved["digest"] != train_subset["digest"]:
        raise ValueError(
            f"generator_checkpoint={path!r} was trained on {saved['description']}, but this run trains on "
            f"{train_subset['description']}: its GAN has seen other images than this run may use. Pre-train the GAN "
            "with the same data settings (train_fraction, seed, dataset) as this run"
        )
    state = {k[len("gan."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("gan.")}
    if not state:
        raise ValueError(f"generator_checkpoint={path!r} holds no 'gan.*' weights; give a GANPretrain or joint-method checkpoint")
    try:
        gan.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"generator_checkpoint={path!r} does not match this GAN (gan.latent_dim, gan.g_channels, gan.d_channels "
            f"and image_size must equal the pre-training run's): {e}"
        ) from e


class AdversarialTraining:
    """What GAN pre-training and the joint methods share: the ``GAN``, its two optimisers and
    schedules, pixel-range conversion of the datamodule's normalised images, the D step."""

    gan: GAN
    #: training batches must carry the un-augmented ``"image"`` (D trains on it); hardcl_lightning's
    #: datamodules read this from the model they train
    needs_real_images = True

    def init_adversarial(self, image_size: int, options: GANOptions) -> None:
        self.gan_options = options
        self.gan = options.build(image_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which images the GAN was trained on (``load_gan_state`` checks it)."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None  # type: ignore[attr-defined]
        if dm is not None and hasattr(dm, "train_subset"):
            checkpoint["train_subset"] = dm.train_subset()

    def resolve_pixel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalisation of the datamodule's images (to undo it: D and G work in [0, 1])."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None  # type: ignore[attr-defined]
        mean = self.gan_options.pixel_mean or getattr(dm, "mean", None) or IMAGENET_MEAN
        std = self.gan_options.pixel_std or getattr(dm, "std", None) or IMAGENET_STD
        return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def pixel_stats_like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``resolve_pixel_stats`` on ``x``'s device and dtype, copied there once (per step would
        stall the accelerator)."""
        mean, std = self.resolve_pixel_stats()
        return device_constant(mean, x, (1, 3, 1, 1)), device_constant(std, x, (1, 3, 1, 1))

    def real_pixels(self, batch: dict[str, Any]) -> torch.Tensor:
        if "image" not in batch:
            raise ValueError(
                f"{type(self).__name__} trains a discriminator on real images, but the training batch has no 'image'; "
                "use a hardcl_lightning datamodule (it adds one automatically) or set data.init_args.with_image: true"
            )
        x = batch["image"]
        mean, std = self.pixel_stats_like(x)
        return (x * std + mean).clamp(0, 1)

    def generator_parameters(self) -> list[nn.Parameter]:
        """What the generator optimiser trains (methods with a second generator add it)."""
        return list(self.gan.generator.parameters())

    def gan_optimizers(self, total_steps: int) -> tuple[list[torch.optim.Optimizer], list[dict]]:
        o = self.gan_options
        opt_g = torch.optim.Adam(self.generator_parameters(), lr=o.g_lr, betas=o.betas)
        opt_d = torch.optim.Adam(self.gan.discriminator.parameters(), lr=o.d_lr, betas=o.betas)
        kind = o.lr_schedule
        factor = lambda step: ramp(step / max(1, total_steps), 1.0, 0.0 if kind != "constant" else 1.0, kind)  # noqa: E731
        scheds = [{"scheduler": torch.optim.lr_scheduler.LambdaLR(o, factor), "interval": "step"} for o in (opt_g, opt_d)]
        return [opt_g, opt_d], scheds

    #: what the non-finite guard's error suggests for the GAN's losses
    GAN_REMEDY = "Lower gan.g_lr / gan.d_lr"

    def gan_update(self, opt: torch.optim.Optimizer, loss: torch.Tensor, name: str) -> None:
        """One manual step of G's or D's optimiser on ``loss``, unless the non-finite guard drops it."""
        if not self.nonfinite(loss, name=name, remedy=self.GAN_REMEDY):  # type: ignore[attr-defined]
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)  # type: ignore[attr-defined]
            opt.step()

    def discriminator_steps(self, real: torch.Tensor, fake: torch.Tensor, opt_d, sched_d, steps: int = 1) -> None:
        """``steps`` hinge-loss steps of D on ``real`` vs ``fake`` (then vs fresh samples); its LR
        schedule advances once per batch, whatever ``steps`` is."""
        self.toggle_optimizer(opt_d)  # type: ignore[attr-defined]
        for i in range(steps):
            if i > 0:
                with torch.no_grad():
                    fake = self.gan.sample(fake.shape[0])
            d_loss, d_real, d_fake = self.gan.discriminator_loss(real, fake.detach())
            self.gan_update(opt_d, d_loss, "discriminator loss")
        sched_d.step()
        self.untoggle_optimizer(opt_d)  # type: ignore[attr-defined]
        self.log_dict({"gan/d_loss": d_loss.detach(), "gan/d_real": d_real, "gan/d_fake": d_fake},  # type: ignore[attr-defined]
                      on_step=True, on_epoch=True)


class GANPretrain(NonFiniteLossGuard, ResumableState, AdversarialTraining, L.LightningModule):
    """GAN pre-training on the unlabeled training images (hinge loss, DiffAugment on real and fake).

    Its checkpoint initialises the joint methods (``generator_checkpoint``). Logged: ``gan/d_loss``,
    ``gan/g_adv``, ``gan/d_real``, ``gan/d_fake``.

    Args:
        image_size: generated image side, 32, 64 or 96 (linked from the datamodule).
        gan: the GAN's architecture and optimisers (``GANOptions``; the joint run that starts from
            this checkpoint needs the same architecture).
        batch_size: linked from the datamodule by the CLI.
        num_views: linked to the datamodule by the CLI; the GAN uses one view slot only (set
            ``data.augmentation: none`` to make it cheap).
        on_nonfinite_loss: ``raise`` stops training with an error naming the loss and the step
            (before G's or D's update); ``skip`` drops that update and goes on (as the methods').
    """

    def __init__(
        self,
        image_size: int = 32,
        gan: GANOptions = GANOptions(),
        batch_size: int = 256,
        num_views: int = 1,
        on_nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__()
        self.init_nonfinite_guard(on_nonfinite_loss)
        options = gan_options(gan)
        gan = options.hparams()  # type: ignore[assignment]  # what save_hyperparameters records: plain values
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.num_views, self.batch_size = num_views, batch_size
        self.init_adversarial(image_size, options)

    def on_train_start(self) -> None:
        sync_lambda_schedules(self.trainer)

    def configure_optimizers(self):
        return self.gan_optimizers(int(self.trainer.estimated_stepping_batches))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        (opt_g, opt_d), (sched_g, sched_d) = self.optimizers(), self.lr_schedulers()
        real = self.real_pixels(batch)
        self.toggle_optimizer(opt_g)
        fake = self.gan.sample(real.shape[0])
        g_adv = self.gan.generator_loss(fake)
        self.gan_update(opt_g, g_adv, "generator loss")
        sched_g.step()
        self.untoggle_optimizer(opt_g)
        self.log("gan/g_adv", g_adv.detach(), on_step=True, on_epoch=True, prog_bar=True)
        self.discriminator_steps(real, fake, opt_d, sched_d)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images G(z) in [0, 1]."""
        return self.gan.generator(z)
