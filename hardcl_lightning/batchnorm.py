"""BatchNorm state: forwards in train mode that leave the running statistics as they were.

The running statistics are what kNN, the linear probe and every downstream use see; forwards
that are not training forwards of real views (HVS's scoring pass when asked, the generator's
steps) run with batch statistics but must not move them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch.nn as nn
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
