"""Which images share a BatchNorm forward: per-view vs batched views, DINO's multi-crop head, MoCo's shuffle-BN.

Every check runs the networks in train mode (batch statistics) and compares with forwards written
out by hand, so a change in who shares statistics with whom shows up as a different number.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from hardcl_lightning.distributed import shuffled_batch_forward
from hardcl_lightning.methods import BYOL, DINO, HVSBYOL, MoCoV2, SimCLR, SimSiam

TINY = dict(backbone="resnet_tiny", cifar_stem=True)
HEADS = {
    SimCLR: dict(proj_hidden_dim=32, proj_output_dim=16),
    MoCoV2: dict(proj_hidden_dim=32, proj_output_dim=16, queue_size=64, key_bn="batch"),
    SimSiam: dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=8),
    BYOL: dict(proj_hidden_dim=32, proj_output_dim=16),
    DINO: dict(proj_hidden_dim=32, bottleneck_dim=8, num_prototypes=32, head_batch_norm=True),
}


def views(n=2, b=6, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(n)]


def test_each_method_forwards_views_as_its_official_code_does():
    defaults = {cls: cls(**TINY, **HEADS[cls]).view_forward for cls in HEADS}
    assert defaults == {SimCLR: "batched", MoCoV2: "per_view", SimSiam: "per_view", BYOL: "per_view", DINO: "batched"}
    with pytest.raises(ValueError, match="view_forward must be one of .*'per_view'.*got 'joint'"):
        SimCLR(**TINY, view_forward="joint")


@pytest.mark.parametrize("cls", [SimCLR, MoCoV2, SimSiam, BYOL], ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["batched", "per_view"])
def test_train_mode_outputs_equal_the_forwards_written_out(cls, mode):
    """per_view: each view's outputs are those of a forward of that view alone; batched: those of one
    forward of all views concatenated. The two differ (BatchNorm statistics), so the test can tell."""
    torch.manual_seed(0)
    m = cls(**TINY, **HEADS[cls], view_forward=mode).train()
    vs = views()
    outs = m.embed(vs)
    alone = [m.embed_batch(v) for v in vs]
    together = m.embed_batch(torch.cat(vs))
    for i, out in enumerate(outs):
        for key in ("feats",) + m.target_keys:
            per_view_ref = alone[i][key]
            batched_ref = together[key].chunk(len(vs))[i]
            assert not torch.allclose(per_view_ref, batched_ref, atol=1e-4), key  # the modes are distinguishable
            assert torch.allclose(out[key], per_view_ref if mode == "per_view" else batched_ref, atol=1e-5), key


def test_dino_head_runs_once_over_every_crop_as_multicropwrapper():
    """Student: backbone once per resolution, head (with BatchNorm) once over all crops' features;
    teacher: one pass over the global crops."""
    torch.manual_seed(0)
    m = DINO(**TINY, **HEADS[DINO]).train()
    globals_, locals_ = views(2, size=16), views(3, size=8, seed=2)
    outs = m.embed(globals_ + locals_)
    feats = torch.cat([m.backbone(torch.cat(globals_)), m.backbone(torch.cat(locals_))])
    student = m.head(feats).chunk(5)
    teacher = m.momentum_head(m.momentum_backbone(torch.cat(globals_))).chunk(2)
    for i, out in enumerate(outs):
        assert torch.allclose(out["student"], student[i], atol=1e-5), i
        if i < 2:
            assert torch.allclose(out["teacher"], teacher[i], atol=1e-5)
        else:
            assert "teacher" not in out
    per_resolution_head = m.head(m.backbone(torch.cat(locals_))).chunk(3)[0]  # what a head per resolution would give
    assert not torch.allclose(outs[2]["student"], per_resolution_head, atol=1e-4)


def test_hvs_scores_in_one_batched_forward_and_trains_per_view():
    """HVS-BYOL (per_view): the candidates' target outputs come from one forward of all candidates
    (the authors' scoring pass); the chosen views' online outputs from a forward of each view."""
    torch.manual_seed(0)
    m = HVSBYOL(**TINY, **HEADS[BYOL], num_views=4).train()
    cands = views(4, b=5)
    shapes = []
    original = m.embed_target
    m.embed_target = lambda x: (shapes.append(x.shape[0]), original(x))[1]  # type: ignore[method-assign]
    chosen = m.select_views({"views": cands})
    assert shapes == [20]  # one scoring forward of 4 x 5 candidates
    outs = m.embed(chosen)
    for v, out in zip(chosen, outs):
        assert torch.allclose(out["p"], m.predictor(m.projector(m.backbone(v))), atol=1e-5)


def naive_shuffled_bn(x, perm, groups):
    """BatchNorm (no affine) of each sample with the statistics of its sub-batch of the permuted batch."""
    out = torch.empty_like(x)
    for chunk in perm.tensor_split(groups):
        sub = x[chunk]
        out[chunk] = (sub - sub.mean(0)) / torch.sqrt(sub.var(0, unbiased=False) + 1e-5)
    return out


def test_single_device_shuffle_bn_normalises_each_sample_with_its_random_sub_batch():
    bn = nn.BatchNorm1d(3, affine=False).train()
    x = torch.randn(12, 3)
    out = shuffled_batch_forward(bn, x, groups=3, generator=torch.Generator().manual_seed(7))
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, naive_shuffled_bn(x, perm, 3), atol=1e-5)
    assert not torch.allclose(out, naive_shuffled_bn(x, torch.arange(12), 3), atol=1e-3)  # not contiguous groups
    assert torch.allclose(shuffled_batch_forward(bn, x, groups=1), F.batch_norm(x, None, None, training=True), atol=1e-5)
    assert shuffled_batch_forward(bn, x[:3], groups=8).shape == (3, 3)  # at least 2 samples a sub-batch
    with pytest.raises(ValueError, match="groups >= 1, got 0"):
        shuffled_batch_forward(bn, x, groups=0)


def test_moco_keys_use_shuffle_bn_queries_do_not():
    torch.manual_seed(0)
    m = MoCoV2(**TINY, proj_hidden_dim=32, proj_output_dim=16, queue_size=64, shuffle_bn_groups=2).train()
    x = views(1, b=8)[0]
    calls = []
    hook = m.momentum_backbone.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    torch.manual_seed(3)
    keys = m.embed_target(x)["k"]
    hook.remove()
    assert calls == [8]  # one forward of the whole batch, each BatchNorm with its sub-batches' statistics
    torch.manual_seed(3)
    perm = torch.randperm(8)
    ref = torch.empty_like(keys)
    for chunk in perm.tensor_split(2):
        ref[chunk] = F.normalize(m.momentum_projector(m.momentum_backbone(x[chunk])), dim=1)
    assert torch.allclose(keys, ref, atol=1e-5)
    whole = F.normalize(m.momentum_projector(m.momentum_backbone(x)), dim=1)
    assert not torch.allclose(keys, whole, atol=1e-4)


def test_sync_batchnorm_leaves_moco_shuffle_bn_key_encoder_per_process():
    """Lightning's ``sync_batchnorm`` converts every BatchNorm; a global key-encoder statistic would
    undo shuffle-BN, so ``on_fit_start`` makes the key encoder's local again (same tensors)."""

    class FakeTrainer:
        world_size = 1

    torch.manual_seed(0)
    for key_bn, key_sync in (("shuffle", False), ("batch", True)):
        m = nn.SyncBatchNorm.convert_sync_batchnorm(MoCoV2(**TINY, proj_hidden_dim=32, proj_output_dim=16,
                                                           queue_size=64, key_bn=key_bn, batch_size=32))
        state = m.state_dict(keep_vars=True)
        m._trainer = FakeTrainer()
        m.on_fit_start()
        m._trainer = None
        syncs = {name: any(isinstance(b, nn.SyncBatchNorm) for b in getattr(m, name).modules())
                 for name in ("backbone", "momentum_backbone")}
        assert syncs == {"backbone": True, "momentum_backbone": key_sync}, key_bn
        after = m.state_dict(keep_vars=True)
        assert list(after) == list(state) and all(after[k] is state[k] for k in state)  # the very same tensors
    m = nn.SyncBatchNorm.convert_sync_batchnorm(MoCoV2(**TINY, proj_hidden_dim=32, proj_output_dim=16, queue_size=64))
    m.use_local_key_batchnorm()
    bn = next(b for b in m.momentum_backbone.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm))
    x = torch.randn(6, bn.num_features, 4, 4)
    mean_before = bn.running_mean.clone()
    expected = F.batch_norm(x, mean_before.clone(), bn.running_var.clone(), bn.weight, bn.bias, training=True,
                            momentum=bn.momentum, eps=bn.eps)
    assert torch.allclose(bn(x), expected, atol=1e-6)  # this batch's statistics, on a CPU tensor: no SyncBatchNorm
    assert torch.allclose(bn.running_mean, (1 - bn.momentum) * mean_before + bn.momentum * x.mean((0, 2, 3)), atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shuffle_worker(rank, world, port, x, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = x.shape[0] // world
        bn = nn.BatchNorm1d(x.shape[1], affine=False).train()
        # each rank's own generator differs: the permutation must come from rank 0
        local = shuffled_batch_forward(bn, x[rank * b:(rank + 1) * b], generator=torch.Generator().manual_seed(11 + rank))
        out[rank] = local
    finally:
        dist.destroy_process_group()


def test_two_rank_shuffle_bn_matches_the_official_batch_shuffle():
    """2 gloo ranks: rank 0's permutation of the global batch, each rank's BatchNorm over its slice of
    the shuffled batch, outputs returned to the rank and position each sample came from."""
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_shuffle_worker, args=(2, _free_port(), x, out), nprocs=2, join=True)
        got = torch.cat([out[0], out[1]])
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(11))
    assert torch.allclose(got, naive_shuffled_bn(x, perm, 2), atol=1e-5)


def test_simclr_projector_ends_in_an_affine_free_batchnorm():
    torch.manual_seed(0)
    m = SimCLR(**TINY, **HEADS[SimCLR]).train()
    z = m.embed_batch(views(1, b=16)[0])["z"]
    assert torch.allclose(z.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(16), atol=1e-3)
    last = m.projector.net[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine
    off = SimCLR(**TINY, **HEADS[SimCLR], proj_last_bn=False)
    assert isinstance(off.projector.net[-1], nn.Linear)

