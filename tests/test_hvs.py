"""Hard view selection: the selection against independent references."""

import itertools
import math

import lightning as L
import pytest
import torch

from hardcl_lightning.callbacks import HVSImageGrid
from hardcl_lightning.data import ShapesDataModule
from hardcl_lightning.methods import (
    BYOL, DINO, HVSBYOL, HVSDINO, HVSMoCoV2, HVSSimCLR, HVSSimSiam, BaseMethod, MoCoV2, SimCLR, SimSiam, with_hvs,
)
from hardcl_lightning.methods.hvs import box_iou, candidate_pairs
from test_methods import SMALL_HEADS, TINY

HEADS = {HVSSimCLR: SMALL_HEADS[SimCLR], HVSMoCoV2: SMALL_HEADS[MoCoV2], HVSSimSiam: SMALL_HEADS[SimSiam],
         HVSBYOL: SMALL_HEADS[BYOL], HVSDINO: SMALL_HEADS[DINO]}


class TableMethod(BaseMethod):
    """A stub whose per-sample pair loss is a fixed table[i, j, sample] (views carry their ids)."""

    def __init__(self, table: torch.Tensor, **kw) -> None:
        super().__init__(backbone="resnet_tiny", **kw)
        self.table = table

    def embed_batch(self, x):
        return {"feats": x.mean(dim=(1, 2, 3)), "view": x[:, 0, 0, 0].long(), "sample": x[:, 1, 0, 0].long()}

    def pair_loss(self, a, b):
        return self.table[a["view"], b["view"], a["sample"]]


def id_views(n, b):
    views = []
    for v in range(n):
        x = torch.zeros(b, 3, 4, 4)
        x[:, 0] = v
        x[:, 1] = torch.arange(b).view(b, 1, 1).float()
        views.append(x)
    return views


def test_selection_picks_the_per_sample_argmax_of_a_known_table():
    n, b = 4, 7
    g = torch.Generator().manual_seed(0)
    table = torch.rand(n, n, b, generator=g)
    m = with_hvs(TableMethod)(table=table, num_views=n)
    views = id_views(n, b)
    chosen = m.select_views({"views": views})
    for s in range(b):
        best = max(itertools.combinations(range(n), 2), key=lambda p: table[p[0], p[1], s].item())
        assert (chosen[0][s, 0, 0, 0].item(), chosen[1][s, 0, 0, 0].item()) == best


def test_limit_comparisons_never_selects_nothing():
    table = torch.rand(4, 4, 3)
    for limit, expected in [(None, 6), (0, 6), (2, 2), (1, 1), (100, 6)]:
        m = with_hvs(TableMethod)(table=table, num_views=4, limit_comparisons=limit)
        assert m.pairs_to_score().shape == (expected, 2)
        chosen = m.select_views({"views": id_views(4, 3)})
        assert len(chosen) == 2 and chosen[0].shape == (3, 3, 4, 4)
    with pytest.raises(ValueError, match="limit_comparisons"):
        with_hvs(TableMethod)(table=table, num_views=4, limit_comparisons=-1)


def test_pair_modes_and_too_few_candidates():
    assert candidate_pairs(4, "all").tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert candidate_pairs(4, "cross_stream").tolist() == [[0, 1], [0, 3], [1, 2], [2, 3]]
    assert candidate_pairs(4, "anchor").tolist() == [[0, 1], [0, 2], [0, 3]]
    with pytest.raises(ValueError, match="num_views=1"):
        candidate_pairs(1, "all")
    with pytest.raises(ValueError, match="'random'"):
        candidate_pairs(4, "random")


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([1 / 7, 0.0]))


@pytest.mark.parametrize("cls", list(HEADS), ids=lambda c: c.__name__)
def test_real_methods_select_the_naive_loop_maximum(cls):
    torch.manual_seed(0)
    m = cls(**TINY, **HEADS[cls], num_views=4, pair_mode="all").eval()  # eval: BN independent of batch composition
    g = torch.Generator().manual_seed(1)
    cands = [torch.randn(5, 3, 16, 16, generator=g) for _ in range(4)]
    chosen = m.select_views({"views": cands})
    sel = m.last_selection
    with torch.no_grad():
        per_view = [m.embed([v])[0] for v in cands]  # naive: one forward per view
        naive = {(i, j): m.pair_loss(per_view[i], per_view[j]) for i, j in itertools.combinations(range(4), 2)}
    for s in range(5):
        best = max(naive[p][s].item() for p in naive)
        a, b = int(sel["index_a"][s]), int(sel["index_b"][s])
        assert naive[(a, b)][s].item() == pytest.approx(best, rel=1e-4, abs=1e-5)
        assert torch.equal(chosen[0][s], cands[a][s]) and torch.equal(chosen[1][s], cands[b][s])


@pytest.mark.parametrize("cls", [HVSSimCLR, HVSSimSiam], ids=lambda c: c.__name__)
def test_gradients_flow_only_through_the_training_forward_of_chosen_views(cls):
    torch.manual_seed(0)
    m = cls(**TINY, **HEADS[cls], num_views=4).eval()
    cands = [torch.randn(6, 3, 16, 16, requires_grad=True) for _ in range(4)]
    out = m.training_step({"views": cands, "label": torch.zeros(6, dtype=torch.long)}, 0)
    out["loss"].backward()
    sel = m.last_selection
    for v, c in enumerate(cands):
        touched = c.grad.flatten(1).abs().sum(1) > 0 if c.grad is not None else torch.zeros(6, dtype=torch.bool)
        chosen = (sel["index_a"] == v) | (sel["index_b"] == v)
        assert torch.equal(touched, chosen), (v, touched, chosen)


def test_dino_keeps_its_local_crops():
    torch.manual_seed(0)
    m = HVSDINO(**TINY, **HEADS[HVSDINO], num_views=4)
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(3, 3, 16, 16, generator=g) for _ in range(4)] + [torch.randn(3, 3, 8, 8, generator=g) for _ in range(3)]
    chosen = m.select_views({"views": views})
    assert [tuple(v.shape) for v in chosen] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 3
    assert all(c is v for c, v in zip(chosen[2:], views[4:]))
    # cross-stream pairs: one even and one odd candidate
    assert ((m.last_selection["index_a"] + m.last_selection["index_b"]) % 2 == 1).all()
    center = m.center.clone()
    m.select_views({"views": views})
    assert torch.equal(m.center, center)  # scoring does not update the centre



def test_dino_selects_the_hardest_global_pair_and_local_subset_by_the_full_multicrop_loss():
    """As the authors' DINO selection: every (even, odd) global pair x every 2 of 3 local crops is
    scored with the multi-crop loss of its own crops; a naive loop (per-view forwards, the loss by
    explicit sums) finds the same per-sample maximum, and the chosen crops are those of it."""
    from test_methods import naive_dino_loss

    torch.manual_seed(0)
    m = HVSDINO(**TINY, **HEADS[HVSDINO], num_views=4, num_local_crops_trained=2).eval()
    m.center.copy_(torch.randn_like(m.center) * 0.1)
    g = torch.Generator().manual_seed(3)
    globals_ = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(4)]
    locals_ = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]
    chosen = m.select_views({"views": globals_ + locals_})
    sel = m.last_selection
    assert [tuple(v.shape) for v in chosen] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 2
    tt = m.current_teacher_temperature()
    with torch.no_grad():
        student = [m.head(m.backbone(v)) for v in globals_ + locals_]
        teacher = [m.momentum_head(m.momentum_backbone(v)) for v in globals_]
        naive = {}
        for a, b in [(0, 1), (0, 3), (1, 2), (2, 3)]:
            for subset in itertools.combinations(range(3), 2):
                crops = [student[a], student[b]] + [student[4 + j] for j in subset]
                naive[(a, b, subset)] = naive_dino_loss(crops, [teacher[a], teacher[b]], m.center, 0.1, tt)
    assert len(naive) == sel["scores"].shape[0] == 12
    for s in range(4):
        best = max(naive, key=lambda c: naive[c][s].item())
        a, b, subset = int(sel["index_a"][s]), int(sel["index_b"][s]), tuple(sel["local_index"][s].tolist())
        assert naive[(a, b, subset)][s].item() == pytest.approx(naive[best][s].item(), rel=1e-4, abs=1e-5)
        assert torch.equal(chosen[0][s], globals_[a][s]) and torch.equal(chosen[1][s], globals_[b][s])
        assert all(torch.equal(chosen[2 + k][s], locals_[j][s]) for k, j in enumerate(subset))
    with pytest.raises(ValueError, match="num_local_crops_trained=5 but the batch has 3 local crops"):
        HVSDINO(**TINY, **HEADS[HVSDINO], num_views=4, num_local_crops_trained=5).select_views({"views": globals_ + locals_})
    assert len(HVSDINO(**TINY, **HEADS[HVSDINO], num_views=4, num_local_crops_trained=2, limit_comparisons=5)
               .combinations_to_score(3)[0]) == 5


def test_select_every_and_selection_resolution():
    torch.manual_seed(0)
    m = HVSSimSiam(**TINY, **HEADS[HVSSimSiam], num_views=4, selection_resolution=8, select_every=2)
    cands = [torch.randn(4, 3, 16, 16) for _ in range(4)]
    chosen = m.select_views({"views": cands})  # step 0: selects (scored at 8 px), trains at 16 px
    assert chosen[0].shape == (4, 3, 16, 16) and m.last_selection

    class FakeTrainer:
        global_step = 1

    m._trainer = FakeTrainer()  # an odd step: no selection, views 0 and 1
    chosen = m.select_views({"views": cands})
    assert chosen[0] is cands[0] and chosen[1] is cands[1]
    m._trainer = None


def test_short_run_selects_pairs_that_overlap_less_and_logs_a_grid(tmp_path):
    """The paper's finding (sec. 5): selected pairs have a lower crop IoU than random candidate pairs."""
    L.seed_everything(0)
    m = HVSSimCLR(**TINY, proj_hidden_dim=64, proj_output_dim=32, num_views=4, optimizer="adamw", lr=3e-3, scale_lr=False)
    dm = ShapesDataModule(num_train=320, num_val=40, batch_size=32, num_workers=0, image_size=16, num_views=4,
                          crop_scale=(0.2, 1.0))
    grid = HVSImageGrid(num_images=4)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[grid], enable_model_summary=False, default_root_dir=tmp_path,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path))
    trainer.fit(m, dm)
    metrics = trainer.logged_metrics
    assert metrics["hard/hvs_iou_selected_epoch"] < metrics["hard/hvs_iou_random_epoch"]
    assert metrics["hard/hvs_loss_selected_epoch"] > metrics["hard/hvs_loss_mean_epoch"]
    assert sum(metrics[f"hard/hvs_win_frac_{k}_epoch"] for k in range(4)) == pytest.approx(2.0)
    assert grid.saved and grid.saved[0].is_file()


@pytest.mark.parametrize("cls", [HVSMoCoV2, HVSBYOL, HVSDINO], ids=lambda c: c.__name__)
def test_training_forward_reuses_the_scoring_pass_target_outputs(cls):
    """``reuse_targets=True``: the chosen views' target outputs come from the scoring pass: identical
    values, one target forward per step; ``reuse_targets=False`` (the default, as the authors' DINO
    code) recomputes them on the chosen views: a separate target forward, equal to one run by hand."""
    assert cls(**TINY, **HEADS[cls], num_views=4).reuse_targets is False
    torch.manual_seed(0)
    m = cls(**TINY, **HEADS[cls], num_views=4, reuse_targets=True).eval()
    g = torch.Generator().manual_seed(5)
    batch = {"views": [torch.randn(5, 3, 16, 16, generator=g) for _ in range(4)], "index": torch.arange(5)}
    calls = []
    original = m.embed_target
    m.embed_target = lambda x: (calls.append(x.shape[0]), original(x))[1]  # type: ignore[method-assign]
    torch.manual_seed(1)
    reused = m.embed_training_views(batch)
    assert calls == [20]  # the scoring pass only
    chosen = m.select_views(batch)  # the same selection (eval mode: deterministic)
    calls.clear()
    fresh = m.embed(chosen)  # everything recomputed on the chosen views
    assert len(calls) == len(m.view_groups(chosen))
    key = m.target_keys[0]
    for r, f in zip(reused, fresh):
        assert torch.allclose(r[key], f[key], atol=1e-5)
    m.reuse_targets = False
    calls.clear()
    again = m.embed_training_views(batch)
    assert len(calls) == 1 + len(m.view_groups(chosen))  # scoring + the training forward's own targets
    for r, a in zip(reused, again):
        assert torch.allclose(r[key], a[key], atol=1e-5)


def test_scoring_leaves_batchnorm_statistics_alone_when_asked():
    """scoring_updates_bn=False: after a step's selection the running statistics are those before it;
    True (the authors' code): the scoring forward of all candidates moved them."""
    for updates in (True, False):
        torch.manual_seed(0)
        m = HVSSimCLR(**TINY, **HEADS[HVSSimCLR], num_views=4, scoring_updates_bn=updates).train()
        bn = next(mod for mod in m.backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d))
        before = bn.running_mean.clone()
        m.select_views({"views": [torch.randn(6, 3, 16, 16) for _ in range(4)]})
        assert torch.equal(bn.running_mean, before) is (not updates)


def test_min_iou_rule_picks_the_least_overlapping_pair_and_is_logged():
    """Boxes written by hand: per image, the pair with the smallest IoU is chosen without scoring,
    and ``hvs_selected_is_min_iou`` is 1 for it."""
    m = HVSSimCLR(**TINY, **HEADS[HVSSimCLR], num_views=3, selection_rule="min_iou")
    boxes = torch.tensor([
        [[0, 0, 10, 10], [0, 0, 10, 9], [5, 5, 15, 15]],   # pairs (0,1) 0.9, (0,2) 25/175, (1,2) 20/180 -> (1, 2)
        [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]],  # (0,1) 0, (0,2) 0.9, (1,2) 0 -> (0, 1) (first of the ties)
    ]).float()
    views = id_views(3, 2)
    calls = []
    m.embed = lambda *a, **k: calls.append(1)  # type: ignore[method-assign]
    chosen = m.select_views({"views": views, "boxes": boxes})
    assert not calls  # nothing scored
    sel = m.last_selection
    assert sel["index_a"].tolist() == [1, 0] and sel["index_b"].tolist() == [2, 1]
    assert torch.equal(chosen[0][0], views[1][0]) and torch.equal(chosen[1][1], views[1][1])
    with pytest.raises(ValueError, match="min_iou' needs the crop boxes"):
        m.select_views({"views": views})
    with pytest.raises(ValueError, match="unknown selection_rule 'easiest'"):
        HVSSimCLR(**TINY, **HEADS[HVSSimCLR], selection_rule="easiest")


def test_selected_is_min_iou_share_against_a_loop():
    torch.manual_seed(0)
    m = HVSSimCLR(**TINY, **HEADS[HVSSimCLR], num_views=4)
    logged = {}
    m.log_dict = lambda d, **k: logged.update(d)  # type: ignore[method-assign]
    b = 8
    lo = torch.rand(b, 4, 2) * 8
    boxes = torch.cat([lo, lo + 4 + torch.rand(b, 4, 2) * 8], dim=-1)
    m.select_views({"views": [torch.randn(b, 3, 16, 16) for _ in range(4)], "boxes": boxes})
    ia, ib = m.last_selection["index_a"], m.last_selection["index_b"]
    hits = 0
    for i in range(b):
        ious = {(x, y): float(box_iou(boxes[i, x], boxes[i, y])) for x, y in m.pairs.tolist()}
        hits += ious[(int(ia[i]), int(ib[i]))] <= min(ious.values()) + 1e-6
    assert float(logged["hard/hvs_selected_is_min_iou"]) == pytest.approx(hits / b)


# --- hardness schedules -----------------------------------------------------------------------
def binomial_two_sided_p(k: int, n: int, q: float) -> float:
    """Exact two-sided binomial test: the probability of an outcome no more likely than ``k``."""
    if q >= 1:
        return float(k == n)
    def log_pmf(i):
        return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(q) + (n - i) * math.log1p(-q)
    observed = log_pmf(k)
    return min(1.0, sum(math.exp(log_pmf(i)) for i in range(n + 1) if log_pmf(i) <= observed + 1e-9))


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


#: upper 0.1 % points of the chi-square distribution (statistical tables), by degrees of freedom
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}


def hardest_of(table: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Per sample, the index of its highest-loss pair, by a loop (the reference)."""
    return torch.tensor([max(range(len(pairs)), key=lambda p: table[pairs[p, 0], pairs[p, 1], s].item())
                         for s in range(table.shape[2])])


def chosen_pair_index(m, pairs):
    sel = m.last_selection
    lookup = {(int(a), int(b)): k for k, (a, b) in enumerate(pairs.tolist())}
    return torch.tensor([lookup[(int(a), int(b))] for a, b in zip(sel["index_a"], sel["index_b"])])


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_hardest_pair_share_follows_the_ramp_binomial_test_per_epoch(shape):
    """Warm-up 2 epochs, then a ramp over 4: in each epoch the number of images trained on their
    hardest pair is Binomial(B, p + (1 - p) / P) (a random pair is the hardest one time in P), with
    p the ramp's value written out here; nothing is scored in the warm-up."""
    n, b = 4, 3000
    torch.manual_seed(0)
    table = torch.rand(n, n, b)
    m = with_hvs(TableMethod)(table=table, num_views=n, hardness_warmup_epochs=2, hardness_ramp_epochs=4, hardness_ramp=shape)
    m.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    pairs = m.pairs
    hardest = hardest_of(table, pairs)
    views = id_views(n, b)
    scored = []
    original_embed = m.embed
    m.embed = lambda *a, **k: (scored.append(1), original_embed(*a, **k))[1]  # type: ignore[method-assign]
    for epoch in range(8):
        expected_p = 0.0 if epoch < 2 else min(1.0, (epoch - 2) / 4)
        if shape == "cosine" and 0 < expected_p < 1:
            expected_p = (1 - math.cos(math.pi * expected_p)) / 2
        m.epochs_trained = lambda e=epoch: float(e)  # type: ignore[method-assign]
        assert m.rule_probability() == pytest.approx(expected_p)
        scored.clear()
        m.select_views({"views": views})
        assert bool(scored) is (expected_p > 0)  # the warm-up scores nothing
        k = int((chosen_pair_index(m, pairs) == hardest).sum())
        q = expected_p + (1 - expected_p) / len(pairs)
        assert binomial_two_sided_p(k, b, q) > 1e-4, (epoch, k / b, q)
        assert float(m.last_selection["from_rule"].float().mean()) == pytest.approx(expected_p, abs=0.04)


def test_random_pair_prob_caps_the_rule_and_epochs_trained_counts_steps():
    m = HVSSimCLR(**TINY, **HEADS[HVSSimCLR], num_views=4, hardness_warmup_epochs=1, hardness_ramp_epochs=2,
                  random_pair_prob=0.2)
    assert [m.rule_probability(e) for e in (0.0, 0.99, 1.0, 2.0, 3.0, 10.0)] == pytest.approx([0, 0, 0, 0.4, 0.8, 0.8])

    class FakeTrainer:
        global_step, max_epochs, estimated_stepping_batches = 30, 10, 200  # 20 steps an epoch

    assert m.epochs_trained() == 0.0  # no trainer
    m._trainer = FakeTrainer()
    assert m.epochs_trained() == pytest.approx(1.5)
    assert m.rule_probability() == pytest.approx(0.8 * 0.25)
    m._trainer = None


def test_soft_selection_is_the_argmax_as_tau_goes_to_0_softmax_between_and_uniform_as_tau_grows():
    n, b = 4, 6000
    torch.manual_seed(0)
    one = torch.tensor([0.3, 1.0, 0.1, 0.7, 0.5, 0.2])  # the same six pair losses for every image
    pairs = candidate_pairs(n, "all")
    table = torch.zeros(n, n, b)
    for k, (i, j) in enumerate(pairs.tolist()):
        table[i, j] = one[k]
    views = id_views(n, b)
    counts_at = {}
    for tau in (1e-6, 0.25, 1e6):
        m = with_hvs(TableMethod)(table=table, num_views=n, selection_temperature=tau, selection_temperature_end=tau)
        m.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
        m.select_views({"views": views})
        counts_at[tau] = torch.bincount(chosen_pair_index(m, pairs), minlength=len(pairs)).float()
    assert counts_at[1e-6].tolist() == [0, b, 0, 0, 0, 0]  # tau -> 0: the argmax, every time
    softmax = torch.softmax(one / 0.25, dim=0)
    assert chi_square(counts_at[0.25], softmax) < CHI2_999[5]
    assert chi_square(counts_at[1e6], torch.full((6,), 1 / 6)) < CHI2_999[5]  # tau -> infinity: uniform
    # random per-image tables: tau -> 0 picks each image's own argmax
    table = torch.rand(n, n, 50)
    m = with_hvs(TableMethod)(table=table, num_views=n, selection_temperature=1e-7, selection_temperature_end=1e-7)
    m.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    m.select_views({"views": id_views(n, 50)})
    assert torch.equal(chosen_pair_index(m, pairs), hardest_of(table, pairs))


def test_temperature_and_iou_threshold_anneal_after_the_warm_up():
    m = HVSSimCLR(**TINY, **HEADS[HVSSimCLR], num_views=4, hardness_warmup_epochs=2, selection_temperature=1.0,
                  selection_temperature_end=0.0, temperature_schedule="linear", anneal_epochs=8)
    assert [m.current_selection_temperature(e) for e in (0, 2, 4, 6, 10, 20)] == pytest.approx([1, 1, 0.75, 0.5, 0, 0])
    m = HVSSimCLR(**TINY, **HEADS[HVSSimCLR], num_views=4, selection_rule="msat", iou_threshold=0.5, iou_threshold_end=0.1,
                  iou_threshold_schedule="cosine", anneal_epochs=4)
    assert [m.current_iou_threshold(e) for e in (0, 2, 4)] == pytest.approx([0.5, 0.3, 0.1])
    assert HVSSimCLR(**TINY, **HEADS[HVSSimCLR], selection_rule="msat", iou_threshold=0.3).current_iou_threshold(7.0) == 0.3


def test_msat_rule_never_returns_a_pair_above_the_threshold_when_one_below_exists():
    """Crop boxes drawn at random: every image with a candidate pair of IoU <= threshold trains on
    such a pair, drawn uniformly among them (chi-square on images with exactly two eligible pairs);
    an image with none falls back to a uniformly random pair, as ``msatransform.py`` keeps its last
    (random) draw; nothing is scored."""
    torch.manual_seed(0)
    n, b, threshold = 4, 4000, 0.25
    m = HVSSimCLR(**TINY, **HEADS[HVSSimCLR], num_views=n, selection_rule="msat", iou_threshold=threshold)
    m.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    m.embed = lambda *a, **k: pytest.fail("msat scores nothing")  # type: ignore[method-assign]
    lo = torch.rand(b, n, 2) * 10
    boxes = torch.cat([lo, lo + 6 + torch.rand(b, n, 2) * 10], dim=-1)
    views = [torch.zeros(b, 3, 4, 4) for _ in range(n)]
    m.select_views({"views": views, "boxes": boxes})
    pairs = m.pairs
    chosen = chosen_pair_index(m, pairs)
    ious = torch.stack([box_iou(boxes[:, i], boxes[:, j]) for i, j in pairs.tolist()])  # [P, B], by hand
    eligible = ious <= threshold
    some = eligible.any(dim=0)
    assert 0.2 < some.float().mean() < 0.95  # both cases occur
    assert eligible[chosen[some], torch.arange(b)[some]].all()
    none_counts = torch.bincount(chosen[~some], minlength=len(pairs)).float()
    assert chi_square(none_counts, torch.full((len(pairs),), 1 / len(pairs))) < CHI2_999[5]
    two = eligible.sum(0) == 2
    first = torch.tensor([int(eligible[:, s].nonzero()[0]) for s in range(b) if two[s]])
    picks_first = (chosen[two] == first).float()
    assert len(picks_first) > 200
    assert chi_square(torch.stack([picks_first.sum(), (1 - picks_first).sum()]), torch.tensor([0.5, 0.5])) < CHI2_999[1]
    with pytest.raises(ValueError, match="'msat' needs the crop boxes"):
        m.select_views({"views": views})


def test_schedule_options_are_checked():
    for kw, match in [({"hardness_ramp_epochs": -1}, "hardness_ramp_epochs must be >= 0"),
                      ({"random_pair_prob": 1.5}, "random_pair_prob must be in"),
                      ({"hardness_ramp": "step"}, "unknown hardness_ramp 'step'"),
                      ({"iou_threshold": 2.0}, "iou_threshold must be in"),
                      ({"anneal_epochs": 0}, "anneal_epochs must be > 0"),
                      ({"selection_rule": "msat", "selection_temperature": 1.0}, "selection_temperature applies")]:
        with pytest.raises(ValueError, match=match):
            HVSSimCLR(**TINY, **HEADS[HVSSimCLR], **kw)


def test_dino_warm_up_trains_on_random_combinations_without_scoring():
    torch.manual_seed(0)
    m = HVSDINO(**TINY, **HEADS[HVSDINO], num_views=4, num_local_crops_trained=2, hardness_warmup_epochs=1)
    m.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(64, 3, 16, 16, generator=g) for _ in range(4)] + [torch.randn(64, 3, 8, 8, generator=g) for _ in range(3)]
    m.multicrop_loss = lambda *a, **k: pytest.fail("the warm-up scores nothing")  # type: ignore[method-assign]
    chosen = m.select_views({"views": views})
    sel = m.last_selection
    assert [tuple(v.shape) for v in chosen] == [(64, 3, 16, 16)] * 2 + [(64, 3, 8, 8)] * 2
    assert not sel["from_rule"].any() and "scores" not in sel
    assert ((sel["index_a"] + sel["index_b"]) % 2 == 1).all()  # still cross-stream pairs
    assert len({tuple(x) for x in sel["local_index"].tolist()}) == 3  # random subsets of 2 of the 3 local crops
