"""Real-scale pre-training that fits one GPU session: SimCLR vs HVS-SimCLR, MoCo v2 vs MoCHi -> RESULTS.md.

    python benchmarks/gpu_suite.py                        # one H100/H200: full CIFAR-10, ResNet-18, ~8 minutes
    python benchmarks/gpu_suite.py --budget-minutes 20    # longer schedules on a longer lease
    python benchmarks/gpu_suite.py --tiny                 # any machine (CI): resnet_tiny, 2 % of the images

Each arm is its CIFAR config (``configs/{simclr_cifar10,hvs_simclr,mocov2_cifar10,mochi_cifar10}.yaml``:
ResNet-18 with CIFAR stem, the recipe's optimiser, LR, heads, augmentations) on the 50,000 CIFAR-10
training images of ``data/cifar10-jpg.tar.gz`` (or ``$HARDCL_CIFAR10_TAR``), with the schedule
shortened to E epochs (warm-up E/10, the cosine over E; MoCHi mixes from epoch E/10), bf16,
channels_last, views made on the device (``augment_on: device``), seed 0 for every arm. kNN (k=200,
T=0.07, bank = the training images) on the 10,000 test images every ``--eval-every`` epochs.

E is chosen from the measured time: every arm first trains ``--probe-steps`` steps; E is the
largest epoch count at which the four arms' training and evaluations fit ``--budget-minutes``
(the whole command, probes included; it says the E it chose and why). The table (the date, the
device, the command, E, images/s, kNN per evaluation) goes into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, StepTimer, cifar10_root, machine, write_section  # noqa: E402

ARMS = [("SimCLR", "simclr_cifar10", []), ("HVS-SimCLR", "hvs_simclr", []),
        ("MoCo v2", "mocov2_cifar10", []), ("MoCHi", "mochi_cifar10", [])]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- gpu_suite: begin -->", "<!-- gpu_suite: end -->"


def arm_args(config: str, extra: list[str], args: argparse.Namespace, root: Path | None, epochs: int | None,
             max_steps: int | None) -> list[str]:
    gpu = torch.cuda.is_available() and not args.tiny
    out = ["--config", str(REPO / "configs" / f"{config}.yaml"), *extra, "--seed_everything=0", "--trainer.logger=false",
           f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='gpu_suite_')}",  # no run files in the cwd
           "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0",
           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.devices=1",
           "--trainer.sync_batchnorm=false", f"--trainer.accelerator={'gpu' if gpu else 'cpu'}",
           f"--trainer.precision={'bf16-mixed' if gpu else '32-true'}", f"--data.batch_size={args.batch_size}",
           f"--data.num_workers={args.workers}", "--data.augment_on=device"]
    if gpu:
        out.append("--model.channels_last=true")
    if epochs is not None:
        out += [f"--trainer.max_epochs={epochs}", f"--model.warmup_epochs={max(1, epochs // 10)}",
                f"--trainer.check_val_every_n_epoch={args.eval_every}"]
        if config.startswith("mochi"):
            out.append(f"--model.mix_start_epoch={max(1, epochs // 10)}")
    if max_steps is not None:
        out += [f"--trainer.max_steps={max_steps}", "--trainer.limit_val_batches=0"]
    if args.tiny:
        out += ["--model.backbone=resnet_tiny", "--model.proj_hidden_dim=64"]
        if "moco" in config or "mochi" in config:
            out.append("--model.queue_size=256")
        if "mochi" in config:
            out.append("--model.mixing=[64, 64, 32]")
    if root is not None:
        out += ["--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={root / 'train'}",
                f"--data.val_dir={root / 'test'}", "--data.image_size=32"]
        if args.tiny:
            out.append("--data.train_fraction=0.02")
    else:
        out += ["--data=hardcl_lightning.data.ShapesDataModule", "--data.num_train=1000", "--data.num_val=200"]
    return out


def run_arm(config: str, extra: list[str], args: argparse.Namespace, root: Path | None, epochs: int | None = None,
            max_steps: int | None = None) -> dict:
    from hardcl_lightning.callbacks import OnlineKNN
    from hardcl_lightning.cli import build_cli

    cli = build_cli(arm_args(config, extra, args, root, epochs, max_steps), run=False)
    timer, knn = StepTimer(warmup=3), OnlineKNN(k=200, temperature=0.07)
    cli.trainer.callbacks.append(timer)
    if epochs is not None:
        cli.trainer.callbacks.append(knn)
    dm = cli.datamodule
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, dm)
    seconds = time.perf_counter() - t0
    dm.setup()
    return {"seconds": seconds, "step_seconds": timer.seconds_per_step, "steps_per_epoch": len(dm._train) // args.batch_size,
            "images_per_s": args.batch_size / timer.seconds_per_step, "knn": knn.history, "train_images": len(dm._train),
            "method": type(cli.model).__name__}


def choose_epochs(probes: dict[str, dict], budget_s: float, spent_s: float, eval_every: int, eval_s: float) -> tuple[int, str]:
    """The largest E whose training (E x steps/epoch x step time, every arm) and evaluations fit the budget left."""
    per_epoch = sum(p["step_seconds"] * p["steps_per_epoch"] for p in probes.values())
    left = budget_s - spent_s
    epochs = 1
    for e in range(1, 10000):
        cost = e * per_epoch + len(probes) * (e // eval_every + 1) * eval_s
        if cost > left:
            break
        epochs = e
    why = (f"{per_epoch:.1f} s per epoch of all {len(probes)} arms (measured), {eval_s:.1f} s per kNN evaluation, "
           f"{left:.0f} s of the {budget_s:.0f} s budget left after the probes")
    return epochs, why


def write_results(rows: list[tuple[str, str, dict]], epochs: int, why: str, command: str, minutes: float) -> None:
    evals = sorted({e for _, _, r in rows for e, _ in r["knn"]})
    head = "| method | config | images/s | " + " | ".join(f"kNN ep {e} (%)" for e in evals) + " |"
    lines = ["## Real-scale CIFAR-10 on one GPU (benchmarks/gpu_suite.py)", "",
             f"Measured {datetime.date.today().isoformat()} on {machine()} by", "", f"    {command}", "",
             f"Full CIFAR-10 ({rows[0][2]['train_images']} training images), ResNet-18 with CIFAR stem, each config's recipe "
             f"shortened to {epochs} epochs (chosen: {why}), bf16, channels_last, views on the device, seed 0; kNN k=200 T=0.07 "
             f"on the test images. The whole command took {minutes:.1f} min.", "", head,
             "|" + "---|" * (3 + len(evals))]
    for name, config, r in rows:
        accs = dict(r["knn"])
        cells = " | ".join(f"{100 * accs[e]:.1f}" if e in accs else "-" for e in evals)
        lines.append(f"| {name} | `{config}` | {r['images_per_s']:.0f} | {cells} |")
    write_section(RESULTS, BEGIN, END, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="the whole command, probes included")
    parser.add_argument("--tiny", action="store_true", help="resnet_tiny, 32-bit, 2 %% of the images: any machine, CI")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (32 with --tiny)")
    parser.add_argument("--workers", type=int, default=4, help="loader processes (decoding only: views are made on the device)")
    parser.add_argument("--eval-every", type=int, default=None, help="epochs between kNN evaluations (default: E/4, at least 1)")
    parser.add_argument("--probe-steps", type=int, default=None, help="timed steps per arm before E is chosen (default 25; 4 tiny)")
    parser.add_argument("--epochs", type=int, default=None, help="skip the choice: train this many epochs")
    parser.add_argument("--arms", nargs="+", default=[a[0] for a in ARMS], choices=[a[0] for a in ARMS])
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    arms = [a for a in ARMS if a[0] in args.arms]
    from hardcl_lightning.quiet import silence_known_noise

    silence_known_noise()
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    start = time.perf_counter()
    args.batch_size = args.batch_size or (32 if args.tiny else 256)
    args.probe_steps = args.probe_steps or (4 if args.tiny else 25)
    root = cifar10_root()
    if root is None and not args.tiny:
        print("skipped: no CIFAR-10 archive (data/cifar10-jpg.tar.gz or $HARDCL_CIFAR10_TAR); --tiny runs on Shapes10")
        return
    args.eval_every = args.eval_every or 1
    if args.epochs is None:
        probes = {name: run_arm(config, extra, args, root, max_steps=args.probe_steps + 4) for name, config, extra in arms}
        # a kNN evaluation: one pass over the bank and the test images (~ 60000 / (3 x batch) forward-only steps)
        step = min(p["step_seconds"] for p in probes.values())
        eval_s = step / 3 * (next(iter(probes.values()))["train_images"] + 10000) / args.batch_size
        epochs, why = choose_epochs(probes, args.budget_minutes * 60, time.perf_counter() - start, 1, eval_s)
        args.eval_every = max(1, epochs // 4)
        epochs, why = choose_epochs(probes, args.budget_minutes * 60, time.perf_counter() - start, args.eval_every, eval_s)
        print(f"training {epochs} epochs per arm: {why}", flush=True)
    else:
        epochs, why = args.epochs, "given by --epochs"
    rows = []
    for name, config, extra in arms:
        r = run_arm(config, extra, args, root, epochs=epochs)
        rows.append((name, config, r))
        print(f"{name}: kNN {', '.join(f'ep {e}: {100 * a:.1f}' for e, a in r['knn'])} %, {r['images_per_s']:.0f} img/s", flush=True)
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/gpu_suite.py " + " ".join(sys.argv[1:])
    print(f"done in {minutes:.1f} min")
    if not args.no_write:
        write_results(rows, epochs, why, command.strip(), minutes)


if __name__ == "__main__":
    main()
