"""Feature extraction shared by the evaluation callbacks."""

from __future__ import annotations

from typing import Iterable

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from hardcl_lightning.distributed import gather_no_grad, rank, world_size


@torch.no_grad()
def extract_features(pl_module: L.LightningModule, loader: Iterable, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features of ``{"image", "label"}`` batches with the backbone in eval mode.

    The previous train/eval mode is restored afterwards (lightly's kNN ran on a backbone left in
    train mode, which makes BN use batch statistics and silently changes the numbers). With
    ``gather`` under DDP, rank r loads and embeds only images r, r + W, ... of a DataLoader's
    dataset (batches r, r + W, ... of any other iterable) and the results are gathered, so every
    image is read once, embedded once and appears once.
    """
    backbone = pl_module.backbone
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    shard, num_shards = (rank(), world_size()) if gather else (0, 1)
    if num_shards > 1 and isinstance(loader, DataLoader):  # this rank's images only: nothing else is read
        loader = DataLoader(
            Subset(loader.dataset, range(shard, len(loader.dataset), num_shards)),  # type: ignore[arg-type]
            batch_size=loader.batch_size, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
        )
        shard, num_shards = 0, 1
    try:
        for i, batch in enumerate(loader):
            if i % num_shards != shard:
                continue
            x = batch["image"].to(pl_module.device, non_blocking=True)
            feats.append(backbone(x).float())
            labels.append(batch["label"].to(pl_module.device))
    finally:
        backbone.train(was_training)
    if not feats:  # more ranks than batches: this rank contributes nothing
        dim = getattr(pl_module, "feature_dim", 1)
        feats, labels = [torch.zeros(0, dim, device=pl_module.device)], [torch.zeros(0, dtype=torch.long, device=pl_module.device)]
    f, y = torch.cat(feats), torch.cat(labels)
    if gather:
        f, y = gather_no_grad(f), gather_no_grad(y)
    return f, y
