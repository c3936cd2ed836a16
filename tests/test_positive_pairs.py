"""Hard positive-pair generation: the multi-positive loss, the similarity schedule, the two
generators, the pair penalty, optimiser ownership, checkpoints, the combined framework."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from hardcl_lightning.losses import multi_positive_nt_xent, nt_xent
from hardcl_lightning.methods import PositivePairCL, PositivePairMoCoV2
from hardcl_lightning.methods.positive_pairs import pixel_cosine

from test_generative import GAN_TINY, TINY, RecordSteps, datamodule, trainer


def naive_multi_positive(views, t):
    """Per-anchor loop over SupCon's L_out with instance ids as labels."""
    b, v, _ = views.shape
    z = F.normalize(views, dim=-1).reshape(b * v, -1)
    labels = torch.arange(b).repeat_interleave(v)
    per_instance = torch.zeros(b)
    for i in range(b * v):
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(b * v) if a != i)
        pos = [p for p in range(b * v) if p != i and labels[p] == labels[i]]
        li = -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos)
        per_instance[labels[i]] += li / v
    return per_instance


@pytest.mark.parametrize("v", [2, 3, 4])
def test_multi_positive_loss_against_a_naive_loop(v):
    views = torch.randn(5, v, 8, generator=torch.Generator().manual_seed(v))
    got = multi_positive_nt_xent(views, 0.3, reduction="none")
    assert torch.allclose(got, naive_multi_positive(views, 0.3), atol=1e-5)


def test_multi_positive_loss_with_two_views_is_nt_xent():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 16, generator=g), torch.randn(7, 16, generator=g)
    got = multi_positive_nt_xent(torch.stack([a, b], dim=1), 0.2, reduction="none")
    assert torch.allclose(got, nt_xent(a, b, 0.2, reduction="none"), atol=1e-6)
    with pytest.raises(ValueError, match="V >= 2"):
        multi_positive_nt_xent(a.unsqueeze(1), 0.2)


def test_pixel_cosine_is_centred():
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(pixel_cosine(x, x + 0.3), torch.ones(3), atol=1e-5)  # a brightness shift is the same image
    assert torch.allclose(pixel_cosine(x, 1 - x), -torch.ones(3), atol=1e-5)


class TargetLog(L.Callback):
    def __init__(self):
        self.values = {}
        self.bounds = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module._batch_idx = batch_idx
        key = (trainer.current_epoch, batch_idx)
        self.values[key] = (pl_module.schedule_position(), pl_module.target_similarity().item())
        self.bounds[key] = pl_module.real_pair_similarity.tolist()


@pytest.mark.parametrize("schedule,expected", [
    ("linear", [0.9, 0.8, 0.7, 0.6]),
    ("cosine", [0.9, 0.9 - 0.4 * (1 - math.cos(math.pi / 4)) / 2, 0.7, 0.9 - 0.4 * (1 - math.cos(3 * math.pi / 4)) / 2]),
])
def test_similarity_target_schedule_values(schedule, expected):
    torch.manual_seed(0)
    model = PositivePairCL(**TINY, **GAN_TINY, sim_start=0.9, sim_end=0.5, sim_schedule=schedule, sim_target="absolute")
    log = TargetLog()
    trainer(max_epochs=2, limit_train_batches=2, callbacks=[log]).fit(model, datamodule())
    got = [log.values[k] for k in [(0, 0), (0, 1), (1, 0), (1, 1)]]
    assert [t for t, _ in got] == pytest.approx(expected)
    assert [target for _, target in got] == pytest.approx(expected)  # absolute: the target is the cosine itself


def naive_real_similarities(f_a, f_b):
    """Mean cosine of matching rows and of all non-matching rows, by loops."""
    n = f_a.shape[0]
    cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
    same = sum(cos(f_a[i], f_b[i]) for i in range(n)) / n
    other = sum(cos(f_a[i], f_b[j]) for i in range(n) for j in range(n) if i != j) / (n * n - n)
    return same, other


def test_relative_target_stays_between_the_measured_view_pair_and_negative_pair_similarity():
    """Problem 3 of the generator redesign: an absolute target of 0.5 lies below what two different
    images measure on a trained model. The relative target is s_neg + t (s_view - s_neg) of the
    running real-data means, so with t in [0, 1] it cannot leave [s_neg, s_view]."""
    torch.manual_seed(0)
    model = PositivePairCL(**TINY, **GAN_TINY, sim_start=0.9, sim_end=0.2)
    log = TargetLog()
    trainer(max_epochs=2, limit_train_batches=3, callbacks=[log]).fit(model, datamodule())
    checked = 0
    for key, (t, target) in log.values.items():
        view, negative = log.bounds[key]
        if math.isnan(view):
            continue  # the first batch: nothing measured yet
        assert negative < view
        assert target == pytest.approx(negative + t * (view - negative))
        assert negative - 1e-6 <= target <= view + 1e-6
        checked += 1
    assert checked == 5
    # the statistics are those of the real views: matching rows vs the rest, as a loop computes them
    batch = next(iter(datamodule().train_dataloader()))
    outs = model.embed(list(batch["views"]))
    view, negative = model.real_similarities(list(batch["views"]), outs)
    ref = naive_real_similarities(outs[0]["feats"].double(), outs[1]["feats"].double())
    assert (view.item(), negative.item()) == pytest.approx(ref, abs=1e-5)


def test_relative_target_running_mean():
    model = PositivePairCL(**TINY, **GAN_TINY)
    model.update_real_similarities(torch.tensor(0.9), torch.tensor(0.3))
    assert model.real_pair_similarity.tolist() == pytest.approx([0.9, 0.3])  # the first measurement is taken as is
    model.update_real_similarities(torch.tensor(0.5), torch.tensor(0.1))
    assert model.real_pair_similarity.tolist() == pytest.approx([0.9 * 0.9 + 0.1 * 0.5, 0.9 * 0.3 + 0.1 * 0.1])
    model._batch_idx = 0  # without a trainer: the schedule's end, t = sim_end = 0.5
    view, negative = model.real_pair_similarity.tolist()
    assert model.target_similarity().item() == pytest.approx(negative + 0.5 * (view - negative))
    model.real_pair_similarity.fill_(float("nan"))  # nothing measured yet: t itself
    assert model.target_similarity().item() == pytest.approx(0.5)


def test_the_two_generators_start_identical_and_diverge():
    torch.manual_seed(0)
    model = PositivePairCL(**TINY, **GAN_TINY, lambda_pos_hard=0.5)
    start = [p.clone() for p in model.generator_b.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(model.gan.generator.parameters(), model.generator_b.parameters()))
    trainer(max_epochs=1, limit_train_batches=3).fit(model, datamodule())
    diff = sum((a - b).abs().sum() for a, b in zip(model.gan.generator.parameters(), model.generator_b.parameters()))
    assert diff > 0
    assert any(not torch.equal(a, b) for a, b in zip(start, model.generator_b.parameters()))


def test_without_a_hardness_term_identical_generators_are_refused():
    with pytest.raises(ValueError, match="generator_b_noise > 0"):
        PositivePairCL(**TINY, **GAN_TINY, lambda_pos_hard=0.0)
    with pytest.raises(ValueError, match=r"sim_end is a cosine similarity \(sim_target='absolute'\).*\[-1, 1\], got 1.5"):
        PositivePairCL(**TINY, **GAN_TINY, sim_end=1.5, sim_target="absolute")
    with pytest.raises(ValueError, match=r"sim_end is a position between.*\[0, 1\], got -0.2"):
        PositivePairCL(**TINY, **GAN_TINY, sim_end=-0.2)
    with pytest.raises(ValueError, match="unknown sim_target 'cosine'"):
        PositivePairCL(**TINY, **GAN_TINY, sim_target="cosine")
    with pytest.raises(ValueError, match="unknown sim_space 'latent'"):
        PositivePairCL(**TINY, **GAN_TINY, sim_space="latent")


@pytest.mark.parametrize("space", ["pixel", "embedding"])
def test_pair_penalty_pulls_the_achieved_similarity_to_the_target(space):
    """A toy problem: only the penalty trains the two generators (Adam, 80 steps)."""
    torch.manual_seed(0)
    model = PositivePairCL(**TINY, **GAN_TINY, sim_space=space, lambda_pos_hard=0.0, generator_b_noise=0.05)
    target = 0.3
    opt = torch.optim.Adam(model.generator_parameters(), lr=2e-3)

    def gap():
        with torch.no_grad():
            return (model.pair_similarity(*model.generate_pair(64)).mean() - target).abs().item()

    before = gap()
    for _ in range(80):
        a, b = model.generate_pair(32)
        loss = (model.pair_similarity(a, b) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = gap()
    assert before > 0.3 and after < 0.1 and after < before / 4, (before, after)


@pytest.mark.parametrize("cls,extra", [(PositivePairCL, {}), (PositivePairCL, {"hard_samples": True}),
                                       (PositivePairMoCoV2, {"queue_size": 64})])
def test_each_optimiser_updates_only_its_own_parameters(cls, extra):
    torch.manual_seed(0)
    model = cls(**TINY, **GAN_TINY, **extra)
    rec = RecordSteps()
    trainer(max_epochs=1, limit_train_batches=2, callbacks=[rec]).fit(model, datamodule())
    gen = rec.names[1]
    assert any(n.startswith("generator_b.") for n in gen) and any(n.startswith("gan.generator.") for n in gen)
    assert not any(n.startswith(("gan.", "generator_b.")) for n in rec.names[0])
    assert all(n.startswith("gan.discriminator.") for n in rec.names[2])
    for i, own in rec.names.items():
        assert rec.changed[i] and rec.changed[i] <= own, i


def test_combined_framework_logs_both_branches():
    torch.manual_seed(0)
    model = PositivePairCL(**TINY, **GAN_TINY, hard_samples=True)
    t = trainer(max_epochs=1, limit_train_batches=2)
    t.fit(model, datamodule())
    for key in ("hard/gen_loss_ratio_epoch", "hard/latent_delta_norm_epoch", "hard/pair_pos_loss_epoch",
                "hard/pair_sim_target_epoch", "hard/pair_sim_achieved_epoch", "hard/pair_penalty_epoch", "gan/d_fake_epoch"):
        assert key in t.logged_metrics, key
    alone = PositivePairCL(**TINY, **GAN_TINY)
    t2 = trainer(max_epochs=1, limit_train_batches=1)
    t2.fit(alone, datamodule())
    assert "hard/pair_pos_loss_epoch" in t2.logged_metrics and "hard/gen_loss_ratio_epoch" not in t2.logged_metrics


def test_checkpoint_holds_both_generators_and_resumes(tmp_path):
    L.seed_everything(0)
    model = PositivePairCL(**TINY, **GAN_TINY)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, enable_checkpointing=True)
    t.fit(model, datamodule())
    path = t.checkpoint_callback.best_model_path
    ckpt = torch.load(path, weights_only=False)
    assert any(k.startswith("generator_b.") for k in ckpt["state_dict"]) and len(ckpt["optimizer_states"]) == 3
    resumed = PositivePairCL(**TINY, **GAN_TINY)
    seen = {}

    class Peek(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["b"] = {k: v.clone() for k, v in pl_module.generator_b.state_dict().items()}

    trainer(tmp_path, max_epochs=2, limit_train_batches=2, enable_checkpointing=True, callbacks=[Peek()]).fit(
        resumed, datamodule(), ckpt_path=path)
    for k, v in seen["b"].items():
        assert torch.equal(v, ckpt["state_dict"][f"generator_b.{k}"]), k


def test_checkpoint_from_before_the_relative_target_loads_with_nothing_measured():
    model = PositivePairCL(**TINY, **GAN_TINY)
    model.update_real_similarities(torch.tensor(0.9), torch.tensor(0.3))
    state = {k: v for k, v in model.state_dict().items() if k != "real_pair_similarity"}
    checkpoint = {"state_dict": state}
    model.on_load_checkpoint(checkpoint)
    fresh = PositivePairCL(**TINY, **GAN_TINY)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: every key there
    assert torch.isnan(fresh.real_pair_similarity).all()
