"""Contrastive losses as pure functions.

Every loss returns one value per sample when ``reduction="none"`` so that view selection
(HVS) can score a candidate pair per image; ``reduction="mean"`` is the training loss.
Losses compute in float32 whatever the autocast dtype: similarities divided by a small
temperature overflow bf16/fp16 precision.
"""

from __future__ import annotations

import math
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


def reweighted_negatives_loss(
    pos_logit: torch.Tensor,
    neg_logits: torch.Tensor,
    temperature: float,
    tau_plus: float = 0.0,
    hardness_beta: float = 0.0,
) -> torch.Tensor:
    """Per-anchor debiased (DCL) and hardness-weighted (HCL) contrastive loss.

    Chuang et al. 2020, eq. 6 (``tau_plus``: class prior of false negatives) and Robinson et al.
    2021, eq. 4 (``hardness_beta``: negatives weighted by exp(beta * q.n / T), normalised to mean 1):
    ``Ng = max((sum_i w_i e^{l_i} - tau+ M e^{l+}) / (1 - tau+), M e^{-1/T})``,
    ``loss = -log(e^{l+} / (e^{l+} + Ng))``. With ``tau_plus = hardness_beta = 0`` this is InfoNCE.
    ``neg_logits`` [A, M] are similarities / T; entries set to -inf are not negatives. M counts
    every finite entry of a row: with MoCHi's synthetic negatives appended (``info_nce``'s
    ``extra_negative_logits``) that is K queue keys + s + s' mixed points, so the false-negative
    prior ``tau_plus`` is applied to the synthetic points as to the keys.

    Computed in log space (logsumexp; ``log(a - b)`` as ``log a + log(-expm1(log b - log a))``):
    at T = 0.005 the logits reach 200, where ``exp`` overflows float32.
    """
    if not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    if hardness_beta < 0:
        raise ValueError(f"hardness_beta must be >= 0, got {hardness_beta}")
    log_m = torch.isfinite(neg_logits).sum(dim=1).to(neg_logits.dtype).log()
    if hardness_beta > 0:  # log w_i = log(M softmax(beta l)_i)
        log_weights = torch.log_softmax(hardness_beta * neg_logits, dim=1) + log_m.unsqueeze(1)
        log_sum = torch.logsumexp(log_weights + neg_logits, dim=1)
    else:
        log_sum = torch.logsumexp(neg_logits, dim=1)
    floor = log_m - 1 / temperature  # log(M e^{-1/T})
    if tau_plus > 0:
        gap = pos_logit + math.log(tau_plus) + log_m - log_sum  # log(tau+ M e^{l+} / sum)
        below = gap < 0  # where the debiased sum is positive; elsewhere the floor holds
        safe_gap = torch.where(below, gap, torch.full_like(gap, -1.0))  # no inf/nan gradient on the other branch
        debiased = log_sum + torch.log(-torch.expm1(safe_gap)) - math.log1p(-tau_plus)
        log_ng = torch.maximum(torch.where(below, debiased, torch.full_like(debiased, -math.inf)), floor)
    else:
        log_ng = torch.maximum(log_sum, floor)
    return torch.logaddexp(pos_logit, log_ng) - pos_logit


def nt_xent(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    temperature: float = 0.2,
    reduction: Reduction = "mean",
    gather_distributed: bool = True,
    tau_plus: float = 0.0,
    hardness_beta: float = 0.0,
) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) for a batch of positive pairs ``(z_a[i], z_b[i])``.

    Each of the 2B anchors has its partner as positive and the other 2B-2 embeddings (of all
    ranks, when ``gather_distributed``) as negatives. The per-sample value is the mean of the
    two anchors' losses of sample i, so the batch mean equals the usual 2B-anchor mean.
    ``tau_plus`` / ``hardness_beta`` switch to DCL / HCL (``reweighted_negatives_loss``).
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
        if tau_plus == 0 and hardness_beta == 0:
            per_anchor = torch.logsumexp(logits, dim=1) - logits[rows, pos_idx]
        else:
            pos = logits[rows, pos_idx]
            negs = logits.clone()
            negs[rows, pos_idx] = float("-inf")
            per_anchor = reweighted_negatives_loss(pos, negs, temperature, tau_plus, hardness_beta)
        loss = 0.5 * (per_anchor[:b] + per_anchor[b:])
    return _reduce(loss, reduction)


def multi_positive_nt_xent(
    views: torch.Tensor, temperature: float = 0.2, reduction: Reduction = "mean", gather_distributed: bool = True
) -> torch.Tensor:
    """Contrastive loss with several positives per instance (SupCon's L_out, Khosla et al. 2020,
    eq. 2, with instance ids as labels), for ``views`` [B, V, D]: V embeddings of each of B instances.

    Anchor (i, v) has the other V-1 views of instance i as positives and every other embedding
    (of all ranks, when ``gather_distributed``) in the denominator:
    ``-1/(V-1) sum_p log(exp(s_ip/T) / sum_{a != (i,v)} exp(s_ia/T))``. The per-instance value is
    the mean over its V anchors. With V = 2 this is NT-Xent.
    """
    if views.dim() != 3 or views.shape[1] < 2:
        raise ValueError(f"multi_positive_nt_xent expects [B, V >= 2, D] embeddings, got {tuple(views.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=views.device.type, enabled=False):
        z = F.normalize(views.float(), dim=-1)
        b, v, d = z.shape
        every = gather_with_grad(z) if gather_distributed else z
        offset = b * rank() if every.shape[0] != b else 0
        anchors, candidates = z.reshape(b * v, d), every.reshape(-1, d)
        logits = anchors @ candidates.T / temperature  # [B V, N V]
        instance_of_anchor = (torch.arange(b, device=z.device) + offset).repeat_interleave(v)
        instance_of_candidate = torch.arange(every.shape[0], device=z.device).repeat_interleave(v)
        self_idx = instance_of_anchor * v + torch.arange(v, device=z.device).repeat(b)
        rows = torch.arange(b * v, device=z.device)
        logits[rows, self_idx] = float("-inf")
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positive = instance_of_anchor[:, None] == instance_of_candidate[None, :]
        positive[rows, self_idx] = False
        per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(dim=1) / (v - 1)
        loss = per_anchor.view(b, v).mean(dim=1)
    return _reduce(loss, reduction)


def info_nce(
    query: torch.Tensor,
    positive_key: torch.Tensor,
    negatives: torch.Tensor | None,
    temperature: float = 0.2,
    reduction: Reduction = "mean",
    extra_negative_logits: torch.Tensor | None = None,
    tau_plus: float = 0.0,
    hardness_beta: float = 0.0,
    negative_similarities: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with an explicit negative bank (MoCo, He et al. 2020, eq. 1).

    ``negatives`` is [K, D] shared by all queries (the queue). ``extra_negative_logits`` [B, M]
    (already divided by the temperature) are appended per query, which is how MoCHi adds its
    synthetic negatives. Inputs are L2-normalised here. ``tau_plus`` / ``hardness_beta``
    switch to DCL / HCL (``reweighted_negatives_loss``). ``negative_similarities`` [B, K]
    (cosines of the normalised query with the bank, carrying the query's gradient) replaces the
    ``q @ negatives.T`` product when the caller has already computed it. ``negative_mask`` [B, K]:
    True where a bank entry is not a negative of that query (e.g. a key of its own image).
    """
    with torch.autocast(device_type=query.device.type, enabled=False):
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(positive_key.float(), dim=1)
        pos = (q * k).sum(dim=1, keepdim=True) / temperature
        if negative_similarities is None:
            if negatives is None:
                raise ValueError("info_nce needs negatives or negative_similarities")
            negative_similarities = q @ F.normalize(negatives.float(), dim=1).T
        negative_logits = negative_similarities.float() / temperature
        if negative_mask is not None:
            negative_logits = negative_logits.masked_fill(negative_mask, -math.inf)
        logits = torch.cat([pos, negative_logits], dim=1)
        if extra_negative_logits is not None:
            logits = torch.cat([logits, extra_negative_logits.float()], dim=1)
        if tau_plus == 0 and hardness_beta == 0:
            loss = torch.logsumexp(logits, dim=1) - logits[:, 0]
        else:
            loss = reweighted_negatives_loss(logits[:, 0], logits[:, 1:], temperature, tau_plus, hardness_beta)
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
