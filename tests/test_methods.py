"""SimSiam, BYOL, DINO (and the contract for every method) against hand-written references."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from hardcl_lightning.gan import GANOptions
from hardcl_lightning.data import ShapesDataModule
from hardcl_lightning.methods import BYOL, DINO, MoCoV2, SimCLR, SimSiam
from hardcl_lightning.optim import cosine_schedule

TINY = dict(backbone="resnet_tiny", cifar_stem=True)
SMALL_HEADS = {
    SimCLR: dict(proj_hidden_dim=32, proj_output_dim=16),
    MoCoV2: dict(proj_hidden_dim=32, proj_output_dim=16, queue_size=64),
    SimSiam: dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=8),
    BYOL: dict(proj_hidden_dim=32, proj_output_dim=16),
    DINO: dict(proj_hidden_dim=32, bottleneck_dim=8, num_prototypes=32),
}


def make(cls, **kw):
    torch.manual_seed(0)
    return cls(**TINY, **SMALL_HEADS[cls], **kw)


def views(n=2, b=6, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(n)]


@pytest.mark.parametrize("cls", list(SMALL_HEADS), ids=lambda c: c.__name__)
def test_per_sample_pair_losses_average_to_the_training_loss(cls):
    m = make(cls)
    outs = m.embed(views())
    per_sample = m.pair_loss(outs[0], outs[1])
    assert per_sample.shape == (6,)
    assert torch.allclose(per_sample.mean(), m.training_loss(outs), atol=1e-6)


@pytest.mark.parametrize("cls", list(SMALL_HEADS), ids=lambda c: c.__name__)
def test_batched_embed_equals_per_view_forward(cls):
    """embed() concatenates views of one shape; in eval mode that must not change any output."""
    m = make(cls).eval()
    vs = views(3)
    batched = m.embed(vs)
    for v, out in zip(vs, batched):
        single = m.embed([v])[0]
        for key in out:
            assert torch.allclose(out[key], single[key], atol=1e-5), key


def test_simsiam_pair_loss_is_the_papers_formula():
    m = make(SimSiam)
    a, b = m.embed(views())
    ref = -0.5 * (F.cosine_similarity(a["p"], b["z"]) + F.cosine_similarity(b["p"], a["z"]))
    assert torch.allclose(m.pair_loss(a, b), ref, atol=1e-6)
    m.pair_loss(a, b).mean().backward()  # stop-gradient: z only gets gradient through p's branch
    assert m.predictor.net[0].weight.grad is not None


def test_simsiam_predictor_lr_stays_fixed(tmp_path):
    m = make(SimSiam, optimizer="sgd", lr=0.1, scale_lr=False)
    dm = ShapesDataModule(num_train=48, num_val=12, batch_size=8, num_workers=0, image_size=16)
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *_):
            seen.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[Record()], enable_model_summary=False)
    trainer.fit(m, dm)
    assert all(s["predictor"] == pytest.approx(0.1) for s in seen)
    assert seen[-1]["backbone"] < 0.05  # cosine-decayed


def test_byol_pair_loss_is_the_papers_formula_and_target_gets_no_gradient():
    m = make(BYOL)
    a, b = m.embed(views())
    norm = lambda x: F.normalize(x, dim=1)  # noqa: E731
    ref = ((norm(a["p"]) - norm(b["z_target"])) ** 2).sum(1) + ((norm(b["p"]) - norm(a["z_target"])) ** 2).sum(1)
    assert torch.allclose(m.pair_loss(a, b), ref, atol=1e-5)
    m.training_loss([a, b]).backward()
    assert all(p.grad is None for p in m.momentum_backbone.parameters())
    assert all(p.grad is not None for p in m.predictor.parameters())


@pytest.mark.parametrize("method,accumulate", [("BYOL", 2), ("HardSampleMoCoV2", 1)])
def test_ema_momentum_follows_cosine_once_per_optimizer_step(tmp_path, method, accumulate):
    """4 batches are 4 / accumulate main-optimiser steps: as many EMA updates at the scheduled taus.
    The generator methods step three optimisers per batch by hand (no accumulation); their EMA
    comes from the same base-class hook, once per main step."""
    import hardcl_lightning.methods as methods

    cls = getattr(methods, method)
    extra = dict(SMALL_HEADS[BYOL], queue_size=64, batch_size=8, gan=GANOptions(latent_dim=16, g_channels=8, d_channels=8)) if cls is not BYOL else {}
    torch.manual_seed(0)
    m = cls(**TINY, **(SMALL_HEADS[BYOL] if cls is BYOL else extra), optimizer="sgd", lr=0.01, ema_momentum=0.99,
            ema_momentum_end=1.0)
    taus = []
    original = m.momentum_update
    m.momentum_update = lambda tau: (taus.append(tau), original(tau))  # type: ignore[method-assign]
    dm = ShapesDataModule(num_train=64, num_val=12, batch_size=8, num_workers=0, image_size=16 if cls is BYOL else 32)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(m, dm)
    steps = 4 // accumulate
    assert taus == pytest.approx([cosine_schedule(s, steps, 0.99, 1.0) for s in range(steps)])
    assert taus[0] == pytest.approx(0.99) and taus[-1] < 1.0


def naive_dino_loss(student, teacher, center, ts, tt):
    """Per-sample DINO loss by loops over crops (and classes through explicit sums)."""
    b = student[0].shape[0]
    losses = torch.zeros(b, dtype=torch.float64)
    n_terms = 0
    for i, t in enumerate(teacher):
        for j, s in enumerate(student):
            if i == j:
                continue
            n_terms += 1
            for n in range(b):
                t_logits = (t[n].double() - center[0].double()) / tt
                p_t = torch.exp(t_logits - t_logits.max()) / torch.exp(t_logits - t_logits.max()).sum()
                s_logits = s[n].double() / ts
                log_p_s = s_logits - math.log(torch.exp(s_logits).sum().item())
                losses[n] += -(p_t * log_p_s).sum()
    return losses / n_terms


def test_dino_multicrop_loss_matches_naive_loop_over_crops():
    m = make(DINO, student_temperature=0.1, teacher_temperature=0.04)
    m.center.copy_(torch.randn_like(m.center) * 0.1)
    vs = views(2, b=4, size=16) + views(3, b=4, size=8, seed=2)  # 2 global + 3 local crops
    outs = m.embed(vs)
    assert [("teacher" in o) for o in outs] == [True, True, False, False, False]
    got = m.multicrop_loss(outs)
    ref = naive_dino_loss([o["student"] for o in outs], [o["teacher"] for o in outs[:2]], m.center, 0.1, 0.04)
    assert torch.allclose(got.double(), ref, atol=1e-5)


def test_dino_center_update_and_teacher_gets_no_gradient():
    m = make(DINO, center_momentum=0.9)
    before = torch.randn_like(m.center)
    m.center.copy_(before)
    outs = m.embed(views())
    teacher = torch.cat([outs[0]["teacher"], outs[1]["teacher"]])
    m.training_loss(outs).backward()
    assert all(p.grad is None for p in m.momentum_head.parameters())
    m.after_training_loss(outs)
    assert torch.allclose(m.center, 0.9 * before + 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)


def test_dino_teacher_temperature_warmup_and_frozen_last_layer(tmp_path):
    m = make(DINO, optimizer="sgd", lr=0.5, warmup_teacher_temperature=0.02, teacher_temperature=0.06,
             warmup_teacher_temperature_epochs=1, freeze_last_layer_epochs=1)
    temps = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *_):
            temps.append(pl_module.current_teacher_temperature())

    last_before = m.head.last_layer.parametrizations.weight.original1.detach().clone()
    mlp_before = m.head.mlp[0].weight.detach().clone()
    dm = ShapesDataModule(num_train=32, num_val=12, batch_size=8, num_workers=0, image_size=16,
                          augmentation="dino", num_local_crops=2, local_crop_size=8)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[Record()], enable_model_summary=False)
    trainer.fit(m, dm)
    assert temps == pytest.approx([0.02 + 0.04 * s / 4 for s in range(4)])
    assert torch.equal(m.head.last_layer.parametrizations.weight.original1, last_before)
    assert not torch.equal(m.head.mlp[0].weight, mlp_before)


def test_dino_multicrop_batches_from_the_datamodule():
    dm = ShapesDataModule(num_train=32, num_val=12, batch_size=4, num_workers=0, image_size=32,
                          augmentation="dino", num_local_crops=4, local_crop_size=16)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert [tuple(v.shape) for v in batch["views"]] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 4
    assert batch["boxes"].shape == (4, 6, 4)
    m = make(DINO)
    loss = m.training_loss(m.embed(batch["views"]))
    assert torch.isfinite(loss)


def test_dino_on_vit_with_local_crops():
    torch.manual_seed(0)
    m = DINO(backbone="vit_tiny", image_size=32, backbone_kwargs={"patch_size": 8}, proj_hidden_dim=32, bottleneck_dim=8,
             num_prototypes=32)
    outs = m.embed(views(2, b=2, size=32) + views(2, b=2, size=16, seed=3))
    loss = m.training_loss(outs)
    loss.backward()
    assert torch.isfinite(loss) and m.backbone.vit.encoder.pos_embedding.grad is not None


GAN_SMALL = GANOptions(latent_dim=16, g_channels=8, d_channels=8)


@pytest.mark.parametrize("method,poisoned,error", [
    pytest.param("SimCLR", "views", r"non-finite training loss nan at global step 2 .*view0/feats", id="SimCLR-views"),
    pytest.param("HardSampleCL", "views", r"non-finite training loss nan at global step 6 .*view0/feats", id="HardSampleCL-views"),
    pytest.param("HardSampleCL", "generator_loss", r"non-finite generator loss nan at global step 7 .*Lower gan.g_lr / gan.d_lr", id="HardSampleCL-generator_loss"),
    pytest.param("HardSampleCL", "discriminator_loss", r"non-finite discriminator loss nan at global step 8 ", id="HardSampleCL-discriminator_loss"),
    pytest.param("GANPretrain", "generator_loss", r"non-finite generator loss nan at global step 4 ", id="GANPretrain-generator_loss"),
    pytest.param("GANPretrain", "discriminator_loss", r"non-finite discriminator loss nan at global step 5 ", id="GANPretrain-discriminator_loss"),
])
def test_nonfinite_loss_raises_naming_step_and_terms_or_skips(tmp_path, monkeypatch, method, poisoned, error):
    """At the third batch one loss is NaN (an image of view 0, or the GAN's generator or
    discriminator loss): ``raise`` stops before that update, ``skip`` drops it alone. Every
    optimiser of the generator methods goes through the one guard (Lightning's global step counts
    each of their optimisers' steps)."""
    import hardcl_lightning.methods as methods

    cls = getattr(methods, method)
    kwargs = dict(on_nonfinite_loss=None)
    if cls is not methods.GANPretrain:
        kwargs.update(TINY, **SMALL_HEADS[SimCLR], optimizer="sgd", lr=0.01)
    if cls is not SimCLR:
        kwargs.update(gan=GAN_SMALL, batch_size=8)

    class PoisonThirdBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            pl_module.poisoned = batch_idx == 2
            if poisoned == "views" and batch_idx == 2:
                batch["views"][0][0] = float("nan")  # one image of view 0

    def fit(policy):
        torch.manual_seed(0)
        m = cls(**(kwargs | {"on_nonfinite_loss": policy}))
        m.poisoned = False
        if poisoned != "views":
            loss_fn = getattr(m.gan, poisoned)

            def poison(*args):  # the loss (a discriminator's comes first, with its logits) times NaN
                out = loss_fn(*args)
                scale = float("nan") if m.poisoned else 1.0
                return (out[0] * scale, *out[1:]) if isinstance(out, tuple) else out * scale
            monkeypatch.setattr(m.gan, poisoned, poison)
        dm = ShapesDataModule(num_train=64, num_val=12, batch_size=8, num_workers=0, image_size=32 if cls is not SimCLR else 16,
                              num_views=1 if cls is methods.GANPretrain else 2)
        trainer = L.Trainer(max_epochs=1, limit_train_batches=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, limit_val_batches=0, callbacks=[PoisonThirdBatch()],
                            enable_model_summary=False)
        return m, trainer, dm

    m, trainer, dm = fit("raise")
    with pytest.raises(FloatingPointError, match=error):
        trainer.fit(m, dm)
    assert all(torch.isfinite(p).all() for p in m.parameters())  # raised before the update

    m, trainer, dm = fit("skip")
    trainer.fit(m, dm)
    assert m.skipped_nonfinite_steps == 1  # that update alone was dropped; training went on
    assert all(torch.isfinite(p).all() for p in m.parameters())
    # the NaN image's forward also reached BatchNorm's running statistics: put back with the skip
    assert all(torch.isfinite(b).all() for n, b in m.named_buffers() if "running_" in n)
    with pytest.raises(ValueError, match=r"on_nonfinite_loss must be one of \['raise', 'skip'\], got 'ignore'"):
        cls(**(kwargs | {"on_nonfinite_loss": "ignore"}))


def test_skip_stops_a_diverged_run_and_no_checkpoint_holds_non_finite_weights(tmp_path):
    """Every batch from the third on is NaN: ``skip`` drops them up to ``max_consecutive_nonfinite``
    in a row, then stops with an error (a diverged run used to finish with exit 0); a checkpoint of
    non-finite weights is refused."""

    class PoisonFromThirdBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx >= 2:
                batch["views"][0][0] = float("nan")

    torch.manual_seed(0)
    m = make(SimCLR, on_nonfinite_loss="skip", optimizer="sgd", lr=0.01)
    m.max_consecutive_nonfinite = 3
    dm = ShapesDataModule(num_train=80, num_val=12, batch_size=8, num_workers=0, image_size=16)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[PoisonFromThirdBatch()], enable_model_summary=False)
    with pytest.raises(FloatingPointError, match=r"3 non-finite training losses in a row \(global step 4, 3 skipped in all\)"):
        trainer.fit(m, dm)
    assert all(torch.isfinite(t).all() for t in [*m.parameters(), *m.buffers()] if t.is_floating_point())
    with torch.no_grad():
        next(m.projector.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"not writing a checkpoint with non-finite values in projector\."):
        trainer.save_checkpoint(tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()
