"""Where a run's files go: one directory per run, shared by every logger kind.

Lightning's ``trainer.log_dir`` is the run's ``version_N`` directory for TensorBoard and CSV but
the logger's *root* for Weights & Biases and others, so files written there (the saved
``config.yaml``, image grids) would be overwritten by the next run. ``run_directory`` gives
``<save_dir>/<name>/<version>`` for those, the directory that holds the run's ``checkpoints/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


def run_directory(trainer: L.Trainer) -> Path | None:
    """The run's own directory, or None when the run has none (``fast_dev_run``: write no files).

    A collective under DDP (rank 0's answer is broadcast): call it on every rank.
    """
    path: str | None
    if not trainer.loggers:
        path = str(trainer.default_root_dir)
    else:
        logger = trainer.loggers[0]
        if isinstance(logger, (TensorBoardLogger, CSVLogger)):
            path = logger.log_dir
        elif logger.save_dir is None:  # fast_dev_run's DummyLogger
            path = None
        else:  # as ModelCheckpoint places checkpoints/: <save_dir>/<name>/<version>
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            path = os.path.join(logger.save_dir, str(logger.name), version)
    path = trainer.strategy.broadcast(path)
    return None if path is None else Path(path)


class SaveConfigToRunDirectory(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` into ``run_directory`` (for every logger kind), so that
    ``hardcl fit --config <run dir>/config.yaml`` repeats the run."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        directory = run_directory(trainer)
        if directory is not None and trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(directory / self.config_filename), skip_none=False,
                             overwrite=self.overwrite, multifile=self.multifile)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)  # the hook subclasses implement
        self.already_saved = trainer.strategy.broadcast(True)
