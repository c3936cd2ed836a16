"""Known noise, silenced: what every run printed that says nothing about the run.

- Lightning 2.6's two advertisements ("Tip: ... try installing litlogger / litmodels");
- torch's FutureWarning that ``LeafSpec`` is deprecated, raised inside Lightning's own pytree code
  on every fit (nothing a user can change);
- the model summary's ``0 Total Flops`` line and empty FLOPs column (Lightning counts FLOPs only
  for a module with an ``example_input_array``; ours have none, so 0 is not a measurement).

The ``hardcl`` commands call ``silence_known_noise()``; call it in a notebook for the same output.
Every other warning still shows.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch.callbacks import ModelSummary

TIP_PREFIX = "💡 Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def silence_known_noise() -> None:
    """Install the filters above (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


class ModelSummaryWithoutZeroFlops(ModelSummary):
    """Lightning's model summary, without the FLOPs column and total when no FLOPs were counted."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int, **kwargs: Any) -> None:
        from lightning.pytorch.callbacks.model_summary import log
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        if total_flops:
            return ModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                          total_training_modes, total_flops, **kwargs)
        columns = [c for c in summary_data if c[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns)
        log.info("\n" + table.rsplit("\n", 1)[0])  # the last line is "0 Total Flops"


def replace_model_summary(trainer: Any) -> None:
    """Swap Lightning's default ``ModelSummary`` callback (exactly that class) for the one above."""
    for i, cb in enumerate(trainer.callbacks):
        if type(cb) is ModelSummary:
            trainer.callbacks[i] = ModelSummaryWithoutZeroFlops(max_depth=cb._max_depth, **cb._summarize_kwargs)
