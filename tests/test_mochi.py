"""MoCHi's mixer, MoCHi itself, and the DCL / HCL losses against naive references."""

import math

import pytest
import torch
import torch.nn.functional as F

from hardcl_lightning.hard_negatives import mix_hard_negatives, sample_mixing_draws
from hardcl_lightning.losses import info_nce, nt_xent, reweighted_negatives_loss
from hardcl_lightning.methods import MoCHi, MoCoV2


def naive_mix(q, bank, n, draws):
    """Per-query loop: sort this query's negatives by similarity, mix as in eqs. 3-4."""
    out = []
    for b in range(q.shape[0]):
        qb = F.normalize(q[b], dim=0)
        negs = F.normalize(bank, dim=1)
        sims = [float(qb @ negs[k]) for k in range(negs.shape[0])]
        hard = [negs[k] for k in sorted(range(len(sims)), key=lambda k: -sims[k])[:n]]
        rows = []
        for t in range(draws.index_i.shape[1]):
            a = draws.alpha[b, t]
            rows.append(F.normalize(a * hard[draws.index_i[b, t]] + (1 - a) * hard[draws.index_j[b, t]], dim=0))
        for t in range(draws.index_query_mix.shape[1]):
            beta = draws.beta[b, t]
            rows.append(F.normalize(beta * qb + (1 - beta) * hard[draws.index_query_mix[b, t]], dim=0))
        out.append(torch.stack(rows))
    return torch.stack(out)


def test_vectorised_mixer_equals_per_query_loop():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(5, 8, generator=g), torch.randn(40, 8, generator=g)
    draws = sample_mixing_draws(5, 10, 7, 3, generator=g)
    got = mix_hard_negatives(q, bank, 10, 7, 3, draws=draws)
    assert torch.allclose(got.synthetic, naive_mix(q, bank, 10, draws), atol=1e-6)


def test_every_query_mixes_its_own_hardest_negatives():
    """Two queries whose hard sets are disjoint: each query's synthetic points lie in its own cluster."""
    d = 16
    e0, e1 = torch.eye(d)[0], torch.eye(d)[1]
    g = torch.Generator().manual_seed(1)
    cluster0 = F.normalize(e0 + 0.1 * torch.randn(8, d, generator=g), dim=1)
    cluster1 = F.normalize(e1 + 0.1 * torch.randn(8, d, generator=g), dim=1)
    bank = torch.cat([cluster0, cluster1, -torch.eye(d)[2:6]])
    q = torch.stack([e0, e1])
    mixed = mix_hard_negatives(q, bank, num_hard=8, num_mix=20, num_mix_query=0)
    assert set(mixed.hard_index[0].tolist()) == set(range(8)) and set(mixed.hard_index[1].tolist()) == set(range(8, 16))
    syn = mixed.synthetic
    assert (syn[0] @ e0 > 0.8).all() and (syn[0] @ e1 < 0.5).all()
    assert (syn[1] @ e1 > 0.8).all() and (syn[1] @ e0 < 0.5).all()


def test_draw_properties_and_synthetic_points():
    draws = sample_mixing_draws(64, 16, 32, 32, generator=torch.Generator().manual_seed(2))
    assert (draws.beta >= 0).all() and (draws.beta < 0.5).all()
    assert (draws.index_i != draws.index_j).all()
    q = torch.randn(64, 8, requires_grad=True)
    mixed = mix_hard_negatives(q, torch.randn(100, 8), 16, 32, 32, draws=draws)
    assert torch.allclose(mixed.synthetic.norm(dim=-1), torch.ones(64, 64), atol=1e-5)
    assert not mixed.synthetic.requires_grad
    with pytest.raises(ValueError, match="num_hard"):
        mix_hard_negatives(q, torch.randn(10, 8), 11, 1, 1)


def tiny(cls, **kw):
    torch.manual_seed(0)
    return cls(backbone="resnet_tiny", cifar_stem=True, proj_hidden_dim=32, proj_output_dim=16, queue_size=64, **kw)


def test_mochi_without_mixing_is_moco_and_mixing_leaves_the_queue_alone():
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    moco, plain = tiny(MoCoV2).eval(), tiny(MoCHi, mixing=(16, 0, 0)).eval()
    plain.load_state_dict(moco.state_dict())
    assert torch.allclose(plain.training_loss(plain.embed(views)), moco.training_loss(moco.embed(views)), atol=1e-6)
    mochi = tiny(MoCHi, mixing=(16, 8, 4)).eval()
    mochi.load_state_dict(moco.state_dict())
    queue = mochi.queue.clone()
    outs = mochi.embed(views)
    loss = mochi.training_loss(outs)
    assert torch.equal(mochi.queue, queue)  # scoring and mixing never touch the queue
    assert loss > moco.training_loss(moco.embed(views))  # extra (hard) negatives raise the loss
    mochi.after_training_loss(outs)
    assert torch.equal(mochi.queue[:4], outs[0]["k"]) and torch.equal(mochi.queue[4:], queue[4:])  # keys only


def test_mix_start_epoch_and_bad_configurations():
    m = tiny(MoCHi, mixing=(16, 8, 4), mix_start_epoch=2)

    class FakeTrainer:
        current_epoch = 1

    m._trainer = FakeTrainer()
    assert not m.mixing_active
    FakeTrainer.current_epoch = 2
    assert m.mixing_active
    m._trainer = None
    with pytest.raises(ValueError, match=r"N=128 must be in \[1, queue_size=64\]"):
        tiny(MoCHi, mixing=(128, 8, 4))
    with pytest.raises(ValueError, match="s and s'"):
        tiny(MoCHi, mixing=(16, -1, 4))


def naive_dcl_hcl(pos, negs, t, tau_plus, beta):
    """Chuang et al. / Robinson et al. by explicit sums over negatives (pos, negs are cosines)."""
    out = []
    for p, ns in zip(pos.tolist(), negs.tolist()):
        m = len(ns)
        imp = [math.exp(beta * n / t) for n in ns]
        mean_imp = sum(imp) / m
        reweighted = sum(w * math.exp(n / t) for w, n in zip(imp, ns)) / mean_imp
        ng = max((reweighted - tau_plus * m * math.exp(p / t)) / (1 - tau_plus), m * math.exp(-1 / t))
        out.append(-math.log(math.exp(p / t) / (math.exp(p / t) + ng)))
    return torch.tensor(out)


@pytest.mark.parametrize("tau_plus, beta", [(0.1, 0.0), (0.0, 1.0), (0.1, 1.0), (0.3, 0.5)])
def test_dcl_and_hcl_match_hand_written_formulas(tau_plus, beta):
    g = torch.Generator().manual_seed(3)
    pos, negs, t = torch.rand(6, generator=g) * 2 - 1, torch.rand(6, 9, generator=g) * 2 - 1, 0.5
    got = reweighted_negatives_loss(pos / t, negs / t, t, tau_plus, beta)
    assert torch.allclose(got.double(), naive_dcl_hcl(pos, negs, t, tau_plus, beta).double(), atol=1e-5)


def test_dcl_and_hcl_reduce_to_infonce():
    g = torch.Generator().manual_seed(4)
    q, k, queue = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(20, 8, generator=g)
    plain = info_nce(q, k, queue, 0.2, reduction="none")
    qn, kn, nn_ = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    general = reweighted_negatives_loss((qn * kn).sum(1) / 0.2, qn @ nn_.T / 0.2, 0.2, 0.0, 0.0)
    assert torch.allclose(plain, general, atol=1e-5)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert torch.allclose(nt_xent(a, b, 0.3, "none", tau_plus=1e-9, hardness_beta=1e-9), nt_xent(a, b, 0.3, "none"), atol=1e-5)
    with pytest.raises(ValueError, match="tau_plus"):
        reweighted_negatives_loss(torch.zeros(1), torch.zeros(1, 2), 0.2, tau_plus=1.0)


def test_mochi_gradient_reaches_the_query_through_synthetic_logits_only():
    m = tiny(MoCHi, mixing=(16, 8, 4)).eval()
    q = torch.randn(4, 16, requires_grad=True)
    k = torch.randn(4, 16)
    m.query_loss(q, k, m.queue).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_topk_synthetic_share_equals_brute_force_over_queue_and_synthetic():
    m = tiny(MoCHi, mixing=(8, 6, 3))
    g = torch.Generator().manual_seed(6)
    real, syn = torch.rand(5, 40, generator=g), torch.rand(5, 9, generator=g)
    m._record_stats(real.topk(8, dim=1).values, syn)
    top = torch.cat([real, syn], dim=1).topk(8, dim=1).indices
    assert m.last_mixing_stats["hard/mochi_topk_synthetic_share"] == pytest.approx((top >= 40).float().mean().item())


def test_closed_form_logits_equal_dot_products_with_built_synthetic_points():
    from hardcl_lightning.hard_negatives import mixed_negative_logits

    g = torch.Generator().manual_seed(7)
    q = F.normalize(torch.randn(6, 8, generator=g), dim=1).requires_grad_(True)
    bank = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    draws = sample_mixing_draws(6, 12, 9, 5, generator=g)
    built = mix_hard_negatives(q.detach(), bank, 12, 9, 5, draws=draws).synthetic
    ref = torch.einsum("bd,bmd->bm", q, built)
    got, hard_sim = mixed_negative_logits(q, bank, q @ bank.T, 12, 9, 5, draws=draws)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(hard_sim, (q @ bank.T).topk(12, dim=1).values)
    w = torch.randn(6, 14, generator=g)
    g_ref, = torch.autograd.grad((ref * w).sum(), q)
    g_got, = torch.autograd.grad((got * w).sum(), q)
    assert torch.allclose(g_got, g_ref, atol=1e-5)  # same gradient: synthetic points are constants


@pytest.mark.parametrize("t", [0.005, 0.01, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("tau_plus, beta", [(0.1, 0.0), (0.0, 1.0), (0.1, 1.0)])
def test_dcl_and_hcl_stay_finite_and_exact_at_low_temperature(t, tau_plus, beta):
    """float32 in log space equals the float64 hand-written formula down to T=0.005 (exp(1/T) overflows float32)."""
    g = torch.Generator().manual_seed(5)
    pos = torch.rand(8, generator=g) * 1.8 - 0.9
    negs = torch.rand(8, 12, generator=g) * 1.8 - 0.9
    negs[0, :4] = pos[0] + 0.05  # some negatives more similar than the positive
    pos_l = (pos / t).float().requires_grad_()
    got = reweighted_negatives_loss(pos_l, (negs / t).float(), t, tau_plus, beta)
    assert torch.isfinite(got).all()
    ref = naive_dcl_hcl(pos.double(), negs.double(), t, tau_plus, beta).double()
    assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-3), (got, ref)
    got.sum().backward()
    assert torch.isfinite(pos_l.grad).all()


def test_dcl_negative_count_includes_mochis_synthetic_negatives():
    """With MoCHi's synthetic logits appended, M = K queue keys + the synthetic points."""
    g = torch.Generator().manual_seed(6)
    q, k, queue = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(10, 8, generator=g)
    synthetic = F.normalize(torch.randn(4, 3, 8, generator=g), dim=2)
    qn, kn, bank = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    extra = (qn.unsqueeze(1) * synthetic).sum(-1) / 0.2
    got = info_nce(q, k, queue, 0.2, reduction="none", extra_negative_logits=extra, tau_plus=0.1)
    negs = torch.cat([qn @ bank.T, extra * 0.2], dim=1)  # 13 negatives per query
    assert negs.shape[1] == 13
    assert torch.allclose(got.double(), naive_dcl_hcl((qn * kn).sum(1), negs, 0.2, 0.1, 0.0).double(), atol=1e-5)


def test_own_keys_are_never_mixed_nor_negatives():
    """With a query's own earlier key in the queue (its most similar entry), MoCHi with the key
    masked gives the loss MoCHi gives on the queue without that entry, under the same draws; the
    own key never reaches the N hardest."""
    m = tiny(MoCHi, mixing=(8, 6, 3), key_bn="batch")
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    queue = F.normalize(torch.randn(64, 16, generator=g), dim=1)
    own = torch.tensor([5, 20, 40])
    queue[own] = F.normalize(q, dim=1)  # each query's own key: the hardest "negative" it could have
    exclude = torch.zeros(3, 64, dtype=torch.bool)
    exclude[torch.arange(3), own] = True
    torch.manual_seed(9)
    masked = m.query_loss(q, k, queue, exclude)
    assert m.last_mixing_stats["hard/mochi_hard_sim_max"] < 0.999
    for b in range(3):
        keep = torch.ones(64, dtype=torch.bool)
        keep[own[b]] = False
        torch.manual_seed(9)
        ref = m.query_loss(q, k, queue[keep])  # the same draws: only row b is compared
        assert torch.allclose(masked[b], ref[b], atol=1e-5), b
    torch.manual_seed(9)
    assert (m.query_loss(q, k, queue) > masked).all()  # unmasked, the own key is a (hardest) negative


def test_same_class_shares_of_the_hardest_and_of_the_synthetic_sources_match_a_naive_count():
    """The diagnostics count, over (query, negative) pairs whose both labels are known, how often a
    hardest negative, and a synthetic negative's source, is an image of the query's own class."""
    m = tiny(MoCHi, mixing=(6, 4, 2))
    g = torch.Generator().manual_seed(3)
    m.train_labels = torch.randint(3, (50,), generator=g)  # the label of each dataset index
    m.train_labels[7] = -1  # an unlabeled image
    m.queue_index.copy_(torch.randint(50, (m.queue_size,), generator=g))
    m.queue_index[:5] = -1  # random initial entries: no image
    m._query_index = torch.tensor([0, 7, 12, 33])
    hard_index = torch.stack([torch.randperm(m.queue_size, generator=g)[:6] for _ in range(4)])
    hard_index[0, :3] = torch.arange(3)  # some of the unknown entries among the hardest
    draws = sample_mixing_draws(4, 6, 4, 2, generator=g)
    m._record_class_shares(hard_index, draws)

    def naive(positions_per_query):
        same = known = 0
        for b, positions in enumerate(positions_per_query):
            ql = int(m.train_labels[m._query_index[b]])
            for p in positions:
                qi = int(m.queue_index[hard_index[b, p]])
                nl = int(m.train_labels[qi]) if qi >= 0 else -1
                if ql >= 0 and nl >= 0:
                    known += 1
                    same += ql == nl
        return same / known

    hardest = naive([range(6)] * 4)
    sources = naive([[*draws.index_i[b].tolist(), *draws.index_j[b].tolist(), *draws.index_query_mix[b].tolist()]
                     for b in range(4)])
    assert m.last_mixing_stats["hard/mochi_hardest_same_class"].item() == pytest.approx(hardest)
    assert m.last_mixing_stats["hard/mochi_synthetic_source_same_class"].item() == pytest.approx(sources)


def test_mochi_logs_the_same_class_shares_while_training(tmp_path):
    import lightning as L

    from hardcl_lightning.data import ShapesDataModule

    class Keep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen = dict(trainer.callback_metrics)

    keep = Keep()
    torch.manual_seed(0)
    m = tiny(MoCHi, mixing=(8, 4, 2), mix_start_epoch=0, optimizer="sgd", lr=0.01, batch_size=8)
    dm = ShapesDataModule(num_train=64, num_val=10, batch_size=8, num_workers=0, image_size=16)
    L.Trainer(max_epochs=1, limit_train_batches=6, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, limit_val_batches=0, callbacks=[keep], enable_model_summary=False).fit(m, dm)
    share = float(keep.seen["hard/mochi_hardest_same_class_step"])
    assert 0.0 <= share <= 1.0 and "hard/mochi_synthetic_source_same_class_step" in keep.seen
    assert torch.equal(m.train_labels, dm.train_labels())
