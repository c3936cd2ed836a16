"""Contrastive losses as pure functions.

Every loss returns one value per sample when ``reduction="none"`` so that view selection
(HVS) can score a candidate pair per image; ``reduction="mean"`` is the training loss.
Losses compute in float32 whatever the autocast dtype: similarities divided by a small
temperature overflow bf16/fp16 precision.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from hardcl_lightning.distributed import gather_with_grad, rank

Reduction = Literal["none", "mean"]


def _reduce(loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


def nt_xent(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    temperature: float = 0.2,
    reduction: Reduction = "mean",
    gather_distributed: bool = True,
) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) for a batch of positive pairs ``(z_a[i], z_b[i])``.

    Each of the 2B anchors has its partner as positive and the other 2B-2 embeddings (of all
    ranks, when ``gather_distributed``) as negatives. The per-sample value is the mean of the
    two anchors' losses of sample i, so the batch mean equals the usual 2B-anchor mean.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"nt_xent expects two [B, D] tensors of the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        z_a = F.normalize(z_a.float(), dim=1)
        z_b = F.normalize(z_b.float(), dim=1)
        b = z_a.shape[0]
        if gather_distributed:
            all_a, all_b = gather_with_grad(z_a), gather_with_grad(z_b)
        else:
            all_a, all_b = z_a, z_b
        offset = b * rank() if all_a.shape[0] != b else 0
        n = all_a.shape[0]
        candidates = torch.cat([all_a, all_b], dim=0)  # [2N, D]
        anchors = torch.cat([z_a, z_b], dim=0)  # [2B, D]
        logits = anchors @ candidates.T / temperature  # [2B, 2N]
        idx = torch.arange(b, device=z_a.device) + offset
        self_idx = torch.cat([idx, idx + n])
        pos_idx = torch.cat([idx + n, idx])
        rows = torch.arange(2 * b, device=z_a.device)
        logits[rows, self_idx] = float("-inf")
        per_anchor = torch.logsumexp(logits, dim=1) - logits[rows, pos_idx]
        loss = 0.5 * (per_anchor[:b] + per_anchor[b:])
    return _reduce(loss, reduction)


def info_nce(
    query: torch.Tensor,
    positive_key: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.2,
    reduction: Reduction = "mean",
    extra_negative_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with an explicit negative bank (MoCo, He et al. 2020, eq. 1).

    ``negatives`` is [K, D] shared by all queries (the queue). ``extra_negative_logits`` [B, M]
    (already divided by the temperature) are appended per query, which is how MoCHi adds its
    synthetic negatives. Inputs are L2-normalised here.
    """
    with torch.autocast(device_type=query.device.type, enabled=False):
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(positive_key.float(), dim=1)
        neg = F.normalize(negatives.float(), dim=1)
        pos = (q * k).sum(dim=1, keepdim=True) / temperature
        logits = torch.cat([pos, q @ neg.T / temperature], dim=1)
        if extra_negative_logits is not None:
            logits = torch.cat([logits, extra_negative_logits.float()], dim=1)
        loss = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return _reduce(loss, reduction)


def negative_cosine(p: torch.Tensor, z: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """-cos(p, stopgrad(z)) (SimSiam, Chen & He 2021, eq. 1); the stop-gradient is applied here."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        loss = -F.cosine_similarity(p.float(), z.detach().float(), dim=1)
    return _reduce(loss, reduction)


def byol_regression(p: torch.Tensor, z: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """BYOL's normalised MSE ``2 - 2 cos(p, stopgrad(z))`` (Grill et al. 2020, eq. 2)."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        loss = 2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)
    return _reduce(loss, reduction)


def dino_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """H(P_t, P_s) for one (teacher crop, student crop) pair (DINO, Caron et al. 2021, eq. 1).

    The teacher distribution is centred and sharpened and carries no gradient.
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        t = F.softmax((teacher_logits.detach().float() - center.float()) / teacher_temperature, dim=-1)
        log_s = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
        loss = -(t * log_s).sum(dim=-1)
    return _reduce(loss, reduction)
