"""MoCHi (Kalantidis et al., NeurIPS 2020): MoCo v2 with synthetic hard negatives mixed per query."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from hardcl_lightning import hard_negatives
from hardcl_lightning.hard_negatives import MixingDraws, mixed_negative_logits
from hardcl_lightning.losses import info_nce
from hardcl_lightning.methods.base import ViewOutputs
from hardcl_lightning.methods.mocov2 import MoCoV2


class MoCHi(MoCoV2):
    """MoCo v2 plus hard negative mixing on its queue (``hardcl_lightning.hard_negatives``).

    For each query, the N hardest queue negatives give s synthetic negatives mixed from two of
    them and s' mixed with the query itself; their logits are appended after the queue's. They
    carry no gradient except through q . h and are never enqueued.

    Diagnostics (logged, never used in training): where the training images have labels, the
    share of each query's N hardest queue negatives that are of its own class
    (``hard/mochi_hardest_same_class``) and the same among the sources of its synthetic negatives
    (``hard/mochi_synthetic_source_same_class``): with few classes (CIFAR-10: a tenth of the queue
    shares the query's class) the hardest negatives may be mostly false negatives, which MoCHi
    then mixes into "negatives" made of positives. Chance is about 1 / number of classes.

    Args:
        mixing: (N, s, s') as written in the paper, e.g. (1024, 1024, 512) or (256, 512, 0).
        mix_start_epoch: epochs of plain MoCo v2 before mixing starts (the paper warms up first).
    """

    def __init__(self, mixing: tuple[int, int, int] = (1024, 1024, 512), mix_start_epoch: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        num_hard, num_mix, num_mix_query = mixing
        if not 1 <= num_hard <= self.queue_size:
            raise ValueError(f"MoCHi N={num_hard} must be in [1, queue_size={self.queue_size}]")
        if num_mix < 0 or num_mix_query < 0:
            raise ValueError(f"MoCHi s and s' must be >= 0, got mixing={tuple(mixing)}")
        if num_mix > 0 and num_hard < 2:
            raise ValueError(f"MoCHi mixes pairs of hard negatives: N must be >= 2 when s > 0, got mixing={tuple(mixing)}")
        if mix_start_epoch < 0:
            raise ValueError(f"mix_start_epoch must be >= 0, got {mix_start_epoch}")
        self.num_hard, self.num_mix, self.num_mix_query = num_hard, num_mix, num_mix_query
        self.mix_start_epoch = mix_start_epoch
        self.last_mixing_stats: dict[str, torch.Tensor] = {}
        self.train_labels: torch.Tensor | None = None  # label of each training image by dataset index (diagnostics)
        self._query_index: torch.Tensor | None = None

    def on_fit_start(self) -> None:
        super().on_fit_start()
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "train_labels") and getattr(dm, "has_train_labels", False):
            self.train_labels = dm.train_labels().to(self.device)

    def pair_loss(self, out_a: ViewOutputs, out_b: ViewOutputs) -> torch.Tensor:
        self._query_index = out_a.get("index")  # both queries are of these images: the diagnostics' labels
        try:
            return super().pair_loss(out_a, out_b)
        finally:
            self._query_index = None

    @property
    def mixing_active(self) -> bool:
        return self.num_mix + self.num_mix_query > 0 and (self._trainer is None or self.current_epoch >= self.mix_start_epoch)

    def query_loss(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
        """As MoCo v2's, plus the synthetic negatives; excluded queue entries (the query's own
        image) are neither negatives nor among its N hardest, so they are never mixed."""
        if not self.mixing_active:
            return super().query_loss(query, key, queue, exclude)
        with torch.autocast(device_type=query.device.type, enabled=False):
            q = F.normalize(query.float(), dim=1)
            bank = F.normalize(queue.float(), dim=1)
            real_sim = q @ bank.T  # [B, K], once: mixing, loss and stats share it
            if exclude is not None:
                real_sim = real_sim.masked_fill(exclude, -math.inf)
            # q . h of the synthetic points in closed form (hardcl_lightning.hard_negatives): the same
            # values and gradient (through q only) as building them, without [B, s + s', D] tensors
            hardest = real_sim.detach().topk(self.num_hard, dim=1)
            draws = hard_negatives.sample_mixing_draws(q.shape[0], self.num_hard, self.num_mix, self.num_mix_query, q.device)
            syn_sim, hard_sim = mixed_negative_logits(q, bank, real_sim, self.num_hard, self.num_mix, self.num_mix_query,
                                                      draws=draws, hardest=hardest)
        self._record_stats(hard_sim, syn_sim.detach())
        self._record_class_shares(hardest.indices, draws)
        return info_nce(query, key, None, self.temperature, reduction="none", extra_negative_logits=syn_sim / self.temperature,
                        tau_plus=self.tau_plus, hardness_beta=self.hardness_beta, negative_similarities=real_sim)

    @torch.no_grad()
    def _record_stats(self, hard_sim: torch.Tensor, syn_sim: torch.Tensor) -> None:
        """The paper's hardness analysis (sec. 3): how hard the real and synthetic negatives are, and
        the share of synthetic points among each query's top-N negative logits. The top N of
        (queue + synthetic) lie within (the N hardest real + synthetic), so no top-k over the queue."""
        top = torch.cat([hard_sim, syn_sim], dim=1).topk(self.num_hard, dim=1).indices
        self.last_mixing_stats = {
            "hard/mochi_hard_sim_mean": hard_sim.mean(),
            "hard/mochi_hard_sim_max": hard_sim.max(),
            "hard/mochi_synthetic_sim_mean": syn_sim.mean(),
            "hard/mochi_synthetic_sim_max": syn_sim.max(),
            "hard/mochi_topk_synthetic_share": (top >= hard_sim.shape[1]).float().mean(),
        }

    @torch.no_grad()
    def _record_class_shares(self, hard_index: torch.Tensor, draws: MixingDraws) -> None:
        """The same-class shares of the docstring, over the (query, negative) pairs whose both labels
        are known (queue entries from before the first enqueue, or without an index, are not)."""
        if self.train_labels is None or self._query_index is None:
            return
        labels = self.train_labels
        query_labels = labels[self._query_index.to(labels.device).long()].unsqueeze(1)  # [B, 1]
        queued = self.queue_index.to(labels.device)
        queue_labels = torch.where(queued >= 0, labels[queued.clamp_min(0)], torch.full_like(queued, -1))
        hard_labels = queue_labels[hard_index.to(labels.device)]  # [B, N]
        sources = [draws.index_i, draws.index_j, draws.index_query_mix]
        source_labels = torch.cat([hard_labels.gather(1, index.to(labels.device)) for index in sources], dim=1)
        for name, negative_labels in (("hardest", hard_labels), ("synthetic_source", source_labels)):
            if negative_labels.numel():  # no host read: a step with no known pair logs 0
                known = (negative_labels >= 0) & (query_labels >= 0)
                same = ((negative_labels == query_labels) & known).sum() / known.sum().clamp_min(1)
                self.last_mixing_stats[f"hard/mochi_{name}_same_class"] = same.float()

    def after_training_loss(self, outs: Sequence[ViewOutputs]) -> None:
        if self.last_mixing_stats:
            self.log_dict(self.last_mixing_stats, on_step=True, on_epoch=True)
            self.last_mixing_stats = {}
        super().after_training_loss(outs)
