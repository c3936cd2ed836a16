"""Feature extraction shared by the evaluation callbacks."""

from __future__ import annotations

from typing import Iterable

import lightning as L
import torch

from hardcl_lightning.distributed import gather_no_grad, rank, world_size


@torch.no_grad()
def extract_features(pl_module: L.LightningModule, loader: Iterable, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features of ``{"image", "label"}`` batches with the backbone in eval mode.

    The previous train/eval mode is restored afterwards (lightly's kNN ran on a backbone left in
    train mode, which makes BN use batch statistics and silently changes the numbers). With
    ``gather`` under DDP, rank r embeds batches r, r + W, ... of the (unsharded) loader and the
    results are gathered, so every image is embedded once and appears once.
    """
    backbone = pl_module.backbone
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        shard, num_shards = (rank(), world_size()) if gather else (0, 1)
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
