"""DINO (Caron et al. 2021): self-distillation with a centred, sharpened EMA teacher and multi-crop.

Views: the batch holds global crops (full size, the first ``num_views`` views, from DINO's two
augmentation streams) followed by any number of smaller local crops. The teacher sees only the
global crops: every view with the first view's shape. The student sees all crops.

Loss (eq. 1 and sec. 3.1): the mean over (teacher global crop i, student crop j != i) of
``H(P_t(x_i), P_s(x_j))``, with the teacher's softmax centred by ``center`` and sharpened by the
teacher temperature.

What a "pair" is, for view selection: two global crops ``(a, b)``; ``pair_loss`` is
``0.5 * (H(t_a, s_b) + H(t_b, s_a))`` per sample, the training loss when there are no local
crops. Local crops are not part of a pair: they go with whichever globals are trained on, and
``training_loss`` scores every local crop against both teacher globals.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from hardcl_lightning.distributed import all_reduce_mean
from hardcl_lightning.heads import DINOHead
from hardcl_lightning.losses import dino_cross_entropy
from hardcl_lightning.methods.base import MomentumMethod, ViewOutputs
from hardcl_lightning.optim import cosine_schedule


class DINO(MomentumMethod):
    """DINO for ResNet and ViT backbones.

    Args:
        proj_hidden_dim: DINO head hidden width.
        bottleneck_dim: head bottleneck before the weight-normalised last layer.
        num_prototypes: output dimension K of the head (65536 on ImageNet).
        head_batch_norm: BN in the head's MLP (the paper's ResNet setting uses it).
        norm_last_layer: fix the last layer's weight norm to 1.
        student_temperature: tau_s (0.1).
        teacher_temperature: tau_t after warm-up (0.04 to 0.07).
        warmup_teacher_temperature: tau_t at epoch 0.
        warmup_teacher_temperature_epochs: linear warm-up length of tau_t.
        center_momentum: EMA momentum m of the centre (0.9).
        freeze_last_layer_epochs: epochs during which the last layer gets no update.
        weight_decay_end: weight decay at the end of a cosine schedule from ``weight_decay``
            (0.04 -> 0.4 for ViTs); None keeps it constant.

    Defaults follow the paper's ViT recipe: AdamW, lr 5e-4 x batch/256, weight decay 0.04, EMA 0.996 -> 1.
    """

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_prototypes: int = 65536,
        head_batch_norm: bool = False,
        norm_last_layer: bool = True,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        warmup_teacher_temperature_epochs: float = 30.0,
        center_momentum: float = 0.9,
        freeze_last_layer_epochs: int = 1,
        weight_decay_end: float | None = None,
        optimizer: str = "adamw",
        lr: float = 5e-4,
        weight_decay: float = 0.04,
        ema_momentum: float = 0.996,
        ema_momentum_end: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, lr=lr, weight_decay=weight_decay, ema_momentum=ema_momentum,
                         ema_momentum_end=ema_momentum_end, **kwargs)
        self.save_hyperparameters()
        for name, t in (("student_temperature", student_temperature), ("teacher_temperature", teacher_temperature),
                        ("warmup_teacher_temperature", warmup_teacher_temperature)):
            if t <= 0:
                raise ValueError(f"{name} must be > 0, got {t}")
        if not 0 <= center_momentum < 1:
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum}")
        self.head = DINOHead(self.feature_dim, num_prototypes, proj_hidden_dim, bottleneck_dim,
                             batch_norm=head_batch_norm, norm_last_layer=norm_last_layer)
        self.momentum_backbone = self.make_target(self.backbone)
        self.momentum_head = self.make_target(self.head)
        self.register_buffer("center", torch.zeros(1, num_prototypes))
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.warmup_teacher_temperature_epochs = warmup_teacher_temperature_epochs
        self.center_momentum, self.freeze_last_layer_epochs = center_momentum, freeze_last_layer_epochs
        self.weight_decay_end = weight_decay_end

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.head, self.momentum_head)]

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {**super().learnable_modules(), "head": self.head}

    # --- schedules --------------------------------------------------------------------------
    def current_teacher_temperature(self) -> float:
        """Linear warm-up from ``warmup_teacher_temperature`` over (fractional) epochs, then constant."""
        if self._trainer is None or self.warmup_teacher_temperature_epochs <= 0:
            return self.teacher_temperature
        spe, _ = self.steps_per_epoch_and_total()
        epoch = self.trainer.global_step / spe
        frac = min(1.0, epoch / self.warmup_teacher_temperature_epochs)
        return self.warmup_teacher_temperature + frac * (self.teacher_temperature - self.warmup_teacher_temperature)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.weight_decay_end is None:
            return
        _, total = self.steps_per_epoch_and_total()
        wd = cosine_schedule(self.trainer.global_step, total, self.weight_decay, self.weight_decay_end)
        for opt in self.trainer.optimizers:
            for g in opt.param_groups:
                if not g.get("lars_exclude"):
                    g["weight_decay"] = wd

    def on_after_backward(self) -> None:
        if self.current_epoch < self.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    # --- the contract -----------------------------------------------------------------------
    target_keys = ("teacher",)

    def embed_online(self, x: torch.Tensor) -> ViewOutputs:
        feats = self.backbone(x)
        return {"feats": feats, "student": self.head(feats)}

    def embed_target(self, x: torch.Tensor) -> ViewOutputs:
        return {"teacher": self.momentum_head(self.momentum_backbone(x))}

    def embed(self, views: Sequence[torch.Tensor], targets: bool = True, batched: bool | None = None) -> list[ViewOutputs]:
        """The official ``MultiCropWrapper``: the student's backbone once per resolution, its head once
        over every crop's features (head BatchNorm statistics over all crops); the teacher on the
        global crops in one pass. ``per_view`` forwards each crop (backbone and head) alone."""
        one_pass = self.view_forward == "batched" if batched is None else batched
        feats: list[torch.Tensor | None] = [None] * len(views)
        for idxs in self.view_groups(views, batched):
            f = self.backbone(torch.cat([views[i] for i in idxs]) if len(idxs) > 1 else views[idxs[0]])
            for i, chunk in zip(idxs, f.chunk(len(idxs))):
                feats[i] = chunk
        if one_pass:
            student = self.head(torch.cat(feats)).split([f.shape[0] for f in feats])  # type: ignore[union-attr]
        else:
            student = [self.head(f) for f in feats]
        outs = [{"feats": f, "student": s} for f, s in zip(feats, student)]
        if targets:
            global_idx = [i for i, v in enumerate(views) if v.shape == views[0].shape]
            with torch.no_grad():
                for idxs in self.view_groups([views[i] for i in global_idx], batched):
                    x = torch.cat([views[global_idx[j]] for j in idxs])
                    for j, t in zip(idxs, self.embed_target(x)["teacher"].chunk(len(idxs))):
                        outs[global_idx[j]]["teacher"] = t
        return outs  # type: ignore[return-value]

    def _h(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        return dino_cross_entropy(student_logits, teacher_logits, self.center, self.student_temperature,
                                  self.current_teacher_temperature(), reduction="none")

    def pair_loss(self, out_a: ViewOutputs, out_b: ViewOutputs) -> torch.Tensor:
        return 0.5 * (self._h(out_a["teacher"], out_b["student"]) + self._h(out_b["teacher"], out_a["student"]))

    def multicrop_loss(self, outs: Sequence[ViewOutputs]) -> torch.Tensor:
        """Per-sample mean over (teacher global i, student crop j != i) of H(t_i, s_j)."""
        terms = [
            self._h(o_t["teacher"], o_s["student"])
            for i, o_t in enumerate(outs)
            if "teacher" in o_t
            for j, o_s in enumerate(outs)
            if j != i
        ]
        if not terms:
            raise ValueError("DINO needs at least two crops, one of them global")
        return torch.stack(terms).mean(dim=0)

    def training_loss(self, outs: Sequence[ViewOutputs]) -> torch.Tensor:
        return self.multicrop_loss(outs).mean()

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """c <- m c + (1 - m) mean(teacher outputs), the mean taken over every rank's global crops (eq. 4)."""
        batch_center = all_reduce_mean(teacher_logits.float().mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def after_training_loss(self, outs: Sequence[ViewOutputs]) -> None:
        self.update_center(torch.cat([o["teacher"] for o in outs if "teacher" in o]))
        self.log("train/teacher_temperature", self.current_teacher_temperature())
