"""MoCo v2 (Chen et al. 2020, "Improved baselines"): momentum key encoder, a queue of negatives."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hardcl_lightning.batchnorm import local_batchnorm
from hardcl_lightning.distributed import gather_no_grad, shuffled_batch_forward
from hardcl_lightning.heads import MLPHead
from hardcl_lightning.losses import info_nce
from hardcl_lightning.methods.base import MomentumMethod, ViewOutputs


class MoCoV2(MomentumMethod):
    """MoCo v2 with the symmetric loss (both views serve as query and key, as in solo-learn's
    and MoCo v3's recipes), an MLP head and a fixed-size FIFO queue of past keys.

    Args:
        proj_hidden_dim: projector hidden width.
        proj_output_dim: key/query dimension.
        temperature: InfoNCE temperature (0.2 in MoCo v2).
        queue_size: number of negatives K; must be a multiple of the global batch.
        tau_plus: > 0 switches to the debiased loss (DCL, Chuang et al. 2020) with this positive prior.
        hardness_beta: > 0 weights negatives by hardness (HCL, Robinson et al. 2021).
        view_forward: ``per_view``: each view's queries in a forward of their own, as
            ``facebookresearch/moco`` computes them (the keys: see ``key_bn``).
        key_bn: ``shuffle``: the key encoder's BatchNorm statistics come from a random sub-batch
            (shuffle-BN, MoCo sec. 3.3: across ranks under DDP, else ``shuffle_bn_groups``
            sub-batches), so a key is not normalised together with its own query; ``batch``:
            the key batch's own statistics (solo-learn). With ``sync_batchnorm`` the key encoder
            keeps per-process statistics under ``shuffle`` (``on_fit_start`` turns its
            SyncBatchNorm back into local BatchNorm; global statistics would undo the shuffle),
            the query encoder's are global.
        shuffle_bn_groups: sub-batches of shuffle-BN on one process (8: the paper's GPUs), each
            with its own BatchNorm statistics in one forward of the whole key batch.
        exclude_own_keys: keys of the query's own image (earlier epochs' keys in the queue, by
            dataset index) are not negatives, in the loss nor among MoCHi's hardest: with a
            queue of more than one epoch they would be near-duplicates of the positive.

    Defaults follow the paper: SGD lr 0.03 x batch/256, cosine schedule without warm-up, EMA
    momentum 0.999, K = 65536.
    """

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        temperature: float = 0.2,
        queue_size: int = 65536,
        tau_plus: float = 0.0,
        hardness_beta: float = 0.0,
        key_bn: str = "shuffle",
        shuffle_bn_groups: int = 8,
        exclude_own_keys: bool = True,
        lr: float = 0.03,
        warmup_epochs: float = 0.0,
        ema_momentum: float = 0.999,
        ema_momentum_end: float = 0.999,
        view_forward: str = "per_view",
        **kwargs: Any,
    ) -> None:
        super().__init__(view_forward=view_forward, lr=lr, warmup_epochs=warmup_epochs, ema_momentum=ema_momentum, ema_momentum_end=ema_momentum_end, **kwargs)
        self.save_hyperparameters()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if key_bn not in ("shuffle", "batch"):
            raise ValueError(f"key_bn must be 'shuffle' or 'batch', got {key_bn!r}")
        if shuffle_bn_groups < 1:
            raise ValueError(f"shuffle_bn_groups must be >= 1, got {shuffle_bn_groups}")
        self.key_bn, self.shuffle_bn_groups, self.exclude_own_keys = key_bn, shuffle_bn_groups, exclude_own_keys
        self.temperature, self.queue_size = temperature, queue_size
        self.tau_plus, self.hardness_beta = tau_plus, hardness_beta
        self.projector = MLPHead(self.feature_dim, proj_hidden_dim, proj_output_dim, num_layers=2, batch_norm=False)
        self.momentum_backbone = self.make_target(self.backbone)
        self.momentum_projector = self.make_target(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_output_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # the dataset index of each queued key (-1: the random initial entries, or no index given)
        self.register_buffer("queue_index", torch.full((queue_size,), -1, dtype=torch.long))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints from before ``queue_index`` existed: their keys count as of unknown images."""
        state = checkpoint.get("state_dict", {})
        if "queue" in state and "queue_index" not in state:
            state["queue_index"] = torch.full((state["queue"].shape[0],), -1, dtype=torch.long)
        super().on_load_checkpoint(checkpoint)

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def learnable_modules(self) -> dict[str, nn.Module]:
        return {**super().learnable_modules(), "projector": self.projector}

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.key_bn == "shuffle":
            self.use_local_key_batchnorm()
        global_batch = self.batch_size * self.trainer.world_size
        if self.queue_size % global_batch:
            raise ValueError(
                f"queue_size {self.queue_size} is not a multiple of the global batch {global_batch} "
                f"(batch_size {self.batch_size} x {self.trainer.world_size} devices); choose a multiple of {global_batch}"
            )

    def use_local_key_batchnorm(self) -> None:
        """Per-process BatchNorm in the key encoder (``facebookresearch/moco`` has per-GPU
        BatchNorm everywhere): each rank normalises its slice of the shuffled global batch.
        Undoes Lightning's ``sync_batchnorm`` there; a no-op without it."""
        self.momentum_backbone = local_batchnorm(self.momentum_backbone)
        self.momentum_projector = local_batchnorm(self.momentum_projector)

    target_keys = ("k",)

    def embed_online(self, x: torch.Tensor) -> ViewOutputs:
        feats = self.backbone(x)
        return {"feats": feats, "q": self.projector(feats)}

    def key_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.momentum_projector(self.momentum_backbone(x)), dim=1)

    def embed_target(self, x: torch.Tensor) -> ViewOutputs:
        if self.key_bn == "shuffle":
            return {"k": shuffled_batch_forward(self.key_encoder, x, self.shuffle_bn_groups,
                                                modules=(self.momentum_backbone, self.momentum_projector))}
        return {"k": self.key_encoder(x)}

    def sample_info(self, batch: dict[str, Any]) -> ViewOutputs:
        return {"index": batch["index"]} if self.exclude_own_keys and "index" in batch else {}

    def own_key_mask(self, out: ViewOutputs) -> torch.Tensor | None:
        """[B, K] True where a queued key is of the query's own image (None: nothing to exclude)."""
        if "index" not in out:
            return None
        return out["index"].to(self.queue_index.device).unsqueeze(1) == self.queue_index.unsqueeze(0)

    def query_loss(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample InfoNCE (or DCL/HCL) of one query direction against the queue, without the
        queue entries ``exclude`` [B, K] marks."""
        return info_nce(query, key, queue, self.temperature, reduction="none", tau_plus=self.tau_plus,
                        hardness_beta=self.hardness_beta, negative_mask=exclude)

    def pair_loss(self, out_a: ViewOutputs, out_b: ViewOutputs) -> torch.Tensor:
        # no copy: the queue carries no gradient and the loss saves its own normalised copy, so
        # enqueueing before backward cannot change what backward reads
        queue, exclude = self.queue, self.own_key_mask(out_a)
        return 0.5 * (self.query_loss(out_a["q"], out_b["k"], queue, exclude)
                      + self.query_loss(out_b["q"], out_a["k"], queue, exclude))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Replace the oldest entries with this step's keys (and their dataset indices) from every
        rank (FIFO ring buffer)."""
        keys = gather_no_grad(keys)
        index = torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device) if index is None \
            else gather_no_grad(index.to(keys.device).long())
        n = keys.shape[0]
        if n > self.queue_size:
            raise ValueError(f"a step's {n} keys do not fit in queue_size {self.queue_size}")
        # the pointer stays on the device: reading it on the host would wait for every queued kernel
        idx = (torch.arange(n, device=self.queue_ptr.device) + self.queue_ptr) % self.queue_size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_index[idx] = index.to(self.queue_index.device)
        self.queue_ptr.add_(n).remainder_(self.queue_size)

    def after_training_loss(self, outs: Sequence[ViewOutputs]) -> None:
        self.enqueue(outs[0]["k"], outs[0].get("index"))
