"""Real-scale pre-training that fits one GPU session -> RESULTS.md: SimCLR vs HVS-SimCLR and MoCo v2
vs MoCHi (``--suite contrastive``, the default), or the generator methods' arms (``--suite generators``).

    python benchmarks/gpu_suite.py                        # one H100/H200: full CIFAR-10, ResNet-18, ~8 minutes
    python benchmarks/gpu_suite.py --suite generators     # the generator arms on 20 % of CIFAR-10, ~8 minutes
    python benchmarks/gpu_suite.py --budget-minutes 20    # longer schedules on a longer lease
    python benchmarks/gpu_suite.py --tiny                 # any machine (CI): resnet_tiny, 2 % of the images

Each contrastive arm is its CIFAR config (``configs/{simclr_cifar10,hvs_simclr,mocov2_cifar10,mochi_cifar10}.yaml``:
ResNet-18 with CIFAR stem, the recipe's optimiser, LR, heads, augmentations) on the 50,000 CIFAR-10
training images of ``data/cifar10-jpg.tar.gz`` (or ``$HARDCL_CIFAR10_TAR``), with the schedule
shortened to E epochs (warm-up E/10, the cosine over E; MoCHi mixes from epoch E/10), bf16,
channels_last, views made on the device from the training images kept there (``augment_on: device``,
``images_on_device``), seed 0 for every arm. kNN (k=200, T=0.07, bank = the training images) on
the 10,000 test images every ``--eval-every`` epochs.

The generator suite is ``benchmarks/hard_sample_gen.py``'s arms at ResNet-18 scale, seed 0, on one
class-balanced ``--fraction`` of the training images (the data-efficiency setting): a GAN
pre-trained ``--gan-epochs`` on exactly that subset (``configs/gan_pretrain_cifar10.yaml``), then
the CIFAR generator configs (``hard_sample_gen_cifar10``, ``positive_pair_cifar10``,
``hardgen_full_cifar10``) joint from the first epoch; A is ``hard_sample_gen_cifar10`` with the
generator off, so that every arm shares one SimCLR recipe; A2x is A on twice the fraction, Acm A
with as many more epochs as C_latent's measured step time buys. Reported at the end of training:
kNN and linear accuracy on the test images (``benchmarks/results.py``'s protocol), images/s, the
step-time ratio to A and the generated samples' last-epoch diagnostics.

E is chosen from the measured time: every arm first trains ``--probe-steps`` steps; E is the
largest epoch count at which the arms' training and evaluations fit ``--budget-minutes``
(the whole command, probes and GAN pre-training included; it says the E it chose and why). The
table (the date, the device, the command, E, images/s, accuracies) goes into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, StepTimer, cifar10_root, machine, write_section  # noqa: E402
from hard_sample_gen import FROZEN  # noqa: E402

ARMS = [("SimCLR", "simclr_cifar10", []), ("HVS-SimCLR", "hvs_simclr", []),
        ("MoCo v2", "mocov2_cifar10", []), ("MoCHi", "mochi_cifar10", [])]
_OFF = ["--model.init_args.generator_enabled=false"]
#: the generator suite: arm -> (CIFAR config, extra CLI options, multiple of --fraction, uses the pre-trained GAN,
#: what it is); the names and the controls are benchmarks/hard_sample_gen.py's
GENERATOR_ARMS: dict[str, tuple[str, list[str], int, bool, str]] = {
    "A": ("hard_sample_gen_cifar10", _OFF, 1, False, "SimCLR (the generator configs' recipe, generator off)"),
    "A2x": ("hard_sample_gen_cifar10", _OFF, 2, False, "A on 2x the data"),
    "B": ("hard_sample_gen_cifar10", FROZEN, 1, True, "+ samples of the frozen pre-trained GAN"),
    "C": ("hard_sample_gen_cifar10", ["--model.init_args.hardness=generator"], 1, True, "joint game, hardness: generator"),
    "C_latent": ("hard_sample_gen_cifar10", ["--model.init_args.hardness=latent"], 1, True,
                 "joint hard-sample game, hardness: latent (the default)"),
    "C_residual": ("hard_sample_gen_cifar10", ["--model.init_args.hardness=residual"], 1, True, "hardness: residual"),
    "D": ("positive_pair_cifar10", [], 1, True, "generated positive pairs"),
    "E": ("hardgen_full_cifar10", [], 1, True, "C_latent + D (combined framework)"),
    "Acm": ("hard_sample_gen_cifar10", _OFF, 1, False, "A, compute-matched to C_latent"),
}
#: the generator arms run by default (C, which collapses on every CPU table, and C_residual on request);
#: Acm runs last, its epochs from A's and C_latent's measured step times
GENERATOR_DEFAULT = ["A", "A2x", "B", "C_latent", "D", "E", "Acm"]
SUITES = {"contrastive": [a[0] for a in ARMS], "generators": list(GENERATOR_ARMS)}
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- gpu_suite: begin -->", "<!-- gpu_suite: end -->"
GEN_BEGIN, GEN_END = "<!-- gpu_suite generators: begin -->", "<!-- gpu_suite generators: end -->"
#: --tiny's GAN (pre-training and every generator arm: the architecture must match): the CIFAR one
#: would cost a tiny backbone's step ten times over on a CPU
TINY_GAN = ["--model.init_args.gan.latent_dim=32", "--model.init_args.gan.g_channels=16", "--model.init_args.gan.d_channels=16"]


def on_gpu(args: argparse.Namespace) -> bool:
    return torch.cuda.is_available() and not args.tiny


def trainer_args(args: argparse.Namespace) -> list[str]:
    """One device, no logger/checkpoints/callbacks/bars, no run files in the cwd."""
    return [f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='gpu_suite_')}", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.devices=1",
            f"--trainer.accelerator={'gpu' if on_gpu(args) else 'cpu'}"]


def data_args(root: Path | None, args: argparse.Namespace) -> list[str]:
    """CIFAR-10 from the archive (2 % of it with --tiny), or Shapes10 without one (--tiny only)."""
    if root is None:
        return ["--data=hardcl_lightning.data.ShapesDataModule", "--data.num_train=1000", "--data.num_val=200"]
    return ["--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={root / 'train'}",
            f"--data.val_dir={root / 'test'}", "--data.image_size=32", *(["--data.train_fraction=0.02"] if args.tiny else [])]


def arm_args(config: str, extra: list[str], args: argparse.Namespace, root: Path | None, epochs: int | None,
             max_steps: int | None, more: Sequence[str] = ()) -> list[str]:
    gpu = on_gpu(args)
    out = ["--config", str(REPO / "configs" / f"{config}.yaml"), *extra, "--seed_everything=0", *trainer_args(args),
           "--trainer.sync_batchnorm=false", f"--trainer.precision={'bf16-mixed' if gpu else '32-true'}",
           f"--data.batch_size={args.batch_size}", f"--data.num_workers={args.workers}", "--data.augment_on=device",
           "--data.images_on_device=true"]
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
    return out + data_args(root, args) + list(more)


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
    why = (f"{per_epoch:.1f} s per epoch of all {len(probes)} arms (measured), {eval_s:.1f} s per evaluation, "
           f"{left:.0f} s of the {budget_s:.0f} s budget left after the probes")
    return epochs, why


def write_results(rows: list[tuple[str, str, dict]], epochs: int, why: str, command: str, minutes: float) -> None:
    evals = sorted({e for _, _, r in rows for e, _ in r["knn"]})
    head = "| method | config | images/s | " + " | ".join(f"kNN ep {e} (%)" for e in evals) + " |"
    lines = ["## Real-scale CIFAR-10 on one GPU (benchmarks/gpu_suite.py)", "",
             f"Measured {datetime.date.today().isoformat()} on {machine()} by", "", f"    {command}", "",
             f"Full CIFAR-10 ({rows[0][2]['train_images']} training images), ResNet-18 with CIFAR stem, each config's recipe "
             f"shortened to {epochs} epochs (chosen: {why}), bf16, channels_last, views on the device from the images kept "
             f"there, seed 0; kNN k=200 T=0.07 on the test images. The whole command took {minutes:.1f} min.", "", head,
             "|" + "---|" * (3 + len(evals))]
    for name, config, r in rows:
        accs = dict(r["knn"])
        cells = " | ".join(f"{100 * accs[e]:.1f}" if e in accs else "-" for e in evals)
        lines.append(f"| {name} | `{config}` | {r['images_per_s']:.0f} | {cells} |")
    write_section(RESULTS, BEGIN, END, lines)


def contrastive_suite(args: argparse.Namespace, root: Path | None, start: float) -> None:
    arms = [a for a in ARMS if a[0] in args.arms]
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


def generator_arm_args(arm: str, args: argparse.Namespace, root: Path | None, gan_ckpt: Path | None, epochs: int | None,
                       max_steps: int | None) -> list[str]:
    config, extra, multiple, uses_gan, _ = GENERATOR_ARMS[arm]
    more = [f"--data.train_fraction={multiple * args.fraction:g}", *(TINY_GAN if args.tiny else [])]
    if uses_gan:
        more += [f"--model.init_args.generator_checkpoint={gan_ckpt}", "--model.init_args.joint_start_epoch=0"]
    if epochs is not None:
        more.append("--trainer.limit_val_batches=0")  # evaluated once, at the end
    if max_steps is not None:  # batches, not steps: the joint arms step two or three optimisers a batch
        more += ["--trainer.max_epochs=1", f"--trainer.limit_train_batches={max_steps}", "--trainer.limit_val_batches=0"]
    return arm_args(config, extra, args, root, epochs, None, more)


def run_generator_arm(arm: str, args: argparse.Namespace, root: Path | None, gan_ckpt: Path | None,
                      epochs: int | None = None, max_steps: int | None = None, evaluate_model: bool = True) -> dict:
    """One arm: its step time, and (``evaluate_model``) kNN and linear accuracy after training and the
    seconds that evaluation took."""
    from hard_sample_gen import LastEpochMetrics
    from results import evaluate

    from hardcl_lightning.cli import build_cli

    cli = build_cli(generator_arm_args(arm, args, root, gan_ckpt, epochs, max_steps), run=False)
    timer, last = StepTimer(warmup=3), LastEpochMetrics()
    cli.trainer.callbacks.extend([timer, last])
    dm = cli.datamodule
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, dm)
    seconds = time.perf_counter() - t0
    dm.setup()
    out = {"seconds": seconds, "step_seconds": timer.seconds_per_step, "steps_per_epoch": len(dm._train) // args.batch_size,
           "images_per_s": args.batch_size / timer.seconds_per_step, "train_images": len(dm._train), **last.values}
    if evaluate_model:
        t0 = time.perf_counter()
        model = cli.model.to("cuda") if on_gpu(args) else cli.model  # the trainer's teardown left it on the CPU
        out |= {"epochs": epochs, **evaluate(model, dm), "eval_seconds": time.perf_counter() - t0}
    del cli
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def acm_epochs(epochs: int, timed: dict[str, dict]) -> int:
    """Acm's epochs: E x C_latent's step time / A's, at least E (the same model and batch as A)."""
    return max(epochs, round(epochs * timed["C_latent"]["step_seconds"] / timed["A"]["step_seconds"]))


def generator_table(rows: dict[str, dict]) -> list[str]:
    from hard_sample_gen import DIAGNOSTICS

    base = rows.get("A")
    out = ["| arm | what | config | images | epochs | kNN (%) | - A | linear (%) | images/s | step-time ratio | "
           "last epoch: " + ", ".join(DIAGNOSTICS.values()) + " |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, r in rows.items():
        config, _, _, _, what = GENERATOR_ARMS[arm]
        gap = "-" if base is None else f"{100 * (r['knn'] - base['knn']):+.1f}"
        ratio = "-" if base is None else f"{r['step_seconds'] / base['step_seconds']:.2f}"
        diag = ", ".join(f"{r[k]:.3f}" if k in r else "-" for k in DIAGNOSTICS)
        out.append(f"| {arm} | {what} | `{config}` | {r['train_images']} | {r['epochs']} | {100 * r['knn']:.1f} | {gap} | "
                   f"{100 * r['linear']:.1f} | {r['images_per_s']:.0f} | {ratio} | {diag} |")
    return out


def write_generator_results(rows: dict[str, dict], epochs: int, why: str, command: str, minutes: float,
                            gan_minutes: float | None, args: argparse.Namespace) -> None:
    gan = (f"a GAN pre-trained {args.gan_epochs} epochs on exactly that subset ({gan_minutes:.1f} min)" if gan_minutes is not None
           else "no GAN")
    lines = ["## The generator methods' arms at ResNet-18 scale on one GPU (benchmarks/gpu_suite.py --suite generators)", "",
             f"Measured {datetime.date.today().isoformat()} on {machine()} by", "", f"    {command}", "",
             f"CIFAR-10, train_fraction {args.fraction:g} (class-balanced; A2x twice it), ResNet-18 with CIFAR stem, the CIFAR "
             f"generator configs' SimCLR recipe shortened to {epochs} epochs (chosen: {why}), {gan}, joint from the first "
             f"epoch, bf16, channels_last, views on the device from the images kept there, seed 0; kNN (k=200, T=0.07) and "
             f"linear accuracy on the test images after training. The whole command took {minutes:.1f} min.", "", *generator_table(rows)]
    write_section(RESULTS, GEN_BEGIN, GEN_END, lines)


def generator_suite(args: argparse.Namespace, root: Path | None, start: float) -> None:
    from hard_sample_gen import pretrain_gan

    arms = [a for a in GENERATOR_ARMS if a in args.arms]
    args.eval_every = 1  # no validation loop: each arm is evaluated once, after training
    if "Acm" in arms and not {"A", "C_latent"} <= set(arms):
        raise SystemExit(f"--arms {' '.join(args.arms)}: Acm is matched to C_latent's step time over A's; add A and C_latent")
    gan_ckpt, gan_minutes = None, None
    if any(GENERATOR_ARMS[a][3] for a in arms):
        gan_ckpt = Path(tempfile.mkdtemp(prefix="gpu_suite_gan_")) / "gan.ckpt"
        gan_data = data_args(root, args) + [f"--data.train_fraction={args.fraction:g}", f"--data.num_workers={args.workers}"]
        gan_minutes = pretrain_gan(gan_data, args.gan_epochs, 0, gan_ckpt, config="gan_pretrain_cifar10",
                                   more=(*trainer_args(args), *(TINY_GAN if args.tiny else [])))
        print(f"GAN pre-trained {args.gan_epochs} epochs in {gan_minutes:.1f} min", flush=True)
    if args.epochs is None:
        # the first probe also times an evaluation (kNN + linear), which every arm ends with
        probes = {a: run_generator_arm(a, args, root, gan_ckpt, max_steps=args.probe_steps + 4, evaluate_model=i == 0)
                  for i, a in enumerate(a for a in arms if a != "Acm")}
        eval_s = next(iter(probes.values()))["eval_seconds"]
        costs = dict(probes)
        if "Acm" in arms:  # A's batches, C_latent's time per epoch
            costs["Acm"] = {**probes["A"], "steps_per_epoch": probes["A"]["steps_per_epoch"] * probes["C_latent"]["step_seconds"]
                            / probes["A"]["step_seconds"]}
        epochs, why = choose_epochs(costs, args.budget_minutes * 60, time.perf_counter() - start, 10**9, eval_s)
        print(f"training {epochs} epochs per arm: {why}", flush=True)
    else:
        epochs, why = args.epochs, "given by --epochs"
    rows = {}
    for arm in arms:
        e = acm_epochs(epochs, rows) if arm == "Acm" else epochs  # A and C_latent have run
        rows[arm] = run_generator_arm(arm, args, root, gan_ckpt, epochs=e)
        r = rows[arm]
        print(f"{arm}: {e} epochs, kNN {100 * r['knn']:.1f} %, linear {100 * r['linear']:.1f} %, {r['images_per_s']:.0f} img/s",
              flush=True)
    minutes = (time.perf_counter() - start) / 60
    print(f"done in {minutes:.1f} min")
    if not args.no_write:
        write_generator_results(rows, epochs, why, ("python benchmarks/gpu_suite.py " + " ".join(sys.argv[1:])).strip(),
                                minutes, gan_minutes, args)
    else:
        print("\n".join(generator_table(rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=list(SUITES), default="contrastive")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="the whole command, probes included")
    parser.add_argument("--tiny", action="store_true", help="resnet_tiny, 32-bit, 2 %% of the images: any machine, CI")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (32 with --tiny)")
    parser.add_argument("--workers", type=int, default=4, help="loader processes (decoding only: views are made on the device)")
    parser.add_argument("--eval-every", type=int, default=None, help="contrastive: epochs between kNN evaluations (default: E/4)")
    parser.add_argument("--probe-steps", type=int, default=None, help="timed steps per arm before E is chosen (default 25; 4 tiny)")
    parser.add_argument("--epochs", type=int, default=None, help="skip the choice: train this many epochs")
    parser.add_argument("--arms", nargs="+", default=None,
                        help=f"contrastive: {', '.join(SUITES['contrastive'])} (default all); generators: "
                             f"{', '.join(GENERATOR_ARMS)} (default {', '.join(GENERATOR_DEFAULT)})")
    parser.add_argument("--fraction", type=float, default=None, help="generators: the class-balanced training fraction "
                        "(default 0.2; with --tiny 0.02, or 0.5 of Shapes10's 1,000 images without the archive)")
    parser.add_argument("--gan-epochs", type=int, default=None, help="generators: GAN pre-training epochs (default 40; 1 tiny)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    args.arms = args.arms or (GENERATOR_DEFAULT if args.suite == "generators" else SUITES["contrastive"])
    bad = [a for a in args.arms if a not in SUITES[args.suite]]
    if bad:
        parser.error(f"--arms {' '.join(bad)}: not an arm of --suite {args.suite}; its arms: {', '.join(SUITES[args.suite])}")
    if args.fraction is not None and not 0 < args.fraction <= 0.5:
        parser.error(f"--fraction {args.fraction:g}: must be in (0, 0.5] (A2x trains on twice it)")
    if args.gan_epochs is None:
        args.gan_epochs = 1 if args.tiny else 40
    if args.gan_epochs < 1:
        parser.error(f"--gan-epochs {args.gan_epochs}: must be at least 1")
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
    if args.fraction is None:  # --tiny: 1,000 CIFAR-10 images, or 500 of Shapes10's 1,000
        args.fraction = 0.2 if not args.tiny else 0.02 if root is not None else 0.5
    (generator_suite if args.suite == "generators" else contrastive_suite)(args, root, start)


if __name__ == "__main__":
    main()
