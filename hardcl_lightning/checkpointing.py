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
