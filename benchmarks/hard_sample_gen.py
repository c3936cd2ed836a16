"""The arms that test the generator methods' claim, side by side, same data subset and seeds -> RESULTS.md.

    python benchmarks/hard_sample_gen.py                                    # Shapes10, every arm, seeds 0 1
    python benchmarks/hard_sample_gen.py --dataset cifar10 --fraction 0.2   # real CIFAR-10 (10k images)
    python benchmarks/hard_sample_gen.py --arms A C --seeds 0 --epochs 1 --gan-epochs 1 --num-train 400 --batch-size 16   # a smoke run

The paper's central claim (Wu et al.): a GAN pre-trained alone does not help, the joint game does;
and the methods are data-efficient. So, per seed, on one class-balanced ``--fraction`` of the data:

- **A**: the base method (``configs/tiny/simclr.yaml``); **A2x**: the same on twice the data;
  **Acm**: the same with as many more epochs as C's step time buys (compute-matched);
- a GAN pre-trained on exactly that subset (``configs/tiny/gan_pretrain.yaml``, ``--gan-epochs``);
- **B**: A + samples of that frozen GAN (``train_gan: false``, ``lambda_hard: 0``): the control;
- **C**: the joint hard-sample game from that GAN (``hard_sample_gen``; ``C_latent`` and
  ``C_residual``: the bounded hardness modes);
- **D**: generated positive pairs (``positive_pair``); **E**: C + D (``hardgen_full``).

Every arm uses the tiny configs' recipe (resnet_tiny, SimCLR NT-Xent, AdamW) and ``--epochs``
(joint from the first epoch). Reported: kNN (k=200, T=0.07) and linear accuracy (logistic
regression on frozen features) on the held-out images, per seed and their mean; ms per batch and
its ratio to A's, measured with every arm side by side in one sitting (``--timing-rounds`` rounds
of ``--timing-batches`` batches each, once per protocol: the runs themselves are spread over
sittings, whose machine load differs, so their wall times do not compare); for the generator arms the last epoch's generated/real loss ratio (at equal
batch size), pixel std across generated samples and the view-pair cosine of generated views
(collapse shows as both falling). Shapes10 is the embedded dataset; CIFAR-10 is read from
``data/cifar10-jpg.tar.gz`` (or ``$HARDCL_CIFAR10_TAR``) and skipped cleanly when absent.

Each (arm, seed) writes ``benchmarks/hard_sample_gen/<dataset>_f<fraction>_e<epochs>_<arm>_seed<k>.json``
(kept in the repository) and is skipped when its record exists (``--force`` re-runs it), so a run
too long for one sitting (CIFAR-10 at ``--fraction 0.2``: about 2 h of 2 otherwise idle CPU cores a seed) goes
on where it stopped, one ``--seeds`` at a time; the table is made from the records of the same
protocol; the side-by-side timing is ``<dataset>_f<fraction>_e<epochs>_timing.json`` beside them
(Acm's epochs come from it). The pre-trained GANs are cached in the git-ignored ``benchmarks/out/hard_sample_gen/``.
The same arms at ResNet-18 scale, on a GPU: ``python benchmarks/gpu_suite.py --suite generators``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, REPO, StepTimer, cifar10_root, machine, write_section  # noqa: E402
from results import fit_and_evaluate  # noqa: E402

from hardcl_lightning.cli import build_cli  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RUNS_DIR = Path(__file__).resolve().parent / "hard_sample_gen"


def markers(dataset: str, fraction: float) -> tuple[str, str]:
    """Each (dataset, fraction) table has a RESULTS.md section of its own."""
    return f"<!-- hard_sample_gen {dataset} {fraction:g}: begin -->", f"<!-- hard_sample_gen {dataset} {fraction:g}: end -->"


#: arm -> (tiny config, extra CLI options, uses the pre-trained GAN, what it is)
FROZEN = ["--model.init_args.train_gan=false", "--model.init_args.lambda_hard=0"]
ARMS: dict[str, tuple[str, list[str], bool, str]] = {
    "A": ("simclr", [], False, "SimCLR (base)"),
    "A2x": ("simclr", [], False, "SimCLR on 2x the data"),
    "Acm": ("simclr", [], False, "SimCLR, compute-matched to C"),
    "B": ("hard_sample_gen", FROZEN, True, "+ samples of the frozen pre-trained GAN"),
    "C": ("hard_sample_gen", ["--model.init_args.hardness=generator"], True, "joint hard-sample game (hardness: generator)"),
    "C_latent": ("hard_sample_gen", ["--model.init_args.hardness=latent"], True, "joint game, hardness: latent"),
    "C_residual": ("hard_sample_gen", ["--model.init_args.hardness=residual"], True, "hardness: residual (no GAN)"),
    "D": ("positive_pair", [], True, "generated positive pairs"),
    "E": ("hardgen_full", [], True, "C + D (combined framework)"),
}
DIAGNOSTICS = {"hard/gen_loss_ratio_epoch": "gen/real loss", "hard/gen_pixel_std_epoch": "pixel std",
               "hard/gen_view_cosine_epoch": "view cos", "hard/pair_sim_achieved_epoch": "pair sim",
               "hard/pair_sim_target_epoch": "pair target"}


class LastEpochMetrics(L.Callback):
    """The diagnostics' epoch means of the last training epoch."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        self.values = {k: float(m[k]) for k in DIAGNOSTICS if k in m}


def data_args(dataset: str, num_train: int, fraction: float, batch_size: int) -> list[str]:
    if dataset == "shapes":
        return [f"--data.init_args.num_train={num_train}", f"--data.init_args.train_fraction={fraction}",
                f"--data.init_args.batch_size={batch_size}"]
    root = cifar10_root()
    return ["--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={root / 'train'}",
            f"--data.val_dir={root / 'test'}", "--data.image_size=32", "--data.num_workers=2",
            f"--data.train_fraction={fraction}", f"--data.batch_size={batch_size}"]


def common_args(tmp: str, epochs: int, seed: int) -> list[str]:
    return [f"--trainer.max_epochs={epochs}", f"--seed_everything={seed}", f"--trainer.default_root_dir={tmp}",
            "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
            "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"]


def pretrain_gan(data: list[str], epochs: int, seed: int, path: Path, config: str = "tiny/gan_pretrain",
                 more: tuple[str, ...] = ()) -> float:
    """GAN pre-training (``configs/<config>.yaml`` + ``more``) on the arms' subset; its checkpoint
    records that subset. Returns minutes.

    Written to a temporary name and renamed, so an interrupted run leaves no half checkpoint."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cli = build_cli(["--config", str(REPO / "configs" / f"{config}.yaml"), *common_args(tmp, epochs, seed), *data, *more],
                        run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
        path.parent.mkdir(parents=True, exist_ok=True)
        cli.trainer.save_checkpoint(str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
    return (time.perf_counter() - t0) / 60


def run_name(dataset: str, fraction: float, epochs: int, arm: str, seed: int) -> str:
    return f"{dataset}_f{fraction:g}_e{epochs}_{arm}_seed{seed}"


def protocol(args: argparse.Namespace) -> dict:
    """What must match for records to share a table."""
    return {"dataset": args.dataset, "fraction": args.fraction, "protocol_epochs": args.epochs, "gan_epochs": args.gan_epochs,
            "batch_size": args.batch_size, **({"num_train": args.num_train} if args.dataset == "shapes" else {})}


def timing_name(dataset: str, fraction: float, epochs: int) -> str:
    return f"{dataset}_f{fraction:g}_e{epochs}_timing"


def load_runs(runs_dir: Path, want: dict) -> list[dict]:
    """The (arm, seed) records of this protocol (not the timing record)."""
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))] if runs_dir.is_dir() else []
    return [r for r in runs if "arm" in r and all(r.get(k) == v for k, v in want.items())]


def arm_cli(arm: str, data: list[str], epochs: int, seed: int, gan_ckpt: Path | None, tmp: str, *more: str):
    config, extra, uses_gan, _ = ARMS[arm]
    gan = [f"--model.init_args.generator_checkpoint={gan_ckpt}", "--model.init_args.joint_start_epoch=0"] if uses_gan else []
    return build_cli(["--config", str(REPO / "configs" / "tiny" / f"{config}.yaml"), *common_args(tmp, epochs, seed),
                      *data, *gan, *extra, *more], run=False)


def run_arm(arm: str, data: list[str], epochs: int, seed: int, gan_ckpt: Path | None) -> dict:
    timer, last = StepTimer(warmup=3), LastEpochMetrics()
    with tempfile.TemporaryDirectory() as tmp:
        cli = arm_cli(arm, data, epochs, seed, gan_ckpt, tmp)
        cli.trainer.callbacks.extend([timer, last])
        init, final, minutes = fit_and_evaluate(cli)
    return {"arm": arm, "seed": seed, "epochs": epochs, "knn": final["knn"], "linear": final["linear"],
            "knn_init": init["knn"], "ms_per_batch": 1000 * timer.seconds_per_step, "minutes": minutes,
            "train_images": len(cli.datamodule._train), **last.values}


#: arms whose batches cost what A's do (the same model and batch; more data or more epochs)
TIMED_AS_A = {"A2x": "A", "Acm": "A"}


def timed_arms(arms: list[str]) -> list[str]:
    """The arms the side-by-side timing measures: A (the ratios' base), C when Acm is matched to it,
    and every other arm but those timed as A."""
    need = {"A", *(["C"] if "Acm" in arms else []), *(a for a in arms if a not in TIMED_AS_A)}
    return [a for a in ARMS if a in need]


def time_arms(arms: list[str], data: list[str], seed: int, gan_ckpt: Path, batches: int, rounds: int) -> dict[str, float]:
    """ms per training batch of each arm, measured side by side in one sitting: ``rounds`` rounds,
    each fitting every arm in turn for ``batches`` batches (after 3 not timed), and each arm's
    median over the rounds. The arms' own runs are spread over sittings (even sessions), so their
    wall times meet different loads; what else runs on the machine now slows every arm alike."""
    ms: dict[str, list[float]] = {a: [] for a in arms}
    for _ in range(rounds):
        for arm in arms:
            timer = StepTimer(warmup=3)
            with tempfile.TemporaryDirectory() as tmp:
                cli = arm_cli(arm, data, 1, seed, gan_ckpt if ARMS[arm][2] else None, tmp,
                              f"--trainer.limit_train_batches={batches + 4}")
                cli.trainer.callbacks.append(timer)
                cli.trainer.fit(cli.model, cli.datamodule)
            ms[arm].append(1000 * timer.seconds_per_step)
    return {a: statistics.median(v) for a, v in ms.items()}


def arm_ms(timing: dict[str, float], arm: str) -> float | None:
    return timing.get(TIMED_AS_A.get(arm, arm))


def table(rows: list[dict], arms: list[str], timing: dict[str, float]) -> list[str]:
    base_ms = timing.get("A")
    base_knn = {r["seed"]: r["knn"] for r in rows if r["arm"] == "A"}
    out = ["| arm | what | images | epochs | kNN per seed (%) | kNN mean (%) | - A | linear mean (%) | ms / batch | "
           "step-time ratio | last epoch: " + ", ".join(DIAGNOSTICS.values()) + " |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        knn = statistics.mean(r["knn"] for r in rs)
        gap = statistics.mean(r["knn"] - base_knn[r["seed"]] for r in rs if r["seed"] in base_knn) if base_knn else None
        ms = arm_ms(timing, arm)
        diag = ", ".join(f"{statistics.mean(r[k] for r in rs if k in r):.3f}" if any(k in r for r in rs) else "-"
                         for k in DIAGNOSTICS)
        per_seed = " / ".join(f"{100 * r['knn']:.1f}" for r in rs)
        out.append(f"| {arm} | {ARMS[arm][3]} | {rs[0]['train_images']} | {rs[0]['epochs']} | {per_seed} | {100 * knn:.1f} | "
                   f"{'-' if gap is None else f'{100 * gap:+.1f}'} | {100 * statistics.mean(r['linear'] for r in rs):.1f} | "
                   f"{'-' if ms is None else f'{ms:.0f}'} | {'-' if None in (ms, base_ms) else f'{ms / base_ms:.2f}'} | {diag} |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--dataset", choices=["shapes", "cifar10"], default="shapes")
    ap.add_argument("--fraction", type=float, default=0.2, help="class-balanced train_fraction every arm uses (A2x: twice it)")
    ap.add_argument("--num-train", type=int, default=10000, help="Shapes10 training images before --fraction")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--gan-epochs", type=int, default=10, help="epochs of GAN pre-training on the subset")
    ap.add_argument("--batch-size", type=int, default=128, help="every arm's batch (the tiny configs' 128)")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--force", action="store_true", help="re-run (arm, seed) runs that have a record, the GAN and the timing")
    ap.add_argument("--timing-batches", type=int, default=20, help="timed batches per arm and round of the side-by-side timing")
    ap.add_argument("--timing-rounds", type=int, default=3, help="rounds of the side-by-side timing (each arm's median)")
    ap.add_argument("--runs-dir", type=Path, default=None, help="where run records go (default benchmarks/hard_sample_gen/)")
    ap.add_argument("--gan-cache", type=Path, default=None, help="where pre-trained GANs are kept (default benchmarks/out/hard_sample_gen/)")
    args = ap.parse_args(argv)
    if args.dataset == "cifar10" and cifar10_root() is None:
        print("CIFAR-10 archive absent (data/cifar10-jpg.tar.gz or $HARDCL_CIFAR10_TAR): skipped")
        return
    if "A2x" in args.arms and args.fraction * 2 > 1:
        raise SystemExit(f"--fraction {args.fraction}: arm A2x needs 2x it <= 1; lower --fraction or drop A2x")
    arms = list(args.arms)
    data = data_args(args.dataset, args.num_train, args.fraction, args.batch_size)
    runs_dir, want = args.runs_dir or RUNS_DIR, protocol(args)
    command = ("python benchmarks/hard_sample_gen.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                                   if a not in ("--force", "--no-write"))).strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    gan_dir = args.gan_cache or CACHE / "hard_sample_gen"
    gan_path = lambda seed: gan_dir / f"gan_{'_'.join(f'{k}{v}' for k, v in want.items())}_seed{seed}.ckpt"  # noqa: E731
    timing_path = runs_dir / f"{timing_name(args.dataset, args.fraction, args.epochs)}.json"
    timing_record = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    to_time = timed_arms(arms)
    if args.force or not set(to_time) <= set(timing_record.get("ms_per_batch", {})):
        seed = args.seeds[0]
        gan_minutes = None
        if any(ARMS[a][2] for a in to_time) and (args.force or not gan_path(seed).is_file()):
            gan_minutes = pretrain_gan(data, args.gan_epochs, seed, gan_path(seed))
        t0 = time.perf_counter()
        ms = time_arms(to_time, data, seed, gan_path(seed), args.timing_batches, args.timing_rounds)
        timing_record = {**want, "ms_per_batch": ms, "batches": args.timing_batches, "rounds": args.timing_rounds,
                         "minutes": (time.perf_counter() - t0) / 60, "date": datetime.date.today().isoformat(),
                         "machine": machine(), "commit": commit, "command": command,
                         **({"gan_minutes": gan_minutes} if gan_minutes is not None else {})}
        runs_dir.mkdir(parents=True, exist_ok=True)
        timing_path.write_text(json.dumps(timing_record, indent=1) + "\n")
        print("side-by-side ms / batch: " + ", ".join(f"{a} {v:.0f}" for a, v in ms.items()), flush=True)
    timing = timing_record["ms_per_batch"]
    for seed in args.seeds:
        done = {r["arm"]: r for r in load_runs(runs_dir, want) if r["seed"] == seed}
        todo = [a for a in arms if args.force or a not in done]
        ckpt = gan_path(seed)
        gan_minutes = None
        if any(ARMS[a][2] for a in todo) and (args.force or not ckpt.is_file()):
            gan_minutes = pretrain_gan(data, args.gan_epochs, seed, ckpt)
        for arm in todo:
            epochs, arm_data = args.epochs, data
            if arm == "A2x":
                arm_data = data_args(args.dataset, args.num_train, 2 * args.fraction, args.batch_size)
            if arm == "Acm":  # C's batches cost more: A gets the epochs that C's compute buys (the side-by-side times)
                epochs = max(args.epochs, round(args.epochs * timing["C"] / timing["A"]))
            r = {**run_arm(arm, arm_data, epochs, seed, ckpt if ARMS[arm][2] else None), **want,
                 "date": datetime.date.today().isoformat(), "machine": machine(), "commit": commit, "command": command}
            if ARMS[arm][2] and gan_minutes is not None:
                r["gan_minutes"] = gan_minutes
            runs_dir.mkdir(parents=True, exist_ok=True)
            (runs_dir / f"{run_name(args.dataset, args.fraction, args.epochs, arm, seed)}.json").write_text(json.dumps(r, indent=1) + "\n")
            done[arm] = r
            print(f"{arm} seed {seed}: kNN {100 * r['knn_init']:.1f} -> {100 * r['knn']:.1f} %, linear "
                  f"{100 * r['linear']:.1f} %, {r['ms_per_batch']:.0f} ms/batch, {r['minutes']:.1f} min", flush=True)
    rows = sorted((r for r in load_runs(runs_dir, want) if r["arm"] in arms), key=lambda r: r["seed"])
    seeds = sorted({r["seed"] for r in rows})
    # a seed's GAN pre-training is recorded by the first run that needed it: an arm's, or the timing's
    gan_minutes = [r["gan_minutes"] for r in [*rows, timing_record] if "gan_minutes" in r]
    missing = [run_name(args.dataset, args.fraction, args.epochs, a, s) for s in args.seeds for a in arms
               if not any(r["arm"] == a and r["seed"] == s for r in rows)]
    order = [a for a in ARMS if a in arms]
    lines = [f"## Generator methods: the arms that test the claim, {args.dataset}, train_fraction {args.fraction:g} "
             f"(`{command}`)", "",
             f"{', '.join(sorted({r['date'] for r in rows}))}, {rows[0]['machine'] if rows else machine()} "
             f"(commits {', '.join(sorted({r['commit'] for r in rows}))}); {args.dataset}, train_fraction {args.fraction:g}, "
             f"seeds {' '.join(map(str, seeds))}, the tiny configs (resnet_tiny, SimCLR NT-Xent, AdamW), "
             f"GAN pre-trained {args.gan_epochs} epochs on the same subset"
             + (f" ({statistics.mean(gan_minutes):.1f} min a seed)" if gan_minutes else "")
             + f". Each run's record: `benchmarks/hard_sample_gen/{run_name(args.dataset, args.fraction, args.epochs, '<arm>', 0)[:-1]}<k>.json`. "
             f"ms / batch and its ratio to A's: every arm side by side in one sitting ({timing_record['date']}, "
             f"{timing_record['rounds']} rounds of {timing_record['batches']} batches, each arm's median; "
             f"`benchmarks/hard_sample_gen/{timing_path.name}`), not the runs' own wall times, which meet "
             "different loads; A2x and Acm cost A's per batch.",
             "", *table(rows, order, timing)]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(f"`{m}`" for m in missing) + "."]
    print("\n".join(lines))
    if not args.no_write:
        write_section(RESULTS, *markers(args.dataset, args.fraction), lines)


if __name__ == "__main__":
    main()
