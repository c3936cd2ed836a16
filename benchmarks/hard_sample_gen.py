"""The generator methods vs SimCLR, side by side, at equal epochs and data.

    python benchmarks/hard_sample_gen.py                                 # embedded dataset (+ CIFAR-10 when present)
    python benchmarks/hard_sample_gen.py --epochs 4 --fractions 0.2 --datasets shapes --methods hard_sample_gen

Each run is ``hardcl fit --config configs/tiny/<method>.yaml``: ``simclr`` and, on the same tiny
ResNet, SimCLR recipe and seed, ``hard_sample_gen`` (HardSampleCL: a jointly trained GAN),
``positive_pair`` (PositivePairCL: hard positive pairs) and ``hardgen_full`` (both: the
paper's combined framework), with ``--epochs`` and a class-balanced ``train_fraction``.
Reported per run: kNN accuracy (k=200, T=0.07) at epoch 0, last and best; the median seconds
per training batch and its ratio to SimCLR's; per epoch, the ratio of the main model's loss on
generated vs real views at equal batch size (``hard/gen_loss_ratio``: generated samples should
become harder relative to real ones) and the pair similarity, target vs achieved.

Real CIFAR-10 (``data/cifar10-jpg.tar.gz`` (or ``$HARDCL_CIFAR10_TAR``), ImageFolder inside) is used when present
at ``--cifar-fractions`` of its 50k training images (test set for kNN), else skipped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, StepTimer, cifar10_root, machine  # noqa: E402

from hardcl_lightning.callbacks import OnlineKNN  # noqa: E402
from hardcl_lightning.cli import build_cli  # noqa: E402


METHODS = {"hard_sample_gen": "HardSampleCL", "positive_pair": "PositivePairCL", "hardgen_full": "PositivePairCL + hard samples"}


class EpochMetrics(L.Callback):
    """Per-epoch values of a few logged metrics."""

    KEYS = ("hard/gen_loss_ratio_epoch", "hard/gen_loss_real_epoch", "hard/gen_loss_syn_epoch", "gan/d_real_epoch",
            "gan/d_fake_epoch", "hard/pair_sim_target_epoch", "hard/pair_sim_achieved_epoch")

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        self.rows.append({k: float(m[k]) for k in self.KEYS if k in m})


def run(method: str, epochs: int, fraction: float, data_args: list[str]) -> dict:
    timer, per_epoch = StepTimer(warmup=3), EpochMetrics()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cli = build_cli(
            ["--config", str(REPO / "configs" / "tiny" / f"{method}.yaml"), f"--trainer.max_epochs={epochs}",
             f"--trainer.default_root_dir={tmp}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
             *data_args, f"--data.init_args.train_fraction={fraction}"],
            run=False,
        )
        cli.trainer.callbacks.extend([timer, per_epoch])
        cli.trainer.fit(cli.model, cli.datamodule)
        minutes = (time.perf_counter() - t0) / 60
    knn = next(cb for cb in cli.trainer.callbacks if isinstance(cb, OnlineKNN))
    history = dict(knn.history)
    return {"init": history[0], "last": history[max(history)], "best": knn.best_acc, "spb": timer.seconds_per_step,
            "minutes": minutes, "epochs": per_epoch.rows, "train_images": len(cli.datamodule._train)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.2], help="train_fraction of Shapes10 (10k)")
    ap.add_argument("--cifar-fractions", type=float, nargs="+", default=[0.2], help="train_fraction of real CIFAR-10 (50k)")
    ap.add_argument("--datasets", nargs="+", default=["shapes", "cifar10"], choices=["shapes", "cifar10"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--num-train", type=int, default=10000, help="Shapes10 training images before train_fraction")
    args = ap.parse_args()

    settings: list[tuple[str, float, list[str]]] = []
    if "shapes" in args.datasets:
        settings += [("Shapes10", f, [f"--data.init_args.num_train={args.num_train}"]) for f in args.fractions]
    if "cifar10" in args.datasets:
        root = cifar10_root()
        if root is not None:
            cifar = ["--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={root / 'train'}",
                     f"--data.val_dir={root / 'test'}", "--data.image_size=32", "--data.crop_scale=[0.2, 1.0]",
                     "--data.color_jitter_strength=1.0"]
            settings += [("CIFAR-10", f, cifar) for f in args.cifar_fractions]

    rows, trends = [], []
    for dataset, fraction, data_args in settings:
        base = run("simclr", args.epochs, fraction, data_args)
        results = [("SimCLR", base)] + [(METHODS[m], run(m, args.epochs, fraction, data_args)) for m in args.methods]
        for name, r in results:
            rows.append(f"| {dataset} | {fraction:g} ({r['train_images']}) | {name} | {100 * r['init']:.1f} | {100 * r['last']:.1f} | "
                        f"{100 * r['best']:.1f} | {1000 * r['spb']:.0f} | {r['spb'] / base['spb']:.2f} | {r['minutes']:.1f} |")
            print(rows[-1], flush=True)
            if name == "SimCLR":
                continue
            per = lambda key, fmt: " ".join(fmt.format(e[key]) for e in r["epochs"] if key in e)  # noqa: E731
            ratios = per("hard/gen_loss_ratio_epoch", "{:.3f}") or "-"
            target, achieved = per("hard/pair_sim_target_epoch", "{:.2f}"), per("hard/pair_sim_achieved_epoch", "{:.2f}")
            sims = f"{target} / {achieved}" if target else "-"
            d = " ".join(f"{e['gan/d_real_epoch']:+.2f}/{e['gan/d_fake_epoch']:+.2f}" for e in r["epochs"] if "gan/d_real_epoch" in e)
            trends.append(f"| {dataset} | {fraction:g} | {name} | {ratios} | {sims} | {d} |")
            print(trends[-1], flush=True)

    print(f"\n# generator methods vs SimCLR: {machine()}; resnet_tiny, {args.epochs} epochs, configs/tiny/<method>.yaml")
    print("| data | train_fraction (images) | method | kNN epoch 0 (%) | kNN last (%) | kNN best (%) | ms / batch | step-time ratio | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| data | train_fraction | method | generated/real loss ratio per epoch (equal batch size) | "
          "pair similarity per epoch: target / achieved | D(real)/D(fake) per epoch |")
    print("|---|---|---|---|---|---|")
    print("\n".join(trends))


if __name__ == "__main__":
    main()
