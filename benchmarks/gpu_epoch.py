"""Seconds per CIFAR-10 epoch of each method with the CPU and the device data path, beside the model-only bound.

    python benchmarks/gpu_epoch.py                     # on a GPU: the CIFAR configs, ResNet-18, bf16, channels_last
    python benchmarks/gpu_epoch.py --tiny              # any machine (CI): resnet_tiny, a few steps, 32-bit
    python benchmarks/gpu_epoch.py --compile           # also torch.compile the backbone (inductor)
    python benchmarks/gpu_epoch.py --data-only --steps 300   # views/s of each data path alone (no model)

Methods: SimCLR, HVS-SimCLR (scoring at full and at half resolution), MoCo v2 and MoCHi, each from its
CIFAR config (``configs/<method>_cifar10.yaml``: heads, loss, optimiser) on the CIFAR-10 training
images of ``data/cifar10-jpg.tar.gz`` (or ``$HARDCL_CIFAR10_TAR``; Shapes10 when absent, and
with ``--tiny``). Data paths:

- ``cpu``: views cut and jittered with PIL in ``--workers`` loader processes (``augment_on: cpu``);
- ``device``: uint8 images to the accelerator, every view made there in one batched pass
  (``augment_on: device``);
- ``resident``: the same views from the training set kept on the accelerator as one uint8 tensor
  (``images_on_device: true``): the loader draws indices only;
- ``compiled`` (only when named in ``--paths``): ``resident`` with the view recipe compiled by
  inductor (``compile_views: inductor``), its few hundred small kernels a batch fused; the
  compilation falls in the warm-up steps;
- ``bound``: the same steps on one pre-made batch that is already on the device, repeated: what
  the model alone costs, the floor the data paths are measured against.

Each arm trains ``--steps`` timed steps after ``--warmup`` steps; seconds per epoch = median step
time x (50000 / batch). Printed: a table with the ratio of each path to the bound.

``--profile-steps N``: each arm then runs N more steps under ``torch.profiler``, and a line per
arm says where a step's time goes: how much of it the GPU was busy (kernel time / wall time; far
below 100 %: the host, launching kernels or waiting on data, sets the pace), the kernel launches a
step, and the ops that took the most GPU time (on a CPU: CPU time). What a missed target needs.

``--data-only``: no model; each path's batches are drawn and timed alone (``cpu``: the loader's
PIL views; ``device``: the loader's uint8 batches and the batched views made from them, on the
GPU when there is one, else on this CPU; ``resident``: the gathers from the kept images and the
views made from them). Printed: views/s of each path and the ratios to the cpu path, which say
which path a machine without a GPU should use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, StepTimer, cifar10_root, machine  # noqa: E402

ARMS = {  # name -> (config, extra CLI arguments)
    "SimCLR": ("simclr_cifar10", []),
    "HVS-SimCLR": ("hvs_simclr", []),
    "HVS-SimCLR (scored at 16 px)": ("hvs_simclr", ["--model.selection_resolution=16"]),
    "MoCo v2": ("mocov2_cifar10", []),
    "MoCHi": ("mochi_cifar10", ["--model.mix_start_epoch=0"]),
}
PATHS = ("cpu", "device", "resident", "bound")  # the default arms
ALL_PATHS = ("cpu", "device", "resident", "compiled", "bound")
DATA_PATHS = ("cpu", "device", "resident")
CIFAR_TRAIN_IMAGES = 50000


class RepeatedBatch(L.LightningDataModule):
    """One training batch, already on the device, served ``steps`` times: the model-only bound."""

    def __init__(self, batch: dict, steps: int) -> None:
        super().__init__()
        self.batch, self.steps = batch, steps

    def train_dataloader(self):
        return [0] * self.steps

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return self.batch


class StepProfile(L.Callback):
    """``torch.profiler`` over the ``steps`` training batches after the first ``skip``; ``summary``
    says where a step's time went."""

    LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")

    def __init__(self, skip: int, steps: int) -> None:
        self.skip, self.steps, self.seen = skip, steps, 0
        self.profiler: torch.profiler.profile | None = None
        self.events, self.wall, self.start, self.error = None, 0.0, 0.0, None

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.skip and self.profiler is None:
            import time

            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._sync()
            self.profiler = torch.profiler.profile(activities=activities)
            try:  # a profiler that cannot start (no CUPTI) must not cost the arm its timing
                self.profiler.__enter__()
            except Exception as error:  # noqa: BLE001
                self.error = f"the profiler did not start: {error!r}"
                return
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.profiler is not None and self.error is None and self.events is None and self.seen == self.skip + self.steps:
            import time

            self._sync()
            self.wall = time.perf_counter() - self.start
            try:
                self.profiler.__exit__(None, None, None)
                self.events = self.profiler.key_averages()
            except Exception as error:  # noqa: BLE001
                self.error = f"the profiler's results were unreadable: {error!r}"

    def summary(self, top: int = 5) -> str:
        if self.error is not None:
            return self.error
        if self.events is None:
            return "not profiled (the run ended first)"
        from torch.autograd import DeviceType

        per_step = lambda us: us / 1000 / self.steps  # noqa: E731  (profiler microseconds -> ms a step)
        wall = self.wall * 1000 / self.steps
        # kineto lists each kernel twice: as a device row, and inside the host op that launched it
        ops = [e for e in self.events if e.device_type == DeviceType.CPU]
        device = sum(e.self_device_time_total for e in self.events
                     if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False))
        launches = sum(e.count for e in ops if e.key in self.LAUNCHES) / self.steps
        if device > 0:
            ranked = sorted(ops, key=lambda e: e.self_device_time_total, reverse=True)[:top]
            tops = ", ".join(f"{e.key} {per_step(e.self_device_time_total):.2f}" for e in ranked)
            return (f"{wall:.1f} ms a step profiled, GPU busy {per_step(device):.1f} ms ({per_step(device) / wall:.0%}), "
                    f"{launches:.0f} kernel launches; most GPU time (ms a step): {tops}")
        ranked = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        tops = ", ".join(f"{e.key} {per_step(e.self_cpu_time_total):.2f}" for e in ranked)
        return f"{wall:.1f} ms a step profiled, no GPU; most CPU time (ms a step): {tops}"


def arm_args(config: str, extra: list[str], path: str, tiny: bool, root: Path | None, batch: int, workers: int,
             steps: int) -> list[str]:
    gpu = torch.cuda.is_available() and not tiny
    args = ["--config", str(REPO / "configs" / f"{config}.yaml"), *extra, "--trainer.logger=false",
            f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='gpu_epoch_')}",  # no run files in the cwd
            "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]", "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.max_steps={steps}", "--trainer.devices=1", "--trainer.sync_batchnorm=false",
            f"--trainer.accelerator={'gpu' if gpu else 'cpu'}", f"--trainer.precision={'bf16-mixed' if gpu else '32-true'}",
            f"--data.batch_size={batch}", f"--data.num_workers={workers}",
            f"--data.augment_on={'cpu' if path == 'cpu' else 'device'}",
            f"--data.images_on_device={path in ('resident', 'compiled')}"]
    if path == "compiled":
        args.append("--data.compile_views=inductor")
    if gpu:
        args.append("--model.channels_last=true")
    if tiny:
        args += ["--model.backbone=resnet_tiny", "--model.proj_hidden_dim=64"]
        if "mocov2" in config or "mochi" in config:
            args += ["--model.queue_size=256"]
        if "mochi" in config:
            args += ["--model.mixing=[64, 64, 32]"]
    if root is not None:
        args += ["--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={root / 'train'}", "--data.image_size=32"]
        if tiny:
            args.append("--data.train_fraction=0.02")
    else:
        args += ["--data=hardcl_lightning.data.ShapesDataModule", "--data.num_train=2000", "--data.num_val=10"]
    return args


def measure(name: str, path: str, args: argparse.Namespace, root: Path | None) -> tuple[float, str | None]:
    """Median seconds per training step of one arm, and (``--profile-steps``) where a step's time went."""
    from hardcl_lightning.cli import build_cli

    config, extra = ARMS[name]
    total = args.warmup + args.steps + 1 + args.profile_steps
    argv = arm_args(config, extra, path, args.tiny, root, args.batch_size, args.workers, total)
    if args.compile:
        argv.append("--model.compile_backend=inductor")
    L.seed_everything(0, verbose=False)
    cli = build_cli(argv, run=False)
    timer = StepTimer(warmup=args.warmup)
    cli.trainer.callbacks.append(timer)
    profile = StepProfile(args.warmup + args.steps + 1, args.profile_steps) if args.profile_steps else None
    if profile is not None:  # after the timed steps, so that the profiler's own cost is not timed
        cli.trainer.callbacks.append(profile)
    dm = cli.datamodule
    if path == "bound":
        batch = next(iter(dm.train_dataloader()))
        device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        batch = dm.on_after_batch_transfer(L.pytorch.utilities.move_data_to_device(batch, device), 0)
        dm = RepeatedBatch(batch, total)
    cli.trainer.fit(cli.model, dm)
    if profile is None:
        return timer.seconds_per_step, None
    timer.durations = timer.durations[:args.steps]  # the timed steps only
    try:
        summary = profile.summary()
    except Exception as error:  # noqa: BLE001  (a GPU session's timings must survive a profiler surprise)
        summary = f"profile unreadable: {error!r}"
    return timer.seconds_per_step, summary


def measure_data(name: str, path: str, args: argparse.Namespace, root: Path | None) -> float:
    """Views per second of one data path alone, over ``--steps`` batches after ``--warmup``."""
    import time

    from hardcl_lightning.cli import build_cli

    config, extra = ARMS[name]
    argv = arm_args(config, extra, path, args.tiny, root, args.batch_size, args.workers, 1)
    L.seed_everything(0, verbose=False)
    dm = build_cli(argv, run=False).datamodule
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    loader, views, seconds = dm.train_dataloader(), 0, 0.0
    batches = iter(loader)
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:  # an epoch ended: the next one, as training would
            batches = iter(loader)
            batch = next(batches)
        batch = dm.on_after_batch_transfer(L.pytorch.utilities.move_data_to_device(batch, device), 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            seconds += time.perf_counter() - start
            views += sum(v.shape[0] for v in batch["views"])
    return views / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="resnet_tiny, 32-bit, 2 %% of the images: any machine, CI")
    parser.add_argument("--methods", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=ALL_PATHS,
                        help=f"default: {' '.join(PATHS)}; 'compiled' adds the inductor-compiled view recipe")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (32 with --tiny)")
    parser.add_argument("--workers", type=int, default=None, help="loader processes of the cpu path (default: cores - 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per arm (default 30; 3 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; 2 with --tiny)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (inductor)")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="then profile this many more steps per arm: GPU busy share, launches, top ops")
    parser.add_argument("--data-only", action="store_true", help="views/s of the cpu and device data paths alone, no model")
    args = parser.parse_args()
    import os
    import warnings

    from hardcl_lightning.quiet import silence_known_noise

    silence_known_noise()
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # our own argv, not the CLI's

    args.batch_size = args.batch_size or (32 if args.tiny else 256)
    args.workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 2)
    args.steps = args.steps or (3 if args.tiny else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 10)
    root = cifar10_root()
    print(f"{machine()}; data: {'CIFAR-10 train' if root else 'Shapes10 (no CIFAR-10 archive)'}; batch {args.batch_size}; "
          f"{args.steps} timed steps after {args.warmup}; {'tiny' if args.tiny else 'CIFAR configs'}", flush=True)
    if args.data_only:
        print("| method | cpu path views/s | device path views/s | resident path views/s | device / cpu | resident / cpu |")
        print("|---|---|---|---|---|---|")
        for name in args.methods:
            rate = {path: measure_data(name, path, args, root) for path in DATA_PATHS}
            print(f"| {name} | {rate['cpu']:.0f} | {rate['device']:.0f} | {rate['resident']:.0f} | "
                  f"{rate['device'] / rate['cpu']:.2f} | {rate['resident'] / rate['cpu']:.2f} |", flush=True)
        return
    rows, profiles = [], []
    for name in args.methods:
        measured = {path: measure(name, path, args, root) for path in args.paths}
        times = {path: t for path, (t, _) in measured.items()}
        profiles += [f"profile {name} / {path}: {summary}" for path, (_, summary) in measured.items() if summary]
        rows.append((name, times))
        print(f"{name}: " + ", ".join(f"{p} {t * 1000:.1f} ms/step" for p, t in times.items()), flush=True)
    steps_per_epoch = CIFAR_TRAIN_IMAGES // args.batch_size
    print()
    print("| method | data path | ms / step | s / CIFAR-10 epoch | x bound | images/s |")
    print("|---|---|---|---|---|---|")
    for name, times in rows:
        bound = times.get("bound")
        for path, t in times.items():
            ratio = f"{t / bound:.2f}" if bound else "-"
            print(f"| {name} | {path} | {t * 1000:.1f} | {t * steps_per_epoch:.1f} | {ratio} | {args.batch_size / t:.0f} |")
    if profiles:
        print()
        print("Where a step's time goes (torch.profiler, after the timed steps):")
        for line in profiles:
            print(line)


if __name__ == "__main__":
    main()
