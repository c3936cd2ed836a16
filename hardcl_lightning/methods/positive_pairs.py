"""Hard positive-pair generation and the combined framework (Wu et al., arXiv 2202.06464): a reconstruction.

From the paper (abstract level, ``docs/methods.md``): two generators produce a pair of
similar-but-distinct samples from one latent; each gets two views, four positives per
generated instance; the pair is made harder by lowering its similarity over training; the
paper uses this together with generator-adversarial hard samples. Our choices:

- both generators start from the same (pre-trained) generator: ``G_a`` is the GAN's generator,
  ``G_b`` a copy of it made at construction and again when ``generator_checkpoint`` is loaded;
  one optimiser trains both. A similarity has zero gradient at identical images, so what first
  separates the pair is the hardness term (its views are augmented independently) or, when
  that is off, ``generator_b_noise`` (relative Gaussian noise on G_b's copied weights);
- main model: ``... + lambda_pos * L_multi(4 views of (G_a(z), G_b(z)))``, generated images
  detached, ``L_multi`` the multi-positive contrastive loss (SupCon with instance ids as labels;
  in-batch negatives of this rank) on the method's projection (SimCLR ``z``, MoCo ``q``);
- generators: ``L_adv(G_a(z)) + L_adv(G_b(z)) + lambda_pair * mean((sim - target)^2)
  - lambda_pos_hard * L_multi`` with the main model frozen: realistic, at the scheduled
  similarity, and hard for the main model;
- ``sim`` is the cosine of the pair in the main model's backbone features of the un-augmented
  images (``sim_space="embedding"``) or of the mean-centred pixels (``"pixel"``). The target
  (``sim_target="relative"``, the default) sits between what the model currently measures on
  real data: ``s_neg + t * (s_view - s_neg)``, ``s_view`` the mean cosine of two views of one
  image, ``s_neg`` that of two different images (running means over training batches, in the
  same space), and ``t`` falls from ``sim_start`` to ``sim_end`` (``linear`` or ``cosine``) over
  the joint epochs. So a pair never ends less alike than two different images are (``t >= 0``):
  it stays a positive. ``sim_target="absolute"`` takes ``t`` as the cosine itself (on a trained
  model two views sit near 0.96 and different images near 0.6, so an absolute 0.5 is no
  positive any more);
- the discriminator sees real images against the fakes of both generators.

``hard_samples`` switches the generator-adversarial branch (``HardSampleMixin``) on beside the
pairs: the combined framework (``configs/hardgen_full_cifar10.yaml``); ``positive_pairs`` switches
the pairs off. Logged: ``hard/pair_sim_target``, ``hard/pair_sim_achieved``,
``hard/pair_sim_view`` and ``hard/pair_sim_negative`` (the real-data statistics the relative
target sits between), ``hard/pair_pos_loss`` (main model), ``hard/pair_penalty``, ``gan/g_adv_pair``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from hardcl_lightning.batchnorm import no_running_stat_updates
from hardcl_lightning.losses import multi_positive_nt_xent
from hardcl_lightning.methods.base import ViewOutputs
from hardcl_lightning.methods.generative import HardSampleMixin
from hardcl_lightning.optim import SCHEDULES, ramp
from hardcl_lightning.methods.mocov2 import MoCoV2
from hardcl_lightning.methods.simclr import SimCLR

SIM_SPACES = ("embedding", "pixel")
SIM_TARGETS = ("relative", "absolute")


def pixel_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine of mean-centred, flattened images [B]."""
    a, b = a.flatten(1), b.flatten(1)
    return F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), dim=1)


class PositivePairMixin(HardSampleMixin):
    """Adds hard positive-pair generation (and, with ``hard_samples``, the generator-adversarial
    hard samples too) to a method on the contract. See the module docstring for what is ours.

    Args:
        positive_pairs: train on generated positive pairs (False: only the hard-sample branch, if on).
        hard_samples: also run the generator-adversarial hard-sample branch (the combined framework).
        lambda_pos: weight of the main model's multi-positive loss on generated pairs.
        pos_share: generated pairs per step, as a fraction of the real batch (at least 2).
        sim_target: ``relative`` (``sim_start``/``sim_end`` are positions in [0, 1] between the model's
            current negative-pair (0) and view-pair (1) similarity) or ``absolute`` (cosines).
        sim_start: target similarity of a generated pair when the joint game starts.
        sim_end: target similarity at the end of training (the pairs get harder as it falls).
        sim_schedule: ``linear`` or ``cosine`` from ``sim_start`` to ``sim_end`` over the joint
            epochs; ``constant`` holds ``sim_end``.
        sim_space: ``embedding`` (main model's backbone features) or ``pixel``.
        lambda_pair: weight of the generators' penalty ``(sim - target)^2``.
        lambda_pos_hard: weight of the generators' hardness term (they maximise the main model's
            positive-pair loss).
        generator_b_noise: std of Gaussian noise, relative to each weight tensor's std, added to
            G_b's copy of G_a (0: an exact copy; needed > 0 when ``lambda_pos_hard`` is 0).
    """

    generative_modules = ("gan", "generator_b")

    def __init__(
        self,
        *args: Any,
        positive_pairs: bool = True,
        hard_samples: bool = False,
        lambda_pos: float = 0.5,
        pos_share: float = 0.25,
        sim_target: str = "relative",
        sim_start: float = 0.9,
        sim_end: float = 0.5,
        sim_schedule: str = "linear",
        sim_space: str = "embedding",
        lambda_pair: float = 1.0,
        lambda_pos_hard: float = 0.1,
        generator_b_noise: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        for name, v in (("lambda_pos", lambda_pos), ("lambda_pair", lambda_pair), ("lambda_pos_hard", lambda_pos_hard)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if pos_share <= 0:
            raise ValueError(f"pos_share must be > 0 (generated pairs per real sample), got {pos_share}")
        if sim_target not in SIM_TARGETS:
            raise ValueError(f"unknown sim_target {sim_target!r}; choose one of {list(SIM_TARGETS)}")
        low = 0.0 if sim_target == "relative" else -1.0
        for name, v in (("sim_start", sim_start), ("sim_end", sim_end)):
            if not low <= v <= 1:
                what = ("a position between the negative-pair (0) and view-pair (1) similarity" if sim_target == "relative"
                        else "a cosine similarity")
                raise ValueError(f"{name} is {what} (sim_target={sim_target!r}) and must be in [{low:g}, 1], got {v}")
        if sim_schedule not in SCHEDULES:
            raise ValueError(f"unknown sim_schedule {sim_schedule!r}; choose one of {list(SCHEDULES)}")
        if sim_space not in SIM_SPACES:
            raise ValueError(f"unknown sim_space {sim_space!r}; choose one of {list(SIM_SPACES)}")
        if generator_b_noise < 0:
            raise ValueError(f"generator_b_noise must be >= 0, got {generator_b_noise}")
        if positive_pairs and lambda_pos_hard == 0 and generator_b_noise == 0:
            raise ValueError(
                "with lambda_pos_hard=0 and generator_b_noise=0 the two generators stay identical (the similarity "
                "penalty has zero gradient at identical images); set generator_b_noise > 0 (e.g. 0.05) or lambda_pos_hard > 0"
            )
        self.positive_pairs, self.hard_samples = positive_pairs, hard_samples
        self.lambda_pos, self.pos_share, self.lambda_pair, self.lambda_pos_hard = lambda_pos, pos_share, lambda_pair, lambda_pos_hard
        self.sim_start, self.sim_end, self.sim_schedule, self.sim_space = sim_start, sim_end, sim_schedule, sim_space
        self.sim_target = sim_target
        # running means of the real views' similarities (view pair, negative pair): the relative target's ends
        self.register_buffer("real_pair_similarity", torch.tensor([float("nan"), float("nan")]))
        self.generator_b_noise = generator_b_noise
        self.generator_b = copy.deepcopy(self.gan.generator)
        self.copy_generator_a_to_b()

    @torch.no_grad()
    def copy_generator_a_to_b(self) -> None:
        """G_b := G_a (+ ``generator_b_noise`` x each weight tensor's std, when set)."""
        self.generator_b.load_state_dict(self.gan.generator.state_dict())
        if self.generator_b_noise > 0:
            for p in self.generator_b.parameters():
                if p.numel() > 1:
                    p.add_(torch.randn_like(p) * p.std() * self.generator_b_noise)

    @property
    def hard_samples_on(self) -> bool:
        return self.generator_enabled and self.hard_samples

    @property
    def pairs_on(self) -> bool:
        return self.generator_enabled and self.positive_pairs and self.joint

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.gan.generator.parameters(), *self.generator_b.parameters()]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.generator_checkpoint and self.trainer.ckpt_path is None:  # both generators start from the checkpoint
            self.copy_generator_a_to_b()

    # --- pairs --------------------------------------------------------------------------------
    def num_pairs(self, batch_size: int) -> int:
        return max(2, int(round(self.pos_share * batch_size)))

    def generate_pair(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G_a(z), G_b(z))`` for one latent batch z: [n, 3, S, S] each, in [0, 1]."""
        z = torch.randn(n, self.gan.latent_dim, device=next(self.generator_b.parameters()).device)
        return self.gan.generator(z), self.generator_b(z)

    #: running-mean momentum of ``real_pair_similarity``
    similarity_momentum = 0.9

    def schedule_position(self) -> float:
        """``t``: ``sim_start`` -> ``sim_end`` over the joint epochs."""
        return ramp(self.joint_progress(), self.sim_start, self.sim_end, self.sim_schedule)

    def target_similarity(self) -> torch.Tensor:
        """The pair's target cosine now (a 0-dim tensor where the model lives): ``t`` itself
        (absolute) or ``s_neg + t (s_view - s_neg)``; computed there, since reading the running
        similarities on the host would make every step wait for the GPU."""
        t = self.schedule_position()
        sims = self.real_pair_similarity
        if self.sim_target == "absolute":
            return torch.full((), t, dtype=sims.dtype, device=sims.device)
        view, negative = sims.unbind()
        return torch.where(torch.isnan(view), t, negative + t * (view - negative))  # NaN: nothing measured yet

    @torch.no_grad()
    def real_similarities(self, views: list[torch.Tensor], outs: list[ViewOutputs]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cosine of two views of one real image, and of views of two different images, in
        ``sim_space``: the relative target's two ends."""
        if self.sim_space == "pixel":
            a, b = views[0], views[1]
            return pixel_cosine(a, b).mean(), pixel_cosine(a, b.roll(1, dims=0)).mean()
        fa = F.normalize(outs[0]["feats"].float(), dim=1)
        fb = F.normalize(outs[1]["feats"].float(), dim=1)
        sims = fa @ fb.T
        n = sims.shape[0]
        off_diagonal = (sims.sum() - sims.diagonal().sum()) / max(1, n * n - n)
        return sims.diagonal().mean(), off_diagonal

    @torch.no_grad()
    def update_real_similarities(self, view: torch.Tensor, negative: torch.Tensor) -> None:
        new = torch.stack([view, negative]).to(self.real_pair_similarity)
        old = self.real_pair_similarity
        m = self.similarity_momentum
        self.real_pair_similarity.copy_(torch.where(torch.isnan(old), new, m * old + (1 - m) * new))

    def pair_similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pair cosine [n] in ``sim_space`` (embedding: the main model's backbone features)."""
        if self.sim_space == "pixel":
            return pixel_cosine(a, b)
        x = torch.cat([a, b])
        mean, std = self.pixel_stats_like(x)  # type: ignore[attr-defined]
        feats = self.backbone((x - mean) / std)  # type: ignore[attr-defined]
        fa, fb = feats.float().chunk(2)
        return F.cosine_similarity(fa, fb, dim=1)

    #: the output the multi-positive loss reads (the base method's contrastive projection)
    projection_key: str = "z"

    def positive_pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Multi-positive loss on two views of each of ``a`` and ``b``: four positives per instance."""
        views = [*self.synthetic_views(a), *self.synthetic_views(b)]
        with no_running_stat_updates(self.main_modules()):  # evaluation statistics: real images only
            outs = self.embed(views)  # type: ignore[attr-defined]
        z = torch.stack([o[self.projection_key] for o in outs], dim=1)  # [n, 4, D]
        # per rank, like every loss on generated samples (HardSampleMixin.synthetic_loss says why)
        return multi_positive_nt_xent(z, self.temperature, gather_distributed=False)  # type: ignore[attr-defined]

    # --- the steps ------------------------------------------------------------------------------
    def main_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[ViewOutputs], dict[str, torch.Tensor]]:
        loss, outs, stats = super().main_loss(batch)
        if self.generator_enabled and self.positive_pairs and len(outs) >= 2:
            view, negative = self.real_similarities(list(batch["views"]), outs)
            self.update_real_similarities(view, negative)
            stats.update({"hard/pair_sim_view": view, "hard/pair_sim_negative": negative})
        if self.generator_enabled and self.positive_pairs:
            with torch.no_grad():
                a, b = self.generate_pair(self.num_pairs(outs[0]["feats"].shape[0]))
            train = self.pairs_on and self.lambda_pos > 0
            with torch.enable_grad() if train else torch.no_grad():
                pos_loss = self.positive_pair_loss(a, b)
            stats["hard/pair_pos_loss"] = pos_loss.detach()
            if train:
                loss = loss + self.lambda_pos * pos_loss
        return loss, outs, stats

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints from before ``real_pair_similarity`` existed: nothing measured yet (NaN)."""
        state = checkpoint.get("state_dict", {})
        if state and "real_pair_similarity" not in state:
            state["real_pair_similarity"] = torch.full((2,), float("nan"))
        super().on_load_checkpoint(checkpoint)

    @property
    def gan_trains(self) -> bool:
        return self.generator_enabled and self.train_gan and (self.positive_pairs or super().gan_trains)

    def pair_generator_loss(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Both generators: realistic, at the target similarity, and (``lambda_pos_hard``) hard."""
        a, b = self.generate_pair(self.num_pairs(batch_size))
        adv = self.gan.generator_loss(torch.cat([a, b]))
        sim = self.pair_similarity(a, b)
        target = self.target_similarity()
        penalty = (sim - target).pow(2).mean()
        stats = {"gan/g_adv_pair": adv.detach(), "hard/pair_sim_target": target,
                 "hard/pair_sim_achieved": sim.detach().mean(), "hard/pair_penalty": penalty.detach()}
        loss = adv
        if self.pairs_on:
            loss = loss + self.lambda_pair * penalty
            if self.lambda_pos_hard > 0:
                loss = loss - self.lambda_pos_hard * self.positive_pair_loss(a, b)
        return loss, torch.cat([a, b]), stats

    def generator_loss(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The hard-sample branch's generator loss (when on) plus the pairs' (when on); realism alone
        when neither is."""
        parts = []
        if self.hard_samples_on or not self.positive_pairs:
            parts.append(super().generator_loss(batch_size))
        if self.positive_pairs:
            parts.append(self.pair_generator_loss(batch_size))
        stats = {k: v for _, _, part_stats in parts for k, v in part_stats.items()}
        return sum(loss for loss, _, _ in parts), torch.cat([fake for _, fake, _ in parts]), stats


class PositivePairCL(PositivePairMixin, SimCLR):
    """SimCLR trained on real data plus generated hard positive pairs (Wu et al.; a reconstruction).
    ``hard_samples: true`` adds the generator-adversarial hard samples: the paper's combined framework."""


class PositivePairMoCoV2(PositivePairMixin, MoCoV2):
    """MoCo v2 with generated hard positive pairs (the pairs' loss uses in-batch negatives)."""

    projection_key = "q"
