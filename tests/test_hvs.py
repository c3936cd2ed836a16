"""Hard view selection: the selection against independent references."""

import itertools

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
    """The chosen views' target outputs come from the scoring pass: identical values, one target
    forward per step; ``reuse_targets=False`` recomputes them on the chosen views."""
    torch.manual_seed(0)
    m = cls(**TINY, **HEADS[cls], num_views=4).eval()
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
