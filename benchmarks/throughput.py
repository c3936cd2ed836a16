"""Training throughput (images/s, data loading included) of each method on this machine.

    python benchmarks/throughput.py                       # embedded dataset, + real CIFAR-10 if present
    python benchmarks/throughput.py --methods SimCLR --steps 20 --backbone resnet18

Each method trains ``--steps`` timed steps after 3 warm-up steps at the same backbone, batch and
image size, through the real datamodule (augmentations on ``--workers`` loader processes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StepTimer, cifar10_root, machine  # noqa: E402

from hardcl_lightning import methods  # noqa: E402
from hardcl_lightning.data import ImageFolderDataModule, ShapesDataModule  # noqa: E402

SMALL_HEADS = {
    "SimCLR": dict(proj_hidden_dim=512, proj_output_dim=128),
    "MoCoV2": dict(proj_hidden_dim=512, proj_output_dim=128, queue_size=4096),
    "MoCHi": dict(proj_hidden_dim=512, proj_output_dim=128, queue_size=4096, mixing=(256, 256, 128), mix_start_epoch=0),
    "SimSiam": dict(proj_hidden_dim=512, proj_output_dim=512, proj_num_layers=2, pred_hidden_dim=128),
    "BYOL": dict(proj_hidden_dim=512, proj_output_dim=128),
    "DINO": dict(proj_hidden_dim=512, bottleneck_dim=128, num_prototypes=4096),
}
SMALL_HEADS.update({f"HVS{k}": v for k, v in SMALL_HEADS.items() if k != "MoCHi"})


def measure(method: str, make_dm, backbone: str, batch: int, steps: int, precision: str) -> float:
    L.seed_everything(0, verbose=False)
    model = getattr(methods, method)(backbone=backbone, cifar_stem=True, batch_size=batch, **SMALL_HEADS.get(method, {}))
    dm = make_dm(model.num_views)  # HVS methods take N candidate views
    timer = StepTimer(warmup=3)
    trainer = L.Trainer(
        accelerator="auto", devices=1, max_steps=steps + 3, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer], precision=precision,
    )
    trainer.fit(model, dm)
    return batch / timer.seconds_per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(SMALL_HEADS), choices=list(SMALL_HEADS))
    ap.add_argument("--backbone", default="resnet_tiny")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="32-true")
    args = ap.parse_args()

    common = dict(batch_size=args.batch_size, num_workers=args.workers, image_size=32, blur_prob=0.0)
    datasets = {"Shapes10 (embedded)": lambda v: ShapesDataModule(num_train=5000, num_val=100, num_views=v, **common)}
    root = cifar10_root()
    if root is not None:
        datasets["CIFAR-10 (real, JPEG)"] = lambda v: ImageFolderDataModule(
            train_dir=str(root / "train"), val_dir=None, eval_resize_ratio=1.0, num_views=v, **common
        )
    print(f"# throughput: {machine()}; backbone {args.backbone}, batch {args.batch_size}, 32 px, "
          f"{args.steps} timed steps, {args.workers} loader workers, precision {args.precision}")
    print(f"| method | dataset | images/s |\n|---|---|---|")
    for name, make_dm in datasets.items():
        for method in args.methods:
            ips = measure(method, make_dm, args.backbone, args.batch_size, args.steps, args.precision)
            print(f"| {method} | {name} | {ips:.1f} |", flush=True)


if __name__ == "__main__":
    main()
