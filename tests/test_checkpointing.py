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


def test_the_cli_writes_checkpoints_atomically_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from pathlib import Path

    cfg = Path(__file__).parents[1] / "configs" / "tiny" / "simclr.yaml"
    cli = build_cli(["--config", str(cfg), "--trainer.logger=false"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
