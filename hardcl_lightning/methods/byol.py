"""BYOL (Grill et al. 2020): online network + predictor regresses an EMA target network."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from hardcl_lightning.heads import MLPHead
from hardcl_lightning.losses import byol_regression
from hardcl_lightning.methods.base import MomentumMethod, ViewOutputs


class BYOL(MomentumMethod):
    """BYOL.

    Per-sample pair loss (eq. 2, symmetrised as in the paper):
    ``||p_a - sg(z'_b)||^2 + ||p_b - sg(z'_a)||^2`` on L2-normalised vectors, where ``z'`` is the
    target projection. The target follows a cosine EMA from ``ema_momentum`` (0.99) to 1.0, once
    per optimiser step.

    Args:
        proj_hidden_dim: projector and predictor hidden width (4096 in the paper).
        proj_output_dim: projection width (256 in the paper).
        view_forward: ``per_view``: each view through the online and target networks alone, BatchNorm
            statistics per view, as in the official code (``deepmind-research/byol``, and mmselfsup's fix).

    Defaults follow the paper: LARS, lr 0.2 x batch/256, weight decay 1.5e-6, EMA 0.996 -> 1.
    """

    def __init__(
        self,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        optimizer: str = "lars",
        lr: float = 0.2,
        weight_decay: float = 1.5e-6,
        ema_momentum: float = 0.996,
        ema_momentum_end: float = 1.0,
        view_forward: str = "per_view",
        **kwargs: Any,
    ) -> None:
        super().__init__(view_forward=view_forward, optimizer=optimizer, lr=lr, weight_decay=weight_decay, ema_momentum=ema_momentum,
                         ema_momentum_end=ema_momentum_end, **kwargs)
        self.save_hyperparameters()
        self.projector = MLPHead(self.feature_dim, proj_hidden_dim, proj_output_dim, num_layers=2)
        self.predictor = MLPHead(proj_output_dim, proj_hidden_dim, proj_output_dim, num_layers=2)
        self.momentum_backbone = self.make_target(self.backbone)
        self.momentum_projector = self.make_target(self.projector)

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {**super().learnable_modules(), "projector": self.projector, "predictor": self.predictor}

    target_keys = ("z_target",)

    def embed_online(self, x: torch.Tensor) -> ViewOutputs:
        feats = self.backbone(x)
        return {"feats": feats, "p": self.predictor(self.projector(feats))}

    def embed_target(self, x: torch.Tensor) -> ViewOutputs:
        return {"z_target": self.momentum_projector(self.momentum_backbone(x))}

    def pair_loss(self, out_a: ViewOutputs, out_b: ViewOutputs) -> torch.Tensor:
        return byol_regression(out_a["p"], out_b["z_target"], reduction="none") + byol_regression(
            out_b["p"], out_a["z_target"], reduction="none"
        )
