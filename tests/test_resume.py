"""A run stopped at an epoch boundary and resumed from its checkpoint gives the same loss curve,
and the same final weights and state, as one that never stopped (fixed seed, CPU)."""

import lightning as L
import pytest
import torch

from hardcl_lightning.gan import GANOptions
from hardcl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
from hardcl_lightning.data import ShapesDataModule
from hardcl_lightning.methods import DINO, HardSampleCL, MoCHi, SimCLR

TINY = dict(backbone="resnet_tiny", cifar_stem=True, backbone_kwargs={"widths": (8, 16, 16, 16)}, batch_size=16,
            optimizer="adamw", lr=1e-3, warmup_epochs=0.5)
CASES = {
    "SimCLR": (SimCLR, dict(proj_hidden_dim=32, proj_output_dim=16)),
    "MoCHi": (MoCHi, dict(proj_hidden_dim=32, proj_output_dim=16, queue_size=64, mixing=(16, 8, 4), mix_start_epoch=0)),
    "DINO": (DINO, dict(proj_hidden_dim=32, bottleneck_dim=16, num_prototypes=64)),
    "HardSampleCL": (HardSampleCL, dict(proj_hidden_dim=32, proj_output_dim=16, gan=GANOptions(latent_dim=16, g_channels=8, d_channels=8))),
}


class StopAfterEpochs(L.Callback):
    """An interruption at an epoch boundary (the schedule still spans ``max_epochs``)."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class LossCurve(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def run(name, tmp_path, max_epochs=2, ckpt_path=None, stop_after=None):
    cls, kw = CASES[name]
    L.seed_everything(0)
    model = cls(**TINY, **kw)
    dm = ShapesDataModule(num_train=64, num_val=32, batch_size=16, num_workers=0, num_views=model.num_views,
                          crop_scale=(0.4, 1.0), **({"num_local_crops": 2, "local_crop_size": 16} if name == "DINO" else {}))
    curve = LossCurve()
    knn, probe = OnlineKNN(k=5), OnlineLinearProbe()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, limit_train_batches=3, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[curve, knn, probe, L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)]
                        + ([StopAfterEpochs(stop_after)] if stop_after else []))
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, curve.losses, knn, probe


@pytest.mark.parametrize("name", list(CASES))
def test_stopped_and_resumed_run_equals_uninterrupted_run(name, tmp_path):
    ref_model, ref_losses, ref_knn, ref_probe = run(name, tmp_path / "ref")
    run(name, tmp_path / "split", stop_after=1)
    model, losses, knn, probe = run(name, tmp_path / "split", ckpt_path=str(tmp_path / "split" / "last.ckpt"))
    assert len(ref_losses) == 6 and len(losses) == 3
    assert losses == pytest.approx(ref_losses[3:], abs=1e-6)  # epoch 2 of both
    ref_state, state = ref_model.state_dict(), model.state_dict()
    for k, v in ref_state.items():  # weights, EMA teacher, queue, DINO centre, generators
        assert torch.allclose(state[k].float(), v.float(), atol=1e-6), k
    assert [tuple(h) for h in knn.history] == [tuple(h) for h in ref_knn.history] and knn.best_acc == ref_knn.best_acc
    assert probe.best_acc == ref_probe.best_acc


def test_a_longer_resumed_run_continues_on_the_new_schedule(tmp_path):
    """max_epochs raised on resume: the first resumed step takes the new schedule's LR, not the saved one."""
    run("SimCLR", tmp_path, max_epochs=1)
    seen = []

    class FirstLR(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    cls, kw = CASES["SimCLR"]
    model = cls(**TINY, **kw)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0, callbacks=[FirstLR()])
    dm = ShapesDataModule(num_train=64, num_val=32, batch_size=16, num_workers=0, crop_scale=(0.4, 1.0))
    trainer.fit(model, dm, ckpt_path=str(tmp_path / "last.ckpt"))
    sched = trainer.lr_scheduler_configs[0].scheduler
    expected = sched.base_lrs[0] * sched.lr_lambdas[0](3)  # step 3 of a 9-step schedule: mid-cosine, not the old end (0)
    assert seen[0] == pytest.approx(expected) and seen[0] > 0
