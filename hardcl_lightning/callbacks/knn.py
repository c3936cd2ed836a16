"""Online weighted kNN evaluation (Wu et al. 2018, as used by DINO and solo-learn)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from hardcl_lightning.callbacks.features import extract_features
from hardcl_lightning.distributed import gather_no_grad


@torch.no_grad()
def weighted_knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted classes of ``query_feats`` by cosine-similarity kNN with weights exp(sim / T).

    Each of the k nearest bank entries votes for its class with weight exp(cos / T); the class
    with the largest total wins. Queries are processed in chunks so memory stays at
    ``chunk_size x len(bank)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, query_feats.shape[0], chunk_size):
        q = F.normalize(query_feats[start : start + chunk_size].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


class OnlineKNN(L.Callback):
    """kNN accuracy of the backbone at the end of every validation epoch, and once before training.

    Bank: the un-augmented training set (``datamodule.bank_dataloader()``), backbone in eval
    mode; queries: the validation set. Both are gathered across ranks. Logs ``knn/acc`` (this
    evaluation) and ``knn/best_acc``, and prints one line per epoch.

    Args:
        k: neighbours. temperature: vote temperature T. chunk_size: queries per similarity block.
        max_bank_size: use at most this many bank images (the first ones), None for all.
    """

    def __init__(self, k: int = 200, temperature: float = 0.07, chunk_size: int = 1024, max_bank_size: int | None = None) -> None:
        super().__init__()
        if k < 1 or temperature <= 0 or chunk_size < 1:
            raise ValueError(f"OnlineKNN needs k >= 1, temperature > 0, chunk_size >= 1; got {k=}, {temperature=}, {chunk_size=}")
        self.k, self.temperature, self.chunk_size, self.max_bank_size = k, temperature, chunk_size, max_bank_size
        self.best_acc = 0.0
        self.history: list[tuple[int, float]] = []
        self._val_feats: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self.enabled = True

    def _check_data(self, trainer: L.Trainer) -> bool:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "bank_dataloader") or not getattr(dm, "has_labels", True):
            if self.enabled:
                reason = getattr(dm, "evaluation_off_reason", "the datamodule has no labelled validation set or no bank_dataloader")
                rank_zero_info(f"OnlineKNN: off ({reason})")
            self.enabled = False
        return self.enabled

    def _bank(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        loader = trainer.datamodule.bank_dataloader()
        if self.max_bank_size is not None:
            from itertools import islice

            n_batches = -(-self.max_bank_size // loader.batch_size)
            loader = list(islice(loader, n_batches))
        return extract_features(pl_module, loader)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, query_feats: torch.Tensor, query_labels: torch.Tensor) -> float:
        bank_f, bank_y = self._bank(trainer, pl_module)
        num_classes = int(trainer.datamodule.num_classes)
        preds = weighted_knn_predict(bank_f, bank_y, query_feats, num_classes, self.k, self.temperature, self.chunk_size)
        return (preds == query_labels).float().mean().item()

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, acc: float, epoch: int, label: str) -> None:
        self.best_acc = max(self.best_acc, acc)
        self.history.append((epoch, acc))
        pl_module.log("knn/acc", acc, sync_dist=False, rank_zero_only=True)
        pl_module.log("knn/best_acc", self.best_acc, sync_dist=False, rank_zero_only=True)
        rank_zero_info(f"[kNN k={self.k} T={self.temperature}] {label}: acc {100 * acc:.2f}%  (best {100 * self.best_acc:.2f}%)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Epoch-0 baseline: evaluate the (random-init, when starting fresh) backbone before any step."""
        if trainer.global_step > 0 or trainer.sanity_checking or not self._check_data(trainer):
            return
        val = trainer.datamodule.val_dataloader()
        q_f, q_y = extract_features(pl_module, val)
        acc = self.evaluate(trainer, pl_module, q_f, q_y)
        self.best_acc = 0.0  # the init value is a baseline, not a result
        self.history.append((0, acc))
        for logger in trainer.loggers:
            logger.log_metrics({"knn/acc_init": acc}, step=0)
        rank_zero_info(f"[kNN k={self.k} T={self.temperature}] epoch 0 (before training): acc {100 * acc:.2f}%")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_feats, self._val_labels = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, dict) and "feats" in outputs:
            self._val_feats.append(outputs["feats"].detach().float())
            self._val_labels.append(outputs["labels"].detach())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._val_feats or not self._check_data(trainer):
            return
        q_f = gather_no_grad(torch.cat(self._val_feats))
        q_y = gather_no_grad(torch.cat(self._val_labels))
        self._val_feats, self._val_labels = [], []
        acc = self.evaluate(trainer, pl_module, q_f, q_y)
        self._record(trainer, pl_module, acc, trainer.current_epoch + 1, f"epoch {trainer.current_epoch + 1}")

    # ``hardcl test``: the same evaluation on the test loader, logged as knn/test_acc
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_validation_epoch_start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._val_feats or not self._check_data(trainer):
            return
        q_f, q_y = gather_no_grad(torch.cat(self._val_feats)), gather_no_grad(torch.cat(self._val_labels))
        self._val_feats, self._val_labels = [], []
        acc = self.evaluate(trainer, pl_module, q_f, q_y)
        pl_module.log("knn/test_acc", acc, rank_zero_only=True)
        rank_zero_info(f"[kNN k={self.k} T={self.temperature}] test: acc {100 * acc:.2f}%")

    def state_dict(self) -> dict[str, Any]:
        return {"best_acc": self.best_acc, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_acc = float(state_dict.get("best_acc", 0.0))
        self.history = [tuple(h) for h in state_dict.get("history", [])]  # type: ignore[misc]
