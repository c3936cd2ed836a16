"""Generator-adversarial hard samples (Wu et al., arXiv 2202.06464, AAAI 2023): a reconstruction.

The paper publishes no code and its equations are not available to us. What it states (see
``docs/methods.md``): a generator is trained *jointly* with the contrastive model in a min-max game to
produce samples that are hard for the current model; the main model trains on real plus
generated data; a generator pre-trained alone does not help; gradients reach the generator
through differentiable augmentations. Everything else here is our choice, said so where made:

Each training step (``HardSampleMixin.training_step``, manual optimisation, three optimisers):

1. **main model**: ``L_main = L_base(real views) + lambda_syn * L_base(views of G(z))`` with the
   generated images detached (constants for this step). ``L_base`` is the base method's own
   ``training_loss`` (SimCLR NT-Xent: ``HardSampleCL``; MoCo v2 InfoNCE against the queue:
   ``HardSampleMoCoV2``). Generated samples form their own batch (their own in-batch negatives
   / their own BatchNorm statistics) and are never enqueued. *Ours.*
2. **generator**: ``L_G = L_adv(G) - lambda_div * MS(G) - lambda_hard * L_base(views of G(z))``:
   realistic (hinge loss against D), diverse (mode seeking) and hard for the current main model,
   whose weights and BatchNorm running statistics are frozen for this step (gradients flow
   through it into G only). *The min-max is the paper's; the hinge loss, the subtraction and the
   weights are ours.* The hardness term is in G's loss in the ``generator`` mode only: the
   bounded modes (``latent``, ``residual``) make each sample hard by a budgeted search instead
   (``HardSampleMixin.bounded_search``), because G's weights can win that term by collapse or
   by content the augmentations destroy.
3. **discriminator**: hinge loss on real (un-augmented training images) vs this step's fakes
   (``d_steps`` times), both through DiffAugment (Zhao et al. 2020) for data efficiency. *Ours.*

``lambda_hard`` follows a schedule (``hardness_schedule``: constant, linear or cosine from
``lambda_hard_start`` to ``lambda_hard``) so hardness grows as the model learns; before
``joint_start_epoch`` only the GAN trains and the main model sees real data only (the warm-up
when starting from scratch). ``generator_checkpoint`` initialises G and D from a
``GANPretrain`` run (``configs/gan_pretrain_cifar10.yaml``).

Logged: ``hard/gen_loss_real`` / ``hard/gen_loss_syn`` (the main model's loss on real vs
generated views, at the same batch size) and their ratio ``hard/gen_loss_ratio`` (generated
samples should become harder relative to real ones), ``train/loss_real`` / ``train/loss_syn``
(the two terms of the main loss), ``hard/gen_lambda_hard``, ``gan/d_real`` / ``gan/d_fake`` (D's
mean scores), ``gan/d_loss``, ``gan/g_adv``.

Step counts: under manual optimisation Lightning's ``global_step`` counts every optimiser's
steps (three per batch here); schedules in this module count batches.

The GAN's training mechanics (its optimisers, D's steps, loading a pre-trained GAN, GAN
pre-training) live in ``gan_training``; the positive-pair objective in ``positive_pairs``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from hardcl_lightning.data.differentiable import DifferentiableViewAugmentation
from hardcl_lightning.data.transforms import ViewSpec
from hardcl_lightning.gan import LEGACY_GAN_ARGUMENTS, GANOptions, gan_options
from hardcl_lightning.batchnorm import frozen_batchnorm_stats, no_running_stat_updates
from hardcl_lightning.methods.base import BaseMethod, ViewOutputs
from hardcl_lightning.methods.gan_training import AdversarialTraining, GANPretrain, load_gan_state
from hardcl_lightning.methods.mocov2 import MoCoV2
from hardcl_lightning.methods.simclr import SimCLR
from hardcl_lightning.optim import SCHEDULES, ramp

__all__ = ["GANPretrain", "HARDNESS_MODES", "HardSampleCL", "HardSampleMixin", "HardSampleMoCoV2", "load_gan_state",
           "with_hard_samples"]  # GANPretrain and load_gan_state live in gan_training (named here as before)

#: how ``HardSampleMixin`` makes a sample hard (its docstring says what each does)
HARDNESS_MODES = ("generator", "latent", "residual")


class HardSampleMixin(AdversarialTraining):
    """Adds a jointly trained hard-sample generator to a method on the ``embed``/``training_loss``
    contract (see the module docstring for the three steps and which parts are the paper's).

    Args:
        generator_enabled: False trains the base method alone (the loss is then exactly its loss).
        lambda_syn: weight of the main model's loss on generated views.
        syn_share: generated samples per step as a fraction of the real batch (at least 2).
        lambda_hard: weight of the hardness term in the generator's loss (the schedule's end value).
        lambda_hard_start: the schedule's start value.
        hardness_schedule: ``constant`` (``lambda_hard`` throughout), ``linear`` or ``cosine`` from
            ``lambda_hard_start`` to ``lambda_hard`` over the joint epochs.
        joint_start_epoch: epochs of warm-up (GAN trains, main model on real data only) before the game.
        hardness: how a sample is made hard (``HARDNESS_MODES``). ``generator``: G's weights get the
            hardness term (unbounded: it can be won by collapse or by content that augmentation
            destroys). ``latent``: G trains for realism only; hard samples are ``G(z + delta)`` with
            ``delta`` found by ``hardness_steps`` of projected gradient ascent on the main model's loss,
            ``||delta||_2 <= latent_budget * sqrt(latent_dim)`` (GenRep's latent neighbourhood,
            Jahanian et al. ICLR 2022). ``residual``: a real image plus ``delta`` with
            ``||delta||_inf <= residual_budget`` found the same way (a ViewMaker-style budget, Tamkin
            et al. ICLR 2021; no GAN is needed then, so G and D do not train). In the bounded modes
            the hardness schedule scales the budget (``lambda_hard``'s value only says on or off).
        latent_budget: the ``latent`` mode's L2 radius, as a fraction of a latent's typical norm.
        residual_budget: the ``residual`` mode's L-inf bound on a pixel's change, in [0, 1] units.
        hardness_steps: ascent steps of the bounded modes' search.
        truncation: bound on |z_i| for the hard samples (the truncation trick; None: plain N(0, I)).
        d_steps: discriminator steps per generator step (fresh fakes after the first).
        lambda_diversity: weight of a mode-seeking term (Mao et al. CVPR 2019, eq. 3) in G's loss:
            G maximises ``mean|G(z1) - G(z2)| / mean|z1 - z2|``, against collapse.
        train_gan: False keeps G and D as they start (the paper's control: samples of a GAN
            pre-trained alone, with ``generator_checkpoint`` and ``lambda_hard: 0``).
        generator_checkpoint: a ``GANPretrain`` (or joint) checkpoint whose G and D start the run;
            read at the start of a fresh fit, not when resuming.
        gan: the GAN's architecture and optimisers (``GANOptions``; the architecture must match
            ``generator_checkpoint``'s). The flat arguments these options once were (``latent_dim=``,
            ``gan_betas=`` ...: ``LEGACY_GAN_ARGUMENTS``) are still read from ``**kwargs``, so that
            checkpoints saved before they were grouped load.

    Generated images get two differentiable views made by the recipe of the datamodule's first
    two view specs (the real views' crop scale, jitter, grayscale, blur, solarize), so real and
    generated views have the same augmentation strength.
    """

    def __init__(
        self,
        *args: Any,
        generator_enabled: bool = True,
        lambda_syn: float = 0.5,
        syn_share: float = 0.5,
        lambda_hard: float = 0.5,
        lambda_hard_start: float = 0.0,
        hardness_schedule: str = "linear",
        joint_start_epoch: int = 0,
        hardness: str = "latent",
        latent_budget: float = 0.5,
        residual_budget: float = 8 / 255,
        hardness_steps: int = 2,
        truncation: float | None = None,
        d_steps: int = 1,
        lambda_diversity: float = 0.0,
        train_gan: bool = True,
        generator_checkpoint: str | None = None,
        gan: GANOptions = GANOptions(),
        **kwargs: Any,
    ) -> None:
        options = gan_options(gan, {k: kwargs.pop(k) for k in list(kwargs) if k in LEGACY_GAN_ARGUMENTS})
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        # the base's save_hyperparameters read every subclass's __init__ frame (their **kwargs hold the
        # GANOptions and any legacy names): record one plain ``gan`` mapping, which weights_only loading reads
        for name in LEGACY_GAN_ARGUMENTS:
            self.hparams.pop(name, None)  # type: ignore[attr-defined]
        self.hparams["gan"] = options.hparams()  # type: ignore[attr-defined]
        self._hparams_initial = copy.deepcopy(self.hparams)  # what loggers write (Lightning keeps no public setter)
        self.automatic_optimization = False
        for name, v in (("lambda_syn", lambda_syn), ("lambda_hard", lambda_hard), ("lambda_hard_start", lambda_hard_start)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if syn_share <= 0:
            raise ValueError(f"syn_share must be > 0 (generated samples per real sample), got {syn_share}")
        if hardness_schedule not in SCHEDULES:
            raise ValueError(f"unknown hardness_schedule {hardness_schedule!r}; choose one of {list(SCHEDULES)}")
        if joint_start_epoch < 0:
            raise ValueError(f"joint_start_epoch must be >= 0, got {joint_start_epoch}")
        if hardness not in HARDNESS_MODES:
            raise ValueError(f"unknown hardness {hardness!r}; choose one of {list(HARDNESS_MODES)}")
        for name, v in (("latent_budget", latent_budget), ("residual_budget", residual_budget)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if hardness_steps < 1 or d_steps < 1:
            raise ValueError(f"hardness_steps and d_steps must be >= 1, got {hardness_steps} and {d_steps}")
        if truncation is not None and truncation <= 0:
            raise ValueError(f"truncation must be > 0 (a bound on |z_i|) or None, got {truncation}")
        if lambda_diversity < 0:
            raise ValueError(f"lambda_diversity must be >= 0, got {lambda_diversity}")
        self.hardness, self.latent_budget, self.residual_budget = hardness, latent_budget, residual_budget
        self.train_gan = train_gan
        self.hardness_steps, self.truncation, self.d_steps, self.lambda_diversity = hardness_steps, truncation, d_steps, lambda_diversity
        self.generator_enabled, self.lambda_syn, self.syn_share = generator_enabled, lambda_syn, syn_share
        self.lambda_hard, self.lambda_hard_start, self.hardness_schedule = lambda_hard, lambda_hard_start, hardness_schedule
        self.joint_start_epoch, self.generator_checkpoint = joint_start_epoch, generator_checkpoint
        self.init_adversarial(self.image_size, options)  # type: ignore[attr-defined]
        self.synthetic_augmentations: list[DifferentiableViewAugmentation] = []
        self._batch_idx = 0

    # --- set-up ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)  # type: ignore[misc]
        mean, std = self.resolve_pixel_stats()
        dm = getattr(self.trainer, "datamodule", None)  # type: ignore[attr-defined]
        specs = list(getattr(dm, "view_specs", []) or [])[:2] or [ViewSpec(self.gan.generator.image_size)] * 2
        if len(specs) == 1:
            specs = specs * 2
        self.synthetic_augmentations = [DifferentiableViewAugmentation(s, mean.flatten(), std.flatten()) for s in specs]

    def on_fit_start(self) -> None:
        super().on_fit_start()  # type: ignore[misc]
        if self.generator_checkpoint and self.trainer.ckpt_path is None:  # type: ignore[attr-defined]
            dm = getattr(self.trainer, "datamodule", None)  # type: ignore[attr-defined]
            load_gan_state(self.gan, self.generator_checkpoint, dm.train_subset() if hasattr(dm, "train_subset") else None)

    def configure_optimizers(self):
        main = super().configure_optimizers()  # type: ignore[misc]
        gan_opts, gan_scheds = self.gan_optimizers(int(self.trainer.estimated_stepping_batches))  # type: ignore[attr-defined]
        return [main["optimizer"], *gan_opts], [main["lr_scheduler"], *gan_scheds]

    # --- schedules ------------------------------------------------------------------------------
    def batch_step(self) -> int:
        """Batches trained so far (restored on resume: epoch and batch index come from the loops)."""
        if self._trainer is None:  # type: ignore[attr-defined]
            return 0
        return self.current_epoch * max(1, int(self.trainer.num_training_batches)) + self._batch_idx  # type: ignore[attr-defined]

    @property
    def joint(self) -> bool:
        return self.generator_enabled and (self._trainer is None or self.current_epoch >= self.joint_start_epoch)  # type: ignore[attr-defined]

    def joint_progress(self) -> float:
        """Fraction of the joint epochs done at this batch (0 in the warm-up; 1 without a trainer)."""
        if self._trainer is None:  # type: ignore[attr-defined]
            return 1.0
        per_epoch = max(1, int(self.trainer.num_training_batches))  # type: ignore[attr-defined]
        epochs = max(1, (self.trainer.max_epochs or 1) - self.joint_start_epoch)  # type: ignore[attr-defined]
        return max(0.0, (self.batch_step() - self.joint_start_epoch * per_epoch) / (epochs * per_epoch))

    def current_lambda_hard(self) -> float:
        """``lambda_hard`` at this batch: 0 in the warm-up, then the schedule over the joint epochs."""
        if not self.joint:
            return 0.0
        return ramp(self.joint_progress(), self.lambda_hard_start, self.lambda_hard, self.hardness_schedule)

    def main_optimizer_steps(self) -> int:
        """Steps of the main optimiser so far: one per batch (``global_step`` counts all three optimisers)."""
        return self.batch_step()

    def current_hardness(self) -> float:
        """The hardness schedule's value as a fraction of its end value (bounded modes scale their budget)."""
        return self.current_lambda_hard() / self.lambda_hard if self.lambda_hard > 0 else 0.0

    # --- generated samples ----------------------------------------------------------------------
    def num_synthetic(self, batch_size: int) -> int:
        return max(2, int(round(self.syn_share * batch_size)))

    def synthetic_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Two differentiable views of generated images [0, 1], normalised like the real views."""
        if not self.synthetic_augmentations:
            mean, std = self.resolve_pixel_stats()
            spec = ViewSpec(images.shape[-1])
            self.synthetic_augmentations = [DifferentiableViewAugmentation(spec, mean.flatten(), std.flatten())] * 2
        return [aug(images)[0] for aug in self.synthetic_augmentations]

    def synthetic_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, list[ViewOutputs]]:
        """The base method's training loss on two views of ``images`` (a batch of its own, on each
        rank: generated samples are not gathered across ranks), and their outputs."""
        with no_running_stat_updates(self.main_modules()):  # evaluation statistics: real images only
            outs = self.embed(self.synthetic_views(images))  # type: ignore[attr-defined]
        # this rank's samples only: generated samples are drawn per rank, and a collective in the
        # generator's backward pass, beside DDP's own all-reduce under manual optimisation, can deadlock
        return self.local_training_loss(outs), outs  # type: ignore[attr-defined]

    @torch.no_grad()
    def equal_size_losses(self, real: list[ViewOutputs], syn: list[ViewOutputs]) -> tuple[torch.Tensor, torch.Tensor]:
        """The main model's loss on real and on generated views at the same batch size (the first m
        of each): in-batch losses such as NT-Xent depend on the batch size, so only these compare."""
        m = min(real[0]["feats"].shape[0], syn[0]["feats"].shape[0])
        head = lambda outs: [{k: v[:m] for k, v in o.items()} for o in outs]  # noqa: E731
        return self.local_training_loss(head(real)), self.local_training_loss(head(syn))  # type: ignore[attr-defined]

    #: child modules that belong to the generative side (not the contrastive model)
    generative_modules: tuple[str, ...] = ("gan",)

    def main_modules(self) -> list[nn.Module]:
        """Every module of the contrastive model (online and target), i.e. all but the GAN."""
        return [m for name, m in self.named_children() if name not in self.generative_modules]  # type: ignore[attr-defined]

    @property
    def hard_samples_on(self) -> bool:
        """Whether the hard-sample game (main loss on generated views, hardness term for G) runs."""
        return self.generator_enabled

    # --- hard samples ---------------------------------------------------------------------------
    @property
    def gan_trains(self) -> bool:
        """Whether G and D take their steps (not with ``train_gan: false``, nor in the ``residual``
        mode, which perturbs real images: no GAN)."""
        return self.generator_enabled and self.train_gan and self.hardness != "residual"

    def bounded_search(self, render: Callable[[torch.Tensor], torch.Tensor], shape: torch.Size, like: torch.Tensor,
                       ascend: Callable[[torch.Tensor], torch.Tensor], project: Callable[[torch.Tensor], torch.Tensor]
                       ) -> torch.Tensor:
        """``delta`` that raises the main model's loss on views of ``render(delta)``: ``hardness_steps`` of
        projected gradient ascent from 0 (Madry et al. 2018), the main model and G frozen (only ``delta``
        gets a gradient; BatchNorm statistics untouched)."""
        delta = torch.zeros(shape, device=like.device, dtype=like.dtype)
        with torch.enable_grad(), no_running_stat_updates([self.gan.generator]):
            for _ in range(self.hardness_steps):
                delta.requires_grad_(True)
                loss, _ = self.synthetic_loss(render(delta))
                (grad,) = torch.autograd.grad(loss, delta)
                delta = project(delta.detach() + ascend(grad))
        return delta.detach()

    def make_hard_samples(self, n: int, real: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This step's ``n`` hard samples for the main model (constants, [0, 1] pixels) and their
        diagnostics; ``real`` (the batch's pixels) is what the ``residual`` mode perturbs."""
        scale, stats = self.current_hardness(), {}
        if self.hardness == "residual":
            if real is None:
                raise ValueError("hardness='residual' perturbs the batch's real images, but none were given")
            source = real[torch.arange(n, device=real.device) % real.shape[0]]
            eps = self.residual_budget * scale
            hard = source
            if eps > 0:
                delta = self.bounded_search(lambda d: (source + d).clamp(0, 1), source.shape, source,
                                            ascend=lambda g: 2.5 * eps / self.hardness_steps * g.sign(),
                                            project=lambda d: d.clamp(-eps, eps))
                hard = (source + delta).clamp(0, 1)
            stats["hard/residual_linf"] = (hard - source).abs().amax(dim=(1, 2, 3)).mean()
            return hard.detach(), stats
        z = self.gan.latent(n, self.truncation)
        if self.hardness == "latent":
            radius = self.latent_budget * math.sqrt(self.gan.latent_dim) * scale
            if radius > 0:
                unit = lambda g: g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)  # noqa: E731
                delta = self.bounded_search(lambda d: self.gan.generator(z + d), z.shape, z,
                                            ascend=lambda g: 2.5 * radius / self.hardness_steps * unit(g),
                                            project=lambda d: d * (radius / d.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1))
                stats["hard/latent_delta_norm"] = delta.norm(dim=1).mean() / math.sqrt(self.gan.latent_dim)
                z = z + delta
        with torch.no_grad():
            return self.gan.generator(z), stats

    @staticmethod
    def mode_seeking(images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``mean_i |G(z1_i) - G(z2_i)| / mean_i |z1_i - z2_i|`` over the two halves of a batch (Mao et al.
        2019, eq. 3, as a ratio to maximise): samples of distant latents must differ."""
        h = images.shape[0] // 2
        image_gap = (images[:h] - images[h:2 * h]).abs().flatten(1).mean(1)
        latent_gap = (z[:h] - z[h:2 * h]).abs().mean(1)
        return (image_gap / latent_gap.clamp_min(1e-8)).mean()

    def log_gradients_now(self) -> bool:
        """Gradient norms cost a backward pass each: measured on logging steps only."""
        if self._trainer is None:  # type: ignore[attr-defined]
            return True
        return self._batch_idx % max(1, int(self.trainer.log_every_n_steps)) == 0  # type: ignore[attr-defined]

    @staticmethod
    def output_gradient_norms(terms: dict[str, torch.Tensor], images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each weighted term's gradient at the generator's output (mean per-sample L2 norm): which term
        steers G (the hardness term can dwarf realism by orders of magnitude)."""
        norms = {}
        for name, term in terms.items():
            (g,) = torch.autograd.grad(term, images, retain_graph=True)
            norms[name] = g.flatten(1).norm(dim=1).mean().detach()
        return norms

    # --- the three steps --------------------------------------------------------------------------
    def main_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[ViewOutputs], dict[str, torch.Tensor]]:
        """``L_base(real) + lambda_syn * L_base(hard samples, detached)`` and the diagnostics."""
        outs = self.embed_training_views(batch)  # type: ignore[attr-defined]
        real_loss = self.training_loss(outs)  # type: ignore[attr-defined]
        stats: dict[str, torch.Tensor] = {}
        if not self.hard_samples_on:
            return real_loss, outs, stats
        real = self.real_pixels(batch) if self.hardness == "residual" else None
        fake, stats = self.make_hard_samples(self.num_synthetic(outs[0]["feats"].shape[0]), real)
        train_on_fake = self.joint and self.lambda_syn > 0
        with contextlib.nullcontext() if train_on_fake else torch.no_grad():
            syn_loss, syn_outs = self.synthetic_loss(fake)
        real_m, syn_m = self.equal_size_losses(outs, syn_outs)
        view_cos = F.cosine_similarity(syn_outs[0]["feats"].detach().float(), syn_outs[1]["feats"].detach().float(), dim=1)
        stats.update({"train/loss_real": real_loss.detach(), "train/loss_syn": syn_loss.detach(),
                      "hard/gen_loss_real": real_m, "hard/gen_loss_syn": syn_m, "hard/gen_loss_ratio": syn_m / real_m,
                      "hard/gen_view_cosine": view_cos.mean(), "hard/gen_pixel_std": fake.std(dim=0).mean()})
        loss = real_loss + self.lambda_syn * syn_loss if train_on_fake else real_loss
        return loss, outs, stats

    def generator_loss(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``L_adv(G) - lambda_div * mode_seeking - lambda_hard * L_base(views of G(z))`` (the last term
        in the ``generator`` mode only), and the fakes. The caller freezes the main model (its
        optimiser toggled off, its BatchNorm statistics kept) around forward and backward."""
        z = self.gan.latent(self.num_synthetic(batch_size), self.truncation if self.hardness == "generator" else None)
        fake = self.gan.generator(z)
        g_adv = self.gan.generator_loss(fake)
        lam = self.current_lambda_hard()
        stats = {"gan/g_adv": g_adv.detach(), "hard/gen_lambda_hard": torch.tensor(lam)}
        terms = {"gan/grad_norm_realism": g_adv}
        if self.lambda_diversity > 0:
            diversity = self.mode_seeking(fake, z)
            stats["gan/diversity"] = diversity.detach()
            terms["gan/grad_norm_diversity"] = -self.lambda_diversity * diversity
        if self.hard_samples_on and self.hardness == "generator" and lam > 0:
            hardness, _ = self.synthetic_loss(fake)
            stats["hard/gen_loss_for_g"] = hardness.detach()
            terms["hard/grad_norm_hardness"] = -lam * hardness
        if self.log_gradients_now():
            stats.update(self.output_gradient_norms(terms, fake))
        return torch.stack(list(terms.values())).sum(), fake, stats

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        self._batch_idx = batch_idx
        opt_main, opt_g, opt_d = self.optimizers()  # type: ignore[attr-defined]
        sched_main, sched_g, sched_d = self.lr_schedulers()  # type: ignore[attr-defined]

        # (1) main model on real + detached hard samples
        self.toggle_optimizer(opt_main)  # type: ignore[attr-defined]
        loss, outs, stats = self.main_loss(batch)
        ok = not self.nonfinite(loss, outs)  # type: ignore[attr-defined]
        if ok:
            step = self.main_optimizer_steps()
            opt_main.zero_grad(set_to_none=True)
            self.manual_backward(loss)  # type: ignore[attr-defined]
            opt_main.step()
            self.after_main_optimizer_step(step)  # type: ignore[attr-defined]
            self.after_training_loss(outs)  # type: ignore[attr-defined]
        sched_main.step()
        self.untoggle_optimizer(opt_main)  # type: ignore[attr-defined]

        if self.gan_trains:
            real = self.real_pixels(batch)
            # (2) generator: realistic (and, in the generator mode, hard for the frozen main model)
            self.toggle_optimizer(opt_g)  # type: ignore[attr-defined]
            # BatchNorm restored only after backward: autograd checks the running buffers' versions
            with frozen_batchnorm_stats(self.main_modules()):
                g_loss, fake, g_stats = self.generator_loss(real.shape[0])
                self.gan_update(opt_g, g_loss, "generator loss")
            sched_g.step()
            self.untoggle_optimizer(opt_g)  # type: ignore[attr-defined]
            stats.update(g_stats)
            # (3) discriminator: real vs this step's fakes (and fresh ones for further D steps)
            self.discriminator_steps(real, fake, opt_d, sched_d, self.d_steps)
        self.log_dict(stats, on_step=True, on_epoch=True)  # type: ignore[attr-defined]
        if not ok:
            return None
        self.log("train/loss", loss.detach(), prog_bar=True)  # type: ignore[attr-defined]
        return self.step_output(loss.detach(), outs, batch)  # type: ignore[attr-defined]


class HardSampleCL(HardSampleMixin, SimCLR):
    """SimCLR (NT-Xent) trained on real plus jointly generated hard samples (Wu et al.; a reconstruction)."""


class HardSampleMoCoV2(HardSampleMixin, MoCoV2):
    """MoCo v2 (InfoNCE against the queue) trained on real plus jointly generated hard samples;
    generated keys are never enqueued, so the queue holds real negatives only."""


def with_hard_samples(method_cls: type[BaseMethod]) -> type[BaseMethod]:
    """``with_hard_samples(MyMethod)``: a subclass of ``MyMethod`` with a jointly trained hard-sample generator."""
    return type(f"HardSample{method_cls.__name__}", (HardSampleMixin, method_cls),
                {"__doc__": f"Generator-adversarial hard samples on {method_cls.__name__}."})
