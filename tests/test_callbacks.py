import pytest
import lightning as L
import torch

from hardcl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
from hardcl_lightning.data import ShapesDataModule
from hardcl_lightning.methods import SimCLR
from test_knn import brute_force_knn


def small_setup(tmp_path, callbacks, **trainer_kw):
    L.seed_everything(0)
    dm = ShapesDataModule(num_train=64, num_val=24, batch_size=16, num_workers=0, image_size=16, crop_scale=(0.5, 1.0))
    model = SimCLR(backbone="resnet_tiny", cifar_stem=True, proj_hidden_dim=32, proj_output_dim=16, optimizer="sgd", lr=0.1,
                   warmup_epochs=0)
    kw = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    kw.update(trainer_kw)
    return dm, model, L.Trainer(callbacks=callbacks, **kw)


def test_online_knn_equals_brute_force_on_eval_mode_features(tmp_path):
    knn = OnlineKNN(k=5, temperature=0.1, chunk_size=7)
    dm, model, trainer = small_setup(tmp_path, [knn], enable_checkpointing=False, limit_train_batches=2)
    trainer.fit(model, dm)
    assert [e for e, _ in knn.history] == [0, 1]  # the epoch-0 baseline, then epoch 1
    backbone = model.backbone.eval()
    with torch.no_grad():
        bank = torch.cat([backbone(b["image"]) for b in dm.bank_dataloader()])
        val = [(backbone(b["image"]), b["label"]) for b in dm.val_dataloader()]
    qf, qy = torch.cat([f for f, _ in val]), torch.cat([y for _, y in val])
    expected = (brute_force_knn(bank, dm._train.labels, qf, 10, 5, 0.1) == qy).float().mean().item()
    assert abs(knn.history[-1][1] - expected) < 1e-6


def test_probe_trains_on_method_features_and_survives_checkpoint_resume(tmp_path):
    probe = OnlineLinearProbe(lr=0.5)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    dm, model, trainer = small_setup(tmp_path, [probe, ckpt], max_epochs=1)
    trainer.fit(model, dm)
    probe_weights = probe.probe.weight.detach().clone()
    momentum = [s["momentum_buffer"].clone() for s in probe.optimizer.state.values()]
    assert probe.best_acc > 0 and momentum  # it trained and has optimiser state

    probe2 = OnlineLinearProbe(lr=0.5)
    dm2, model2, trainer2 = small_setup(tmp_path, [probe2], max_epochs=1)
    trainer2.fit(model2, dm2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # restores, no further epoch
    assert torch.equal(probe2.probe.weight, probe_weights)
    for a, b in zip(momentum, [s["momentum_buffer"] for s in probe2.optimizer.state.values()]):
        assert torch.equal(a, b)
    assert probe2.best_acc == probe.best_acc


def test_probe_does_not_touch_the_backbone(tmp_path):
    """The probe's own optimiser steps change only the probe (features are detached)."""
    probe = OnlineLinearProbe(lr=0.5)
    dm, model, trainer = small_setup(tmp_path, [probe], enable_checkpointing=False, limit_train_batches=1)
    dm.setup()
    probe._build(model, 10)
    feats = torch.randn(8, model.feature_dim, requires_grad=True)
    w = probe.probe.weight.detach().clone()
    probe.on_train_batch_end(trainer, model, {"feats": feats, "labels": torch.arange(8)}, None, 0)
    assert feats.grad is None and not torch.equal(w, probe.probe.weight)


class _RecordLosses(L.Callback):
    def __init__(self):
        self.losses, self.images = [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.images += batch["views"][0].shape[0]


def test_progress_line_reports_the_mean_loss_images_and_time_left(tmp_path, caplog):
    import logging
    import re

    from hardcl_lightning.callbacks import ProgressLine

    record = _RecordLosses()
    dm, model, trainer = small_setup(tmp_path, [ProgressLine(every_n_seconds=0), record], enable_checkpointing=False, max_epochs=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, dm)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2, lines
    pattern = r"epoch (\d)/2 \| loss ([\d.]+) \| (\d+) img/s \| (\d+:\d\d) elapsed \| ~(\d+:\d\d) left"
    parsed = [re.fullmatch(pattern, line) for line in lines]
    assert all(parsed), lines
    per_epoch = len(record.losses) // 2
    for e, m in enumerate(parsed):  # each line: the mean loss of that epoch's batches (recorded independently)
        assert int(m.group(1)) == e + 1
        assert float(m.group(2)) == pytest.approx(sum(record.losses[e * per_epoch:(e + 1) * per_epoch]) / per_epoch, abs=1e-4)
        assert int(m.group(3)) > 0
    assert parsed[-1].group(5) == "0:00"  # nothing left after the last epoch
    with pytest.raises(ValueError, match="every_n_seconds"):
        ProgressLine(every_n_seconds=-1)


def test_progress_line_after_a_mid_epoch_resume_counts_only_what_it_measured(monkeypatch, caplog):
    """Resumed at batch 6 of 8 after a 100 s start-up, then 1 s and 16 images a batch: 16 img/s
    and 2 more epochs of 8 batches (~0:16) left, where the start-up used to count as throughput
    time and the partial epoch as a whole one (0 img/s, hours left)."""
    import logging
    import re

    from hardcl_lightning.callbacks import ProgressLine
    from hardcl_lightning.callbacks import progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    trainer = type("T", (), {"max_epochs": 3, "current_epoch": 0, "num_training_batches": 8, "world_size": 1,
                             "callback_metrics": {}})()
    line = ProgressLine(every_n_seconds=0)
    batch = {"views": [torch.zeros(16, 3, 4, 4)]}
    with caplog.at_level(logging.INFO):
        line.on_train_start(trainer, None)
        line.on_train_epoch_start(trainer, None)
        for i, batch_idx in enumerate((5, 6, 7)):
            clock[0] += 100.0 if i == 0 else 1.0
            line.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.0)}, batch, batch_idx)
        line.on_train_epoch_end(trainer, None)
        trainer.current_epoch = 1
        line.on_train_epoch_start(trainer, None)
        for batch_idx in range(8):  # a whole epoch: 8 s, now the mean epoch
            clock[0] += 1.0
            line.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.0)}, batch, batch_idx)
        clock[0] += 2.0  # validation
        line.on_train_epoch_end(trainer, None)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert re.fullmatch(r"epoch 1/3 \| loss 2\.0000 \| 16 img/s \| 1:42 elapsed \| ~0:16 left", lines[0]), lines
    assert re.fullmatch(r"epoch 2/3 \| loss 2\.0000 \| 16 img/s \| 1:52 elapsed \| ~0:10 left", lines[1]), lines


def test_probe_and_knn_say_why_they_are_off_for_unlabeled_images(tmp_path, caplog, image_folder):
    import logging

    from PIL import Image

    from hardcl_lightning.data import ImageFolderDataModule, UnlabeledFolderDataModule

    (tmp_path / "mine").mkdir()
    for i in range(4):
        Image.fromarray((torch.rand(20, 20, 3) * 255).to(torch.uint8).numpy()).save(tmp_path / "mine" / f"{i}.png")
    cases = [
        (UnlabeledFolderDataModule(train_dir=str(tmp_path / "mine"), batch_size=2), "training images have no labels",
         "set val_dir and bank_dir"),
        (UnlabeledFolderDataModule(train_dir=str(tmp_path / "mine"), val_dir=str(image_folder / "val"),
                                   bank_dir=str(image_folder / "train"), batch_size=2), "training images have no labels", None),
        (ImageFolderDataModule(train_dir=str(image_folder / "train"), batch_size=2), "no labelled validation set",
         "no labelled validation set"),
    ]
    for dm, probe_says, knn_says in cases:
        dm.setup()
        trainer = type("T", (), {"datamodule": dm})()
        probe, knn = OnlineLinearProbe(), OnlineKNN()
        with caplog.at_level(logging.INFO):
            caplog.clear()
            probe.setup(trainer, None, "fit")
            knn_on = knn._check_data(trainer)
        text = caplog.text
        assert not probe.enabled and probe_says in text
        assert knn_on == (knn_says is None) and (knn_says is None or knn_says in text)
