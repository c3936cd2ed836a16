"""Every method, one step: 2 gloo ranks x batch B == 1 process x batch 2B.

Each rank computes the method's own ``training_loss`` on its half of one fixed batch, back-
propagates, and averages gradients over ranks (what DDP's reducer does); then runs the
method's post-loss state update (MoCo/MoCHi enqueue gathered keys, DINO all-reduces its centre
batch mean). The same model on the whole batch in one process is the reference. In the first
cases BatchNorm is replaced by identity everywhere (backbone ``norm="none"``, heads stripped) so batch statistics
cannot differ; what remains is exactly the cross-rank semantics: SimCLR's gathered negatives,
the queue filled with every rank's keys, the centre all-reduce, HVS's per-sample selection on
gathered scores, and the purely per-sample losses of SimSiam and BYOL.

The BatchNorm cases keep every BatchNorm (backbone, heads, target networks) and convert them to
``SyncBatchNorm`` as Lightning's ``sync_batchnorm=True`` does; since torch's SyncBatchNorm
needs CUDA, its training forward is replaced on the ranks by the same computation written out
for gloo (sum, sum of squares and count all-reduced with gradient, biased variance). The
reference is plain BatchNorm over the global batch. MoCo/MoCHi use shuffle-BN: ``on_fit_start``
gives the key encoder per-rank BatchNorm again, each rank normalises its slice of rank 0's
permutation of the global batch, which is what one process does with ``shuffle_bn_groups=2``
(the same permutation: both draw it from the same seeded RNG).

The generator methods draw their latents from each rank's own RNG, so a 2-rank step cannot
reproduce a 1-process step sample for sample; their cross-rank parts are the same gathers as
SimCLR's (tested here) and DDP's gradient averaging.
"""

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import torch.nn.functional as F

import hardcl_lightning.hard_negatives as hard_negatives
import hardcl_lightning.methods as methods
from hardcl_lightning.distributed import gather_with_grad

TOL = 1e-5  # float32, 2 ranks: the sums are re-associated, nothing else differs
BN_TOL = 1e-4  # BatchNorm divides by per-channel std of 8-16 samples, which amplifies re-association
BATCH, SIZE = 8, 16
TINY = dict(backbone="resnet_tiny", cifar_stem=True, backbone_kwargs={"widths": (8, 8, 16, 16), "norm": "none"},
            batch_size=BATCH // 2)
CASES = {
    "SimCLR": dict(proj_hidden_dim=16, proj_output_dim=8),
    "MoCoV2": dict(proj_hidden_dim=16, proj_output_dim=8, queue_size=32),
    "MoCHi": dict(proj_hidden_dim=16, proj_output_dim=8, queue_size=32, mixing=(8, 6, 3), mix_start_epoch=0),
    "SimSiam": dict(proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=4),
    "BYOL": dict(proj_hidden_dim=16, proj_output_dim=8),
    "DINO": dict(proj_hidden_dim=16, bottleneck_dim=8, num_prototypes=32),
    "HVSSimCLR": dict(proj_hidden_dim=16, proj_output_dim=8, num_views=4),
}
BN_CASES = {  # every BatchNorm kept; MoCo's keys with shuffle-BN over 2 ranks / 2 sub-batches
    "SimCLR": CASES["SimCLR"],
    "MoCoV2": dict(CASES["MoCoV2"], key_bn="shuffle", shuffle_bn_groups=2),
    "MoCHi": dict(CASES["MoCHi"], key_bn="shuffle", shuffle_bn_groups=2),
    "SimSiam": CASES["SimSiam"],
    "BYOL": CASES["BYOL"],
    "DINO": dict(CASES["DINO"], head_batch_norm=True),
    "HVSSimCLR": CASES["HVSSimCLR"],
}


def strip_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            strip_batchnorm(child)
    return module


def build(name: str, batchnorm: bool = False, world: int = 1):
    """The model and the global batch; ``batchnorm``: BatchNorm kept, and with ``world`` > 1
    converted to SyncBatchNorm as Lightning does, then the method's ``on_fit_start``."""
    torch.manual_seed(0)
    if not batchnorm:
        model = strip_batchnorm(getattr(methods, name)(**TINY, **CASES[name]))
    else:
        model = getattr(methods, name)(**dict(TINY, backbone_kwargs={"widths": (8, 8, 16, 16)}), **BN_CASES[name])
        if world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model._trainer = type("Trainer", (), {"world_size": world})()
        model.on_fit_start()
        model._trainer = None
    views = [torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(10 + v)) for v in range(model.num_views)]
    return model, views


def sync_batchnorm_forward_on_cpu(self, x: torch.Tensor) -> torch.Tensor:
    """``nn.SyncBatchNorm``'s training forward for gloo: statistics over every rank's batch, the
    gradient through them reaching every rank (as torch's CUDA kernels do)."""
    if not self.training:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
    c, dims = x.shape[1], [0, *range(2, x.dim())]
    local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() / c])])
    total = gather_with_grad(local.unsqueeze(0)).sum(0)
    mean = total[:c] / total[-1]
    var = total[c:2 * c] / total[-1] - mean * mean
    shape = (1, c) + (1,) * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def global_batch_draws(rank: int, world: int):
    """MoCHi's random mixing draws, made for the global batch and sliced to this rank's queries, so
    that every query gets the same draws in both settings (each query's own randomness is the only
    thing a 2-rank step cannot share with a 1-process step)."""
    draw = hard_negatives.sample_mixing_draws

    def sliced(batch, num_hard, num_mix, num_mix_query, device="cpu", generator=None):
        full = draw(batch * world, num_hard, num_mix, num_mix_query, device, torch.Generator().manual_seed(sliced.calls))
        sliced.calls += 1
        rows = slice(rank * batch, (rank + 1) * batch)
        return type(full)(**{f.name: getattr(full, f.name)[rows] for f in dataclasses.fields(full)})

    sliced.calls = 0
    return sliced


def one_step(model, views, world: int):
    """Loss, DDP-averaged gradients of the online parameters, and the post-step state."""
    batch = {"views": views, "label": torch.zeros(views[0].shape[0], dtype=torch.long)}
    outs = model.embed(model.training_views(batch))
    loss = model.training_loss(outs)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    if world > 1:
        dist.all_reduce(grads)
        grads /= world
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world
    with torch.no_grad():
        model.after_training_loss(outs)
    state = {k: v.clone() for k, v in model.state_dict().items() if k in ("queue", "queue_ptr", "center")}
    return loss.detach(), grads, state


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        nn.SyncBatchNorm.forward = sync_batchnorm_forward_on_cpu
        hard_negatives.sample_mixing_draws = global_batch_draws(rank, world)
        for key in [(name, False) for name in CASES] + [(name, True) for name in BN_CASES]:
            hard_negatives.sample_mixing_draws.calls = 0  # each model's first step: the reference's draws
            model, views = build(*key, world=world)
            b = BATCH // world
            shard = [v[rank * b:(rank + 1) * b] for v in views]
            result = one_step(model, shard, world)
            if rank == 0:
                out[key] = result
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
        return dict(out)


def check_equal(got, reference, tol):
    loss, grads, state = got
    ref_loss, ref_grads, ref_state = reference
    assert torch.allclose(loss, ref_loss, atol=tol), (loss, ref_loss)
    assert grads.shape == ref_grads.shape and ref_grads.abs().sum() > 0
    assert torch.allclose(grads, ref_grads, atol=tol, rtol=1e-4), (grads - ref_grads).abs().max()
    for key, ref in ref_state.items():  # the queue holds both ranks' keys in batch order; the centre the global mean
        assert torch.allclose(state[key].float(), ref.float(), atol=tol), key


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process_with_the_global_batch(name, two_rank_results, monkeypatch):
    monkeypatch.setattr(hard_negatives, "sample_mixing_draws", global_batch_draws(0, 1))
    model, views = build(name)
    check_equal(two_rank_results[(name, False)], one_step(model, views, world=1), TOL)


@pytest.mark.parametrize("name", list(BN_CASES))
def test_two_ranks_with_sync_and_shuffle_batchnorm_equal_one_process(name, two_rank_results, monkeypatch):
    """SyncBatchNorm over 2 ranks == BatchNorm over the global batch; MoCo's shuffle-BN over 2
    ranks == shuffle-BN over 2 sub-batches in one process."""
    monkeypatch.setattr(hard_negatives, "sample_mixing_draws", global_batch_draws(0, 1))
    model, views = build(name, batchnorm=True)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    check_equal(two_rank_results[(name, True)], one_step(model, views, world=1), BN_TOL)
