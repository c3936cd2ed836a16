"""Generator-adversarial hard samples: gradients, frozen parts, optimiser ownership, equivalence
with the base method, checkpoints and resume, schedules, and GAN pre-training."""

import copy
import math

import lightning as L
import pytest
import torch

from hardcl_lightning.callbacks import GeneratedImageGrid
from hardcl_lightning.data import ShapesDataModule
from hardcl_lightning.methods import GANPretrain, HardSampleCL, HardSampleMoCoV2, SimCLR
from hardcl_lightning.batchnorm import frozen_batchnorm_stats
from hardcl_lightning.methods.generative import load_gan_state, ramp

TINY = dict(backbone="resnet_tiny", cifar_stem=True, backbone_kwargs={"widths": (8, 16, 16, 16)}, proj_hidden_dim=32,
            proj_output_dim=16, batch_size=16, optimizer="adamw", lr=1e-3, warmup_epochs=0.0)
GAN_TINY = dict(latent_dim=16, g_channels=8, d_channels=8)


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
    model = HardSampleCL(**TINY, **GAN_TINY, lambda_hard=1.0, hardness_schedule="constant")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k and not k.startswith("gan.")}
    with frozen_batchnorm_stats(model.main_modules()):
        loss, _, _ = model.generator_loss(16)
        loss.backward()
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gan.generator.parameters())


def test_generator_loss_is_realism_minus_weighted_hardness():
    torch.manual_seed(0)
    model = HardSampleCL(**TINY, **GAN_TINY, lambda_hard=0.7, hardness_schedule="constant")
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
    mismatched = HardSampleCL(**TINY, latent_dim=32, g_channels=8, d_channels=8)
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
