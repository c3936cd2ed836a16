"""Shared benchmark helpers: the real CIFAR-10 archive, timing callback, method registry.

Real CIFAR-10 is read from ``data/cifar10-jpg.tar.gz`` in the checkout (git-ignored; ImageFolder
layout ``cifar10/{train,test}/<class>/*.jpg`` inside) or from ``$HARDCL_CIFAR10_TAR``; without it the
benchmarks skip their real-data rows.
"""

from __future__ import annotations

import os
import platform
import tarfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = Path(os.environ.get("HARDCL_CIFAR10_TAR", REPO / "data" / "cifar10-jpg.tar.gz"))
CACHE = Path(os.environ.get("HARDCL_BENCH_CACHE", REPO / "benchmarks" / "out"))


def cifar10_root() -> Path | None:
    """``.../cifar10`` with ``train/`` and ``test/`` ImageFolder trees, or None when the tarball is absent.

    The tarball is extracted once into the (git-ignored) benchmark cache; nothing is committed.
    """
    root = CACHE / "cifar10"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    if not CIFAR_TAR.is_file():
        print(f"[skip] real CIFAR-10 not found at {CIFAR_TAR} (put cifar10-jpg.tar.gz there or set HARDCL_CIFAR10_TAR); embedded dataset only")
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
    """Median wall time of a training batch, end to end (data loading included), over the batches
    after the first ``warmup``; time between epochs (validation, kNN) is not counted.

    Counts batches itself: under manual optimisation ``global_step`` counts every optimiser's steps.
    """

    def __init__(self, warmup: int = 3) -> None:
        self.warmup, self.last_end, self.seen = warmup, None, 0
        self.durations: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.last_end = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.last_end is not None:
            self.seen += 1
            if self.seen > self.warmup:
                self.durations.append(now - self.last_end)
        self.last_end = now

    @property
    def steps(self) -> int:
        return len(self.durations)

    @property
    def seconds_per_step(self) -> float:
        if not self.durations:
            return float("nan")
        d = sorted(self.durations)
        return d[len(d) // 2]


def write_section(path: Path, begin: str, end: str, lines: list[str]) -> None:
    """Put ``lines`` between the markers ``begin`` and ``end`` of ``path`` (replacing what was there;
    appended when the markers are absent), so that each script owns its section of RESULTS.md."""
    text = path.read_text() if path.exists() else "# Results\n"
    body = "\n".join([begin, *lines, end])
    if begin in text:
        before, rest = text.split(begin, 1)
        text = before + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)
