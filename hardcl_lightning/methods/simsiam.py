"""SimSiam (Chen & He 2021): predictor + stop-gradient, no negatives, no momentum encoder."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from hardcl_lightning.heads import MLPHead
from hardcl_lightning.losses import negative_cosine
from hardcl_lightning.methods.base import BaseMethod, ViewOutputs


class SimSiam(BaseMethod):
    """SimSiam.

    Per-sample pair loss (eq. 2): ``0.5 * D(p_a, sg(z_b)) + 0.5 * D(p_b, sg(z_a))`` with
    ``D = -cos``. HVS's score for SimSiam is this loss (its maximum is the minimum of
    ``0.5 * (cos(p_a, z_b) + cos(p_b, z_a))``).

    Args:
        proj_hidden_dim: projector hidden width.
        proj_output_dim: projector output width (also the predictor's input/output).
        proj_num_layers: projector depth (3 on ImageNet, 2 on CIFAR in the paper).
        pred_hidden_dim: predictor bottleneck width (512 in the paper).
        fixed_predictor_lr: keep the predictor's LR constant (no decay), as the paper does (sec. 4.2).
        view_forward: ``per_view``: ``facebookresearch/simsiam`` forwards ``x1`` and ``x2`` separately,
            so BatchNorm statistics are per view.
    """

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        proj_num_layers: int = 3,
        pred_hidden_dim: int = 512,
        fixed_predictor_lr: bool = True,
        lr: float = 0.05,
        warmup_epochs: float = 0.0,
        view_forward: str = "per_view",
        **kwargs: Any,
    ) -> None:
        super().__init__(view_forward=view_forward, lr=lr, warmup_epochs=warmup_epochs, **kwargs)
        self.save_hyperparameters()
        self.projector = MLPHead(self.feature_dim, proj_hidden_dim, proj_output_dim, num_layers=proj_num_layers, last_bn=True)
        self.predictor = MLPHead(proj_output_dim, pred_hidden_dim, proj_output_dim, num_layers=2)
        self.fixed_predictor_lr = fixed_predictor_lr

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {**super().learnable_modules(), "projector": self.projector, "predictor": self.predictor}

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        for g in groups:
            if g["name"].startswith("predictor"):
                g["fixed_lr"] = self.fixed_predictor_lr
        return groups

    def embed_batch(self, x: torch.Tensor) -> ViewOutputs:
        feats = self.backbone(x)
        z = self.projector(feats)
        return {"feats": feats, "z": z, "p": self.predictor(z)}

    def pair_loss(self, out_a: ViewOutputs, out_b: ViewOutputs) -> torch.Tensor:
        return 0.5 * (
            negative_cosine(out_a["p"], out_b["z"], reduction="none") + negative_cosine(out_b["p"], out_a["z"], reduction="none")
        )
