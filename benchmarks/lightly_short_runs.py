"""Our SimSiam vs one assembled from lightly's parts, side by side on the same Shapes10 views
(grayscale, as ``configs/tiny/simsiam.yaml``), backbone and recipe.

    python benchmarks/lightly_short_runs.py                 # 6 epochs, 10k images
    python benchmarks/lightly_short_runs.py --epochs 2 --num-train 2000

Ours: ``configs/tiny/simsiam.yaml`` with SGD lr 0.06, momentum 0.9, weight decay 5e-4, no warm-up
(the best recipe of the README's sweep), through ``short_runs.run``. lightly's: its
``SimSiamProjectionHead`` (3 layers, as lightly builds it), ``SimSiamPredictionHead`` and
``NegativeCosineSimilarity``, separate forward passes per view, in a plain PyTorch loop with the
same optimiser, cosine LR schedule and fixed predictor LR, on ``resnet_tiny`` and the views of the
same ``ShapesDataModule``. Both are evaluated with OnlineKNN's weighted kNN (k=200, T=0.07).
Needs ``pip install 'hardcl_lightning[bench]'`` (lightly); skips cleanly without it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from short_runs import run as run_ours  # noqa: E402

from hardcl_lightning.backbones import build_backbone  # noqa: E402
from hardcl_lightning.callbacks.features import extract_features  # noqa: E402
from hardcl_lightning.callbacks.knn import weighted_knn_predict  # noqa: E402
from hardcl_lightning.data import ShapesDataModule  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY = 0.06, 0.9, 5e-4
OURS_SET = ["model.init_args.optimizer=sgd", f"model.init_args.lr={LR}", f"model.init_args.weight_decay={WEIGHT_DECAY}",
            "model.init_args.warmup_epochs=0"]


@torch.no_grad()
def knn_accuracy(backbone: torch.nn.Module, dm: ShapesDataModule) -> float:
    """OnlineKNN's evaluation of a bare backbone (``extract_features`` wants a module with ``.backbone``)."""
    holder = SimpleNamespace(backbone=backbone, device=torch.device("cpu"), feature_dim=None)
    fb, yb = extract_features(holder, dm.bank_dataloader(), gather=False)
    fq, yq = extract_features(holder, dm.val_dataloader(), gather=False)
    return (weighted_knn_predict(fb, yb, fq, dm.num_classes, 200, 0.07) == yq).float().mean().item()


def run_lightly(epochs: int, num_train: int) -> dict:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

    torch.manual_seed(0)
    # the data options of configs/tiny/simsiam.yaml
    dm = ShapesDataModule(num_train=num_train, num_val=2000, batch_size=128, num_workers=2, image_size=32, grayscale=True,
                          augmentation="simclr", crop_scale=(0.4, 1.0), color_jitter_strength=0.5, blur_prob=0.0)
    dm.setup()
    backbone, dim = build_backbone("resnet_tiny", cifar_stem=True)
    projector, predictor = SimSiamProjectionHead(dim, 256, 256), SimSiamPredictionHead(256, 64, 256)
    criterion = NegativeCosineSimilarity()
    opt = torch.optim.SGD([{"params": [*backbone.parameters(), *projector.parameters()]},
                           {"params": predictor.parameters()}],  # fixed LR (SimSiam sec. 4.2)
                          lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    total = epochs * (num_train // 128)
    history = [knn_accuracy(backbone, dm)]
    print(f"lightly simsiam: epoch 0 kNN {100 * history[0]:.2f}%", flush=True)
    step, t0, loss = 0, time.perf_counter(), torch.tensor(float("nan"))
    for epoch in range(epochs):
        for batch in dm.train_dataloader():
            opt.param_groups[0]["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / total))
            x0, x1 = batch["views"]
            z0, z1 = projector(backbone(x0)), projector(backbone(x1))
            p0, p1 = predictor(z0), predictor(z1)
            loss = 0.5 * (criterion(p0, z1.detach()) + criterion(p1, z0.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        history.append(knn_accuracy(backbone, dm))
        print(f"lightly simsiam: epoch {epoch + 1} kNN {100 * history[-1]:.2f}% loss {loss.item():.3f}", flush=True)
    return {"history": history, "loss": loss.item(), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--num-train", type=int, default=10000)
    args = ap.parse_args()
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("[skip] lightly is not installed (pip install 'hardcl_lightning[bench]')")
        return
    ours = run_ours("simsiam", args.epochs, args.num_train, OURS_SET)
    theirs = run_lightly(args.epochs, args.num_train)
    print(f"\n# SimSiam ours vs lightly's parts: {machine()}; Shapes10 {args.num_train} train / 2000 val, resnet_tiny, "
          f"{args.epochs} epochs, SGD lr {LR} wd {WEIGHT_DECAY}, cosine, fixed predictor LR")
    print("| implementation | kNN epoch 0 (%) | kNN last epoch (%) | kNN best (%) | last train loss |")
    print("|---|---|---|---|---|")
    print(f"| hardcl_lightning | {100 * ours['init']:.1f} | {100 * ours['last']:.1f} | {100 * ours['best']:.1f} | {ours['loss']:.3f} |")
    h = theirs["history"]
    print(f"| lightly parts | {100 * h[0]:.1f} | {100 * h[-1]:.1f} | {100 * max(h[1:]):.1f} | {theirs['loss']:.3f} |")


if __name__ == "__main__":
    main()
