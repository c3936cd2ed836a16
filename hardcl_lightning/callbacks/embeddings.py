"""What ``hardcl predict`` leaves behind: the backbone's embeddings of a split, in files a user can
load, and a picture of them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from hardcl_lightning.callbacks.image_grid import log_image
from hardcl_lightning.distributed import gather_no_grad
from hardcl_lightning.runs import run_directory


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two principal components of the rows of ``x`` [N, D] and their share of the variance."""
    x = x.double() - x.double().mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x / max(1, x.shape[0] - 1))  # ascending
    top = evecs[:, -2:].flip(1)
    share = evals[-2:].flip(0) / evals.sum().clamp(min=1e-12)
    return (x @ top).float(), share.float()


def scatter_png(points: np.ndarray, labels: np.ndarray, title: str, class_names: list[str] | None = None) -> bytes:
    """A 2-D scatter, coloured by label (-1: unlabeled, grey), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    unlabeled = labels < 0
    if unlabeled.any():
        ax.scatter(points[unlabeled, 0], points[unlabeled, 1], s=3, c="0.6", alpha=0.5, label="unlabeled")
    classes = np.unique(labels[~unlabeled])
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        keep = labels == c
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(points[keep, 0], points[keep, 1], s=3, color=cmap(i % cmap.N), alpha=0.7, label=name)
    if 0 < len(classes) <= 20 or unlabeled.any():
        ax.legend(markerscale=4, fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class EmbeddingWriter(L.Callback):
    """Collects ``predict_step``'s backbone features and writes them once prediction ends.

    Files in ``output_dir`` (default: ``predictions/`` in the run's directory; ``hardcl predict``
    sets it to the checkpoint's run directory):
    ``embeddings.pt`` (a dict: ``embeddings`` [N, D] float32, ``labels`` [N] (-1 = no label),
    ``indices`` [N] (positions in the split), ``paths`` (the image files, or None), ``split``,
    ``checkpoint``), the same as ``embeddings.npy`` / ``labels.npy`` / ``paths.txt`` for numpy
    users, ``embeddings_pca.png`` (the first two principal components, coloured by label) and,
    when the optional ``umap-learn`` package is installed, ``embeddings_umap.png``. The plots
    also go to the logger when there is one that takes images (``hardcl predict`` runs without). Under DDP every rank's share is gathered, the
    sampler's padding dropped, and rank 0 writes. The ``hardcl predict`` command adds one.

    Args:
        output_dir: where to write; None is ``<run directory>/predictions``.
        max_plot_points: plot at most this many points (a fixed random subset); the files keep all.
    """

    def __init__(self, output_dir: str | None = None, max_plot_points: int = 20000) -> None:
        super().__init__()
        if max_plot_points < 1:
            raise ValueError(f"max_plot_points must be >= 1, got {max_plot_points}")
        self.output_dir, self.max_plot_points = output_dir, max_plot_points
        self.written: dict[str, Path] = {}
        self._feats: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._indices: list[torch.Tensor] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._feats, self._labels, self._indices = [], [], []

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "feats" not in outputs:
            raise TypeError(f"EmbeddingWriter needs predict_step to return a dict with 'feats', got {type(outputs).__name__}")
        n = outputs["feats"].shape[0]
        self._feats.append(outputs["feats"].detach().float())
        self._labels.append(outputs.get("labels", torch.full((n,), -1, device=outputs["feats"].device)).long())
        self._indices.append(outputs.get("index", torch.full((n,), -1, device=outputs["feats"].device)).long())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        feats = gather_no_grad(torch.cat(self._feats)).cpu()
        labels = gather_no_grad(torch.cat(self._labels)).cpu()
        indices = gather_no_grad(torch.cat(self._indices)).cpu()
        self._feats, self._labels, self._indices = [], [], []
        directory = Path(self.output_dir) if self.output_dir else run_directory(trainer)  # a collective: every rank
        if not trainer.is_global_zero:
            return
        if (indices >= 0).all():  # in split order, each image once (DistributedSampler pads with repeats)
            order = torch.argsort(indices, stable=True)
            first = torch.ones(order.numel(), dtype=torch.bool)
            first[1:] = indices[order][1:] != indices[order][:-1]
            feats, labels, indices = feats[order][first], labels[order][first], indices[order][first]
        dm = trainer.datamodule
        split = dm.resolved_predict_split() if hasattr(dm, "resolved_predict_split") else None
        all_paths = dm.paths(split) if split is not None and hasattr(dm, "paths") else None
        paths = [all_paths[i] for i in indices.tolist()] if all_paths is not None and (indices >= 0).all() else None
        classes = _class_names(dm, split)
        if directory is None:
            directory = Path(trainer.default_root_dir)
        if not self.output_dir:
            directory = directory / "predictions"
        directory.mkdir(parents=True, exist_ok=True)
        record = {"embeddings": feats, "labels": labels, "indices": indices, "paths": paths, "split": split,
                  "classes": classes, "checkpoint": trainer.ckpt_path}
        torch.save(record, directory / "embeddings.pt")
        np.save(directory / "embeddings.npy", feats.numpy())
        np.save(directory / "labels.npy", labels.numpy())
        self.written = {"pt": directory / "embeddings.pt", "npy": directory / "embeddings.npy", "labels": directory / "labels.npy"}
        if paths is not None:
            (directory / "paths.txt").write_text("\n".join(paths) + "\n")
            self.written["paths"] = directory / "paths.txt"
        (directory / "embeddings.json").write_text(json.dumps(
            {"count": int(feats.shape[0]), "dim": int(feats.shape[1]), "split": split, "classes": classes,
             "checkpoint": trainer.ckpt_path}, indent=2))
        self._plots(trainer, directory, feats, labels, classes)
        rank_zero_info(f"[predict] {feats.shape[0]} embeddings (dim {feats.shape[1]}, split {split}) written to {directory}")

    def _plots(self, trainer: L.Trainer, directory: Path, feats: torch.Tensor, labels: torch.Tensor, classes: list[str] | None) -> None:
        from PIL import Image

        if feats.shape[0] > self.max_plot_points:
            keep = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(0))[: self.max_plot_points]
            feats, labels = feats[keep], labels[keep]
        points, share = pca_2d(feats)
        plots = {"pca": (points.numpy(), f"PCA of {feats.shape[0]} embeddings (PC1 {100 * share[0]:.1f} %, PC2 {100 * share[1]:.1f} % of the variance)")}
        try:
            import umap  # optional: pip install umap-learn
        except ImportError:
            umap = None
        if umap is not None and feats.shape[0] > 15:
            plots["umap"] = (umap.UMAP(random_state=0).fit_transform(feats.numpy()), f"UMAP of {feats.shape[0]} embeddings")
        for name, (xy, title) in plots.items():
            png = scatter_png(xy, labels.numpy(), title, classes)
            path = directory / f"embeddings_{name}.png"
            path.write_bytes(png)
            self.written[name] = path
            image = torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB"))).permute(2, 0, 1).float() / 255
            log_image(trainer, f"predict/embeddings_{name}", image)


def _class_names(dm: Any, split: str | None) -> list[str] | None:
    """The split's class names (ImageFolder trees, torchvision datasets), or None."""
    from torch.utils.data import Subset

    base = getattr(dm, "_val" if split == "val" else "_train", None) if split is not None else None
    while isinstance(base, Subset):
        base = base.dataset
    names = getattr(base, "classes", None)
    return list(names) if names else None
