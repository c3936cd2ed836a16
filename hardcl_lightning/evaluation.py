"""Offline evaluation of a pre-trained checkpoint: linear evaluation, kNN sweep, backbone export.

The protocol (what the README's results and the papers report):

- **Linear evaluation** (``LinearEval``, ``configs/linear_eval_cifar10.yaml``): the pre-trained
  backbone is frozen *in eval mode* (BN statistics fixed) and a linear classifier is trained on
  its features of crop + flip augmented training images with SGD and a cosine schedule; top-1
  and top-5 accuracy on the un-augmented validation set. Run with ``hardcl fit --config
  configs/linear_eval_cifar10.yaml --model.pretrained path/to/last.ckpt``.
- **kNN sweep** (``hardcl-eval knn``): weighted kNN (Wu et al. 2018) of validation features
  against the un-augmented training set, for every (k, temperature) in a grid; features are
  extracted once.
- **Export** (``hardcl-eval export``): the backbone as a plain state dict that loads into a
  torchvision ``resnet18``/``resnet50``/``VisionTransformer`` (with ``fc``/``heads`` set to
  ``nn.Identity()``) without this library; a JSON file beside it says how to build the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy

from hardcl_lightning.backbones import VIT_SIZES, build_backbone
from hardcl_lightning.callbacks.features import extract_features
from hardcl_lightning.checkpointing import ResumableState, atomic_write
from hardcl_lightning.methods.base import sync_lambda_schedules
from hardcl_lightning.optim import warmup_cosine

TORCHVISION_RESNETS = ("resnet18", "resnet50")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of a pre-training run, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pre-trained checkpoint {str(path)!r} does not exist; pass the .ckpt a `hardcl fit` run wrote "
                                "(e.g. runs/<name>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, ...
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    hp = ckpt.get("hyper_parameters") or {}
    if "backbone" not in hp or not any(k.startswith("backbone.") for k in ckpt["state_dict"]):
        what = hp.get("_class_path", "this module")
        raise ValueError(f"checkpoint {str(path)!r} ({what}) has no backbone to evaluate; pass a checkpoint of an SSL method "
                         "(GAN pre-training checkpoints initialise the generator methods instead)")
    return ckpt


def backbone_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The online backbone's weights of a method checkpoint (not the EMA/target copies), keys
    relative to the backbone; ``torch.compile``'s ``_orig_mod.`` is removed."""
    prefix = "backbone."
    return {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def load_pretrained_backbone(path: str | Path) -> tuple[nn.Module, int, dict[str, Any]]:
    """``(backbone, feature_dim, hyper_parameters)`` rebuilt from a method checkpoint."""
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    backbone, dim = build_backbone(hp["backbone"], cifar_stem=hp.get("cifar_stem", False), image_size=hp.get("image_size", 224),
                                   **(hp.get("backbone_kwargs") or {}))
    backbone.load_state_dict(backbone_state_dict(ckpt))
    return backbone, dim, hp


class LinearEval(ResumableState, L.LightningModule):
    """Linear evaluation of a frozen pre-trained backbone (or fine-tuning with ``finetune``).

    Training batches are the datamodule's views (``data.augmentation: linear``: random resized
    crop and flip, ``num_views`` 1); validation/test batches the un-augmented images. Logs
    ``linear/train_loss``, ``linear/val_acc`` and ``linear/val_acc5`` (``linear/test_acc`` under
    ``hardcl test``).

    Args:
        pretrained: path of the pre-training checkpoint (``.ckpt`` written by ``hardcl fit``).
        num_classes: classes of the classifier; None takes the datamodule's.
        lr: SGD learning rate (per ``batch_size``; no scaling), cosine to 0 after ``warmup_epochs``.
        momentum: SGD momentum.
        weight_decay: SGD weight decay of the classifier.
        warmup_epochs: linear LR warm-up.
        finetune: train the backbone too (BN in train mode), instead of the frozen protocol.
        normalize_features: a parameter-free BatchNorm on the features before the classifier (MAE's
            linear probe, He et al. 2022, sec. A.2): at inference it is an affine map that folds
            into the linear layer, so the classifier is still linear, but it makes one ``lr``
            work for backbones whose feature scales differ by orders of magnitude.
        image_size: linked from the datamodule by the CLI.
        batch_size: linked from the datamodule by the CLI.
        num_views: linked to the datamodule by the CLI (one view per image).
    """

    def __init__(
        self,
        pretrained: str,
        num_classes: int | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_epochs: float = 0.0,
        finetune: bool = False,
        normalize_features: bool = True,
        image_size: int = 32,
        batch_size: int = 256,
        num_views: int = 1,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (or None for the datamodule's), got {num_classes}")
        self.save_hyperparameters()
        self.backbone, self.feature_dim, self.pretrained_hparams = load_pretrained_backbone(pretrained)
        self.finetune, self.num_views, self.batch_size, self.image_size = finetune, num_views, batch_size, image_size
        if not finetune:
            self.backbone.requires_grad_(False)
        self.classifier: nn.Module | None = None
        if num_classes is not None:
            self._build_classifier(num_classes)

    def _build_classifier(self, num_classes: int) -> None:
        linear = nn.Linear(self.feature_dim, num_classes)
        linear.weight.data.normal_(0, 0.01)
        linear.bias.data.zero_()
        norm = nn.BatchNorm1d(self.feature_dim, affine=False) if self.hparams.normalize_features else nn.Identity()
        self.classifier = nn.Sequential(norm, linear)
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")

    def setup(self, stage: str) -> None:
        if self.classifier is None:
            dm = self.trainer.datamodule
            if dm is None or not hasattr(dm, "num_classes"):
                raise ValueError("LinearEval needs model.num_classes or a datamodule with num_classes")
            dm.setup(stage)
            self._build_classifier(int(dm.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            feats = self.backbone(x)
        with torch.autocast(device_type=feats.device.type, enabled=False):
            return self.classifier(feats.float())  # type: ignore[misc]

    def on_train_epoch_start(self) -> None:
        if not self.finetune:
            self.backbone.eval()  # frozen protocol: BN running statistics stay the pre-trained ones

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["views"][0])
        loss = F.cross_entropy(logits, batch["label"])
        self.log("linear/train_loss", loss, prog_bar=True)
        self.log("linear/train_acc", (logits.argmax(1) == batch["label"]).float().mean(), on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        logits = self(batch["image"])
        self.val_acc(logits, batch["label"])
        self.val_acc5(logits, batch["label"])
        self.log(f"linear/{split}_acc", self.val_acc, prog_bar=True)
        self.log(f"linear/{split}_acc5", self.val_acc5)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _report(self, label: str) -> None:
        top1, top5 = self.val_acc.compute().item(), self.val_acc5.compute().item()
        rank_zero_info(f"[linear eval] {label}: top-1 {100 * top1:.2f}%  top-{self.val_acc5.top_k} {100 * top5:.2f}%")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._report(f"epoch {self.current_epoch + 1}")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def on_train_start(self) -> None:
        sync_lambda_schedules(self.trainer)

    def configure_optimizers(self):
        params = list(self.classifier.parameters()) + (list(self.backbone.parameters()) if self.finetune else [])  # type: ignore[union-attr]
        opt = torch.optim.SGD(params, lr=self.hparams.lr, momentum=self.hparams.momentum, weight_decay=self.hparams.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(self.hparams.warmup_epochs * total / max(1, self.trainer.max_epochs or 1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def knn_sweep(
    bank_feats: torch.Tensor,
    bank_labels: torch.Tensor,
    query_feats: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (10, 20, 50, 100, 200),
    temperatures: Sequence[float] = (0.02, 0.05, 0.07, 0.1, 0.2, 0.5),
    chunk_size: int = 1024,
) -> list[dict[str, float]]:
    """Weighted-kNN top-1 accuracy for every (k, temperature), on features extracted once.

    Same votes as ``weighted_knn_predict`` (each of the k most similar bank entries votes
    exp(cos / T) for its class), but the similarities and the top-max(k) neighbours are computed
    once per query chunk and shared by the whole grid.
    """
    if not ks or not temperatures:
        raise ValueError(f"the sweep needs at least one k and one temperature, got ks={list(ks)}, temperatures={list(temperatures)}")
    if min(ks) < 1 or min(temperatures) <= 0:
        raise ValueError(f"the sweep needs every k >= 1 and every temperature > 0, got ks={list(ks)}, temperatures={list(temperatures)}")
    bank = F.normalize(bank_feats.float(), dim=1)
    max_k = min(max(ks), bank.shape[0])
    correct = torch.zeros(len(ks), len(temperatures))
    for start in range(0, query_feats.shape[0], chunk_size):
        q = F.normalize(query_feats[start : start + chunk_size].float(), dim=1)
        sim, idx = (q @ bank.T).topk(max_k, dim=1)  # sorted: the first k are the k nearest
        votes_for, truth = bank_labels[idx], query_labels[start : start + chunk_size]
        for i, k in enumerate(ks):
            k = min(k, max_k)
            for j, t in enumerate(temperatures):
                votes = torch.zeros(q.shape[0], num_classes, device=q.device)
                votes.scatter_add_(1, votes_for[:, :k], (sim[:, :k] / t).exp())
                correct[i, j] += (votes.argmax(1) == truth).sum().item()
    n = query_feats.shape[0]
    return [{"k": int(k), "temperature": float(t), "acc": correct[i, j].item() / n}
            for i, k in enumerate(ks) for j, t in enumerate(temperatures)]


def linear_accuracy_on_features(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    l2: float = 1e-4,
    max_iter: int = 300,
) -> float:
    """Top-1 accuracy of an L2-regularised multinomial logistic regression fit (full batch,
    L-BFGS) on standardised, un-augmented features: the fast linear protocol of the benchmark
    tables (seconds instead of ``LinearEval``'s epochs over augmented images)."""
    x, q = train_feats.double(), query_feats.double()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, q = (x - mu) / sd, (q - mu) / sd
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, train_labels) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return ((q @ w + b).argmax(1) == query_labels).double().mean().item()


def knn_sweep_checkpoint(
    pretrained: str | Path,
    datamodule: Any,
    ks: Sequence[int] = (10, 20, 50, 100, 200),
    temperatures: Sequence[float] = (0.02, 0.05, 0.07, 0.1, 0.2, 0.5),
    device: str = "cpu",
) -> list[dict[str, float]]:
    """``knn_sweep`` of a checkpoint's backbone: bank = the datamodule's un-augmented training
    set, queries = its validation set."""
    datamodule.setup("validate")
    if not datamodule.has_labels:
        raise ValueError(f"{type(datamodule).__name__} has no labelled validation set; the kNN sweep needs one")
    model = LinearEval(str(pretrained), num_classes=int(datamodule.num_classes)).to(device)
    bank_f, bank_y = extract_features(model, datamodule.bank_dataloader(), gather=False)
    query_f, query_y = extract_features(model, datamodule.val_dataloader(), gather=False)
    return knn_sweep(bank_f, bank_y, query_f, query_y, int(datamodule.num_classes), ks, temperatures)


def export_backbone(pretrained: str | Path, output: str | Path) -> dict[str, Any]:
    """Write the backbone of ``pretrained`` as a plain state dict to ``output`` (atomically) and
    ``output`` + ``.json`` describing the architecture; returns that description.

    torchvision ResNets and ViTs load the file with ``load_state_dict`` after ``fc`` (ResNet) or
    ``heads`` (ViT) is set to ``nn.Identity()`` and, for ``cifar_stem``, ``conv1`` is a 3x3
    stride-1 convolution and ``maxpool`` an identity. ``resnet_tiny`` is this library's own
    (``hardcl_lightning.backbones.TinyResNet``).
    """
    ckpt = read_checkpoint(pretrained)
    hp = ckpt["hyper_parameters"]
    name, state = hp["backbone"], backbone_state_dict(ckpt)
    meta: dict[str, Any] = {"arch": name, "source": str(pretrained), "method": hp.get("_class_path")}
    if name in TORCHVISION_RESNETS:
        cifar = bool(hp.get("cifar_stem", False))
        meta.update(cifar_stem=cifar, loads_into=f"torchvision.models.{name}(num_classes=1000) with fc=nn.Identity()"
                    + (", conv1=nn.Conv2d(3, 64, 3, 1, 1, bias=False), maxpool=nn.Identity()" if cifar else ""))
    elif name in VIT_SIZES:
        state = {k.removeprefix("vit."): v for k, v in state.items()}
        num_layers, num_heads, hidden = VIT_SIZES[name]
        meta.update(image_size=hp.get("image_size", 224), patch_size=int(state["conv_proj.weight"].shape[-1]),
                    num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden, mlp_dim=4 * hidden,
                    loads_into="torchvision.models.VisionTransformer(image_size, patch_size, num_layers, num_heads, "
                               "hidden_dim, mlp_dim) with heads=nn.Identity()")
    else:
        meta.update(backbone_kwargs=hp.get("backbone_kwargs") or {}, cifar_stem=bool(hp.get("cifar_stem", False)),
                    loads_into="hardcl_lightning.backbones.build_backbone(arch, cifar_stem, **backbone_kwargs)[0]")
    atomic_write(output, lambda f: torch.save(state, f))
    atomic_write(f"{output}.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return meta
