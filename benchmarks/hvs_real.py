"""Every HVS variant beside its base method on real CIFAR-10, the CIFAR configs' own recipes -> RESULTS.md.

    python benchmarks/hvs_real.py                         # every method x {base, paper, hvs} x seeds 0 1 2
    python benchmarks/hvs_real.py --bases simclr --seeds 0 --epochs 2 --fraction 0.02   # a smoke run
    python benchmarks/hvs_real.py --bases mocov2 --variants paper --seeds 0 --set model.hardness_ramp_epochs=5

Methods (``METHODS``): SimCLR, MoCo v2, SimSiam on solo-learn's recipe (``simsiam``) and on the HVS
authors' own CIFAR recipe (``simsiam_hvp``), BYOL, DINO as its recipe is (``dino``: does not learn in
15 epochs) and DINO with ``configs/overlays/dino_short_schedule.yaml`` (``dino_short``). Variants:
``base`` (``configs/<method>_cifar10.yaml``), ``hvs`` (``configs/hvs_<method>.yaml`` as shipped: its
rule and schedule) and ``paper`` (the HVS config with ``configs/overlays/hvs_paper_rule.yaml``: the
argmax from the first step, targets recomputed). ``--set KEY=VALUE`` (repeatable) runs the selected
variants with that CLI option, recorded as rows of their own: the schedules tried, one change at a
time on ``paper``.

Each run is the recipe (optimiser, LR, weight decay, heads, temperatures, EMA, augmentations) on a
CPU-sized model and schedule: ``resnet_tiny`` (CIFAR stem), batch 128 (the LR scales with it as the
recipe says), ``--epochs`` epochs with a 1-epoch warm-up (the recipes' 10 of 1000; none where the
recipe has none), 32-bit, on a class-balanced ``--fraction`` of the 50k CIFAR-10 training images read
from ``data/cifar10-jpg.tar.gz`` (or ``$HARDCL_CIFAR10_TAR``; skipped cleanly when absent). MoCo's
queue is cut to 4096 so that it holds less than one epoch of a 5000-image subset, as 32768 does of
CIFAR-10's 50000. Reported per run: weighted kNN top-1 (k=200, T=0.07, bank = the training subset,
queries = the 10k test images) before and after training, linear top-1 (logistic regression on
frozen features), the mean training loss of the first and the last epoch beside the loss an
uninformed model has (``chance``: NT-Xent log(2B-1), InfoNCE log(K+1), DINO log(prototypes), SimSiam
0 (cosine 0), BYOL 4 (2 - 2 cos, both directions)), the share of training images that trained on
their highest-loss candidate pair (``hardest``: 0 where nothing was scored: warm-up, model-free rules),
and minutes.

Each run is one process and writes ``benchmarks/hvs_real/<run>.json`` (kept in the repository: the
tables are made from them, so runs accumulate across sessions; ``--force`` re-runs). RESULTS.md gets
the 15-epoch table (every recorded run, and the runs still missing) and the crossover table (SimCLR
and MoCo v2 at 15, 30 and 60 epochs).
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

#: key -> (name, base configs, HVS configs, warm-up epochs on this protocol); configs relative to configs/
METHODS = {
    "simclr": ("SimCLR", ["simclr_cifar10.yaml"], ["hvs_simclr.yaml"], 1),
    "mocov2": ("MoCo v2", ["mocov2_cifar10.yaml"], ["hvs_mocov2.yaml"], 1),
    "simsiam": ("SimSiam", ["simsiam_cifar10.yaml"], ["hvs_simsiam.yaml"], 1),
    "simsiam_hvp": ("SimSiam, HVS authors' recipe", ["simsiam_hvp_cifar10.yaml"], ["hvs_simsiam_hvp.yaml"], 0),
    "byol": ("BYOL", ["byol_cifar10.yaml"], ["hvs_byol.yaml"], 1),
    "dino": ("DINO", ["dino_cifar10.yaml"], ["hvs_dino.yaml"], 1),
    "dino_short": ("DINO, short-schedule overlay", ["dino_cifar10.yaml", "overlays/dino_short_schedule.yaml"],
                   ["hvs_dino.yaml", "overlays/dino_short_schedule.yaml"], 1),
}
BASES = list(METHODS)
DEFAULT_BASES = ["simclr", "mocov2", "simsiam", "simsiam_hvp", "byol", "dino_short"]
VARIANTS = ["base", "paper", "hvs"]
PAPER_RULE = "overlays/hvs_paper_rule.yaml"
PROTOCOL_EPOCHS = 15
CROSSOVER_BASES, CROSSOVER_EPOCHS = ["simclr", "mocov2"], [15, 30, 60]
RUNS_DIR = REPO / "benchmarks" / "hvs_real"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- hvs_real: begin -->", "<!-- hvs_real: end -->"
CROSS_BEGIN, CROSS_END = "<!-- hvs_crossover: begin -->", "<!-- hvs_crossover: end -->"
NAMES = {k: v[0] for k, v in METHODS.items()}


def config_paths(base: str, variant: str) -> list[Path]:
    """The ``--config`` files of a run, in order."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    _, base_cfgs, hvs_cfgs, _ = METHODS[base]
    files = base_cfgs if variant == "base" else hvs_cfgs + ([PAPER_RULE] if variant == "paper" else [])
    return [REPO / "configs" / f for f in files]


def run_name(base: str, variant: str, seed: int, overrides: tuple[str, ...] = (), epochs: int = PROTOCOL_EPOCHS) -> str:
    tag = "".join("_" + o.split(".")[-1].replace("=", "-") for o in overrides)
    length = "" if epochs == PROTOCOL_EPOCHS else f"_e{epochs}"
    return f"{base}_{variant}{tag}{length}_seed{seed}"


def label(record: dict) -> str:
    """``base``, ``paper``, ``hvs`` or ``paper [hardness_ramp_epochs=5]`` (a variant with ``--set`` overrides)."""
    over = record.get("overrides") or []
    return record["variant"] + (f" [{', '.join(o.split('.')[-1] for o in over)}]" if over else "")


def cpu_overrides(base: str, epochs: int, batch: int, root: Path, fraction: float, seed: int, tmp: str) -> list[str]:
    """The CPU model, schedule and data on top of a CIFAR recipe (module docstring)."""
    args = [f"--seed_everything={seed}", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
            f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={tmp}", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0",
            "--trainer.limit_val_batches=0", "--trainer.sync_batchnorm=false", "--trainer.enable_progress_bar=false",
            "--model.backbone=resnet_tiny", f"--model.warmup_epochs={METHODS[base][3]}",
            "--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={root / 'train'}",
            f"--data.val_dir={root / 'test'}", "--data.image_size=32", f"--data.train_fraction={fraction}",
            f"--data.batch_size={batch}", "--data.num_workers=1"]
    if base == "mocov2":
        args.append("--model.queue_size=4096")
    if base.startswith("dino"):
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


class SelectionShare(L.Callback):
    """The share of training images that trained on their highest-loss candidate pair (HVS's
    ``last_selection["is_hardest"]``; an image of a step that scored nothing counts as not), and
    the share that trained on their rule's pair (model-free rules included)."""

    def __init__(self) -> None:
        self.images = self.hardest = self.by_rule = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sel = getattr(pl_module, "last_selection", None)
        if sel is None:
            return
        self.images += len(batch["views"][0])
        if "is_hardest" in sel:
            self.hardest += int(sel["is_hardest"].sum())
        if "from_rule" in sel:
            self.by_rule += int(sel["from_rule"].sum())

    def shares(self) -> dict[str, float | None]:
        if not self.images:
            return {"hardest_share": None, "rule_share": None}
        return {"hardest_share": self.hardest / self.images, "rule_share": self.by_rule / self.images}


def run_child(base: str, variant: str, seed: int, epochs: int, batch: int, fraction: float, out: Path,
              overrides: tuple[str, ...] = ()) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from results import fit_and_evaluate

    from hardcl_lightning.cli import build_cli
    from hardcl_lightning.quiet import silence_known_noise

    silence_known_noise()
    root = cifar10_root()
    losses, selection = EpochLoss(), SelectionShare()
    configs = config_paths(base, variant)
    with tempfile.TemporaryDirectory() as tmp:
        cli = build_cli([*(a for c in configs for a in ("--config", str(c))),
                         *cpu_overrides(base, epochs, batch, root, fraction, seed, tmp), *(f"--{o}" for o in overrides)], run=False)
        cli.trainer.callbacks += [losses, selection]
        dm = cli.datamodule
        init, final, minutes = fit_and_evaluate(cli)
    record = {
        "base": base, "variant": variant, "overrides": list(overrides), "seed": seed, "method": type(cli.model).__name__,
        "config": " + ".join(str(c.relative_to(REPO)) for c in configs), "epochs": epochs, "fraction": fraction,
        "batch_size": batch, "train_images": len(dm._train), "knn_init": init["knn"], "knn": final["knn"],
        "linear": final["linear"], "loss_first_epoch": losses.means[0], "loss_last_epoch": losses.means[-1],
        "chance_loss": chance_loss(cli.model), **selection.shares(), "minutes": minutes,
        "date": datetime.date.today().isoformat(), "machine": machine(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "command": f"python benchmarks/hvs_real.py --bases {base} --variants {variant} --seeds {seed} --epochs {epochs} "
                   f"--fraction {fraction} --batch-size {batch}" + "".join(f" --set {o}" for o in overrides),
    }
    out.write_text(json.dumps(record, indent=1) + "\n")


def load_runs(runs_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]


def fmt(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def gap_to_base(rs: list[dict], base_runs: list[dict]) -> str:
    """Mean ± std of kNN(variant) - kNN(base) over the seeds both have (pairs runs of one seed)."""
    knn_by_seed = {r["seed"]: r["knn"] for r in base_runs}
    diffs = [r["knn"] - knn_by_seed[r["seed"]] for r in rs if r["seed"] in knn_by_seed]
    return f"{'+' if statistics.mean(diffs) >= 0 else ''}{fmt(diffs, 100)}" if diffs else "-"


def row_name(base: str, lab: str) -> str:
    if lab.startswith("base"):
        return NAMES[base] + lab.removeprefix("base")
    return f"HVS-{NAMES[base]}, {lab}"


def ordered_labels(labels: set[str]) -> list[str]:
    return [v for v in VARIANTS if v in labels] + sorted(lab for lab in labels if lab not in VARIANTS)


def share(rs: list[dict]) -> str:
    values = [r.get("hardest_share") for r in rs]
    return "-" if rs[0]["variant"] == "base" or None in values else fmt(values, 100, digits=0)


def table(runs: list[dict], wanted: list[tuple]) -> list[str]:
    """One row per (method, variant and overrides): mean ± std over the recorded seeds, the gap to the
    base (runs of the same seed), and the runs still missing."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        by.setdefault((r["base"], label(r)), []).append(r)
    lines = ["| method | configs | seeds | kNN before (%) | kNN (%) | HVS - base kNN | linear (%) | trained on hardest pair (%) | "
             "loss first -> last epoch | chance loss | minutes / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for base in BASES:
        for lab in ordered_labels({lab for b, lab in by if b == base}):
            rs = sorted(by[(base, lab)], key=lambda r: r["seed"])
            gap = gap_to_base(rs, by.get((base, "base"), [])) if lab != "base" else "-"
            lines.append(f"| {row_name(base, lab)} | `{rs[0]['config']}` | {','.join(str(r['seed']) for r in rs)} | "
                         f"{fmt([r['knn_init'] for r in rs], 100)} | {fmt([r['knn'] for r in rs], 100)} | {gap} | "
                         f"{fmt([r['linear'] for r in rs], 100)} | {share(rs)} | "
                         f"{fmt([r['loss_first_epoch'] for r in rs], digits=2)} -> {fmt([r['loss_last_epoch'] for r in rs], digits=2)} | "
                         f"{rs[0]['chance_loss']:.2f} | {fmt([r['minutes'] for r in rs])} |")
    done = {(r["base"], r["variant"], r["seed"], tuple(r.get("overrides") or ()), r["epochs"]) for r in runs}
    wanted = [(*w, *((), PROTOCOL_EPOCHS)[len(w) - 3:]) for w in wanted]  # (base, variant, seed[, overrides[, epochs]])
    missing = [run_name(*w) for w in wanted if w not in done]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(f"`{m}`" for m in missing) + "."]
    return lines


def crossover_table(runs: list[dict]) -> list[str]:
    """kNN of each CROSSOVER_BASES variant at each schedule length, and its gap to the base there."""
    lines = ["| method | " + " | ".join(f"{e} epochs: kNN (%) | {e} epochs: - base" for e in CROSSOVER_EPOCHS) + " |",
             "|---|" + "---|---|" * len(CROSSOVER_EPOCHS)]
    for base in CROSSOVER_BASES:
        mine = [r for r in runs if r["base"] == base and r["epochs"] in CROSSOVER_EPOCHS]
        for lab in ordered_labels({label(r) for r in mine}):
            cells = []
            for e in CROSSOVER_EPOCHS:
                rs = sorted((r for r in mine if label(r) == lab and r["epochs"] == e), key=lambda r: r["seed"])
                base_runs = [r for r in mine if r["variant"] == "base" and not r.get("overrides") and r["epochs"] == e]
                cells += ([f"{fmt([r['knn'] for r in rs], 100)} (seeds {','.join(str(r['seed']) for r in rs)})",
                           gap_to_base(rs, base_runs) if lab != "base" else "-"] if rs else ["-", "-"])
            lines.append(f"| {row_name(base, lab)} | " + " | ".join(cells) + " |")
    return lines


def write_results(runs: list[dict], wanted: list[tuple], fraction: float, batch: int) -> None:
    protocol = [r for r in runs if (r["epochs"], r["fraction"], r["batch_size"]) == (PROTOCOL_EPOCHS, fraction, batch)]
    if protocol:
        dates = sorted({r["date"] for r in protocol})
        body = ["# HVS beside its base method, the CIFAR recipes, real CIFAR-10", "",
                f"Measured {', '.join(dates)} on {protocol[0]['machine']} (commits {', '.join(sorted({r['commit'] for r in protocol}))}) by "
                "`python benchmarks/hvs_real.py` (each record holds its own command).", "",
                f"{protocol[0]['train_images']} class-balanced CIFAR-10 training images, {PROTOCOL_EPOCHS} epochs, batch {batch}, "
                "`resnet_tiny` with CIFAR stem, each config's own optimiser, LR (scaled by batch/256), weight decay, heads, "
                "temperatures, EMA and augmentations; 1 warm-up epoch where the recipe has one; MoCo queue 4096 "
                "(`benchmarks/hvs_real.py` says why). kNN k=200 T=0.07 and linear on the 10000 test images. mean ± std over "
                "seeds; HVS - base pairs runs of the same seed. `paper`: the paper's rule (argmax from the first step, "
                "`configs/overlays/hvs_paper_rule.yaml`); `hvs`: the HVS config as shipped; a bracket: the options a row "
                "changes. Trained on hardest pair: the share of training images that trained on their highest-loss "
                "candidate pair. Chance loss: what a model whose embeddings carry no information scores. "
                "Each run's record: `benchmarks/hvs_real/<method>_<variant>[_<option>]_seed<k>.json`.", "",
                *table(protocol, [w for w in wanted if len(w) < 5 or w[4] == PROTOCOL_EPOCHS])]
        write_section(RESULTS, BEGIN, END, body)
    cross = [r for r in runs if r["base"] in CROSSOVER_BASES and (r["fraction"], r["batch_size"]) == (fraction, batch)]
    if any(r["epochs"] != PROTOCOL_EPOCHS for r in cross):
        body = ["# Where HVS starts to help: SimCLR and MoCo v2 at 15, 30 and 60 epochs", "",
                "The protocol of the table above at three schedule lengths (`--epochs 30`, `--epochs 60`); "
                "mean ± std over the seeds named, gap to the base of the same seeds and length.", "",
                *crossover_table(cross)]
        write_section(RESULTS, CROSS_BEGIN, CROSS_END, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", nargs="+", default=DEFAULT_BASES, choices=BASES)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=PROTOCOL_EPOCHS)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="this CLI option on the selected variants, e.g. model.hardness_ramp_epochs=5 "
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
    wanted = [(b, v, s, overrides, args.epochs) for s in args.seeds for b in args.bases for v in args.variants]
    for base, variant, seed, _, epochs in wanted:
        out = runs_dir / f"{run_name(base, variant, seed, overrides, epochs)}.json"
        if args.table_only or (out.exists() and not args.force):
            continue
        print(f"running {out.stem} ...", flush=True)
        cmd = [sys.executable, __file__, "--child", base, variant, str(seed), "--epochs", str(epochs),
               "--fraction", str(args.fraction), "--batch-size", str(args.batch_size), "--out", str(out),
               *(f"--set={o}" for o in overrides)]
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            print(f"{out.stem} failed (exit {proc.returncode})", flush=True)
            continue
        r = json.loads(out.read_text())
        print(f"{out.stem}: kNN {100 * r['knn_init']:.1f} -> {100 * r['knn']:.1f} %, loss {r['loss_first_epoch']:.3f} -> "
              f"{r['loss_last_epoch']:.3f} (chance {r['chance_loss']:.3f}), hardest pair {r.get('hardest_share')}, "
              f"{r['minutes']:.1f} min", flush=True)
    same = lambda r: (r["epochs"], r["fraction"], r["batch_size"]) == (args.epochs, args.fraction, args.batch_size)  # noqa: E731
    print("\n".join(table([r for r in load_runs(runs_dir) if same(r)], wanted)))
    if not args.no_write:
        write_results(load_runs(runs_dir), wanted, args.fraction, args.batch_size)


if __name__ == "__main__":
    main()
