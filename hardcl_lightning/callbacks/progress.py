"""One line of progress per epoch (and every few seconds within one) for runs without a progress bar."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressLine(L.Callback):
    """Prints ``epoch 3/10 | loss 4.1234 | 412 img/s | 1:05 elapsed | ~2:31 left``.

    At the end of every training epoch (after its validation, so kNN time is counted), and within
    an epoch at most every ``every_n_seconds`` (0: epoch lines only). The loss is the mean training
    loss of the batches since the last line; images/s counts the images of all ranks over the wall
    time of this process's training batches, waiting for data included (validation excluded), from
    the end of its first batch (which carries start-up: workers, restoring a checkpoint). Time left
    is the batches still to run in this epoch times the measured time per batch, plus the epochs
    still to run times the mean wall time of the epochs this process saw whole (validation
    included), or times the batches per epoch at the measured rate before one was. Only what this
    process measured counts, so the figures are right from the first line after a resume too.

    Args:
        every_n_seconds: seconds between lines within an epoch; 0 prints one line per epoch.
    """

    def __init__(self, every_n_seconds: float = 30.0) -> None:
        super().__init__()
        if every_n_seconds < 0:
            raise ValueError(f"every_n_seconds must be >= 0, got {every_n_seconds}")
        self.every_n_seconds = every_n_seconds
        self._fit_start = self._epoch_start = self._last_line = 0.0
        self._last_batch_end: float | None = None
        self._epoch_seconds: list[float] = []
        self._loss_sum, self._loss_count = 0.0, 0
        self._images, self._train_seconds, self._timed_batches = 0, 0.0, 0
        self._whole_epoch: bool | None = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._epoch_seconds = []
        self._last_batch_end = None  # the first batch after (re)starting is not timed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_line = time.perf_counter()
        if self._last_batch_end is not None:
            self._last_batch_end = self._epoch_start
        self._images, self._train_seconds, self._timed_batches = 0, 0.0, 0
        self._loss_sum, self._loss_count = 0.0, 0
        self._whole_epoch = None  # decided by the epoch's first batch: 0 (whole) or later (resumed)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._whole_epoch is None:
            self._whole_epoch = batch_idx == 0
        if self._last_batch_end is not None:  # since the previous batch: its data loading included
            self._train_seconds += now - self._last_batch_end
            self._timed_batches += 1
            if isinstance(batch, dict):  # pre-training batches carry "views", linear evaluation's "image"
                images = batch["views"][0] if batch.get("views") else batch.get("image")
                if images is not None:
                    self._images += int(images.shape[0]) * trainer.world_size
        self._last_batch_end = now
        loss = outputs.get("loss") if isinstance(outputs, dict) else None
        if loss is None:  # manual optimisation (generator methods) returns nothing: take the logged value
            loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:  # summed on the device: no host sync per step
            self._loss_sum = self._loss_sum + loss.detach().float()
            self._loss_count += 1
        done, total = batch_idx + 1, trainer.num_training_batches
        if self.every_n_seconds and now - self._last_line >= self.every_n_seconds and done != total:
            self._print(trainer, f"step {done}/{total}", now, self._batch_seconds() * (total - done) if total != float("inf") else 0.0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        if self._whole_epoch:
            self._epoch_seconds.append(now - self._epoch_start)
        self._print(trainer, "", now, 0.0)

    def _batch_seconds(self) -> float:
        return self._train_seconds / self._timed_batches if self._timed_batches else 0.0

    def _print(self, trainer: L.Trainer, where: str, now: float, epoch_left: float) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = [f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "") + (f" {where}" if where else "")]
        if self._loss_count:
            parts.append(f"loss {float(self._loss_sum) / self._loss_count:.4f}")
        if self._train_seconds > 0 and self._images:
            parts.append(f"{self._images / self._train_seconds:.0f} img/s")
        parts.append(f"{_clock(now - self._fit_start)} elapsed")
        later = epochs - trainer.current_epoch - 1 if epochs else 0
        if epochs and (self._epoch_seconds or self._timed_batches or later == 0):
            total = trainer.num_training_batches
            if self._epoch_seconds:
                mean_epoch = sum(self._epoch_seconds) / len(self._epoch_seconds)
            else:  # no whole epoch seen yet: this process's time per batch, validation not yet known
                mean_epoch = self._batch_seconds() * (total if total != float("inf") else 0)
            parts.append(f"~{_clock(epoch_left + later * mean_epoch)} left")
        rank_zero_info(" | ".join(parts))
        self._last_line = now
        self._loss_sum, self._loss_count = 0.0, 0
