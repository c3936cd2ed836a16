"""Short CPU runs of every base method on the embedded dataset: kNN before training vs after.

    python benchmarks/short_runs.py                         # all methods, 6 epochs each
    python benchmarks/short_runs.py --methods dino --epochs 3
    python benchmarks/short_runs.py --methods hvs_simclr hvs_simsiam --epochs 3   # + HVS crop-IoU analysis

Each run is ``hardcl fit --config configs/tiny/<method>.yaml`` (a tiny ResNet on Shapes10, the
quickstart recipe with the method's own knobs) with ``--epochs``; the figures come from the
``OnlineKNN`` callback (k=200, T=0.07): the epoch-0 value (random init) and the last epoch's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine  # noqa: E402

from hardcl_lightning.callbacks import OnlineKNN  # noqa: E402
from hardcl_lightning.cli import build_cli  # noqa: E402

METHODS = ["simclr", "mocov2", "simsiam", "byol", "dino"]
HVS_METHODS = [f"hvs_{m}" for m in METHODS]


def run(method: str, epochs: int, num_train: int) -> tuple[float, float, float, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cli = build_cli(
            ["fit", "--config", str(REPO / "configs" / "tiny" / f"{method}.yaml"), f"--trainer.max_epochs={epochs}",
             f"--trainer.default_root_dir={tmp}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
             f"--data.init_args.num_train={num_train}"]
        )
        seconds = time.perf_counter() - t0
    knn = next(cb for cb in cli.trainer.callbacks if isinstance(cb, OnlineKNN))
    history = dict(knn.history)
    print(f"{method}: kNN per epoch " + " ".join(f"{e}:{100 * a:.1f}" for e, a in sorted(history.items())), flush=True)
    m = cli.trainer.logged_metrics
    iou = ""
    if "hard/hvs_iou_selected_epoch" in m:  # last epoch's mean crop IoU: selected pair vs a random candidate pair
        iou = f"{float(m['hard/hvs_iou_selected_epoch']):.3f} vs {float(m['hard/hvs_iou_random_epoch']):.3f}"
    return history[0], history[max(history)], knn.best_acc, seconds, iou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS + HVS_METHODS)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--num-train", type=int, default=10000)
    args = ap.parse_args()
    rows = []
    for m in args.methods:
        init, last, best, secs, iou = run(m, args.epochs, args.num_train)
        rows.append(f"| {m} | {100 * init:.1f} | {100 * last:.1f} | {100 * best:.1f} | {100 * (last - init):+.1f} | {secs / 60:.1f} | {iou} |")
        print(rows[-1], flush=True)
    print(f"\n# short runs: {machine()}; Shapes10 {args.num_train} train / 2000 val, resnet_tiny, {args.epochs} epochs, "
          "configs/tiny/<method>.yaml")
    print("| method | kNN epoch 0 (%) | kNN last epoch (%) | kNN best (%) | last - epoch 0 | minutes | HVS IoU selected vs random |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
