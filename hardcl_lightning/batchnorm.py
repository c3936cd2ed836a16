"""BatchNorm state: forwards in train mode that leave the running statistics as they were, and
forwards whose statistics come from sub-batches.

The running statistics are what kNN, the linear probe and every downstream use see; forwards
that are not training forwards of real views (HVS's scoring pass when asked, the generator's
steps) run with batch statistics but must not move them. MoCo's shuffle-BN on one device needs
the statistics of a few sub-batches in one forward (``batchnorm_per_sub_batch``).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def frozen_batchnorm_stats(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run forwards in train mode without changing any BatchNorm running statistics."""
    saved = [(bn, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for m in modules for bn in m.modules()
             if isinstance(bn, _BatchNorm) and bn.track_running_stats and bn.running_mean is not None]
    try:
        yield
    finally:
        for bn, mean, var, count in saved:
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def no_running_stat_updates(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Forwards in train mode (batch statistics) whose batches do not enter the running statistics.

    Unlike ``frozen_batchnorm_stats`` it writes nothing back, so the graph of the forwards inside
    can be back-propagated after the block: each BatchNorm's momentum is 0 inside (the running
    update then keeps the old value) and its batch counter is put back. For batches that are
    not real training images (generated samples), which evaluation statistics must not see.
    """
    bns = [bn for m in modules for bn in m.modules() if isinstance(bn, _BatchNorm) and bn.track_running_stats]
    saved = [(bn, bn.momentum, bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None) for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum, count in saved:
            bn.momentum = momentum
            if count is not None:
                bn.num_batches_tracked.copy_(count)


class LocalBatchNorm(_BatchNorm):
    """BatchNorm over this process's batch alone, for inputs of any rank >= 2 (as SyncBatchNorm
    takes them): what ``local_batchnorm`` puts back where statistics must stay per process."""

    def _check_input_dim(self, input) -> None:  # noqa: A002 (torch's name)
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects an input of at least 2 dimensions (N, C, ...), got {input.dim()}")


def local_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``SyncBatchNorm`` in it replaced by a per-process ``LocalBatchNorm``.

    The inverse of ``nn.SyncBatchNorm.convert_sync_batchnorm`` (which Lightning's
    ``sync_batchnorm=True`` applies to every BatchNorm) for the parts whose statistics must not
    be global, MoCo's shuffle-BN key encoder. The replacement holds the same parameter and buffer
    tensors, so the state-dict keys, the optimiser's and DDP's references stay valid; it can be
    applied after DDP has wrapped the model. Returns the module (a new one only when ``module``
    itself is a SyncBatchNorm).
    """
    if isinstance(module, nn.SyncBatchNorm):
        local = LocalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, device="meta")
        local._parameters.update(module._parameters)
        local._buffers.update(module._buffers)
        return local.train(module.training)
    for name, child in module.named_children():
        replaced = local_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def sub_batch_norm(bn: _BatchNorm, x: torch.Tensor, groups: int) -> torch.Tensor:
    """``bn``'s training forward where the rows ``g, g + groups, g + 2 * groups, ...`` of ``x``
    (sub-batch ``g``) are normalised with their own statistics, for each ``g < groups``.

    Equal in its output to ``bn`` run on each sub-batch, but one forward: a network's forward
    of ``groups`` small sub-batches costs ``groups`` times its kernel launches, and on a GPU
    small batches leave most of it idle. As the ``SplitBatchNorm`` of ``facebookresearch/moco``'s
    CIFAR-10 demo (``colab/moco_cifar10_demo.ipynb``): the batch seen as ``groups`` times the
    channels, a single BatchNorm over it, and the running statistics moved once by the mean of
    the sub-batches' updates (each sub-batch one GPU of the paper's eight).
    """
    if not (bn.training or bn.running_mean is None):  # evaluation: the running statistics
        return type(bn).forward(bn, x)
    bn._check_input_dim(x)
    n, c = x.shape[:2]
    if n < 2 * groups:
        raise ValueError(f"{groups} BatchNorm sub-batches need at least {2 * groups} samples, got {n}")
    factor = 0.0 if bn.momentum is None else bn.momentum  # torch's BatchNorm's choice, step for step
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # a cumulative average
            factor = 1.0 / float(bn.num_batches_tracked)
    # momentum 0 (``no_running_stat_updates``): the statistics stay exactly as they were
    running = bn.training and bn.running_mean is not None and factor != 0.0

    def repeat(t: torch.Tensor | None, times: int) -> torch.Tensor | None:
        return None if t is None else t.repeat(times)

    if n % groups == 0:  # [n, C, ...] as [n / groups, groups * C, ...]: one BatchNorm kernel
        mean, var = (repeat(bn.running_mean, groups), repeat(bn.running_var, groups)) if running else (None, None)
        y = F.batch_norm(x.reshape(n // groups, groups * c, *x.shape[2:]), mean, var, repeat(bn.weight, groups),
                         repeat(bn.bias, groups), True, factor, bn.eps)
        y = y.reshape(x.shape)
    else:  # sub-batches of sizes that differ by one: a BatchNorm of each
        y, means, variances = torch.empty_like(x), [], []
        for g in range(groups):
            mean, var = (repeat(bn.running_mean, 1), repeat(bn.running_var, 1)) if running else (None, None)
            y[g::groups] = F.batch_norm(x[g::groups], mean, var, bn.weight, bn.bias, True, factor, bn.eps)
            means.append(mean)
            variances.append(var)
        if running:
            mean, var = torch.cat(means), torch.cat(variances)
    if running:
        with torch.no_grad():
            bn.running_mean.copy_(mean.view(-1, c).mean(0))
            bn.running_var.copy_(var.view(-1, c).mean(0))
    memory_format = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None
    return y.contiguous(memory_format=memory_format) if memory_format is not None else y


@contextlib.contextmanager
def batchnorm_per_sub_batch(modules: Sequence[nn.Module], groups: int) -> Iterator[None]:
    """Inside, every BatchNorm of ``modules`` in train mode normalises each of ``groups``
    sub-batches of its input (rows ``g, g + groups, ...``) with that sub-batch's statistics: one
    forward of the whole batch stands for a forward of each sub-batch, since nothing else in a
    CNN mixes samples (``sub_batch_norm``). MoCo's shuffle-BN on one device
    (``shuffled_batch_forward``).
    """
    bns = list(dict.fromkeys(bn for m in modules for bn in m.modules() if isinstance(bn, _BatchNorm)))  # each once
    if groups == 1 or not bns:
        yield
        return
    saved = [bn.__dict__.get("forward") for bn in bns]  # an instance's own forward, if it has one
    for bn in bns:
        bn.forward = functools.partial(sub_batch_norm, bn, groups=groups)
    try:
        yield
    finally:
        for bn, forward in zip(bns, saved):
            if forward is None:
                del bn.forward  # the class's forward again
            else:
                bn.forward = forward
