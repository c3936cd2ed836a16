"""Optimisers and schedules shared by every method.

- ``LARS`` (You et al. 2017): SGD with momentum whose per-layer step is scaled by the trust
  ratio ``eta * ||w|| / (||g|| + wd * ||w||)``. Parameter groups flagged ``lars_exclude``
  (biases and norm layers) get neither the adaptation nor weight decay, as in SimCLR/BYOL.
  With ``clip_lr`` a layer's LR is ``min(trust, lr)`` instead of ``lr * trust`` (LARC's
  clipping mode; solo-learn's ``clip_lr``, which its CIFAR SimCLR, BYOL and DINO recipes set).
- ``warmup_cosine``: linear warm-up then cosine decay, stepped per optimiser step.
- ``split_decay_groups``: splits parameters into decay / no-decay groups.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

OPTIMIZERS = ("sgd", "lars", "adamw")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
        clip_lr: bool = False,
        nesterov: bool = False,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr, momentum, weight_decay >= 0 and eta > 0, got {lr=}, {momentum=}, {weight_decay=}, {eta=}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr, nesterov=nesterov, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One step of every group, as a few multi-tensor (``torch._foreach_*``) ops per group
        rather than a dozen kernels per parameter: on a GPU a ResNet-18's LARS step is otherwise
        hundreds of launches, more host time than the layers' own kernels take on the device."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            if not group["lars_exclude"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / (g_norm + wd * w_norm),
                                    torch.ones_like(w_norm))
                if group["clip_lr"] and lr > 0:
                    trust = torch.clamp(trust / lr, max=1.0)
                if wd != 0:
                    grads = torch._foreach_add(grads, params, alpha=wd)
                grads = torch._foreach_mul(grads, list(trust.unbind()))  # each layer's own ratio
            states = [self.state[p] for p in params]
            running = [i for i, st in enumerate(states) if "momentum_buffer" in st]
            if running:
                old = [states[i]["momentum_buffer"] for i in running]
                torch._foreach_mul_(old, momentum)
                torch._foreach_add_(old, [grads[i] for i in running])
            for st, d_p in zip(states, grads):  # a parameter's first step: its buffer is the step
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.clone(d_p).detach()
            bufs = [st["momentum_buffer"] for st in states]
            steps = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
            torch._foreach_add_(params, steps, alpha=-lr)
        return loss


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation parameters (all 1-d tensors) get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias")


def split_decay_groups(module: nn.Module, **group_options) -> list[dict]:
    """Two param groups for ``module``: decayed weights, and biases/norms with ``weight_decay=0``."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if is_no_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, **group_options})
    if no_decay:
        groups.append({"params": no_decay, **group_options, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build_optimizer(
    name: str, groups: list[dict], lr: float, weight_decay: float, momentum: float = 0.9, lars_eta: float = 0.02,
    lars_clip_lr: bool = False,
) -> torch.optim.Optimizer:
    """Build one of ``OPTIMIZERS``. Groups may carry their own ``weight_decay``/``lr`` overrides
    and flags (``lars_exclude``, ``fixed_lr``) that torch keeps in the param group for LARS and
    the scheduler to read."""
    for g in groups:
        g.setdefault("weight_decay", weight_decay)
        g.setdefault("lr", lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta, clip_lr=lars_clip_lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear 0->1 over ``warmup_steps``, then cosine 1->``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (step 0) to ``end`` (``total_steps``); EMA momenta use it."""
    progress = min(1.0, step / max(1, total_steps))
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


#: the kinds ``ramp`` takes (the generator methods' hardness, LR and pair-similarity schedules)
SCHEDULES = ("constant", "linear", "cosine")


def ramp(progress: float, start: float, end: float, kind: str) -> float:
    """Value at ``progress`` in [0, 1] of a schedule from ``start`` to ``end`` (constant: ``end``)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {list(SCHEDULES)}")
    p = min(1.0, max(0.0, progress))
    if kind == "constant":
        return end
    if kind == "linear":
        return start + (end - start) * p
    return end - (end - start) * (1 + math.cos(math.pi * p)) / 2
