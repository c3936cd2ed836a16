"""Online linear probe on the detached backbone features the method already computed."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from hardcl_lightning.callbacks.features import extract_features
from hardcl_lightning.distributed import is_dist, world_size


class OnlineLinearProbe(L.Callback):
    """A linear classifier trained alongside SSL pre-training, as a cheap accuracy signal.

    It trains on the ``feats``/``labels`` that the method's ``training_step`` returns (detached
    backbone features of the training views, so there is no second forward and no gradient
    reaches the backbone; views labelled -1, unlabeled images, are left out), with its own SGD optimiser whose gradients are averaged over ranks.
    Its weights and optimiser state are saved in and restored from checkpoints. Logs
    ``probe/acc`` (validation) and ``probe/best_acc``.
    """

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"OnlineLinearProbe lr must be > 0, got {lr}")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.probe: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.best_acc = 0.0
        self._pending_state: dict[str, Any] | None = None
        self._correct = 0
        self._count = 0
        self.enabled = True

    def _build(self, pl_module: L.LightningModule, num_classes: int) -> None:
        self.probe = nn.Linear(pl_module.feature_dim, num_classes).to(pl_module.device)
        self.optimizer = torch.optim.SGD(self.probe.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        labelled = getattr(dm, "has_labels", True) and getattr(dm, "has_train_labels", True)  # a val set, and labelled views
        if dm is None or not labelled or not hasattr(dm, "num_classes"):
            if getattr(dm, "has_train_labels", True) is False:  # the probe learns from labelled training views
                reason = f"{type(dm).__name__}'s training images have no labels"
            else:
                reason = getattr(dm, "evaluation_off_reason", "the datamodule has no labelled validation set")
            rank_zero_info(f"OnlineLinearProbe: off ({reason})")
            self.enabled = False
            return
        if self.probe is None:
            if hasattr(dm, "setup"):
                dm.setup(stage)
            self._build(pl_module, int(dm.num_classes))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.global_step > 0 or self.probe is None:
            return
        feats, labels = extract_features(pl_module, trainer.datamodule.val_dataloader())
        with torch.no_grad():
            acc = (self.probe(feats).argmax(1) == labels).float().mean().item()
        rank_zero_info(f"[linear probe] epoch 0 (before training): acc {100 * acc:.2f}%")

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.enabled or self.probe is None or not isinstance(outputs, dict) or "feats" not in outputs:
            return
        feats, labels = outputs["feats"].detach().float(), outputs["labels"]
        labelled = labels >= 0  # -1: an unlabeled image (STL-10's unlabeled split) teaches the probe nothing
        with torch.enable_grad(), torch.autocast(device_type=feats.device.type, enabled=False):
            logits = self.probe(feats)
            # summed over the labelled views only; every rank still steps (the gradient all-reduce below)
            loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / labelled.sum().clamp(min=1)
            self.optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            loss.backward()
        if is_dist() and world_size() > 1:
            for p in self.probe.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= world_size()
        self.optimizer.step()  # type: ignore[union-attr]
        acc = ((logits.argmax(1) == labels) & labelled).sum() / labelled.sum().clamp(min=1)
        pl_module.log_dict({"probe/train_loss": loss.detach(), "probe/train_acc": acc}, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._correct, self._count = 0, 0

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.enabled or self.probe is None or not isinstance(outputs, dict) or "feats" not in outputs:
            return
        with torch.no_grad():
            pred = self.probe(outputs["feats"].float()).argmax(1)
        self._correct += int((pred == outputs["labels"]).sum())
        self._count += int(outputs["labels"].numel())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.sanity_checking or self._count == 0:
            return
        counts = torch.tensor([self._correct, self._count], dtype=torch.float64, device=pl_module.device)
        if is_dist() and world_size() > 1:
            torch.distributed.all_reduce(counts)
        acc = float(counts[0] / counts[1])
        self.best_acc = max(self.best_acc, acc)
        pl_module.log("probe/acc", acc, rank_zero_only=True)
        pl_module.log("probe/best_acc", self.best_acc, rank_zero_only=True)
        rank_zero_info(f"[linear probe] epoch {trainer.current_epoch + 1}: acc {100 * acc:.2f}%  (best {100 * self.best_acc:.2f}%)")

    # --- checkpointing --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.probe is None:
            return {"best_acc": self.best_acc}
        return {"best_acc": self.best_acc, "probe": self.probe.state_dict(), "optimizer": self.optimizer.state_dict()}  # type: ignore[union-attr]

    def _apply_state(self, state: dict[str, Any]) -> None:
        self.best_acc = float(state.get("best_acc", 0.0))
        if "probe" in state and self.probe is not None:
            self.probe.load_state_dict(state["probe"])
            self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[union-attr]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.probe is None:
            self._pending_state = state_dict
        else:
            self._apply_state(state_dict)
