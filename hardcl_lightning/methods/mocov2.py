"""MoCo v2 (Chen et al. 2020, "Improved baselines"): momentum key encoder, a queue of negatives."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hardcl_lightning.distributed import gather_no_grad
from hardcl_lightning.heads import MLPHead
from hardcl_lightning.losses import info_nce
from hardcl_lightning.methods.base import MomentumMethod, ViewOutputs


class MoCoV2(MomentumMethod):
    """MoCo v2 with the symmetric loss (both views serve as query and key, as in solo-learn's
    and MoCo v3's recipes), an MLP head and a fixed-size FIFO queue of past keys.

    Args:
        proj_hidden_dim: projector hidden width.
        proj_output_dim: key/query dimension.
        temperature: InfoNCE temperature (0.2 in MoCo v2).
        queue_size: number of negatives K; must be a multiple of the global batch.
        tau_plus: > 0 switches to the debiased loss (DCL, Chuang et al. 2020) with this positive prior.
        hardness_beta: > 0 weights negatives by hardness (HCL, Robinson et al. 2021).

    Defaults follow the paper: SGD lr 0.03 x batch/256, EMA momentum 0.999, K = 65536.
    """

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        temperature: float = 0.2,
        queue_size: int = 65536,
        tau_plus: float = 0.0,
        hardness_beta: float = 0.0,
        lr: float = 0.03,
        ema_momentum: float = 0.999,
        ema_momentum_end: float = 0.999,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, ema_momentum=ema_momentum, ema_momentum_end=ema_momentum_end, **kwargs)
        self.save_hyperparameters()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.queue_size = temperature, queue_size
        self.tau_plus, self.hardness_beta = tau_plus, hardness_beta
        self.projector = MLPHead(self.feature_dim, proj_hidden_dim, proj_output_dim, num_layers=2, batch_norm=False)
        self.momentum_backbone = self.make_target(self.backbone)
        self.momentum_projector = self.make_target(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_output_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {**super().learnable_modules(), "projector": self.projector}

    def on_fit_start(self) -> None:
        global_batch = self.batch_size * self.trainer.world_size
        if self.queue_size % global_batch:
            raise ValueError(
                f"queue_size {self.queue_size} is not a multiple of the global batch {global_batch} "
                f"(batch_size {self.batch_size} x {self.trainer.world_size} devices); choose a multiple of {global_batch}"
            )

    target_keys = ("k",)

    def embed_online(self, x: torch.Tensor) -> ViewOutputs:
        feats = self.backbone(x)
        return {"feats": feats, "q": self.projector(feats)}

    def embed_target(self, x: torch.Tensor) -> ViewOutputs:
        return {"k": F.normalize(self.momentum_projector(self.momentum_backbone(x)), dim=1)}

    def query_loss(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """Per-sample InfoNCE (or DCL/HCL) of one query direction against the queue."""
        return info_nce(query, key, queue, self.temperature, reduction="none", tau_plus=self.tau_plus,
                        hardness_beta=self.hardness_beta)

    def pair_loss(self, out_a: ViewOutputs, out_b: ViewOutputs) -> torch.Tensor:
        # no copy: the queue carries no gradient and the loss saves its own normalised copy, so
        # enqueueing before backward cannot change what backward reads
        queue = self.queue
        return 0.5 * (self.query_loss(out_a["q"], out_b["k"], queue) + self.query_loss(out_b["q"], out_a["k"], queue))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries with this step's keys from every rank (FIFO ring buffer)."""
        keys = gather_no_grad(keys)
        n = keys.shape[0]
        if n > self.queue_size:
            raise ValueError(f"a step's {n} keys do not fit in queue_size {self.queue_size}")
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % self.queue_size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % self.queue_size)

    def after_training_loss(self, outs: Sequence[ViewOutputs]) -> None:
        self.enqueue(outs[0]["k"])
