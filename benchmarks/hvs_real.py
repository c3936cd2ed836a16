"""Every HVS variant beside its base method on real CIFAR-10, the CIFAR configs' own recipes -> RESULTS.md.

    python benchmarks/hvs_real.py                         # 5 bases x {base, HVS} x seeds 0 1
    python benchmarks/hvs_real.py --bases simclr --seeds 0 --epochs 2 --fraction 0.02   # a smoke run

Each run is ``configs/<base>_cifar10.yaml`` or ``configs/hvs_<base>.yaml`` (the recipe: optimiser,
LR, weight decay, heads, temperatures, EMA, augmentations) on a CPU-sized model and schedule:
``resnet_tiny`` (CIFAR stem), batch 128 (the LR scales with it as the recipe says), ``--epochs``
epochs with a 1-epoch warm-up (the recipes' 10 of 1000), 32-bit, on a class-balanced
``--fraction`` of the 50k CIFAR-10 training images read from ``data/cifar10-jpg.tar.gz`` (or
``$HARDCL_CIFAR10_TAR``; skipped cleanly when absent). MoCo's queue is cut to 4096 so that it
holds less than one epoch of a 5000-image subset, as 32768 does of CIFAR-10's 50000.
Reported per run: weighted kNN top-1 (k=200, T=0.07, bank = the training subset, queries = the
10k test images) before and after training, linear top-1 (logistic regression on frozen features),
the mean training loss of the first and the last epoch beside the loss an uninformed model has
(``chance``: NT-Xent log(2B-1), InfoNCE log(K+1), DINO log(prototypes), SimSiam 0 (cosine 0),
BYOL 4 (2 - 2 cos, both directions)), and minutes.

Diagnostics (why a variant loses, one change at a time): ``--set model.reuse_targets=false``
(any CLI option, repeatable) runs the selected variants with it, as rows of their own.

Each run is one process and writes ``benchmarks/hvs_real/<run>.json`` (kept in the repository: the
table is made from them, so runs accumulate across sessions; ``--force`` re-runs). The table in
RESULTS.md lists every recorded run and the runs still missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cifar10_root, machine, write_section  # noqa: E402

BASES = ["simclr", "mocov2", "simsiam", "byol", "dino"]
RUNS_DIR = REPO / "benchmarks" / "hvs_real"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- hvs_real: begin -->", "<!-- hvs_real: end -->"
NAMES = {"simclr": "SimCLR", "mocov2": "MoCo v2", "simsiam": "SimSiam", "byol": "BYOL", "dino": "DINO"}


def config_path(base: str, variant: str) -> Path:
    return REPO / "configs" / (f"{base}_cifar10.yaml" if variant == "base" else f"hvs_{base}.yaml")


def run_name(base: str, variant: str, seed: int, overrides: tuple[str, ...] = ()) -> str:
    tag = "".join("_" + o.split(".")[-1].replace("=", "-") for o in overrides)
    return f"{base}_{variant}{tag}_seed{seed}"


def label(record: dict) -> str:
    """``base``, ``hvs`` or ``hvs [reuse_targets=false]`` (a diagnostic: the variant with ``--set`` overrides)."""
    over = record.get("overrides") or []
    return record["variant"] + (f" [{', '.join(o.split('.')[-1] for o in over)}]" if over else "")


def cpu_overrides(base: str, epochs: int, batch: int, root: Path, fraction: float, seed: int, tmp: str) -> list[str]:
    """The CPU model, schedule and data on top of a CIFAR recipe (module docstring)."""
    args = [f"--seed_everything={seed}", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
            f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={tmp}", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0",
            "--trainer.limit_val_batches=0", "--trainer.sync_batchnorm=false", "--trainer.enable_progress_bar=false",
            "--model.backbone=resnet_tiny", "--model.warmup_epochs=1",
            "--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={root / 'train'}",
            f"--data.val_dir={root / 'test'}", "--data.image_size=32", f"--data.train_fraction={fraction}",
            f"--data.batch_size={batch}", "--data.num_workers=1"]
    if base == "mocov2":
        args.append("--model.queue_size=4096")
    if base == "dino":
        args.append(f"--model.warmup_teacher_temperature_epochs={max(1, epochs // 3)}")
    return args


def chance_loss(model) -> float:
    """The training loss of a model whose outputs carry no information (module docstring)."""
    name = type(model).__name__.removeprefix("HVS")
    if name == "SimCLR":
        return math.log(2 * model.batch_size - 1)
    if name == "MoCoV2":
        return math.log(model.queue_size + 1)
    if name == "DINO":
        return math.log(model.hparams.num_prototypes)
    return {"SimSiam": 0.0, "BYOL": 4.0}[name]


class EpochLoss(L.Callback):
    """Mean training loss of each epoch, from the loss each step returned."""

    def __init__(self) -> None:
        self.sums: list[float] = []
        self.counts: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.sums.append(0.0)
        self.counts.append(0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs is not None:
            self.sums[-1] += float(outputs["loss"])
            self.counts[-1] += 1

    @property
    def means(self) -> list[float]:
        return [s / max(c, 1) for s, c in zip(self.sums, self.counts)]


def run_child(base: str, variant: str, seed: int, epochs: int, batch: int, fraction: float, out: Path,
              overrides: tuple[str, ...] = ()) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from results import fit_and_evaluate

    from hardcl_lightning.cli import build_cli
    from hardcl_lightning.quiet import silence_known_noise

    silence_known_noise()
    root = cifar10_root()
    losses = EpochLoss()
    with tempfile.TemporaryDirectory() as tmp:
        cli = build_cli(["--config", str(config_path(base, variant)), *cpu_overrides(base, epochs, batch, root, fraction, seed, tmp),
                         *(f"--{o}" for o in overrides)], run=False)
        cli.trainer.callbacks.append(losses)
        dm = cli.datamodule
        init, final, minutes = fit_and_evaluate(cli)
    record = {
        "base": base, "variant": variant, "overrides": list(overrides), "seed": seed, "method": type(cli.model).__name__,
        "config": str(config_path(base, variant).relative_to(REPO)), "epochs": epochs, "fraction": fraction, "batch_size": batch,
        "train_images": len(dm._train), "knn_init": init["knn"], "knn": final["knn"], "linear": final["linear"],
        "loss_first_epoch": losses.means[0], "loss_last_epoch": losses.means[-1], "chance_loss": chance_loss(cli.model),
        "minutes": minutes, "date": datetime.date.today().isoformat(), "machine": machine(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "command": f"python benchmarks/hvs_real.py --epochs {epochs} --fraction {fraction} --batch-size {batch}"
                   + "".join(f" --set {o}" for o in overrides),
    }
    out.write_text(json.dumps(record, indent=1) + "\n")


def load_runs(runs_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]


def fmt(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: list[dict], wanted: list[tuple]) -> list[str]:
    """One row per (base, variant): mean ± std over the recorded seeds, and the HVS - base kNN gap."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        by.setdefault((r["base"], label(r)), []).append(r)
    lines = ["| method | config | seeds | kNN before (%) | kNN (%) | HVS - base kNN | linear (%) | loss first -> last epoch | chance loss | minutes / run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for base in BASES:
        labels = ["base", "hvs"] + sorted(lab for b, lab in by if b == base and lab not in ("base", "hvs"))
        for variant in labels:
            rs = sorted(by.get((base, variant), []), key=lambda r: r["seed"])
            if not rs:
                continue
            gap = "-"
            if variant != "base" and by.get((base, "base")):
                pairs = {r["seed"]: r["knn"] for r in by[(base, "base")]}
                diffs = [r["knn"] - pairs[r["seed"]] for r in rs if r["seed"] in pairs]
                gap = f"{'+' if statistics.mean(diffs) >= 0 else ''}{fmt(diffs, 100)}" if diffs else "-"
            name = ("HVS-" if variant != "base" else "") + NAMES[base] + variant.removeprefix("hvs").removeprefix("base")
            lines.append(f"| {name} | `{rs[0]['config']}` | {','.join(str(r['seed']) for r in rs)} | {fmt([r['knn_init'] for r in rs], 100)} | "
                         f"{fmt([r['knn'] for r in rs], 100)} | {gap} | {fmt([r['linear'] for r in rs], 100)} | "
                         f"{fmt([r['loss_first_epoch'] for r in rs], digits=2)} -> {fmt([r['loss_last_epoch'] for r in rs], digits=2)} | "
                         f"{rs[0]['chance_loss']:.2f} | {fmt([r['minutes'] for r in rs])} |")
    done = {(r["base"], r["variant"], r["seed"], tuple(r.get("overrides") or ())) for r in runs}
    wanted = [w if len(w) == 4 else (*w, ()) for w in wanted]  # (base, variant, seed[, overrides])
    missing = [run_name(*w) for w in wanted if w not in done]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(f"`{m}`" for m in missing) + "."]
    return lines


def write_results(runs: list[dict], wanted: list[tuple]) -> None:
    if not runs:
        return
    first = runs[0]
    dates = sorted({r["date"] for r in runs})
    body = ["# HVS beside its base method, the CIFAR recipes, real CIFAR-10", "",
            f"Measured {', '.join(dates)} on {first['machine']} (commits {', '.join(sorted({r['commit'] for r in runs}))}) by", "",
            f"    {first['command']}", "",
            f"{first['train_images']} class-balanced CIFAR-10 training images, {first['epochs']} epochs, batch {first['batch_size']}, "
            "`resnet_tiny` with CIFAR stem, each config's own optimiser, LR (scaled by batch/256), weight decay, heads, "
            "temperatures, EMA and augmentations; 1 warm-up epoch; MoCo queue 4096 (`benchmarks/hvs_real.py` says why). "
            "kNN k=200 T=0.07 and linear on the 10000 test images. mean ± std over seeds; HVS - base pairs runs of the same seed. "
            "Chance loss: what a model whose embeddings carry no information scores. "
            "Each run's record: `benchmarks/hvs_real/<method>_<variant>_seed<k>.json`.", "",
            *table(runs, wanted)]
    write_section(RESULTS, BEGIN, END, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", nargs="+", default=BASES, choices=BASES)
    parser.add_argument("--variants", nargs="+", default=["base", "hvs"], choices=["base", "hvs"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a diagnostic: this CLI option on the selected variants, e.g. model.reuse_targets=false "
                             "(recorded as its own row); repeatable")
    parser.add_argument("--force", action="store_true", help="re-run runs that have a record")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where run records go (tests use a temporary one)")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the table of the records there are")
    parser.add_argument("--child", nargs=3, metavar=("BASE", "VARIANT", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        base, variant, seed = args.child
        run_child(base, variant, int(seed), args.epochs, args.batch_size, args.fraction, args.out, tuple(args.overrides))
        return
    if not args.table_only and cifar10_root() is None:
        print("skipped: no CIFAR-10 archive (data/cifar10-jpg.tar.gz or $HARDCL_CIFAR10_TAR)")
        return
    runs_dir = args.runs_dir or RUNS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    overrides = tuple(args.overrides)
    wanted = [(b, v, s, overrides) for s in args.seeds for b in args.bases for v in args.variants]
    for base, variant, seed, _ in wanted:
        out = runs_dir / f"{run_name(base, variant, seed, overrides)}.json"
        if args.table_only or (out.exists() and not args.force):
            continue
        print(f"running {out.stem} ...", flush=True)
        cmd = [sys.executable, __file__, "--child", base, variant, str(seed), "--epochs", str(args.epochs),
               "--fraction", str(args.fraction), "--batch-size", str(args.batch_size), "--out", str(out),
               *(f"--set={o}" for o in overrides)]
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            print(f"{out.stem} failed (exit {proc.returncode})", flush=True)
            continue
        r = json.loads(out.read_text())
        print(f"{out.stem}: kNN {100 * r['knn_init']:.1f} -> {100 * r['knn']:.1f} %, loss {r['loss_first_epoch']:.3f} -> "
              f"{r['loss_last_epoch']:.3f} (chance {r['chance_loss']:.3f}), {r['minutes']:.1f} min", flush=True)
    same_protocol = lambda r: (r["epochs"], r["fraction"], r["batch_size"]) == (args.epochs, args.fraction, args.batch_size)  # noqa: E731
    runs = [r for r in load_runs(runs_dir) if same_protocol(r)]
    print("\n".join(table(runs, wanted)))
    if not args.no_write:
        write_results(runs, wanted)


if __name__ == "__main__":
    main()
