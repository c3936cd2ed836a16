"""SimCLR (Chen et al. 2020): NT-Xent over in-batch negatives gathered across ranks."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from hardcl_lightning.heads import MLPHead
from hardcl_lightning.losses import nt_xent
from hardcl_lightning.methods.base import BaseMethod, ViewOutputs


class SimCLR(BaseMethod):
    """SimCLR.

    Args:
        proj_hidden_dim: projector hidden width.
        proj_output_dim: projector output width (the space of the loss).
        proj_last_bn: an affine-free BatchNorm on the projector's output. The official SimCLR code
            has BatchNorm on the output layer (``ProjectionHead``: ``use_bn=True`` on every layer,
            no bias on the last; it keeps a learned scale, which this one drops), as lightly's
            ``SimCLRProjectionHead`` does; solo-learn's projector has none. Without it HVS-SimCLR
            stays at chance loss on real CIFAR-10 with an SGD recipe (``benchmarks/RESULTS.md``).
        temperature: NT-Xent temperature.
        gather_distributed: use negatives from every rank (autograd-aware gather).
        tau_plus: > 0 switches to the debiased loss (DCL, Chuang et al. 2020) with this positive prior.
        hardness_beta: > 0 weights negatives by hardness (HCL, Robinson et al. 2021).

    Defaults follow the paper: LARS, lr 0.3 x batch/256, weight decay 1e-6.
    """

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_last_bn: bool = True,
        temperature: float = 0.2,
        gather_distributed: bool = True,
        tau_plus: float = 0.0,
        hardness_beta: float = 0.0,
        optimizer: str = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, lr=lr, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.projector = MLPHead(self.feature_dim, proj_hidden_dim, proj_output_dim, num_layers=2, last_bn=proj_last_bn)
        self.temperature, self.gather_distributed = temperature, gather_distributed
        self.tau_plus, self.hardness_beta = tau_plus, hardness_beta

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {**super().learnable_modules(), "projector": self.projector}

    def embed_batch(self, x: torch.Tensor) -> ViewOutputs:
        feats = self.backbone(x)
        return {"feats": feats, "z": self.projector(feats)}

    def pair_loss(self, out_a: ViewOutputs, out_b: ViewOutputs) -> torch.Tensor:
        return self.nt_xent(out_a, out_b, self.gather_distributed)

    def nt_xent(self, out_a: ViewOutputs, out_b: ViewOutputs, gather_distributed: bool) -> torch.Tensor:
        """Per-sample NT-Xent of two views (negatives from every rank when ``gather_distributed``)."""
        return nt_xent(out_a["z"], out_b["z"], self.temperature, reduction="none", gather_distributed=gather_distributed,
                       tau_plus=self.tau_plus, hardness_beta=self.hardness_beta)

    def local_training_loss(self, outs: Sequence[ViewOutputs]) -> torch.Tensor:
        return self.mean_over_view_pairs(outs, lambda a, b: self.nt_xent(a, b, gather_distributed=False))
