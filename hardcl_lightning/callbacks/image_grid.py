"""Image grids of what the hard-sample sources produce: HVS candidates with the selected pair, generated samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision

from hardcl_lightning.runs import run_directory


def _to_display(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1] (views are normalised with dataset statistics)."""
    lo = x.amin(dim=(-3, -2, -1), keepdim=True)
    hi = x.amax(dim=(-3, -2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-6)


def _frame(x: torch.Tensor, color: tuple[float, float, float], width: int = 2) -> torch.Tensor:
    x = x.clone()
    c = torch.tensor(color, dtype=x.dtype).view(3, 1, 1)
    x[:, :width, :] = c
    x[:, -width:, :] = c
    x[:, :, :width] = c
    x[:, :, -width:] = c
    return x


class HVSImageGrid(L.Callback):
    """Once per epoch: a grid with one row per image, its N candidate views, the selected pair framed.

    Written to the logger when it takes images (TensorBoard ``add_image``, Weights & Biases
    ``log_image``), and as ``hvs_grid_epoch<E>.png`` in the run's directory (none under ``fast_dev_run``).

    Args:
        num_images: rows in the grid.
    """

    def __init__(self, num_images: int = 8) -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.saved: list[Path] = []

    def make_grid(self, candidates: list[torch.Tensor], index_a: torch.Tensor, index_b: torch.Tensor) -> torch.Tensor:
        k = min(self.num_images, candidates[0].shape[0])
        tiles = []
        for row in range(k):
            for v, view in enumerate(candidates):
                img = _to_display(view[row].detach().float().cpu())
                if v in (int(index_a[row]), int(index_b[row])):
                    img = _frame(img, (1.0, 0.1, 0.1))
                tiles.append(img)
        return torchvision.utils.make_grid(torch.stack(tiles), nrow=len(candidates), padding=2, pad_value=1.0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        selection = getattr(pl_module, "last_selection", None)
        if batch_idx != 0 or not selection:
            return
        out_dir = run_directory(trainer)  # on every rank: it is a collective under DDP
        if not trainer.is_global_zero:
            return
        n = pl_module.num_views
        grid = self.make_grid(list(batch["views"][:n]), selection["index_a"], selection["index_b"])
        _write_grid(trainer, out_dir, grid, f"hvs_grid_epoch{trainer.current_epoch}.png", "hard/hvs_candidates", self.saved)


class GeneratedImageGrid(L.Callback):
    """Once per epoch: a grid of generated samples from a fixed set of latents, so epochs compare.

    For any module with a ``gan`` (``GANPretrain``, the joint methods); for the positive-pair
    methods each latent gives its pair side by side (``G_a(z)``, ``G_b(z)``). The generators run
    in train mode, as in training, without changing their BatchNorm running statistics. Written as
    ``generated_epoch<E>.png`` in the run's directory (none under ``fast_dev_run``) and to the logger
    when it takes images.

    Args:
        num_images: samples in the grid.
        seed: seed of the fixed latents.
    """

    def __init__(self, num_images: int = 64, seed: int = 0) -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images, self.seed = num_images, seed
        self.saved: list[Path] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from hardcl_lightning.batchnorm import frozen_batchnorm_stats

        gan = getattr(pl_module, "gan", None)
        if gan is None:
            raise TypeError(f"GeneratedImageGrid needs a module with a 'gan' (GANPretrain or a joint method), got {type(pl_module).__name__}")
        out_dir = run_directory(trainer)  # on every rank: it is a collective under DDP
        if not trainer.is_global_zero:
            return
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.num_images, gan.latent_dim, generator=g).to(pl_module.device)
        second = getattr(pl_module, "generator_b", None)
        nrow = max(1, int(self.num_images**0.5))
        with torch.no_grad(), frozen_batchnorm_stats([gan.generator] + ([second] if second is not None else [])):
            images = gan.generator(z).float().cpu()
            if second is not None:  # pairs side by side
                images = torch.stack([images, second(z).float().cpu()], dim=1).flatten(0, 1)
                nrow = 2 * nrow
        grid = torchvision.utils.make_grid(images, nrow=nrow, padding=2, pad_value=1.0)
        _write_grid(trainer, out_dir, grid, f"generated_epoch{trainer.current_epoch}.png", "hard/generated_samples", self.saved)


def _write_grid(trainer: L.Trainer, out_dir: Path | None, grid: torch.Tensor, filename: str, key: str, saved: list[Path]) -> None:
    """PNG in the run's directory (when it has one), and the logger's image panel when it has one (rank 0 only)."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / filename
        torchvision.utils.save_image(grid, path)
        saved.append(path)
    log_image(trainer, key, grid)


def log_image(trainer: L.Trainer, key: str, image: torch.Tensor) -> None:
    """An image [3, H, W] in [0, 1] to every logger that takes images (TensorBoard, Weights & Biases)."""
    for logger in trainer.loggers:
        exp = getattr(logger, "experiment", None)
        if hasattr(exp, "add_image"):
            exp.add_image(key, image, global_step=trainer.global_step)
        elif hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[image], step=trainer.global_step)
