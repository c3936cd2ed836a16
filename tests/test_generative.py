"""Generator-adversarial hard samples: gradients, frozen parts, optimiser ownership, equivalence
with the base method, checkpoints and resume, schedules, and GAN pre-training."""

import copy
import math
import re

import lightning as L
import pytest
import torch

from hardcl_lightning.gan import GANOptions
from hardcl_lightning.callbacks import GeneratedImageGrid
from hardcl_lightning.data import ShapesDataModule
from hardcl_lightning.methods import GANPretrain, HardSampleCL, HardSampleMoCoV2, SimCLR
from hardcl_lightning.batchnorm import frozen_batchnorm_stats
from hardcl_lightning.methods.gan_training import load_gan_state
from hardcl_lightning.optim import ramp

TINY = dict(backbone="resnet_tiny", cifar_stem=True, backbone_kwargs={"widths": (8, 16, 16, 16)}, proj_hidden_dim=32,
            proj_output_dim=16, batch_size=16, optimizer="adamw", lr=1e-3, warmup_epochs=0.0)
GAN_TINY = dict(gan=GANOptions(latent_dim=16, g_channels=8, d_channels=8))


def datamodule(num_views=2, num_train=64, **kw):
    return ShapesDataModule(num_train=num_train, num_val=32, batch_size=16, num_workers=0, num_views=num_views,
                            crop_scale=(0.4, 1.0), **kw)


def trainer(tmp_path=None, **kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, limit_val_batches=0, max_epochs=1)
    if tmp_path is not None:
        args["default_root_dir"] = str(tmp_path)
    args.update(kw)
    return L.Trainer(**args)


def batch_of(dm, with_image=True):
    dm.with_image = with_image
    dm.setup()
    return next(iter(dm.train_dataloader()))


def test_contrastive_gradient_reaches_the_generator_through_the_augmentations():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY)
    fake = model.gan.sample(8)
    loss, _ = model.synthetic_loss(fake)
    loss.backward()
    grads = [p.grad for p in model.gan.generator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_main_loss_treats_generated_samples_as_constants():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, lambda_syn=1.0)
    batch = batch_of(datamodule())
    loss, _, stats = model.main_loss(batch)
    assert stats["train/loss_syn"] > 0  # the generated views are in the loss ...
    loss.backward()
    assert all(p.grad is None for p in model.gan.parameters())  # ... and nothing flows into G or D
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())


def test_generator_switched_off_trains_exactly_as_the_base_method():
    """Same seed, same data: HardSampleCL(generator_enabled=False) under manual optimisation ends
    with the same weights as SimCLR under automatic optimisation."""
    def fit(cls, **kw):
        L.seed_everything(3)
        model = cls(**TINY, **kw)
        L.seed_everything(4)  # the GAN's init drew from the RNG the augmentations use
        trainer(max_epochs=1, limit_train_batches=3).fit(model, datamodule())
        return model

    base = fit(SimCLR)
    off = fit(HardSampleCL, generator_enabled=False, **GAN_TINY)
    for (name, p), q in zip(base.backbone.named_parameters(), off.backbone.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    for p, q in zip(base.projector.parameters(), off.projector.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_generator_off_loss_equals_the_base_loss_on_a_batch():
    torch.manual_seed(0)
    off = HardSampleCL(**TINY, **GAN_TINY, generator_enabled=False)
    base = SimCLR(**TINY)
    base.load_state_dict({k: v for k, v in off.state_dict().items() if not k.startswith("gan.")})
    batch = batch_of(datamodule())
    torch.manual_seed(1)
    got = off.main_loss(batch)[0]
    want = base.training_loss(base.embed(batch["views"]))
    assert torch.allclose(got, want, atol=1e-6)


class RecordSteps(L.Callback):
    """Wraps every optimiser's step: which named parameters each step changed."""

    def __init__(self):
        self.changed: dict[int, set[str]] = {}
        self.names: dict[int, set[str]] = {}

    def on_train_start(self, trainer, pl_module):
        params = dict(pl_module.named_parameters())
        for i, opt in enumerate(trainer.optimizers):
            ids = {id(p) for g in opt.param_groups for p in g["params"]}
            self.names[i] = {n for n, p in params.items() if id(p) in ids}
            inner = opt.step

            def step(*args, _inner=inner, _i=i, **kwargs):
                before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
                out = _inner(*args, **kwargs)
                now = dict(pl_module.named_parameters())
                self.changed.setdefault(_i, set()).update(n for n, b in before.items() if not torch.equal(b, now[n]))
                return out

            opt.step = step


@pytest.mark.parametrize("cls,extra", [(HardSampleCL, {}), (HardSampleMoCoV2, {"queue_size": 64})])
def test_each_optimiser_updates_only_its_own_parameters(cls, extra):
    torch.manual_seed(0)
    model = cls(**TINY, **GAN_TINY, **extra)
    rec = RecordSteps()
    trainer(max_epochs=1, limit_train_batches=2, callbacks=[rec]).fit(model, datamodule())
    assert set(rec.changed) == {0, 1, 2}
    main, gen, disc = rec.names[0], rec.names[1], rec.names[2]
    assert all(n.startswith("gan.generator.") for n in gen) and all(n.startswith("gan.discriminator.") for n in disc)
    assert not any(n.startswith("gan.") for n in main)
    for i, own in rec.names.items():
        assert rec.changed[i], f"optimiser {i} changed nothing"
        assert rec.changed[i] <= own, f"optimiser {i} changed {sorted(rec.changed[i] - own)[:3]}"


def test_generator_step_leaves_the_main_models_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, hardness="generator", lambda_hard=1.0, hardness_schedule="constant")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k and not k.startswith("gan.")}
    with frozen_batchnorm_stats(model.main_modules()):
        loss, _, _ = model.generator_loss(16)
        loss.backward()
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gan.generator.parameters())


def test_generator_loss_is_realism_minus_weighted_hardness():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, hardness="generator", lambda_hard=0.7, hardness_schedule="constant")
    torch.manual_seed(5)
    loss, fake, stats = model.generator_loss(16)
    assert fake.shape[0] == 8  # syn_share 0.5 of the batch
    with torch.no_grad():
        adv = model.gan.generator_loss(fake)  # DiffAugment is random: compare the pieces the loss logged
    assert math.isclose(loss.item(), stats["gan/g_adv"].item() - 0.7 * stats["hard/gen_loss_for_g"].item(), rel_tol=1e-5)
    assert adv.shape == ()


def test_hardness_schedule_values():
    assert ramp(0.0, 0.0, 1.0, "linear") == 0.0 and math.isclose(ramp(0.25, 0.0, 1.0, "linear"), 0.25)
    assert math.isclose(ramp(0.5, 0.2, 1.0, "cosine"), 0.6) and math.isclose(ramp(1.0, 0.2, 1.0, "cosine"), 1.0)
    assert math.isclose(ramp(0.25, 0.0, 1.0, "cosine"), (1 - math.cos(math.pi / 4)) / 2)
    assert ramp(0.3, 0.0, 0.8, "constant") == 0.8 and ramp(7.0, 0.0, 1.0, "linear") == 1.0
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        ramp(0.5, 0, 1, "step")


class LambdaLog(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module._batch_idx = batch_idx
        self.values.append((trainer.current_epoch, batch_idx, pl_module.current_lambda_hard()))


def test_lambda_hard_is_zero_in_warm_up_then_follows_the_schedule():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, lambda_hard=1.0, lambda_hard_start=0.0, hardness_schedule="linear",
                         joint_start_epoch=1)
    log = LambdaLog()
    trainer(max_epochs=3, limit_train_batches=2, callbacks=[log]).fit(model, datamodule())
    got = {(e, b): v for e, b, v in log.values}
    assert got[(0, 0)] == 0 and got[(0, 1)] == 0  # warm-up: GAN only, main model on real data
    # joint epochs 1-2, 4 batches: progress 0, 1/4, 2/4, 3/4
    assert [got[(1, 0)], got[(1, 1)], got[(2, 0)], got[(2, 1)]] == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_diagnostics_are_logged():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY)
    t = trainer(max_epochs=1, limit_train_batches=2)
    t.fit(model, datamodule())
    for key in ("hard/gen_loss_real_epoch", "hard/gen_loss_syn_epoch", "hard/gen_loss_ratio_epoch", "gan/d_real_epoch",
                "gan/d_fake_epoch", "gan/g_adv_epoch", "hard/gen_lambda_hard_epoch", "train/loss"):
        assert key in t.logged_metrics and math.isfinite(float(t.logged_metrics[key])), key


def test_checkpoint_holds_everything_and_a_resumed_run_continues(tmp_path):
    L.seed_everything(0)
    dm = datamodule()
    model = HardSampleCL(**TINY, **GAN_TINY)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, enable_checkpointing=True)
    t.fit(model, dm)
    ckpt_path = t.checkpoint_callback.best_model_path
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert len(ckpt["optimizer_states"]) == 3 and len(ckpt["lr_schedulers"]) == 3
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("gan.generator.") for k in keys) and any(k.startswith("gan.discriminator.") for k in keys)
    assert [s["state"][0]["step"].item() for s in ckpt["optimizer_states"]] == [2, 2, 2]

    resumed = HardSampleCL(**TINY, **GAN_TINY)
    loaded = {}

    class Peek(L.Callback):
        def on_train_start(self, trainer, pl_module):
            loaded["g"] = {k: v.clone() for k, v in pl_module.gan.generator.state_dict().items()}
            loaded["steps"] = [o.state[o.param_groups[0]["params"][0]]["step"].item() for o in trainer.optimizers]
            loaded["lr_epochs"] = [s.scheduler.last_epoch for s in trainer.lr_scheduler_configs]

    t2 = trainer(tmp_path, max_epochs=2, limit_train_batches=2, enable_checkpointing=True, callbacks=[Peek()])
    t2.fit(resumed, datamodule(), ckpt_path=ckpt_path)
    saved_g = {k[len("gan.generator."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("gan.generator.")}
    assert all(torch.equal(saved_g[k], v) for k, v in loaded["g"].items())
    assert loaded["steps"] == [2, 2, 2] and loaded["lr_epochs"] == [2, 2, 2]
    assert [o.state[o.param_groups[0]["params"][0]]["step"].item() for o in t2.optimizers] == [4, 4, 4]


def test_gan_pretraining_checkpoint_initialises_the_joint_method(tmp_path):
    L.seed_everything(0)
    gan = GANPretrain(batch_size=16, **GAN_TINY)
    grid = GeneratedImageGrid(num_images=4)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, enable_checkpointing=True, callbacks=[grid])
    t.fit(gan, datamodule(num_views=1, augmentation="none"))
    assert grid.saved and grid.saved[0].exists()
    path = t.checkpoint_callback.best_model_path
    joint = HardSampleCL(**TINY, **GAN_TINY, generator_checkpoint=path)
    assert not all(torch.equal(a, b) for a, b in zip(joint.gan.generator.parameters(), gan.gan.generator.parameters()))
    load_gan_state(joint.gan, path)  # what on_fit_start does on a fresh fit
    for a, b in zip(joint.gan.state_dict().values(), gan.gan.state_dict().values()):
        assert torch.equal(a, b)
    mismatched = HardSampleCL(**TINY, gan=GANOptions(latent_dim=32, g_channels=8, d_channels=8))
    with pytest.raises(ValueError, match="does not match this GAN"):
        load_gan_state(mismatched.gan, path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_gan_state(joint.gan, str(tmp_path / "missing.ckpt"))


def test_a_fresh_fit_loads_the_generator_checkpoint(tmp_path):
    L.seed_everything(0)
    gan = GANPretrain(batch_size=16, **GAN_TINY)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=1, enable_checkpointing=True)
    t.fit(gan, datamodule(num_views=1, augmentation="none"))
    joint = HardSampleCL(**TINY, **GAN_TINY, generator_checkpoint=t.checkpoint_callback.best_model_path)
    seen = {}

    class Peek(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["d"] = {k: v.clone() for k, v in pl_module.gan.discriminator.state_dict().items()}

    trainer(max_epochs=1, limit_train_batches=1, callbacks=[Peek()]).fit(joint, datamodule())
    for k, v in gan.gan.discriminator.state_dict().items():
        assert torch.equal(seen["d"][k], v), k


def test_bad_hyperparameters_name_the_value():
    with pytest.raises(ValueError, match="syn_share must be > 0.*got 0"):
        HardSampleCL(**TINY, syn_share=0)
    with pytest.raises(ValueError, match="unknown hardness_schedule 'exp'"):
        HardSampleCL(**TINY, hardness_schedule="exp")
    with pytest.raises(ValueError, match="lambda_hard must be >= 0, got -1"):
        HardSampleCL(**TINY, lambda_hard=-1)
    with pytest.raises(ValueError, match="image sizes.*got image_size=40"):
        HardSampleCL(**{**TINY, "image_size": 40})


def test_missing_real_images_give_a_clear_error():
    model = HardSampleCL(**TINY, **GAN_TINY)
    batch = batch_of(datamodule(), with_image=False)
    with pytest.raises(ValueError, match="with_image: true"):
        model.real_pixels(batch)


def test_a_generator_pre_trained_on_other_images_is_refused_naming_both_subsets(tmp_path):
    """Problem 1 of the generator redesign: a GAN pre-trained on the whole set, then a joint run on
    half of it (the data-efficiency setting) must not start; the same subset loads."""
    L.seed_everything(0)
    gan = GANPretrain(batch_size=16, **GAN_TINY)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=1, enable_checkpointing=True)
    t.fit(gan, datamodule(num_views=1, augmentation="none"))
    path = t.checkpoint_callback.best_model_path
    saved = torch.load(path, map_location="cpu", weights_only=False)["train_subset"]
    assert saved["images"] == 64 and saved == datamodule().train_subset()
    joint = HardSampleCL(**TINY, **GAN_TINY, generator_checkpoint=path)
    with pytest.raises(ValueError, match=r"was trained on 64 of 64 images of Shapes10.*this run trains on 34 of 64 images "
                                         r"of Shapes10\(.*\) \(train_fraction 0.5, seed 0\)"):
        trainer(max_epochs=1, limit_train_batches=1).fit(joint, datamodule(train_fraction=0.5))


def test_train_subset_digest_tells_subsets_and_sources_apart(tmp_path):
    base = datamodule().train_subset()
    assert datamodule().train_subset() == base
    others = [datamodule(train_fraction=0.5), datamodule(train_fraction=0.5, seed=1), datamodule(num_train=80),
              ShapesDataModule(num_train=64, num_val=32, batch_size=16, data_seed=3)]
    digests = {base["digest"]} | {dm.train_subset()["digest"] for dm in others}
    assert len(digests) == 5


@pytest.mark.parametrize("cls", ["HardSampleCL", "PositivePairCL"])
def test_generated_batches_leave_the_evaluation_batchnorm_statistics_to_real_images(cls):
    """Problem 4 of the generator redesign: the main step's forwards of generated views use batch
    statistics but do not move the running statistics; they end as after the real views alone,
    and the main loss still back-propagates through the generated views."""
    import hardcl_lightning.methods as methods

    torch.manual_seed(0)
    model = getattr(methods, cls)(**TINY, **GAN_TINY).train()
    reference = copy.deepcopy(model)
    batch = next(iter(datamodule(with_image=True).train_dataloader()))
    loss, outs, stats = model.main_loss(batch)
    assert {"train/loss_syn", "hard/pair_pos_loss"} & set(stats)  # generated views were forwarded
    loss.backward()  # the graph through the generated views is intact
    reference.embed_training_views(batch)  # the real views only
    ref = dict(reference.named_buffers())
    checked = 0
    for name, a in model.named_buffers():  # the contrastive model's (the generators' own BatchNorm is theirs)
        if ("running" in name or "num_batches_tracked" in name) and not name.startswith(("gan.", "generator_b.")):
            assert torch.equal(a, ref[name]), name
            checked += 1
    assert checked > 10
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.momentum == 0.1  # restored


# --- bounded hardness (problem 2 of the generator redesign) ---------------------------------------

def deterministic_views(model):
    """Two fixed views (identity and a flip) instead of random augmentations: the search's objective
    is then a fixed function of the sample, so an ascent property can be checked exactly."""
    mean, std = model.resolve_pixel_stats()
    norm = lambda x: (x - mean.to(x)) / std.to(x)  # noqa: E731
    model.synthetic_augmentations = [lambda x: (norm(x), None), lambda x: (norm(x.flip(-1)), None)]


def objective(model, images):
    with torch.no_grad():
        return model.synthetic_loss(images)[0].item()


@pytest.mark.parametrize("steps", [1, 3])
def test_latent_hardness_stays_inside_its_l2_budget_and_raises_the_loss(steps):
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, hardness="latent", latent_budget=0.05, hardness_steps=steps).eval()
    deterministic_views(model)
    torch.manual_seed(1)
    z = model.gan.latent(8)
    torch.manual_seed(1)  # make_hard_samples draws the same z
    images, stats = model.make_hard_samples(8, None)
    radius = 0.05 * math.sqrt(model.gan.latent_dim)
    # recover delta by searching again from the same z: the sample is G(z + delta), ||delta|| <= radius
    delta = model.bounded_search(lambda d: model.gan.generator(z + d), z.shape, z,
                                 ascend=lambda g: 2.5 * radius / steps * g / g.norm(dim=1, keepdim=True),
                                 project=lambda d: d * (radius / d.norm(dim=1, keepdim=True)).clamp(max=1))
    assert (delta.norm(dim=1) <= radius * (1 + 1e-5)).all()
    assert stats["hard/latent_delta_norm"].item() <= 0.05 * (1 + 1e-5)
    with torch.no_grad():
        assert torch.allclose(images, model.gan.generator(z + delta), atol=1e-5)
        plain = model.gan.generator(z)
    assert not torch.allclose(images, plain)
    assert objective(model, images) > objective(model, plain)  # harder for the main model


def test_residual_hardness_stays_inside_its_linf_budget_and_raises_the_loss():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, hardness="residual", residual_budget=4 / 255, hardness_steps=2).eval()
    deterministic_views(model)
    real = torch.rand(6, 3, 32, 32)
    images, stats = model.make_hard_samples(8, real)  # more samples than images: the batch is reused
    source = real[torch.arange(8) % 6]
    assert images.shape == source.shape and images.min() >= 0 and images.max() <= 1
    assert (images - source).abs().max() <= 4 / 255 + 1e-6
    assert (images - source).abs().max() > 2 / 255  # it did move
    assert stats["hard/residual_linf"].item() <= 4 / 255 + 1e-6
    assert objective(model, images) > objective(model, source)


def test_bounded_modes_scale_their_budget_with_the_hardness_schedule():
    model = HardSampleCL(**TINY, **GAN_TINY, hardness="residual", residual_budget=0.1, lambda_hard=0.5)
    model.current_lambda_hard = lambda: 0.0  # the warm-up: no search, the real images themselves
    real = torch.rand(4, 3, 32, 32)
    images, _ = model.make_hard_samples(4, real)
    assert torch.equal(images, real)
    model.current_lambda_hard = lambda: 0.25  # half-way: half the budget
    images, _ = model.make_hard_samples(4, real)
    assert (images - real).abs().max() <= 0.05 + 1e-6


def test_residual_mode_trains_no_gan_and_bounded_modes_give_g_no_hardness_gradient():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, hardness="residual")
    rec = RecordSteps()
    trainer(max_epochs=1, limit_train_batches=2, callbacks=[rec]).fit(model, datamodule())
    assert set(rec.changed) == {0}  # only the main model stepped
    latent = HardSampleCL(**TINY, **GAN_TINY, hardness="latent", lambda_hard=0.5, hardness_schedule="constant")
    loss, _, stats = latent.generator_loss(16)
    assert "hard/gen_loss_for_g" not in stats and loss.item() == pytest.approx(stats["gan/g_adv"].item())


def test_truncated_latents_are_bounded():
    gan = HardSampleCL(**TINY, **GAN_TINY).gan
    z = gan.latent(256, truncation=0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2
    with pytest.raises(ValueError, match="truncation must be > 0.*-1"):
        gan.latent(4, truncation=-1)


def test_mode_seeking_term_against_a_hand_computed_value():
    images = torch.zeros(4, 3, 2, 2)
    images[2:] = 0.5  # pairs (0, 2) and (1, 3) differ by 0.5 everywhere
    z = torch.zeros(4, 8)
    z[2:] = 2.0
    assert HardSampleCL.mode_seeking(images, z).item() == pytest.approx(0.25)
    assert HardSampleCL.mode_seeking(torch.ones(4, 3, 2, 2), z).item() == 0  # a collapsed generator scores 0


def test_output_gradient_norms_against_the_analytic_gradient():
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    norms = HardSampleCL.output_gradient_norms({"a": (x ** 2).sum(), "b": 3 * x.sum()}, x)
    assert norms["a"].item() == pytest.approx((2 * x).flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    assert norms["b"].item() == pytest.approx(3 * math.sqrt(48), rel=1e-5)


def test_generator_mode_logs_the_realism_hardness_and_diversity_gradients():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, hardness="generator", lambda_hard=0.5, hardness_schedule="constant", lambda_diversity=0.1)
    loss, fake, stats = model.generator_loss(16)
    assert {"gan/grad_norm_realism", "hard/grad_norm_hardness", "gan/grad_norm_diversity"} <= set(stats)
    assert all(stats[k] > 0 for k in ("gan/grad_norm_realism", "hard/grad_norm_hardness", "gan/grad_norm_diversity"))
    expected = stats["gan/g_adv"] - 0.1 * stats["gan/diversity"] - 0.5 * stats["hard/gen_loss_for_g"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_several_discriminator_steps_per_generator_step():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, d_steps=3)
    counts = {}

    class Count(L.Callback):
        def on_train_start(self, trainer, pl_module):
            for i, opt in enumerate(trainer.optimizers):
                inner = opt.step

                def step(*a, _inner=inner, _i=i, **k):
                    counts[_i] = counts.get(_i, 0) + 1
                    return _inner(*a, **k)
                opt.step = step

    t = trainer(max_epochs=1, limit_train_batches=2, callbacks=[Count()])
    t.fit(model, datamodule())
    assert counts == {0: 2, 1: 2, 2: 6}
    assert [s.last_epoch for s in (c.scheduler for c in t.lr_scheduler_configs)] == [2, 2, 2]  # one LR step per batch


def test_collapse_diagnostics_are_logged():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY)
    _, _, stats = model.main_loss(batch_of(datamodule()))
    assert 0 < stats["hard/gen_pixel_std"] < 1 and -1 <= stats["hard/gen_view_cosine"] <= 1


def test_bad_hardness_options_name_the_value():
    for kw, msg in [({"hardness": "pixel"}, "unknown hardness 'pixel'"), ({"latent_budget": -1}, "latent_budget must be >= 0, got -1"),
                    ({"hardness_steps": 0}, "hardness_steps and d_steps must be >= 1, got 0"),
                    ({"lambda_diversity": -0.1}, "lambda_diversity must be >= 0, got -0.1")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            HardSampleCL(**TINY, **GAN_TINY, **kw)


def test_a_frozen_gan_trains_the_main_model_only_on_its_samples():
    """The control arm (B): samples of a GAN pre-trained alone, G and D never stepped."""
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, train_gan=False, lambda_hard=0.0)
    gan_before = copy.deepcopy(model.gan.state_dict())
    rec = RecordSteps()
    trainer(max_epochs=1, limit_train_batches=2, callbacks=[rec]).fit(model, datamodule())
    assert set(rec.changed) == {0}
    after = model.gan.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in gan_before.items() if "running" not in k and "num_batches" not in k)


def test_the_model_asks_for_real_images_without_writing_on_the_datamodule():
    torch.manual_seed(0)
    dm = datamodule()
    trainer(max_epochs=1, limit_train_batches=1).fit(HardSampleCL(**TINY, **GAN_TINY), dm)  # D needed the images
    assert dm.with_image is False  # nothing was flipped on the shared datamodule
    plain = datamodule()
    plain.setup()
    assert "image" not in next(iter(plain.train_dataloader()))  # and a base method's batches stay lean


def test_losses_on_generated_samples_gather_nothing_and_flip_no_flag(monkeypatch):
    """Generated samples are per rank: their loss must not reach for other ranks' negatives, and
    computing it must not change the method's own setting for the real-data loss."""
    import hardcl_lightning.losses as losses
    import hardcl_lightning.methods.simclr as simclr

    calls = []
    real_nt_xent = losses.nt_xent

    def spy(*args, gather_distributed=True, **kwargs):
        calls.append(gather_distributed)
        return real_nt_xent(*args, gather_distributed=gather_distributed, **kwargs)

    monkeypatch.setattr(simclr, "nt_xent", spy)
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY)
    assert model.gather_distributed is True
    model.synthetic_loss(model.gan.sample(8))
    assert calls == [False] and model.gather_distributed is True
    calls.clear()
    model.training_loss(model.embed([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]))
    assert calls == [True]


@pytest.mark.parametrize("cls_name", ["HardSampleCL", "PositivePairCL"])
def test_gan_options_are_one_argument_and_checkpoints_saved_before_still_load(tmp_path, cls_name):
    """The GAN's options are one ``gan`` argument, recorded as plain values (evaluation reads
    checkpoints with ``weights_only``); a checkpoint of the flat arguments they once were loads
    with the same GAN, and ``--resume auto`` still finds such a run."""
    import hardcl_lightning.methods as methods
    from hardcl_lightning.checkpointing import find_resumable_checkpoint

    cls = getattr(methods, cls_name)
    options = GANOptions(latent_dim=16, g_channels=8, d_channels=8, betas=(0.5, 0.99), lr_schedule="linear")
    model = cls(**TINY, gan=options)
    hp = dict(model.hparams)
    assert hp["gan"] == {"latent_dim": 16, "g_channels": 8, "d_channels": 8, "diffaugment_policy": ("color", "translation", "cutout"),
                         "g_lr": 2e-4, "d_lr": 2e-4, "betas": (0.5, 0.99), "lr_schedule": "linear", "pixel_mean": None,
                         "pixel_std": None}
    assert dict(model.hparams_initial)["gan"] == hp["gan"]  # what loggers write: plain values too
    torch.save({"hyper_parameters": hp}, tmp_path / "hp.pt")
    assert torch.load(tmp_path / "hp.pt", weights_only=True)["hyper_parameters"]["gan"]["latent_dim"] == 16
    # the layout of a checkpoint written before: latent_dim=..., gan_betas=..., gan_lr_schedule=... beside the rest
    old_hp = {k: v for k, v in hp.items() if k != "gan"} | {"latent_dim": 16, "g_channels": 8, "d_channels": 8,
                                                            "gan_betas": (0.5, 0.99), "gan_lr_schedule": "linear"}
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": old_hp, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": L.__version__}, run / "last.ckpt")
    loaded = cls.load_from_checkpoint(run / "last.ckpt", map_location="cpu")
    assert loaded.gan_options == options and loaded.gan.latent_dim == 16
    assert dict(loaded.hparams)["gan"] == hp["gan"] and not set(loaded.hparams) & {"latent_dim", "gan_betas"}
    assert all(torch.equal(a, b) for a, b in zip(loaded.gan.state_dict().values(), model.gan.state_dict().values()))
    assert find_resumable_checkpoint([tmp_path], hp, max_epochs=3)[0] == (run / "last.ckpt").resolve()
    other = cls(**TINY, gan=GANOptions(latent_dim=32, g_channels=8, d_channels=8))
    assert find_resumable_checkpoint([tmp_path], dict(other.hparams), max_epochs=3) is None
    # a flat argument that agrees with ``gan`` is no conflict, and keeps gan's other options
    assert cls(**TINY, gan=options, latent_dim=16).gan_options == options


def test_bad_gan_options_name_the_value():
    with pytest.raises(ValueError, match="unknown gan.lr_schedule 'exp'; choose one of"):
        GANOptions(lr_schedule="exp")
    with pytest.raises(ValueError, match=r"gan.betas must be two values in \[0, 1\), got \(1.0, 0.9\)"):
        GANOptions(betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="gan.g_lr must be > 0, got 0"):
        GANOptions(g_lr=0)
    with pytest.raises(ValueError, match="both gan.pixel_mean and gan.pixel_std"):
        GANOptions(pixel_mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"unknown DiffAugment ops \[.translate.\]"):
        GANOptions(diffaugment_policy=("translate",))
    with pytest.raises(ValueError, match=r"unknown gan option\(s\) \['latent'\]; accepted: \['latent_dim'"):
        HardSampleCL(**TINY, gan={"latent": 16})
    with pytest.raises(ValueError, match=r"give the GAN options once.*\['latent_dim'\]"):
        HardSampleCL(**TINY, gan=GANOptions(latent_dim=16, g_channels=8, d_channels=8), latent_dim=32)


def test_a_gan_pretraining_run_saved_before_its_options_were_grouped_still_resumes(tmp_path):
    """A ``GANPretrain`` run saved with the flat GAN arguments and without ``on_nonfinite_loss``
    (added later, with the methods' non-finite guard) is still found by ``--resume auto``, unless
    the run asked now differs (another policy, another architecture)."""
    from hardcl_lightning.checkpointing import find_resumable_checkpoint

    hp = dict(GANPretrain(batch_size=16, **GAN_TINY).hparams)
    old_hp = {k: v for k, v in hp.items() if k not in ("gan", "on_nonfinite_loss")} | {
        "latent_dim": 16, "g_channels": 8, "d_channels": 8, "gan_betas": (0.0, 0.9)}
    run = tmp_path / "checkpoints"
    run.mkdir()
    torch.save({"hyper_parameters": old_hp, "epoch": 0, "global_step": 2}, run / "last.ckpt")
    assert find_resumable_checkpoint([tmp_path], hp, max_epochs=2)[0] == (run / "last.ckpt").resolve()
    skip = dict(GANPretrain(batch_size=16, on_nonfinite_loss="skip", **GAN_TINY).hparams)
    wider = dict(GANPretrain(batch_size=16, gan=GANOptions(latent_dim=16, g_channels=16, d_channels=8)).hparams)
    assert find_resumable_checkpoint([tmp_path], skip, max_epochs=2) is None
    assert find_resumable_checkpoint([tmp_path], wider, max_epochs=2) is None
