"""Short CPU runs of every base method on the embedded dataset: kNN before training vs after,
and what the backbone's features encode besides the class.

    python benchmarks/short_runs.py                         # all methods, 6 epochs each
    python benchmarks/short_runs.py --methods dino --epochs 3
    python benchmarks/short_runs.py --methods simsiam --set data.init_args.color_jitter_strength=0.25
    python benchmarks/short_runs.py --methods hvs_simclr hvs_simsiam --epochs 3   # + HVS crop-IoU analysis

Each run is ``hardcl fit --config configs/tiny/<method>.yaml`` (a tiny ResNet on Shapes10, the
quickstart recipe with the method's own knobs) with ``--epochs`` and any ``--set`` overrides; the
kNN figures come from the ``OnlineKNN`` callback (k=200, T=0.07): the epoch-0 value (random init)
and the last epoch's.

Factor probe: Shapes10's class is the shape; colour, position and size vary independently of it
(``make_shapes_with_factors``). The same weighted kNN, with each factor as the label, says what
the features encode before and after training, e.g. whether a method learned shape or sharpened
the colour it could already see.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine  # noqa: E402

from hardcl_lightning.callbacks import OnlineKNN  # noqa: E402
from hardcl_lightning.callbacks.features import extract_features  # noqa: E402
from hardcl_lightning.callbacks.knn import weighted_knn_predict  # noqa: E402
from hardcl_lightning.cli import build_cli  # noqa: E402
from hardcl_lightning.data.procedural import FACTORS  # noqa: E402

METHODS = ["simclr", "mocov2", "simsiam", "byol", "dino"]
HVS_METHODS = [f"hvs_{m}" for m in METHODS]
PROBED = ("class", *FACTORS)


class FactorProbe(L.Callback):
    """kNN accuracy (OnlineKNN's protocol) of the backbone for the class and each nuisance factor,
    on the un-augmented validation images against the training bank, before and after training."""

    def __init__(self, k: int = 200, temperature: float = 0.07) -> None:
        self.k, self.temperature = k, temperature
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        dm = trainer.datamodule
        bank_f, bank_y = extract_features(pl_module, dm.bank_dataloader())
        val_f, val_y = extract_features(pl_module, dm.val_dataloader())
        bank_lab = {"class": bank_y, **dm.factors("train")}
        val_lab = {"class": val_y, **dm.factors("val")}
        out = {}
        for name in PROBED:
            yb, yq = bank_lab[name].to(bank_f.device), val_lab[name].to(val_f.device)
            num = int(max(yb.max(), yq.max())) + 1
            pred = weighted_knn_predict(bank_f, yb, val_f, num, self.k, self.temperature)
            out[name] = (pred == yq).float().mean().item()
        return out

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before = self.measure(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after = self.measure(trainer, pl_module)


def run(method: str, epochs: int, num_train: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cli = build_cli(
            ["--config", str(REPO / "configs" / "tiny" / f"{method}.yaml"), f"--trainer.max_epochs={epochs}",
             f"--trainer.default_root_dir={tmp}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
             f"--data.init_args.num_train={num_train}", *[f"--{o}" for o in overrides]],
            run=False,
        )
        probe = FactorProbe()
        cli.trainer.callbacks.append(probe)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        seconds = time.perf_counter() - t0
    knn = next(cb for cb in cli.trainer.callbacks if isinstance(cb, OnlineKNN))
    history = dict(knn.history)
    print(f"{method}: kNN per epoch " + " ".join(f"{e}:{100 * a:.1f}" for e, a in sorted(history.items())), flush=True)
    m = cli.trainer.logged_metrics
    iou = ""
    if "hard/hvs_iou_selected_epoch" in m:  # last epoch's mean crop IoU: selected pair vs a random candidate pair
        iou = f"{float(m['hard/hvs_iou_selected_epoch']):.3f} vs {float(m['hard/hvs_iou_random_epoch']):.3f}"
    loss = float(cli.trainer.callback_metrics.get("train/loss", torch.nan))  # the last step's
    return {"init": history[0], "last": history[max(history)], "best": knn.best_acc, "seconds": seconds, "iou": iou,
            "loss": loss, "before": probe.before, "after": probe.after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS + HVS_METHODS)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--num-train", type=int, default=10000)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every run, e.g. model.init_args.lr=0.01 (a leading -- is added)")
    args = ap.parse_args()
    for o in args.set:
        if "=" not in o:
            ap.error(f"--set takes KEY=VALUE pairs, got {o!r}")
    rows, probes = [], []
    for m in args.methods:
        r = run(m, args.epochs, args.num_train, args.set)
        rows.append(f"| {m} | {100 * r['init']:.1f} | {100 * r['last']:.1f} | {100 * r['best']:.1f} | "
                    f"{100 * (r['last'] - r['init']):+.1f} | {r['loss']:.3f} | {r['seconds'] / 60:.1f} | {r['iou']} |")
        probes.append(f"| {m} | " + " | ".join(f"{100 * r['before'][n]:.1f} -> {100 * r['after'][n]:.1f}" for n in PROBED) + " |")
        print(rows[-1], "\n", probes[-1], flush=True)
    print(f"\n# short runs: {machine()}; Shapes10 {args.num_train} train / 2000 val, resnet_tiny, {args.epochs} epochs, "
          f"configs/tiny/<method>.yaml{' + ' + ' '.join(args.set) if args.set else ''}")
    print("| method | kNN epoch 0 (%) | kNN last epoch (%) | kNN best (%) | last - epoch 0 | last train loss | minutes "
          "| HVS IoU selected vs random |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n# factor probe: kNN accuracy (%) for each label, before -> after training "
          "(chance: class 10, colours ~12, position 25, size 50)")
    print("| method | " + " | ".join(PROBED) + " |")
    print("|---|" + "---|" * len(PROBED))
    print("\n".join(probes))


if __name__ == "__main__":
    main()
