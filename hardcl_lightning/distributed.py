"""Rank helpers and gathers that are correct under DDP.

``gather_with_grad`` is the autograd-aware all-gather that contrastive losses need for
cross-rank negatives. Its backward sums the incoming gradients over ranks and returns this
rank's slice. Combined with DDP's gradient *averaging* and a per-rank loss that is the mean
over the local anchors, the result equals the single-process gradient of the mean loss over
the global batch (tested in ``tests/test_distributed.py``). Getting the reduction wrong here
is the classic 1/world_size bug.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from hardcl_lightning.batchnorm import batchnorm_per_sub_batch


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        all_grads = torch.stack(grads)
        dist.all_reduce(all_grads, op=dist.ReduceOp.SUM)
        return all_grads[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0; gradients flow back to every rank's input."""
    if not is_dist() or dist.get_world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (no autograd; e.g. MoCo keys, kNN banks).

    Ranks may hold different numbers of rows (the last, partial shard of a validation set):
    rows are padded to the largest count for the collective and trimmed afterwards.
    """
    if not is_dist() or dist.get_world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:c] for o, c in zip(out, counts)], dim=0)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (in place copy returned); identity on a single process."""
    if not is_dist() or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()


def random_permutation(n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """``torch.randperm(n)`` on ``device``: drawn there (a blocking copy from the host would wait for
    every queued kernel), or on ``generator``'s device and copied without blocking."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device, non_blocking=True)


@torch.no_grad()
def shuffled_batch_forward(encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: int = 1,
                           generator: torch.Generator | None = None, modules: Sequence[nn.Module] = ()) -> torch.Tensor:
    """``encoder(x)`` with BatchNorm statistics from a random sub-batch: MoCo's shuffle-BN (He et al. 2020, sec. 3.3).

    Under DDP (more than one rank), as ``facebookresearch/moco``'s ``_batch_shuffle_ddp``: the
    global batch is gathered, permuted (rank 0 draws the permutation and broadcasts it), each rank
    runs ``encoder`` on its slice of the shuffled batch, and the outputs are gathered and put back in
    order, so a sample's key is normalised with statistics of other samples than its query.
    On one process the batch is permuted and split into ``groups`` sub-batches (sizes differ by
    at most one, at least 2 samples each; ``groups`` = the GPUs the statistics would be split
    over: 8 in the paper), each normalised with its own statistics, in one forward: every
    BatchNorm of ``modules`` (and of ``encoder`` if it is a module) takes per-sub-batch
    statistics (``batchnorm_per_sub_batch``), which equals a forward of each sub-batch for an
    encoder in which only BatchNorm mixes samples (a CNN, its MLP head).
    No gradient (keys are targets). ``generator`` draws the permutation (tests).
    """
    if is_dist() and dist.get_world_size() > 1:
        world, r, b = dist.get_world_size(), dist.get_rank(), x.shape[0]
        x_all = gather_no_grad(x)
        if x_all.shape[0] != world * b:
            raise ValueError(f"shuffle-BN needs the same batch on every rank; got {x_all.shape[0]} rows over {world} ranks of {b}")
        perm = random_permutation(x_all.shape[0], x.device, generator)
        dist.broadcast(perm, src=0)
        out = gather_no_grad(encoder(x_all[perm[r * b:(r + 1) * b]]))
        return out[torch.argsort(perm)][r * b:(r + 1) * b]
    if groups < 1:
        raise ValueError(f"shuffle-BN needs groups >= 1, got {groups}")
    groups = max(1, min(groups, x.shape[0] // 2))  # BatchNorm needs 2 samples a sub-batch
    if groups == 1:
        return encoder(x)
    modules = [*modules, encoder] if isinstance(encoder, nn.Module) else list(modules)
    if not modules:
        raise ValueError("shuffle-BN over sub-batches needs the modules whose BatchNorms to split: pass modules=")
    order = sub_batches_interleaved(random_permutation(x.shape[0], x.device, generator), groups)
    with batchnorm_per_sub_batch(modules, groups):
        out = encoder(x[order])
    return out[torch.argsort(order)]


def sub_batches_interleaved(perm: torch.Tensor, groups: int) -> torch.Tensor:
    """``perm`` reordered so that its ``tensor_split(groups)`` chunk ``g`` (one rank's slice under
    DDP) sits at the rows ``g, g + groups, ...``, the sub-batch that ``sub_batch_norm`` gives
    statistics of its own; the same sub-batches as ``groups`` ranks, in one tensor. On the device."""
    n = perm.shape[0]
    q, rem = divmod(n, groups)  # the first `rem` chunks hold q + 1 rows, the others q
    position = torch.arange(n, device=perm.device)
    in_long = position < rem * (q + 1)
    tail = position - rem * (q + 1)
    chunk = torch.where(in_long, position // (q + 1), rem + tail.div(q, rounding_mode="floor"))
    row = torch.where(in_long, position % (q + 1), tail.remainder(q))
    order = torch.empty_like(perm)
    order[row * groups + chunk] = perm
    return order
