"""Checkpoints that are never half-written.

``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the target directory,
flushes it to disk and renames it over the target (``os.replace`` is atomic on POSIX). A job
killed mid-write (time limit, pre-emption, SIGKILL) leaves the previous checkpoint intact, so
``last.ckpt`` always loads. The ``hardcl`` CLI installs it by default; remote paths (``s3://``...)
fall back to Lightning's own writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def capture_rng_states() -> dict[str, Any]:
    """Every global RNG a training step draws from (augmentations, shuffling, MoCHi's draws, latents)."""
    import random

    import numpy as np

    # plain tensors, strings and numbers only: checkpoints stay loadable with torch.load(weights_only=True)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableState:
    """LightningModule hooks that make a resumed run continue exactly where it stopped.

    Lightning restores weights, optimisers, schedulers, loops and callbacks; this adds the
    global RNG states (so the data order, augmentations and every random draw after an
    epoch-boundary resume are those of the run that never stopped) and the Weights & Biases run
    id (so a requeued job logs into the same wandb run). Under DDP rank 0's states are saved.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = capture_rng_states()
        trainer = getattr(self, "_trainer", None)
        for logger in getattr(trainer, "loggers", []) if trainer is not None else []:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])
