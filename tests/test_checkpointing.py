"""Atomic checkpoint writes: a write that dies half-way leaves the previous checkpoint loadable."""

import pytest
import torch

from hardcl_lightning.checkpointing import AtomicCheckpointIO
from hardcl_lightning.cli import build_cli


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="mid-write"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind
    io.save_checkpoint({"step": 3}, path)
    assert torch.load(path)["step"] == 3


def test_temporaries_of_killed_writers_are_removed_at_the_next_write(tmp_path):
    """A SIGKILL mid-write skips the clean-up; the next write removes what dead writers on this host
    left, and leaves a live writer's file and another host's alone."""
    import socket
    import subprocess
    import sys

    path = tmp_path / "last.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".last.ckpt.tmp-{host}-{int(dead.stdout)}"
    live = tmp_path / f".last.ckpt.tmp-{host}-1"  # PID 1 runs
    other_host = tmp_path / f".last.ckpt.tmp-elsewhere-{int(dead.stdout)}"
    for p in (stale, live, other_host):
        p.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", live.name, other_host.name])


def test_a_run_without_last_ckpt_resumes_from_its_newest_epoch_checkpoint(tmp_path):
    """Configs without save_last (configs/tiny) keep epoch=N checkpoints only; those resume too,
    unless the run's FINISHED mark is newer."""
    import os

    from hardcl_lightning.checkpointing import FINISHED, find_resumable_checkpoint

    hp = {"lr": 0.1}
    a = _ckpt(tmp_path / "version_0/checkpoints/epoch=0-step=8.ckpt", hp, 1)
    b = _ckpt(tmp_path / "version_0/checkpoints/epoch=1-step=16.ckpt", hp, 2)
    os.utime(a, (1000, 1000))
    os.utime(b, (1001, 1001))
    assert find_resumable_checkpoint([tmp_path], hp, max_epochs=3)[0] == b.resolve()
    (b.parent / FINISHED).touch()
    assert find_resumable_checkpoint([tmp_path], hp, max_epochs=3) is None


def test_the_cli_writes_checkpoints_atomically_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    cfg = Path(__file__).parents[1] / "configs" / "tiny" / "simclr.yaml"
    cli = build_cli(["--config", str(cfg), "--trainer.logger=false"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def _ckpt(path, hparams, completed_epochs, step=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": hparams, "global_step": step, "epoch": completed_epochs,
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": completed_epochs}}}}}, path)
    return path


def test_find_resumable_checkpoint_picks_the_newest_unfinished_compatible_run(tmp_path):
    import os

    from hardcl_lightning.checkpointing import FINISHED, find_resumable_checkpoint

    hp = {"lr": 0.1, "crop": (0.2, 1.0), "_instantiator": "ignored"}
    old = _ckpt(tmp_path / "version_0/checkpoints/last.ckpt", hp, 1)
    new = _ckpt(tmp_path / "version_1/checkpoints/last.ckpt", hp, 2)
    other = _ckpt(tmp_path / "version_2/checkpoints/last.ckpt", {**hp, "lr": 0.2}, 1)  # another config
    (tmp_path / "version_3/checkpoints").mkdir(parents=True)
    (tmp_path / "version_3/checkpoints/last.ckpt").write_bytes(b"not a checkpoint")  # damaged: skipped
    for i, p in enumerate([old, new, other, tmp_path / "version_3/checkpoints/last.ckpt"]):
        os.utime(p, (1000 + i, 1000 + i))
    path, ckpt = find_resumable_checkpoint([tmp_path], {"lr": 0.1, "crop": [0.2, 1.0]}, max_epochs=3)
    assert path == new.resolve() and ckpt["epoch"] == 2
    assert find_resumable_checkpoint([tmp_path], {"lr": 0.1, "crop": [0.2, 1.0]}, max_epochs=2)[0] == old.resolve()
    (new.parent / FINISHED).touch()  # that run ended by itself
    os.utime(new.parent / FINISHED, (2000, 2000))
    assert find_resumable_checkpoint([tmp_path], {"lr": 0.1, "crop": [0.2, 1.0]}, max_epochs=3)[0] == old.resolve()
    assert find_resumable_checkpoint([tmp_path], {"lr": 0.3}, max_epochs=3) is None


def test_resumed_loggers_keep_their_version_and_wandb_run_id(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    from hardcl_lightning.checkpointing import continue_loggers

    path = tmp_path / "runs" / "x" / "version_4" / "checkpoints" / "last.ckpt"
    wandb = WandbLogger(offline=True, save_dir=str(tmp_path))
    tb, csv = TensorBoardLogger(str(tmp_path / "runs"), name="x"), CSVLogger(str(tmp_path / "runs"), name="x")
    continue_loggers([wandb, tb, csv], path, {"wandb_run_id": "abc123"})
    assert wandb.version == "abc123" and wandb._wandb_init["id"] == "abc123" and wandb._wandb_init["resume"] == "allow"
    assert tb.version == 4 and csv.version == 4


def test_checkpoints_carry_the_wandb_run_id_and_rng_states(tmp_path):
    import lightning as L

    from hardcl_lightning.checkpointing import ResumableState, restore_rng_states

    class FakeWandb(L.pytorch.loggers.Logger):
        name, version = "wandb", "run-77"

        def log_metrics(self, *a, **k): ...

        def log_hyperparams(self, *a, **k): ...

    FakeWandb.__name__ = "WandbLogger"

    class Holder(ResumableState):
        _trainer = type("T", (), {"loggers": [FakeWandb()]})()

    ckpt = {}
    torch.manual_seed(5)
    Holder().on_save_checkpoint(ckpt)
    first = torch.rand(3)
    restore_rng_states(ckpt["rng_states"])
    assert torch.equal(torch.rand(3), first) and ckpt["wandb_run_id"] == "run-77"
    torch.save(ckpt, tmp_path / "c.ckpt")
    torch.load(tmp_path / "c.ckpt", weights_only=True)  # plain types only: safe loading still works


class _Payload:
    """Unpickling this creates a file: stands for code a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_by_resume_predict_eval_and_generator_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from hardcl_lightning.checkpointing import find_resumable_checkpoint
    from hardcl_lightning.gan import GAN
    from hardcl_lightning.methods.gan_training import load_gan_state

    marker = tmp_path / "payload_ran"
    bad = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": {"lr": 0.1}, "global_step": 1, "epoch": 0, "evil": _Payload(marker),
                "state_dict": {}}, bad)
    assert find_resumable_checkpoint([tmp_path / "run"], {"lr": 0.1}, max_epochs=3) is None
    assert f"not resuming from {bad.resolve()}" in capsys.readouterr().out
    with pytest.raises(ValueError, match=f"generator_checkpoint='{bad}' does not load as plain tensors"):
        load_gan_state(GAN(latent_dim=8, image_size=32, g_channels=8, d_channels=8), str(bad))
    from pathlib import Path

    from hardcl_lightning.cli import eval_main, main

    tiny = str(Path(__file__).parents[1] / "configs" / "tiny" / "simclr.yaml")
    small = ["--data.init_args.num_train=32", "--data.init_args.num_val=16", "--data.init_args.batch_size=16",
             "--data.init_args.num_workers=0", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    for sub in ("fit", "predict"):  # --ckpt_path: refused before Lightning reads it
        with pytest.raises(ValueError, match=f"ckpt_path '{bad}' does not load as plain tensors"):
            main([sub, "--config", tiny, *small, f"--ckpt_path={bad}"])
    with pytest.raises(ValueError, match=f"cannot read checkpoint '{bad}'"):
        eval_main(["export", f"--pretrained={bad}", f"--output={tmp_path / 'b.pth'}"])
    assert not marker.exists()  # the payload never ran
    torch.load(bad, weights_only=False)  # the control: loading it unsafely does run it
    assert marker.exists()
