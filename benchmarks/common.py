"""Shared benchmark helpers: the real CIFAR-10 from ../shared, timing callback, method registry."""

from __future__ import annotations

import os
import platform
import tarfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = Path(os.environ.get("HARDCL_CIFAR10_TAR", REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"))
CACHE = Path(os.environ.get("HARDCL_BENCH_CACHE", REPO / "benchmarks" / "out"))


def cifar10_root() -> Path | None:
    """``.../cifar10`` with ``train/`` and ``test/`` ImageFolder trees, or None when the tarball is absent.

    The tarball is extracted once into the (git-ignored) benchmark cache; nothing is committed.
    """
    root = CACHE / "cifar10"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    if not CIFAR_TAR.is_file():
        print(f"[skip] real CIFAR-10 not found at {CIFAR_TAR} (set HARDCL_CIFAR10_TAR); embedded dataset only")
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"extracting {CIFAR_TAR} -> {CACHE} (once)", flush=True)
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(CACHE, filter="data")
    return root


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


class StepTimer(L.Callback):
    """Wall time of training steps after ``warmup`` steps (data loading included)."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup, self.t0, self.t1, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.t1 = time.perf_counter()
            self.steps = trainer.global_step - self.warmup

    @property
    def seconds_per_step(self) -> float:
        return (self.t1 - self.t0) / max(1, self.steps)
