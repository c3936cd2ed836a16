"""BatchNorm over sub-batches in one forward (MoCo's shuffle-BN on one device).

The reference is plain ``nn.BatchNorm`` run on each sub-batch separately, a copy per sub-batch
(one per simulated GPU), and the running statistics of the copies averaged, as the
``SplitBatchNorm`` of MoCo's official CIFAR-10 demo leaves them.
"""

import copy

import pytest
import torch
import torch.nn as nn

from hardcl_lightning.batchnorm import batchnorm_per_sub_batch, no_running_stat_updates, sub_batch_norm
from hardcl_lightning.distributed import shuffled_batch_forward, sub_batches_interleaved


def per_sub_batch_reference(bn: nn.Module, x: torch.Tensor, groups: int):
    """Outputs of a copy of ``bn`` on each sub-batch (rows g, g + groups, ...), the copies' mean running statistics."""
    out = torch.empty_like(x)
    copies = [copy.deepcopy(bn) for _ in range(groups)]
    for g, replica in enumerate(copies):
        out[g::groups] = replica(x[g::groups])
    mean = torch.stack([c.running_mean for c in copies]).mean(0) if bn.running_mean is not None else None
    var = torch.stack([c.running_var for c in copies]).mean(0) if bn.running_var is not None else None
    return out, mean, var


def randomised(bn: nn.Module) -> nn.Module:
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
        if bn.running_mean is not None:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return bn.train()


@pytest.mark.parametrize("shape, groups", [((12, 3), 3), ((13, 3), 3), ((16, 4, 5, 5), 4), ((10, 4, 3, 3), 4),
                                           ((8, 2, 6), 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_each_sub_batch_is_normalised_with_its_own_statistics(shape, groups, affine):
    torch.manual_seed(0)
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
    bn = randomised(kind(shape[1], affine=affine, momentum=0.3))
    x = torch.randn(shape) * 3 + 1
    ref_out, ref_mean, ref_var = per_sub_batch_reference(bn, x, groups)
    count = bn.num_batches_tracked.clone()
    out = sub_batch_norm(bn, x, groups)
    assert torch.allclose(out, ref_out, atol=1e-5)
    assert not torch.allclose(out, bn.__class__(shape[1], affine=False).train()(x), atol=1e-3)  # not the whole batch's
    assert torch.allclose(bn.running_mean, ref_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref_var, atol=1e-6)
    assert bn.num_batches_tracked == count + 1  # one update a forward, as each simulated GPU makes one


def test_gradients_match_a_forward_per_sub_batch():
    torch.manual_seed(0)
    bn = randomised(nn.BatchNorm2d(3))
    x = torch.randn(12, 3, 4, 4, requires_grad=True)
    w = torch.randn(12, 3, 4, 4)
    (sub_batch_norm(bn, x, 3) * w).sum().backward()
    got_x, got_w = x.grad.clone(), bn.weight.grad.clone()
    x.grad, bn.weight.grad = None, None
    ref = torch.empty_like(x)
    for g in range(3):
        ref[g::3] = nn.functional.batch_norm(x[g::3], None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    (ref * w).sum().backward()
    assert torch.allclose(got_x, x.grad, atol=1e-5) and torch.allclose(got_w, bn.weight.grad, atol=1e-5)


def test_memory_format_momentum_none_and_evaluation_follow_torch():
    torch.manual_seed(0)
    bn = randomised(nn.BatchNorm2d(4, momentum=None))
    x = torch.randn(8, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    ref_out, ref_mean, _ = per_sub_batch_reference(bn, x, 2)
    out = sub_batch_norm(bn, x, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the next convolution gets what it got before
    assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(bn.running_mean, ref_mean, atol=1e-6)
    bn.eval()
    assert torch.equal(sub_batch_norm(bn, x, 2), bn(x))  # evaluation: the running statistics, no sub-batches
    with pytest.raises(ValueError, match="4 BatchNorm sub-batches need at least 8 samples, got 6"):
        sub_batch_norm(bn.train(), x[:6], 4)


def test_sub_batches_inside_the_context_only_and_frozen_statistics_stay_frozen():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), randomised(nn.BatchNorm1d(4)), nn.ReLU(), nn.Linear(4, 4),
                        randomised(nn.BatchNorm1d(4)))
    x = torch.randn(12, 3)
    reference = torch.empty(12, 4)
    for g in range(2):
        reference[g::2] = copy.deepcopy(net)(x[g::2])
    whole = copy.deepcopy(net)(x)
    with batchnorm_per_sub_batch([net], 2):
        out = net(x)
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.allclose(net(x), whole, atol=1e-5)  # the BatchNorms' own forward again
    assert all("forward" not in bn.__dict__ for bn in net if isinstance(bn, nn.BatchNorm1d))
    with batchnorm_per_sub_batch([net, net[1], net], 2):  # a module named twice is patched (and restored) once
        pass
    assert all("forward" not in bn.__dict__ for bn in net if isinstance(bn, nn.BatchNorm1d))
    with pytest.raises(RuntimeError, match="boom"), batchnorm_per_sub_batch([net], 2):
        raise RuntimeError("boom")
    assert all("forward" not in bn.__dict__ for bn in net if isinstance(bn, nn.BatchNorm1d))
    before = net[1].running_mean.clone()
    with no_running_stat_updates([net]), batchnorm_per_sub_batch([net], 3):
        net(x)
    assert torch.equal(net[1].running_mean, before)


@pytest.mark.parametrize("n, groups", [(12, 3), (13, 3), (17, 4), (8, 2)])
def test_the_shuffled_chunks_become_the_interleaved_sub_batches(n, groups):
    """Chunk g of the permutation (rank g's slice under DDP) sits at rows g, g + groups, ..."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    order = sub_batches_interleaved(perm, groups)
    assert sorted(order.tolist()) == list(range(n))
    for g, chunk in enumerate(perm.tensor_split(groups)):
        assert order[g::groups].tolist() == chunk.tolist()


def test_a_sub_batch_forward_runs_the_encoder_once():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), randomised(nn.BatchNorm1d(4)))
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    x = torch.randn(16, 3)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(5))
    out = shuffled_batch_forward(net, x, groups=4, generator=torch.Generator().manual_seed(5))
    assert calls == [16]
    reference = torch.empty(16, 4)
    for chunk in perm.tensor_split(4):
        reference[chunk] = copy.deepcopy(net)(x[chunk])
    assert torch.allclose(out, reference, atol=1e-5)
    with pytest.raises(ValueError, match="pass modules="):
        shuffled_batch_forward(lambda t: net(t), x, groups=4)


@pytest.mark.parametrize("train", [True, False])
def test_without_running_statistics_every_forward_uses_the_sub_batches(train):
    """``track_running_stats=False``: batch statistics in train and eval mode, as torch's BatchNorm."""
    torch.manual_seed(0)
    bn = randomised(nn.BatchNorm1d(3, track_running_stats=False)).train(train)
    x = torch.randn(9, 3)
    ref_out, _, _ = per_sub_batch_reference(bn, x, 3)
    assert torch.allclose(sub_batch_norm(bn, x, 3), ref_out, atol=1e-5)
