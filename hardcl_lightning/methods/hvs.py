"""Hard View Selection (Ferreira et al., arXiv 2310.03940; ICLR 2025 "Beyond Random Augmentations").

Per training step (paper sec. 3, Algorithm 1):

1. the datamodule gives N candidate views per image (``num_views = N``, default 4);
2. all candidates go through the method's ``embed`` in one batched forward under ``no_grad``,
   with the model in train mode (as the authors' code does);
3. every candidate pair is scored per sample with the method's own ``pair_loss``;
4. each image keeps its own highest-loss pair; the training forward/backward runs on the chosen
   views only (plus any local crops, for DINO, which are kept as they are).

``HardViewSelectionMixin`` adds this to any method that implements ``embed``/``pair_loss``:
``class HVSMine(HardViewSelectionMixin, Mine): pass``. Nothing else is needed.

Cheaper selection: ``selection_resolution`` scores at a lower resolution (the paper's later
versions), ``select_every`` selects on every k-th step only (other steps train on views 0 and
1, i.e. the base method), ``limit_comparisons`` scores a random subset of the candidate pairs.

Pair modes: ``all`` (all C(N,2) pairs), ``cross_stream`` (even x odd candidates: the two
augmentation streams of BYOL/DINO), ``anchor`` (view 0 with each other view).

Logged every step under ``hard/``: ``hvs_loss_selected`` vs ``hvs_loss_mean`` (the selected
pair's loss vs the mean candidate-pair loss), ``hvs_iou_selected`` vs ``hvs_iou_random`` (crop
IoU of the selected pair vs a random candidate pair: the paper finds selected pairs overlap
less, sec. 5), ``hvs_selected_is_min_iou`` (how often the selected pair is the least
overlapping one: 1 would mean HVS is a crop-distance rule) and ``hvs_win_frac_<k>`` (how often
candidate k is in the selected pair). ``selection_rule="min_iou"`` trains on the least
overlapping pair without scoring, the ablation that tells the two apart.

Hardness schedules (this library's; the paper selects the argmax from the first step, which stays
the default: every schedule below is off unless asked for):

- warm-up and ramp: for ``hardness_warmup_epochs`` every image trains on a random candidate pair
  (the base method's views, nothing is scored), then the probability that an image trains on its
  rule's pair instead of a random one rises 0 -> 1 over ``hardness_ramp_epochs`` (linear or cosine),
  capped at ``1 - random_pair_prob`` (FaceNet's lesson: the hardest samples from the start can end
  in bad minima; InfoMin: a sweet spot of view difficulty);
- soft selection: the pair is drawn from ``softmax(loss / tau)`` with ``tau`` annealed from
  ``selection_temperature`` to ``selection_temperature_end``; ``tau = 0`` is the paper's argmax;
- ``selection_rule="msat"``: the authors' unpublished model-free curriculum (``automl/hvp`` branch
  ``msat-ss``, ``msatransform.py``): a pair whose crop IoU is at most a threshold that follows a
  schedule from ``iou_threshold`` to ``iou_threshold_end``, after the warm-up, with
  ``random_pair_prob`` the chance of a plain random pair.

Every schedule is a function of the epochs trained (fractional, per step) through ``optim.ramp``.
Logged besides: ``hvs_rule_prob`` (the scheduled probability), ``hvs_rule_share`` (the share of
images trained on their rule's pair), ``hvs_hardest_share`` (the share trained on their highest-loss
pair, when scored), ``hvs_temperature`` and ``hvs_iou_threshold``.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from hardcl_lightning.batchnorm import frozen_batchnorm_stats
from hardcl_lightning.methods.base import BaseMethod
from hardcl_lightning.optim import ramp
from hardcl_lightning.methods.byol import BYOL
from hardcl_lightning.methods.dino import DINO
from hardcl_lightning.methods.mocov2 import MoCoV2
from hardcl_lightning.methods.simclr import SimCLR
from hardcl_lightning.methods.simsiam import SimSiam

PAIR_MODES = ("all", "cross_stream", "anchor")
SELECTION_RULES = ("hardest", "min_iou", "msat")
#: the ramp shapes of the hardness schedules
RAMPS = ("linear", "cosine")


def candidate_pairs(num_candidates: int, mode: str) -> torch.Tensor:
    """Candidate index pairs [P, 2] of a pair mode."""
    if num_candidates < 2:
        raise ValueError(f"HVS needs at least 2 candidate views, got num_views={num_candidates}")
    if mode == "all":
        pairs = list(itertools.combinations(range(num_candidates), 2))
    elif mode == "cross_stream":
        pairs = [(i, j) if i < j else (j, i) for i in range(0, num_candidates, 2) for j in range(1, num_candidates, 2)]
    elif mode == "anchor":
        pairs = [(0, j) for j in range(1, num_candidates)]
    else:
        raise ValueError(f"unknown pair_mode {mode!r}; choose one of {list(PAIR_MODES)}")
    return torch.tensor(sorted(pairs), dtype=torch.long)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``(x0, y0, x1, y1)``, elementwise over leading dims."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-12)


def gather_per_sample(tensors: dict[int, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """Row b of ``tensors[index[b]]`` for every b: one select per candidate, no stacked copy of all N.
    ``torch.where``, not boolean-mask indexing, whose data-dependent size makes the host wait for
    the accelerator."""
    keys = list(tensors)
    out = tensors[keys[0]]
    for k in keys[1:]:
        out = torch.where((index == k).view(-1, *[1] * (out.dim() - 1)), tensors[k], out)
    return out


def pair_ious(boxes: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Crop IoU of every candidate pair per sample: boxes [B, N, 4], pairs [P, 2] -> [P, B]."""
    return box_iou(boxes[:, pairs[:, 0]], boxes[:, pairs[:, 1]]).T


def draw_softmax(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per sample, a candidate drawn from ``softmax(scores / temperature)`` over dim 0 (Gumbel-max:
    ``argmax(scores / T + Gumbel noise)``, one vectorised draw); ``temperature == 0`` is the argmax."""
    if temperature <= 0:
        return scores.argmax(dim=0)
    uniform = torch.rand_like(scores, dtype=torch.float32).clamp_(min=1e-20)
    return (scores.float() / temperature - torch.log(-torch.log(uniform))).argmax(dim=0)


def draw_below_threshold(ious: torch.Tensor, threshold: float) -> torch.Tensor:
    """The ``msat-ss`` rule over candidate pairs ``ious`` [P, B]: per sample, a pair drawn uniformly
    among those whose IoU is at most ``threshold``; a sample with none gets a uniformly random pair.

    As ``msatransform.py``, which draws crop pairs until one has ``IoU <= threshold`` (the first such
    draw is a uniform one among them) and keeps the last draw, a random pair, when 512 tries find
    none; here the draws are the N candidates' pairs.
    """
    below = (ious <= threshold).float()
    return (below + torch.rand_like(below) * 0.5).argmax(dim=0)  # ties among the eligible: uniform


class HardViewSelectionMixin:
    """Adds hard view selection to a method on the ``embed``/``pair_loss`` contract.

    Args:
        num_views: N, the candidate views per image (4 in the paper; 8 gave no further gain).
        pair_mode: ``all``, ``cross_stream`` or ``anchor``.
        limit_comparisons: score this many random candidate pairs per step (the same subset on
            every rank); 0 or None scores all of them (never none).
        selection_resolution: score candidates resized to this side (None: training size).
        select_every: select on every k-th optimiser step; other steps train on views 0 and 1.
        selection_rule: ``hardest``: each image's highest-loss pair (the paper; with a
            ``selection_temperature`` a pair drawn by its loss); ``min_iou``: the pair whose crops
            overlap least, without scoring (an ablation: the paper finds that the selected pairs
            overlap less, sec. 5; this asks whether that is all HVS does); ``msat``: the authors'
            model-free curriculum (branch ``msat-ss``): a pair with crop IoU at most the scheduled
            ``iou_threshold``, a random pair when none is.
        hardness_warmup_epochs: epochs at the start in which every image trains on a random
            candidate pair, unscored (``msat_warmup`` of the authors' curriculum). 0: the paper.
        hardness_ramp_epochs: after the warm-up, the probability that an image trains on its rule's
            pair rather than a random candidate pair rises 0 -> 1 over this many epochs. 0: the paper.
        hardness_ramp: the ramp's shape, ``linear`` or ``cosine``.
        random_pair_prob: after the ramp, each image still trains on a random candidate pair with
            this probability (``msat_prob``). 0: the paper.
        selection_temperature: ``tau`` at the end of the warm-up: the pair is drawn from
            ``softmax(loss / tau)``, ``tau`` in the pair loss's units; 0: the argmax (the paper).
        selection_temperature_end: ``tau`` at the end of the anneal (0: the argmax by then).
        temperature_schedule: the anneal's shape, ``linear`` or ``cosine``.
        iou_threshold: ``msat``: the IoU threshold at the end of the warm-up (the authors' ImageNet
            ``start_val`` is 0.3).
        iou_threshold_end: ``msat``: the threshold at the end of the anneal (None: constant,
            as the authors' ``end_val: null``).
        iou_threshold_schedule: ``msat``: ``linear`` or ``cosine`` (``msat_schedule``).
        anneal_epochs: epochs after the warm-up over which the temperature and the IoU threshold
            move from start to end; None: to the end of the run (the authors' curriculum).
        reuse_targets: the chosen views' target outputs (MoCo's keys, BYOL's target projections,
            DINO's teacher) are taken from the scoring pass (no second target forward); False
            (default) recomputes them on the chosen views in the training forward, with the
            method's own ``view_forward`` BatchNorm statistics, as the authors' DINO code does
            (``automl/hvp`` branch ``dino``, ``pretrain.py``: ``teacher(images[:2])`` on the
            selected crops, after ``hvs``). Their other branches have no target network.
        scoring_updates_bn: the scoring pass runs in train mode and its batch of all candidates
            updates BatchNorm's running statistics, as in the authors' code; False restores them
            after scoring, so evaluation statistics come from the training forwards only.
    """

    default_pair_mode = "all"

    def __init__(
        self,
        *args: Any,
        num_views: int = 4,
        pair_mode: str | None = None,
        limit_comparisons: int | None = None,
        selection_resolution: int | None = None,
        select_every: int = 1,
        selection_rule: str = "hardest",
        hardness_warmup_epochs: float = 0.0,
        hardness_ramp_epochs: float = 0.0,
        hardness_ramp: str = "linear",
        random_pair_prob: float = 0.0,
        selection_temperature: float = 0.0,
        selection_temperature_end: float = 0.0,
        temperature_schedule: str = "cosine",
        iou_threshold: float = 0.3,
        iou_threshold_end: float | None = None,
        iou_threshold_schedule: str = "linear",
        anneal_epochs: float | None = None,
        reuse_targets: bool = False,
        scoring_updates_bn: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, num_views=num_views, **kwargs)  # type: ignore[call-arg]
        pair_mode = pair_mode or self.default_pair_mode
        if pair_mode not in PAIR_MODES:
            raise ValueError(f"unknown pair_mode {pair_mode!r}; choose one of {list(PAIR_MODES)}")
        if limit_comparisons is not None and limit_comparisons < 0:
            raise ValueError(f"limit_comparisons must be >= 0 or None (all pairs), got {limit_comparisons}")
        if select_every < 1:
            raise ValueError(f"select_every must be >= 1, got {select_every}")
        if selection_resolution is not None and selection_resolution < 1:
            raise ValueError(f"selection_resolution must be >= 1 or None, got {selection_resolution}")
        if selection_rule not in SELECTION_RULES:
            raise ValueError(f"unknown selection_rule {selection_rule!r}; choose one of {list(SELECTION_RULES)}")
        for name, value in (("hardness_warmup_epochs", hardness_warmup_epochs), ("hardness_ramp_epochs", hardness_ramp_epochs),
                            ("selection_temperature", selection_temperature),
                            ("selection_temperature_end", selection_temperature_end)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if anneal_epochs is not None and anneal_epochs <= 0:
            raise ValueError(f"anneal_epochs must be > 0 or None (to the end of the run), got {anneal_epochs}")
        if not 0 <= random_pair_prob <= 1:
            raise ValueError(f"random_pair_prob must be in [0, 1], got {random_pair_prob}")
        for name, value in (("iou_threshold", iou_threshold), ("iou_threshold_end", iou_threshold_end)):
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1] (a crop IoU), got {value}")
        for name, value in (("hardness_ramp", hardness_ramp), ("temperature_schedule", temperature_schedule),
                            ("iou_threshold_schedule", iou_threshold_schedule)):
            if value not in RAMPS:
                raise ValueError(f"unknown {name} {value!r}; choose one of {list(RAMPS)}")
        if selection_rule != "hardest" and (selection_temperature or selection_temperature_end):
            raise ValueError(f"selection_temperature applies to selection_rule 'hardest' only, got {selection_rule!r}")
        self.selection_rule, self.reuse_targets, self.scoring_updates_bn = selection_rule, reuse_targets, scoring_updates_bn
        self.hardness_warmup_epochs, self.hardness_ramp_epochs, self.hardness_ramp = hardness_warmup_epochs, hardness_ramp_epochs, hardness_ramp
        self.random_pair_prob, self.anneal_epochs = random_pair_prob, anneal_epochs
        self.selection_temperature, self.selection_temperature_end = selection_temperature, selection_temperature_end
        self.temperature_schedule = temperature_schedule
        self.iou_threshold, self.iou_threshold_schedule = iou_threshold, iou_threshold_schedule
        self.iou_threshold_end = iou_threshold if iou_threshold_end is None else iou_threshold_end
        self.pair_mode, self.limit_comparisons = pair_mode, limit_comparisons
        self.selection_resolution, self.select_every = selection_resolution, select_every
        self.pairs = candidate_pairs(self.num_views, pair_mode)  # type: ignore[attr-defined]
        self.last_selection: dict[str, torch.Tensor] = {}

    # --- schedules ----------------------------------------------------------------------------
    def _global_step(self) -> int:
        return int(self.trainer.global_step) if self._trainer is not None else 0  # type: ignore[attr-defined]

    def epochs_trained(self) -> float:
        """Epochs trained so far, fractional (optimiser steps / steps per epoch): what every
        hardness schedule is a function of. 0 without a trainer."""
        if self._trainer is None:  # type: ignore[attr-defined]
            return 0.0
        steps_per_epoch, _ = self.steps_per_epoch_and_total()  # type: ignore[attr-defined]
        return self._global_step() / steps_per_epoch

    def _anneal_progress(self, epochs: float) -> float:
        """Progress in [0, 1] of the temperature / IoU-threshold anneal after the warm-up."""
        length = self.anneal_epochs
        if length is None:
            max_epochs = self.trainer.max_epochs if self._trainer is not None else None  # type: ignore[attr-defined]
            if not max_epochs or max_epochs < 0:
                return 0.0
            length = max(max_epochs - self.hardness_warmup_epochs, 1e-12)
        return (epochs - self.hardness_warmup_epochs) / length

    def rule_probability(self, epochs: float | None = None) -> float:
        """The probability that an image trains on its rule's pair rather than a random candidate
        pair: 0 in the warm-up, then a ramp to ``1 - random_pair_prob``."""
        epochs = self.epochs_trained() if epochs is None else epochs
        if epochs < self.hardness_warmup_epochs:
            return 0.0
        cap = 1.0 - self.random_pair_prob
        if self.hardness_ramp_epochs <= 0:
            return cap
        return cap * ramp((epochs - self.hardness_warmup_epochs) / self.hardness_ramp_epochs, 0.0, 1.0, self.hardness_ramp)

    def current_selection_temperature(self, epochs: float | None = None) -> float:
        """The soft selection's temperature now (0: the argmax)."""
        epochs = self.epochs_trained() if epochs is None else epochs
        return ramp(self._anneal_progress(epochs), self.selection_temperature, self.selection_temperature_end,
                    self.temperature_schedule)

    def current_iou_threshold(self, epochs: float | None = None) -> float:
        """The ``msat`` rule's IoU threshold now."""
        epochs = self.epochs_trained() if epochs is None else epochs
        return ramp(self._anneal_progress(epochs), self.iou_threshold, self.iou_threshold_end, self.iou_threshold_schedule)

    # --- selection ----------------------------------------------------------------------------
    def pairs_to_score(self) -> torch.Tensor:
        """All candidate pairs, or a random subset of ``limit_comparisons`` of them (never empty).

        The subset is drawn from a generator seeded by the global step, so every rank scores the
        same pairs (SimCLR's pair loss gathers across ranks and needs matching collectives).
        """
        p = self.pairs
        if not self.limit_comparisons or self.limit_comparisons >= p.shape[0]:
            return p
        g = torch.Generator().manual_seed(self._global_step())
        return p[torch.randperm(p.shape[0], generator=g)[: self.limit_comparisons]]

    @torch.no_grad()
    def score_candidates(
        self, candidates: Sequence[torch.Tensor], pairs: torch.Tensor, sample_info: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[int, dict[str, torch.Tensor]] | None]:
        """Per-sample loss of every candidate pair [P, B] from one batched no-grad forward of all
        candidates (whatever ``view_forward`` says), and those candidates' outputs (None when scored
        at another resolution). ``sample_info``: the batch's per-sample tensors ``pair_loss`` uses."""
        resized = self.selection_resolution is not None and candidates[0].shape[-1] != self.selection_resolution
        if resized:
            size = (self.selection_resolution, self.selection_resolution)
            candidates = [F.interpolate(c, size=size, mode="bilinear", antialias=True, align_corners=False) for c in candidates]
        used = sorted(set(pairs.flatten().tolist()))
        keep_bn = contextlib.nullcontext() if self.scoring_updates_bn else frozen_batchnorm_stats([self])  # type: ignore[list-item]
        with keep_bn:
            outs = dict(zip(used, self.embed([candidates[i] for i in used], batched=True)))  # type: ignore[attr-defined]
        for out in outs.values():
            out.update(sample_info or {})
        scores = torch.stack([self.pair_loss(outs[int(i)], outs[int(j)]).float() for i, j in pairs])  # type: ignore[attr-defined]
        return scores, None if resized else outs

    def choose(self, num_choices: int, batch_size: int, device: torch.device, rule_prob: float,
               scores: torch.Tensor | None = None, ious: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, the index [B] of the candidate pair (or DINO combination) it trains on, and
        whether that is its rule's choice [B] (else a uniformly random one, with probability
        ``1 - rule_prob``). The rule's choice: the softmax draw / argmax of ``scores`` [C, B]
        (``hardest``), the least IoU (``min_iou``) or the ``msat`` draw over ``ious`` [C, B]."""
        if rule_prob <= 0:
            return (torch.randint(num_choices, (batch_size,), device=device),
                    torch.zeros(batch_size, dtype=torch.bool, device=device))
        if self.selection_rule == "hardest":
            assert scores is not None
            rule_choice = draw_softmax(scores, self.current_selection_temperature())
        elif self.selection_rule == "min_iou":
            assert ious is not None
            rule_choice = (-ious).argmax(dim=0)
        else:
            assert ious is not None
            rule_choice = draw_below_threshold(ious, self.current_iou_threshold())
        if rule_prob >= 1:
            return rule_choice, torch.ones(batch_size, dtype=torch.bool, device=device)
        use_rule = torch.rand(batch_size, device=device) < rule_prob
        random_choice = torch.randint(num_choices, (batch_size,), device=device)
        return torch.where(use_rule, rule_choice, random_choice), use_rule

    def _chosen_targets(self, outs: dict[int, dict[str, torch.Tensor]], index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sample, the target-network outputs of its chosen candidate (computed while scoring)."""
        return {k: gather_per_sample({v: o[k] for v, o in outs.items()}, index) for k in self.target_keys}  # type: ignore[attr-defined]

    def _candidate_ious(self, batch: dict[str, Any], pairs: torch.Tensor, device: torch.device) -> torch.Tensor:
        boxes = batch.get("boxes")
        if boxes is None:
            raise ValueError(f"selection_rule {self.selection_rule!r} needs the crop boxes of the candidates (batch['boxes'])")
        return pair_ious(boxes.to(device).float(), pairs.to(device, non_blocking=True))

    def select_views_and_targets(
        self, batch: dict[str, Any]
    ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]] | None]:
        """The views to train on (each sample's chosen candidate pair, then any local crops) and,
        when ``reuse_targets``, the target outputs of the two chosen views from the scoring pass
        (None: the training forward computes them)."""
        views = batch["views"]
        n = self.num_views  # type: ignore[attr-defined]
        candidates, local_crops = list(views[:n]), list(views[n:])
        self.last_selection = {}
        if self._global_step() % self.select_every != 0:
            return [candidates[0], candidates[1], *local_crops], None
        pairs = self.pairs_to_score()  # on the CPU: its entries index Python lists
        device, b = candidates[0].device, candidates[0].shape[0]
        rule_prob = self.rule_probability()
        scores = ious = outs = None
        if rule_prob > 0 and self.selection_rule == "hardest":
            scores, outs = self.score_candidates(candidates, pairs, self.sample_info(batch))  # type: ignore[attr-defined]
        elif rule_prob > 0:
            ious = self._candidate_ious(batch, pairs, device)
        best, from_rule = self.choose(pairs.shape[0], b, device, rule_prob, scores, ious)
        pairs = pairs.to(device, non_blocking=True)  # a few bytes; blocking would wait for the queued kernels
        idx_a, idx_b = pairs[best, 0], pairs[best, 1]
        all_candidates = dict(enumerate(candidates))
        view_a, view_b = gather_per_sample(all_candidates, idx_a), gather_per_sample(all_candidates, idx_b)
        targets = None
        if outs is not None and self.reuse_targets and self.target_keys:  # type: ignore[attr-defined]
            targets = [self._chosen_targets(outs, idx_a), self._chosen_targets(outs, idx_b)]
        self.log_selection(batch, scores, pairs, idx_a, idx_b, best, from_rule, rule_prob)
        return [view_a, view_b, *local_crops], targets

    def select_views(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """The views to train on: each sample's chosen candidate pair, then any local crops."""
        return self.select_views_and_targets(batch)[0]

    def embed_training_views(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """The training forward of the chosen views; with reused targets it runs the online networks
        only, so HVS costs only its scoring forward."""
        self.check_views(batch["views"])  # type: ignore[attr-defined]
        views, targets = self.select_views_and_targets(batch)
        if targets is None:
            outs = self.embed(views)  # type: ignore[attr-defined]
        else:
            outs = self.embed(views, targets=False)  # type: ignore[attr-defined]
            for out, chosen in zip(outs, targets):
                out.update(chosen)
        return self.with_sample_info(outs, batch)  # type: ignore[attr-defined]

    @torch.no_grad()
    def log_selection(self, batch, scores, pairs, idx_a, idx_b, best, from_rule, rule_prob) -> None:
        """``scores`` [C, B] (None when nothing was scored), ``best`` [B] the chosen index into them."""
        b = best.shape[0]
        device = best.device
        rows = torch.arange(b, device=device)
        metrics: dict[str, Any] = {"hard/hvs_rule_prob": rule_prob, "hard/hvs_rule_share": from_rule.float().mean()}
        is_hardest = None
        if scores is not None:
            is_hardest = scores[best, rows] >= scores.max(dim=0).values  # trained on its highest-loss pair (ties count)
            metrics.update({"hard/hvs_loss_selected": scores[best, rows].mean(), "hard/hvs_loss_mean": scores.mean(),
                            "hard/hvs_hardest_share": is_hardest.float().mean()})
        if self.selection_rule == "hardest":
            metrics["hard/hvs_temperature"] = self.current_selection_temperature()
        if self.selection_rule == "msat":
            metrics["hard/hvs_iou_threshold"] = self.current_iou_threshold()
        boxes = batch.get("boxes")
        if boxes is not None:
            boxes = boxes.to(device).float()
            iou_sel = box_iou(boxes[rows, idx_a], boxes[rows, idx_b])
            rand = pairs[torch.randint(pairs.shape[0], (b,), device=device)]
            iou_rand = box_iou(boxes[rows, rand[:, 0]], boxes[rows, rand[:, 1]])
            # share of images whose selected pair overlaps least of the scored pairs (ties count)
            is_min_iou = iou_sel <= pair_ious(boxes, pairs).min(dim=0).values + 1e-6
            metrics.update({"hard/hvs_iou_selected": iou_sel.mean(), "hard/hvs_iou_random": iou_rand.mean(),
                            "hard/hvs_selected_is_min_iou": is_min_iou.float().mean()})
        # how often each candidate is chosen (scatter_add: CUDA's bincount reads its input's maximum on the host)
        chosen = torch.cat([idx_a, idx_b])
        wins = torch.zeros(self.num_views, device=device).scatter_add_(0, chosen, torch.ones(chosen.shape, device=device)) / b  # type: ignore[attr-defined]
        metrics.update({f"hard/hvs_win_frac_{k}": w for k, w in enumerate(wins)})
        self.log_dict(metrics, on_step=True, on_epoch=True)  # type: ignore[attr-defined]
        self.last_selection = {"index_a": idx_a.detach(), "index_b": idx_b.detach(), "from_rule": from_rule.detach()}
        if scores is not None:
            self.last_selection.update(scores=scores.detach(), is_hardest=is_hardest)
        if boxes is not None:
            self.last_selection["iou_selected"] = iou_sel.detach()

    # --- training -----------------------------------------------------------------------------
    def training_views(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        self.check_views(batch["views"])  # type: ignore[attr-defined]
        return self.select_views(batch)


class HVSSimCLR(HardViewSelectionMixin, SimCLR):
    """SimCLR trained on each image's hardest candidate pair (per-sample NT-Xent within the pair's batch)."""


class HVSMoCoV2(HardViewSelectionMixin, MoCoV2):
    """MoCo v2 trained on each image's hardest candidate pair (symmetric InfoNCE against the queue)."""


class HVSSimSiam(HardViewSelectionMixin, SimSiam):
    """SimSiam trained on each image's hardest candidate pair (lowest symmetric cosine)."""


class HVSBYOL(HardViewSelectionMixin, BYOL):
    """BYOL trained on each image's hardest candidate pair; pairs cross the two augmentation streams."""

    default_pair_mode = "cross_stream"


class HVSDINO(HardViewSelectionMixin, DINO):
    """DINO trained on each image's hardest combination of crops, as the authors' DINO code selects
    (``automl/hvp``, ``minsim``): a pair of global crops (even x odd candidates, one from each
    augmentation stream) and, with local crops, ``num_local_crops_trained`` of the local crops the
    data makes; each combination is scored with the full multi-crop loss (teacher on its two
    globals, student on all its crops), from one batched forward of every crop. The centre is not
    updated while scoring.

    Args:
        num_local_crops_trained: local crops trained on per image, chosen among the data's
            ``num_local_crops`` (the combinations of that many); None trains on all of them (the
            global pair is still scored with them).
    """

    default_pair_mode = "cross_stream"

    def __init__(self, *args: Any, num_local_crops_trained: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if num_local_crops_trained is not None and num_local_crops_trained < 1:
            raise ValueError(f"num_local_crops_trained must be >= 1 or None (all local crops), got {num_local_crops_trained}")
        self.num_local_crops_trained = num_local_crops_trained

    def local_subsets(self, num_local: int) -> torch.Tensor:
        """The local-crop index subsets a combination can train on [S, k] (k = ``num_local_crops_trained``)."""
        k = num_local if self.num_local_crops_trained is None else self.num_local_crops_trained
        if k > num_local:
            raise ValueError(f"num_local_crops_trained={k} but the batch has {num_local} local crops; "
                             f"set data num_local_crops >= {k}")
        return torch.tensor(list(itertools.combinations(range(num_local), k)), dtype=torch.long).view(-1, k)

    def combinations_to_score(self, num_local: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(global pair [C, 2], local subset [C, k]) of every combination, or ``limit_comparisons``
        random ones (drawn as ``pairs_to_score`` draws pairs: the same on every rank)."""
        pairs, subsets = self.pairs, self.local_subsets(num_local)
        pair_idx = torch.arange(pairs.shape[0]).repeat_interleave(subsets.shape[0])
        subset_idx = torch.arange(subsets.shape[0]).repeat(pairs.shape[0])
        if self.limit_comparisons and self.limit_comparisons < pair_idx.shape[0]:
            g = torch.Generator().manual_seed(self._global_step())
            keep = torch.randperm(pair_idx.shape[0], generator=g)[: self.limit_comparisons]
            pair_idx, subset_idx = pair_idx[keep], subset_idx[keep]
        return pairs[pair_idx], subsets[subset_idx]

    def select_views_and_targets(
        self, batch: dict[str, Any]
    ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]] | None]:
        views = batch["views"]
        n = self.num_views
        candidates, local_crops = list(views[:n]), list(views[n:])
        if not local_crops or self.selection_rule != "hardest" or self._global_step() % self.select_every != 0:
            chosen, targets = super().select_views_and_targets(batch)
            k = len(local_crops) if self.num_local_crops_trained is None else self.num_local_crops_trained
            return chosen[: 2 + k], targets
        pairs, subsets = self.combinations_to_score(len(local_crops))
        device, b = candidates[0].device, candidates[0].shape[0]
        rule_prob = self.rule_probability()
        scores = outs = None
        if rule_prob > 0:
            keep_bn = contextlib.nullcontext() if self.scoring_updates_bn else frozen_batchnorm_stats([self])
            with torch.no_grad(), keep_bn:
                outs = self.embed(candidates + local_crops, batched=True)
                scores = torch.stack([
                    self.multicrop_loss([outs[int(a)], outs[int(b)], *(outs[n + int(j)] for j in subset)]).float()
                    for (a, b), subset in zip(pairs, subsets)])  # a loop over combinations, not samples
        best, from_rule = self.choose(pairs.shape[0], b, device, rule_prob, scores)
        pairs, subsets = pairs.to(device), subsets.to(device)
        idx_a, idx_b = pairs[best, 0], pairs[best, 1]
        all_candidates, all_locals = dict(enumerate(candidates)), dict(enumerate(local_crops))
        chosen = [gather_per_sample(all_candidates, idx_a), gather_per_sample(all_candidates, idx_b)]
        if self.local_subsets(len(local_crops)).shape[0] == 1:  # all local crops are trained on: no choice, no copy
            chosen += [local_crops[int(j)] for j in subsets[0]]
        else:
            chosen += [gather_per_sample(all_locals, subsets[best, slot]) for slot in range(subsets.shape[1])]
        targets = None
        if self.reuse_targets and outs is not None:
            globals_out = {i: outs[i] for i in range(n)}
            targets = [self._chosen_targets(globals_out, idx_a), self._chosen_targets(globals_out, idx_b)]
        self.log_selection(batch, scores, pairs, idx_a, idx_b, best, from_rule, rule_prob)
        self.last_selection["local_index"] = subsets[best].detach()
        return chosen, targets


def with_hvs(method_cls: type[BaseMethod]) -> type[BaseMethod]:
    """``with_hvs(MyMethod)``: a subclass of ``MyMethod`` with hard view selection."""
    return type(f"HVS{method_cls.__name__}", (HardViewSelectionMixin, method_cls), {"__doc__": f"HVS on {method_cls.__name__}."})
