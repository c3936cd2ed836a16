"""Every method on real CIFAR-10 with one small CPU schedule, and lightly side by side -> RESULTS.md.

    python benchmarks/results.py                                  # all methods + lightly
    python benchmarks/results.py --methods simclr mochi --no-lightly --epochs 2 --fraction 0.1

Each method runs ``configs/tiny/<method>.yaml`` (tiny ResNet, its own augmentation recipe and
optimiser) on a class-balanced ``--fraction`` of CIFAR-10's 50k training images from
``data/cifar10-jpg.tar.gz`` (or ``$HARDCL_CIFAR10_TAR``) (ImageFolder inside; skipped cleanly when absent), for
``--epochs`` epochs, seed 0, each in its own process. Reported: weighted kNN top-1 (k=200,
T=0.07; bank = the training subset, queries = the 10k test images) before training and at the
end; linear top-1 (``linear_accuracy_on_features``: logistic regression on frozen, un-augmented
features of the same split); training images/s (per-device batch / median batch time); peak
resident memory of the training process (peak GPU memory when on a GPU).

The lightly comparison trains SimCLR and MoCo v2 written with lightly's heads, losses and
transforms (``lightly`` installed: ``pip install 'hardcl_lightning[bench]'``) on the same tiny
ResNet, batch, data subset, epochs, optimiser and schedule as ``configs/tiny/{simclr,mocov2}``,
and evaluates both with the same kNN and linear protocol.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, StepTimer, cifar10_root, machine, write_section  # noqa: E402

METHODS = ["simclr", "mocov2", "simsiam", "byol", "dino", "hvs_simclr", "hvs_mocov2", "hvs_simsiam", "hvs_byol", "hvs_dino",
           "mochi", "hard_sample_gen", "positive_pair", "hardgen_full"]
LIGHTLY = ["lightly_simclr", "lightly_mocov2"]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- results: begin -->", "<!-- results: end -->"


def data_args(root: Path, fraction: float) -> list[str]:
    return ["--data=hardcl_lightning.data.ImageFolderDataModule", f"--data.train_dir={root / 'train'}",
            f"--data.val_dir={root / 'test'}", "--data.image_size=32", f"--data.init_args.train_fraction={fraction}"]


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def evaluate(model: L.LightningModule, datamodule) -> dict[str, float]:
    """kNN (k=200, T=0.07) and linear top-1 of the backbone's frozen features."""
    from hardcl_lightning.callbacks.features import extract_features
    from hardcl_lightning.callbacks.knn import weighted_knn_predict
    from hardcl_lightning.evaluation import linear_accuracy_on_features

    bank_f, bank_y = extract_features(model, datamodule.bank_dataloader(), gather=False)
    val_f, val_y = extract_features(model, datamodule.val_dataloader(), gather=False)
    n = int(datamodule.num_classes)
    knn = (weighted_knn_predict(bank_f, bank_y, val_f, n, k=200, temperature=0.07) == val_y).float().mean().item()
    return {"knn": knn, "linear": linear_accuracy_on_features(bank_f, bank_y, val_f, val_y, n)}


def fit_and_evaluate(cli) -> tuple[dict[str, float], dict[str, float], float]:
    """kNN and linear accuracy of the CLI's model before training, after it, and the minutes of the fit."""
    dm = cli.datamodule
    dm.setup("fit")
    init = evaluate(cli.model, dm)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, dm)
    minutes = (time.perf_counter() - t0) / 60
    return init, evaluate(cli.model, dm), minutes


def run_method(method: str, epochs: int, fraction: float, root: Path) -> dict:
    from hardcl_lightning.cli import build_cli

    timer = StepTimer(warmup=3)
    with tempfile.TemporaryDirectory() as tmp:
        cli = build_cli(["--config", str(REPO / "configs" / "tiny" / f"{method}.yaml"), f"--trainer.max_epochs={epochs}",
                         f"--trainer.default_root_dir={tmp}", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                         "--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0",
                         *data_args(root, fraction)], run=False)
        cli.trainer.callbacks.append(timer)
        dm = cli.datamodule
        init, final, minutes = fit_and_evaluate(cli)
    return {"method": type(cli.model).__name__ + (" + hard samples" if method == "hardgen_full" else ""),
            "knn_init": init["knn"], "knn": final["knn"], "linear": final["linear"],
            "images_per_s": dm.batch_size / timer.seconds_per_step, "peak_mb": peak_memory_mb(), "minutes": minutes,
            "train_images": len(dm._train)}


def run_lightly(method: str, epochs: int, fraction: float, root: Path) -> dict:
    """SimCLR / MoCo v2 assembled from lightly's parts, with our recipe values (configs/tiny)."""
    import yaml
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead, SimCLRProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import SimCLRTransform
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from hardcl_lightning.backbones import build_backbone
    from hardcl_lightning.data import ImageFolderDataModule
    from hardcl_lightning.data.datamodules import class_balanced_subset
    from hardcl_lightning.optim import split_decay_groups, warmup_cosine

    name = method.removeprefix("lightly_")
    cfg = yaml.safe_load((REPO / "configs" / "tiny" / f"{name}.yaml").read_text())
    m, d = cfg["model"]["init_args"], cfg["data"]["init_args"]
    L.seed_everything(cfg.get("seed_everything", 0))

    class LightlyMethod(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.feature_dim = build_backbone(m["backbone"], cifar_stem=m["cifar_stem"])
            if name == "simclr":
                self.head = SimCLRProjectionHead(self.feature_dim, m["proj_hidden_dim"], m["proj_output_dim"])
                self.criterion = NTXentLoss(temperature=m["temperature"])
            else:
                self.head = MoCoProjectionHead(self.feature_dim, m["proj_hidden_dim"], m["proj_output_dim"])
                self.backbone_momentum, self.head_momentum = build_backbone(m["backbone"], cifar_stem=m["cifar_stem"])[0], \
                    MoCoProjectionHead(self.feature_dim, m["proj_hidden_dim"], m["proj_output_dim"])
                self.backbone_momentum.load_state_dict(self.backbone.state_dict())
                self.head_momentum.load_state_dict(self.head.state_dict())
                deactivate_requires_grad(self.backbone_momentum), deactivate_requires_grad(self.head_momentum)
                self.criterion = NTXentLoss(temperature=m["temperature"], memory_bank_size=(m["queue_size"], m["proj_output_dim"]))

        def training_step(self, batch, batch_idx):
            (x0, x1), _ = batch
            if name == "simclr":
                loss = self.criterion(self.head(self.backbone(x0)), self.head(self.backbone(x1)))
            else:  # lightly's MoCo recipe: momentum update, then queries vs keys and the memory bank
                update_momentum(self.backbone, self.backbone_momentum, m["ema_momentum"])
                update_momentum(self.head, self.head_momentum, m["ema_momentum"])
                q0, q1 = self.head(self.backbone(x0)), self.head(self.backbone(x1))
                with torch.no_grad():
                    k0, k1 = self.head_momentum(self.backbone_momentum(x0)), self.head_momentum(self.backbone_momentum(x1))
                loss = 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            groups = split_decay_groups(self.backbone) + split_decay_groups(self.head)
            opt = torch.optim.AdamW(groups, lr=m["lr"], weight_decay=m["weight_decay"])
            total = int(self.trainer.estimated_stepping_batches)
            warmup = int(m["warmup_epochs"] * total / epochs)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    jitter = d.get("color_jitter_strength", 1.0)
    transform = SimCLRTransform(input_size=32, cj_strength=jitter, min_scale=d["crop_scale"][0],
                                gaussian_blur=d.get("blur_prob", 0.5))
    train = ImageFolder(str(root / "train"), transform=transform)
    train = Subset(train, class_balanced_subset(train.targets, fraction, 0))
    loader = DataLoader(train, batch_size=d["batch_size"], shuffle=True, drop_last=True, num_workers=d["num_workers"],
                        persistent_workers=d["num_workers"] > 0)
    # evaluation data: our datamodule's un-augmented bank/test loaders, so both sides are measured alike
    dm = ImageFolderDataModule(train_dir=str(root / "train"), val_dir=str(root / "test"), image_size=32,
                               batch_size=d["batch_size"], num_workers=d["num_workers"], train_fraction=fraction)
    dm.setup("fit")
    model = LightlyMethod()
    init = evaluate(model, dm)
    timer = StepTimer(warmup=3)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(accelerator="cpu" if not torch.cuda.is_available() else "auto", devices=1, max_epochs=epochs,
                            precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            callbacks=[timer], default_root_dir=tmp)
        t0 = time.perf_counter()
        trainer.fit(model, loader)
        minutes = (time.perf_counter() - t0) / 60
    final = evaluate(model, dm)
    return {"method": f"lightly {'SimCLR' if name == 'simclr' else 'MoCo v2'}", "knn_init": init["knn"], "knn": final["knn"],
            "linear": final["linear"], "images_per_s": d["batch_size"] / timer.seconds_per_step, "peak_mb": peak_memory_mb(),
            "minutes": minutes, "train_images": len(train)}


def run_child(method: str, epochs: int, fraction: float, root: Path) -> dict | None:
    """One run in a fresh process (so its peak memory is its own); None when it failed."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--run-one", method, "--epochs", str(epochs), "--fraction", str(fraction),
               "--root", str(root), "--json", out.name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"[fail] {method}: exit {proc.returncode}\n{proc.stderr[-3000:]}", flush=True)
            return None
        return json.loads(Path(out.name).read_text())


def table(rows: list[dict], ref: dict[str, dict]) -> list[str]:
    lines = ["| method | config | kNN before (%) | kNN (%) | linear (%) | images/s | images/s vs SimCLR | peak memory (MiB) | minutes |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = ref.get("simclr")
    for r in rows:
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}" if base else "-"
        lines.append(f"| {r['method']} | `{r['config']}` | {100 * r['knn_init']:.1f} | {100 * r['knn']:.1f} | {100 * r['linear']:.1f} | "
                     f"{r['images_per_s']:.0f} | {ratio} | {r['peak_mb']:.0f} | {r['minutes']:.1f} |")
    return lines


def write_results(command: str, epochs: int, fraction: float, rows: list[dict], lightly_rows: list[dict], pending: list[str]) -> None:
    by_config = {r["config"]: r for r in rows}
    n = rows[0]["train_images"] if rows else "?"
    out = [
        "# Results on real CIFAR-10 (small CPU schedule)",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine()} by",
        "",
        f"    {command}",
        "",
        f"Tiny ResNet (`configs/tiny/<method>.yaml`: each method's own recipe and optimiser), {n} class-balanced training",
        f"images (`train_fraction` {fraction}), {epochs} epochs, seed 0, 32 px; kNN k=200 T=0.07 and linear (logistic",
        "regression on frozen un-augmented features) on the 10000 test images; images/s = batch / median batch time",
        "(data loading included); peak memory = resident set of the training process. A smoke-scale schedule:",
        "it ranks nothing at paper scale, it shows every method training on real images and what each costs.",
        "",
        *table(rows, by_config),
    ]
    if pending:
        out += ["", f"Not measured in this run: {', '.join(pending)}."]
    if lightly_rows:
        out += ["", "## Side by side with lightly", "",
                "The same SimCLR and MoCo v2 (tiny ResNet, projector widths, temperature, queue, EMA, AdamW and schedule,",
                "data subset, batch, epochs) assembled from lightly's heads, losses and transforms, evaluated with the same",
                "protocol. images/s ratio = ours / lightly's.", "",
                "| method | kNN before (%) | kNN (%) | linear (%) | images/s | ours / lightly images/s | peak memory (MiB) |",
                "|---|---|---|---|---|---|---|"]
        for lr in lightly_rows:
            ours = by_config.get(lr["config"].removeprefix("lightly_"))
            pair = [ours, lr] if ours else [lr]
            for r in pair:
                ratio = f"{ours['images_per_s'] / lr['images_per_s']:.2f}" if ours and r is ours else "-"
                label = f"hardcl {r['method']}" if r is ours else r["method"]
                out.append(f"| {label} | {100 * r['knn_init']:.1f} | {100 * r['knn']:.1f} | {100 * r['linear']:.1f} | "
                           f"{r['images_per_s']:.0f} | {ratio} | {r['peak_mb']:.0f} |")
    write_section(RESULTS, BEGIN, END, out)  # its own section: the other scripts' tables stay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--fraction", type=float, default=0.1, help="class-balanced train_fraction of CIFAR-10's 50k images")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--no-lightly", action="store_true", help="skip the side-by-side with lightly")
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:  # child process
        run = run_lightly if args.run_one in LIGHTLY else run_method
        result = run(args.run_one, args.epochs, args.fraction, Path(args.root))
        Path(args.json).write_text(json.dumps({**result, "config": args.run_one}))
        return
    root = cifar10_root()
    if root is None:
        return
    lightly = []
    if not args.no_lightly:
        try:
            import lightly  # noqa: F401

            lightly = LIGHTLY
        except ImportError:
            print("[skip] lightly is not installed (pip install 'hardcl_lightning[bench]'); no side-by-side")
    command = "python benchmarks/results.py " + " ".join(sys.argv[1:])
    todo = list(args.methods) + lightly
    rows: list[dict] = []
    lightly_rows: list[dict] = []
    for i, method in enumerate(todo):
        print(f"[{i + 1}/{len(todo)}] {method} ...", flush=True)
        r = run_child(method, args.epochs, args.fraction, root)
        if r is not None:
            (lightly_rows if method in LIGHTLY else rows).append(r)
            print(f"    kNN {100 * r['knn_init']:.1f} -> {100 * r['knn']:.1f}  linear {100 * r['linear']:.1f}  "
                  f"{r['images_per_s']:.0f} img/s  {r['peak_mb']:.0f} MiB  {r['minutes']:.1f} min", flush=True)
        done = {x["config"] for x in rows + lightly_rows}
        write_results(command, args.epochs, args.fraction, rows, lightly_rows, [m for m in todo if m not in done])
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
