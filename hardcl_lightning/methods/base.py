"""What every method shares: backbone, parameter groups, optimiser/schedule, EMA targets.

The contract that makes hard-sample sources composable (``docs/architecture.md``):

- ``embed(views) -> list[dict]``: per-view outputs; views of the same resolution go through the
  networks in one batched pass (``view_forward="batched"``) or one pass each (``"per_view"``:
  BatchNorm statistics per view, as the official BYOL, SimSiam and MoCo code computes them).
- ``pair_loss(out_a, out_b) -> Tensor[B]``: the per-sample loss of one pair of views, whose
  batch mean is what training minimises for that pair.

``training_loss(outs)`` combines pairs (default: mean over all view pairs). A new method
implements ``embed_batch`` (one batched forward) and ``pair_loss``; view selection (HVS) then
needs nothing else.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from typing import Any, Sequence

import lightning as L
import torch
import torch.nn as nn

from hardcl_lightning.backbones import build_backbone
from hardcl_lightning.checkpointing import ResumableState
from hardcl_lightning.optim import OPTIMIZERS, build_optimizer, cosine_schedule, split_decay_groups, warmup_cosine

ViewOutputs = dict[str, torch.Tensor]
VIEW_FORWARDS = ("batched", "per_view")


def _to_channels_last(_module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: 4-D tensor inputs in channels-last memory format."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4 else a for a in args)


def sync_lambda_schedules(trainer: L.Trainer) -> None:
    """Param-group LRs := base LR x schedule(current step), for every ``LambdaLR`` of the trainer."""
    for config in trainer.lr_scheduler_configs:
        sched = config.scheduler
        if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
            for group, lr in zip(sched.optimizer.param_groups, lrs):
                group["lr"] = lr
            sched._last_lr = lrs


NONFINITE_POLICIES = ("raise", "skip")


class NonFiniteLossGuard:
    """The one check that a loss is finite before its backward pass and optimiser step, so that a
    NaN never reaches the weights or a checkpoint. ``raise`` stops with an error naming the loss,
    the step and the non-finite embeddings; ``skip`` drops that update, counts it
    (``skipped_nonfinite_steps``, logged as ``train/skipped_nonfinite_steps``), puts back the
    buffers the step's forward passes changed (BatchNorm's running statistics took the NaN before
    the loss showed it) and goes on, until ``max_consecutive_nonfinite`` steps in a row were
    skipped: then the run has diverged and stops with an error, rather than finishing with exit 0
    on weights that no longer train. Every optimiser of a module (the contrastive model's, a GAN's
    generator and discriminator) goes through it, under the module's one ``on_nonfinite_loss``
    policy. Whatever the policy, a checkpoint with non-finite weights or normalisation statistics
    is never written."""

    #: consecutive skipped (non-finite) steps after which ``skip`` stops the run
    max_consecutive_nonfinite = 20

    def init_nonfinite_guard(self, on_nonfinite_loss: str) -> None:
        if on_nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite_loss must be one of {list(NONFINITE_POLICIES)}, got {on_nonfinite_loss!r}")
        self.on_nonfinite_loss = on_nonfinite_loss
        self.skipped_nonfinite_steps = 0
        self.consecutive_nonfinite_steps = 0
        self._buffers_at_batch_start: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        parent = getattr(super(), "on_train_batch_start", None)
        if parent is not None:
            parent(batch, batch_idx)
        if self.on_nonfinite_loss == "skip":  # what a skipped step puts back: a few KB of BN statistics
            self._buffers_at_batch_start = {n: b.detach().clone() for n, b in self.named_buffers()  # type: ignore[attr-defined]
                                            if b.is_floating_point()}

    def nonfinite(self, loss: torch.Tensor, outs: Sequence[ViewOutputs] = (), name: str = "training loss",
                  remedy: str = "Lower the LR, check the data") -> bool:
        """True when this update must be skipped; raises for ``on_nonfinite_loss="raise"``, and for
        ``skip`` once ``max_consecutive_nonfinite`` steps in a row were skipped.
        ``outs``: the embeddings the loss came from (the error names the non-finite ones)."""
        if torch.isfinite(loss).all():
            self.consecutive_nonfinite_steps = 0
            return False
        if self.on_nonfinite_loss == "skip":
            self.skipped_nonfinite_steps += 1
            self.consecutive_nonfinite_steps += 1
            buffers = dict(self.named_buffers())  # type: ignore[attr-defined]
            with torch.no_grad():
                for n, saved in self._buffers_at_batch_start.items():
                    buffers[n].copy_(saved)
            self.log("train/skipped_nonfinite_steps", float(self.skipped_nonfinite_steps))  # type: ignore[attr-defined]
            if self.consecutive_nonfinite_steps < self.max_consecutive_nonfinite:
                return True
            step = self.trainer.global_step if self._trainer is not None else 0  # type: ignore[attr-defined]
            raise FloatingPointError(
                f"{self.consecutive_nonfinite_steps} non-finite {name}es in a row (global step {step}, "
                f"{self.skipped_nonfinite_steps} skipped in all): the run has diverged. {remedy}; the last "
                "checkpoint holds the weights from before")
        step = self.trainer.global_step if self._trainer is not None else 0  # type: ignore[attr-defined]
        where = f"non-finite {name} {loss.item()} at global step {step} (epoch {self.current_epoch})"  # type: ignore[attr-defined]
        if outs:
            bad = [f"view{i}/{k}" for i, o in enumerate(outs) for k, t in sorted(o.items()) if not torch.isfinite(t).all()]
            where += f"; non-finite terms: {', '.join(bad or ['none of the embeddings (the loss itself)'])}"
        raise FloatingPointError(f"{where}. {remedy}, or set model.on_nonfinite_loss: skip to drop such steps")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to write non-finite weights or normalisation statistics (they would be resumed)."""
        bad = [n for n, p in self.named_parameters() if not torch.isfinite(p).all()]  # type: ignore[attr-defined]
        bad += [n for n, b in self.named_buffers()  # type: ignore[attr-defined]
                if n.rsplit(".", 1)[-1] in ("running_mean", "running_var") and not torch.isfinite(b).all()]
        if bad:
            raise FloatingPointError(f"not writing a checkpoint with non-finite values in {', '.join(bad[:5])}"
                                     + (f" and {len(bad) - 5} more" if len(bad) > 5 else "") + ": the run has diverged")
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)


class BaseMethod(NonFiniteLossGuard, ResumableState, L.LightningModule):
    """Base SSL method.

    Args:
        backbone: ``resnet_tiny``, ``vit_tiny``, ``vit_small``, any torchvision classification model
            (``resnet18``, ``convnext_tiny``, ...), ``timm:<name>`` (the ``timm`` extra) or an
            ``nn.Module`` class path (see ``hardcl_lightning.backbones.build_backbone``).
        cifar_stem: 3x3 stride-1 stem without max-pool, for 32-96 px images (ResNets).
        backbone_kwargs: extra options of the backbone (e.g. ``widths`` of ``resnet_tiny``).
        image_size: training image side (linked from the datamodule; ViTs need it).
        num_views: full-size views per image the method trains on (linked to the datamodule).
        batch_size: per-device batch size (linked from the datamodule; for LR scaling).
        optimizer: ``sgd``, ``lars`` or ``adamw``.
        lr: base learning rate; multiplied by global batch / 256 when ``scale_lr`` is set.
        scale_lr: apply the linear scaling rule lr x global_batch / 256.
        weight_decay: weight decay of weights (biases and norm parameters get none).
        momentum: SGD/LARS momentum.
        lars_eta: LARS trust coefficient.
        lars_clip_lr: each layer's LARS LR is ``min(trust ratio, lr)`` instead of ``lr`` x trust
            ratio (LARC's clipping; solo-learn's ``clip_lr``, set in its CIFAR SimCLR, BYOL, DINO).
        warmup_epochs: linear warm-up length, then cosine decay to ``min_lr_ratio`` x lr.
        min_lr_ratio: final LR as a fraction of the peak.
        on_nonfinite_loss: ``raise`` stops training with an error naming the step and the loss
            terms (before any optimiser step, so no weights or checkpoints become NaN); ``skip``
            drops that step's update (and its BatchNorm statistics) and goes on, until 20 steps in
            a row were dropped (``max_consecutive_nonfinite``): then the run stops with an error.
        channels_last: keep the backbone's weights and inputs in channels-last memory format
            (faster convolutions on tensor-core GPUs under mixed precision).
        compile_backend: ``torch.compile`` the backbone with this backend (``inductor`` on GPUs;
            ``eager`` to debug); compiled in place, so checkpoints keep their keys. None: off.
        view_forward: ``batched``: the training views of one resolution share one forward, so
            BatchNorm's batch statistics mix the views (SimCLR's official code, DINO's backbone);
            ``per_view``: each view its own forward, its own statistics (the official BYOL,
            SimSiam and MoCo code). Each method's default follows its official code. HVS's
            scoring pass is always one batched forward of all candidates, as the authors' is.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        cifar_stem: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        image_size: int = 32,
        num_views: int = 2,
        batch_size: int = 256,
        optimizer: str = "sgd",
        lr: float = 0.3,
        scale_lr: bool = True,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        lars_eta: float = 0.02,
        lars_clip_lr: bool = False,
        warmup_epochs: float = 10.0,
        min_lr_ratio: float = 0.0,
        on_nonfinite_loss: str = "raise",
        channels_last: bool = False,
        compile_backend: str | None = None,
        view_forward: str = "batched",
    ) -> None:
        super().__init__()
        if view_forward not in VIEW_FORWARDS:
            raise ValueError(f"view_forward must be one of {list(VIEW_FORWARDS)}, got {view_forward!r}")
        self.view_forward = view_forward
        self.init_nonfinite_guard(on_nonfinite_loss)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {list(OPTIMIZERS)}")
        if num_views < 2:
            raise ValueError(f"num_views must be >= 2 for a contrastive method, got {num_views}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.backbone_name = backbone
        self.backbone, self.feature_dim = build_backbone(
            backbone, cifar_stem=cifar_stem, image_size=image_size, **(backbone_kwargs or {})
        )
        self.optimizer_name, self.base_lr, self.scale_lr = optimizer, lr, scale_lr
        self.weight_decay, self.sgd_momentum, self.lars_eta, self.lars_clip_lr = weight_decay, momentum, lars_eta, lars_clip_lr
        self.warmup_epochs, self.min_lr_ratio = warmup_epochs, min_lr_ratio
        self.num_views, self.batch_size, self.image_size = num_views, batch_size, image_size
        self.channels_last, self.compile_backend = channels_last, compile_backend
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
            # every caller (training views, kNN bank, probe, predict) gets channels-last inputs
            self.backbone.register_forward_pre_hook(_to_channels_last)
        if compile_backend is not None:
            import torch._dynamo as dynamo

            if compile_backend not in dynamo.list_backends(exclude_tags=()):
                raise ValueError(f"unknown compile_backend {compile_backend!r}; choose one of {dynamo.list_backends()}")

    def configure_model(self) -> None:
        """Compile the online backbone in place (after EMA targets were copied from it)."""
        if self.compile_backend is not None and not getattr(self, "_compiled", False):
            self.backbone.compile(backend=self.compile_backend)
            self._compiled = True

    # --- the contract ---------------------------------------------------------------------
    def embed_batch(self, x: torch.Tensor) -> ViewOutputs:
        """One batched forward of images ``x``; must return at least ``{"feats": backbone features}``."""
        raise NotImplementedError

    def pair_loss(self, out_a: ViewOutputs, out_b: ViewOutputs) -> torch.Tensor:
        """Per-sample loss [B] of the pair of views (a, b)."""
        raise NotImplementedError

    #: outputs computed without gradient by target (EMA) networks, e.g. MoCo's keys; they do not
    #: depend on which step of a training iteration asks for them, so view selection can reuse them
    target_keys: tuple[str, ...] = ()

    def embed_online(self, x: torch.Tensor) -> ViewOutputs:
        """The outputs of ``embed_batch`` without the ``target_keys`` (same as it, for methods without targets)."""
        return self.embed_batch(x)

    def view_groups(self, views: Sequence[torch.Tensor], batched: bool | None = None) -> list[list[int]]:
        """Indices of the views that share a forward: equal shapes together (``batched``, default
        from ``view_forward``), or each view alone."""
        if not (self.view_forward == "batched" if batched is None else batched):
            return [[i] for i in range(len(views))]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, v in enumerate(views):
            by_shape[tuple(v.shape)].append(i)
        return list(by_shape.values())

    def embed(self, views: Sequence[torch.Tensor], targets: bool = True, batched: bool | None = None) -> list[ViewOutputs]:
        """Embed each view, in the forwards ``view_groups`` gives (``batched=True``: one forward per
        resolution whatever ``view_forward`` says, e.g. for HVS's scoring pass).

        ``targets=False`` skips the target networks (``embed_online``); the caller supplies them.
        """
        outs: list[ViewOutputs | None] = [None] * len(views)
        forward = self.embed_batch if targets else self.embed_online
        for idxs in self.view_groups(views, batched):
            batch_out = forward(torch.cat([views[i] for i in idxs]) if len(idxs) > 1 else views[idxs[0]])
            chunks = {k: t.chunk(len(idxs)) for k, t in batch_out.items()}
            for j, i in enumerate(idxs):
                outs[i] = {k: c[j] for k, c in chunks.items()}
        return outs  # type: ignore[return-value]

    def training_loss(self, outs: Sequence[ViewOutputs]) -> torch.Tensor:
        """Scalar training loss: the mean of ``pair_loss`` over all pairs of views."""
        return self.mean_over_view_pairs(outs, self.pair_loss)

    def local_training_loss(self, outs: Sequence[ViewOutputs]) -> torch.Tensor:
        """The training loss over this rank's samples only (no other rank's negatives): for samples
        drawn per rank, such as generated ones, whose backward pass must hold no collective. The
        same as ``training_loss`` for methods that gather nothing; SimCLR overrides it."""
        return self.training_loss(outs)

    @staticmethod
    def mean_over_view_pairs(outs: Sequence[ViewOutputs], pair_loss) -> torch.Tensor:
        pair_losses = [pair_loss(outs[i], outs[j]).mean() for i, j in itertools.combinations(range(len(outs)), 2)]
        return torch.stack(pair_losses).mean()

    # --- training / validation ------------------------------------------------------------
    def check_views(self, views: Sequence[torch.Tensor]) -> None:
        if len(views) < self.num_views:
            raise ValueError(
                f"{type(self).__name__} needs {self.num_views} views per image but the batch has {len(views)}; "
                f"set data num_views to {self.num_views} (the CLI links it from model.num_views)"
            )

    def training_views(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """The views this step trains on (hard-sample sources override this, e.g. HVS's selection)."""
        self.check_views(batch["views"])
        return list(batch["views"])

    def sample_info(self, batch: dict[str, Any]) -> ViewOutputs:
        """Per-sample tensors of the batch that ``pair_loss`` needs besides the embeddings (e.g.
        MoCo's dataset index, to mask a query's own earlier keys); added to every view's outputs."""
        return {}

    def with_sample_info(self, outs: list[ViewOutputs], batch: dict[str, Any]) -> list[ViewOutputs]:
        info = self.sample_info(batch)
        for out in outs:
            out.update(info)
        return outs

    def embed_training_views(self, batch: dict[str, Any]) -> list[ViewOutputs]:
        """The outputs of the views this step trains on, with ``sample_info``."""
        return self.with_sample_info(self.embed(self.training_views(batch)), batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        outs = self.embed_training_views(batch)
        loss = self.training_loss(outs)
        if self.nonfinite(loss, outs):
            return None
        self.after_training_loss(outs)
        self.log("train/loss", loss, prog_bar=True, sync_dist=False)
        return self.step_output(loss, outs, batch)

    def after_training_loss(self, outs: Sequence[ViewOutputs]) -> None:
        """Hook for state updates that follow the loss (e.g. MoCo's enqueue)."""

    def step_output(self, loss: torch.Tensor, outs: Sequence[ViewOutputs], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss plus the detached backbone features and labels that the online probe trains on."""
        feats = torch.cat([o["feats"].detach() for o in outs if o["feats"].shape == outs[0]["feats"].shape])
        labels = batch["label"].repeat(feats.shape[0] // batch["label"].shape[0])
        return {"loss": loss, "feats": feats, "labels": labels}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Backbone features of un-augmented images; the kNN and probe callbacks consume them."""
        return {"feats": self.backbone(batch["image"]), "labels": batch["label"]}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """As validation (``hardcl test`` reports kNN accuracy on the datamodule's test loader)."""
        return self.validation_step(batch, batch_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Backbone features of un-augmented images (``hardcl predict``; ``EmbeddingWriter`` writes
        them), with the batch's labels and dataset indices; a plain tensor batch is images only."""
        if not isinstance(batch, dict):
            return {"feats": self.backbone(batch)}
        out = {"feats": self.backbone(batch["image"]), "labels": batch["label"]}
        if "index" in batch:
            out["index"] = batch["index"]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features: what downstream tasks use."""
        return self.backbone(x)

    # --- optimisation ---------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Set each LR from its schedule at the current step: a resumed run whose length changed
        (a larger ``max_epochs``) continues on the new schedule instead of the saved LR."""
        sync_lambda_schedules(self.trainer)

    def learnable_modules(self) -> dict[str, nn.Module]:
        """Modules trained by the main optimiser; subclasses add their heads."""
        return {"backbone": self.backbone}

    def param_groups(self) -> list[dict]:
        groups: list[dict] = []
        for name, module in self.learnable_modules().items():
            for g in split_decay_groups(module):
                g["name"] = f"{name}/no_decay" if g.get("lars_exclude") else name  # LearningRateMonitor needs unique names
                groups.append(g)
        return groups

    @property
    def effective_lr(self) -> float:
        if not self.scale_lr:
            return self.base_lr
        world = self.trainer.world_size if self._trainer is not None else 1
        accum = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        return self.base_lr * self.batch_size * world * accum / 256

    def steps_per_epoch_and_total(self) -> tuple[int, int]:
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        return max(1, total // epochs), max(1, total)

    def main_optimizer_steps(self) -> int:
        """Steps of the main optimiser so far: what the EMA schedule counts (methods with more
        optimisers, whose ``global_step`` counts them all, override it)."""
        return self.trainer.global_step if self._trainer is not None else 0

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        step = self.main_optimizer_steps()
        super().optimizer_step(*args, **kwargs)
        self.after_main_optimizer_step(step)

    def after_main_optimizer_step(self, step: int) -> None:
        """Hook after each step of the main optimiser, given the steps before it (EMA updates).
        Lightning calls it through ``optimizer_step``; manual-optimisation loops call it themselves."""

    def configure_optimizers(self):
        lr = self.effective_lr
        opt = build_optimizer(self.optimizer_name, self.param_groups(), lr, self.weight_decay, self.sgd_momentum, self.lars_eta,
                              self.lars_clip_lr)
        spe, total = self.steps_per_epoch_and_total()
        warmup = int(round(self.warmup_epochs * spe))
        schedule = lambda step: warmup_cosine(step, total, warmup, self.min_lr_ratio)  # noqa: E731
        lambdas = [(lambda step: 1.0) if g.get("fixed_lr") else schedule for g in opt.param_groups]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class MomentumMethod(BaseMethod):
    """A method with EMA target networks (MoCo, BYOL, DINO).

    Subclasses list ``(online, target)`` module pairs in ``momentum_pairs``. The EMA momentum
    follows a cosine schedule from ``ema_momentum`` to ``ema_momentum_end`` over all optimiser
    steps (BYOL, eq. in sec. 3.2), and the update runs once per optimiser step, so it is right
    under gradient accumulation.

    Args:
        ema_momentum: EMA momentum of the target networks at the first step.
        ema_momentum_end: EMA momentum at the last step (cosine schedule from ``ema_momentum``).
    """

    def __init__(self, *args: Any, ema_momentum: float = 0.99, ema_momentum_end: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, m in (("ema_momentum", ema_momentum), ("ema_momentum_end", ema_momentum_end)):
            if not 0 <= m <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {m}")
        self.ema_momentum, self.ema_momentum_end = ema_momentum, ema_momentum_end

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def embed_online(self, x: torch.Tensor) -> ViewOutputs:
        raise NotImplementedError

    def embed_target(self, x: torch.Tensor) -> ViewOutputs:
        """The target (EMA) networks' outputs, keyed by ``target_keys``."""
        raise NotImplementedError

    def embed_batch(self, x: torch.Tensor) -> ViewOutputs:
        with torch.no_grad():
            target = self.embed_target(x)
        return {**self.embed_online(x), **target}

    @staticmethod
    def make_target(module: nn.Module) -> nn.Module:
        """A frozen copy of ``module`` that only the EMA update changes."""
        target = copy.deepcopy(module)
        for p in target.parameters():
            p.requires_grad_(False)
        return target

    def current_ema_momentum(self, step: int | None = None) -> float:
        """The EMA momentum at main-optimiser step ``step`` (None: now)."""
        if self._trainer is None:
            return self.ema_momentum
        _, total = self.steps_per_epoch_and_total()
        step = self.main_optimizer_steps() if step is None else step
        return cosine_schedule(step, total, self.ema_momentum, self.ema_momentum_end)

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """target = tau * target + (1 - tau) * online, for parameters; buffers are copied."""
        for online, target in self.momentum_pairs:
            online_p = [p.data for p in online.parameters()]
            target_p = [p.data for p in target.parameters()]
            torch._foreach_mul_(target_p, tau)
            torch._foreach_add_(target_p, online_p, alpha=1 - tau)
            for b_o, b_t in zip(online.buffers(), target.buffers()):
                b_t.copy_(b_o)

    def after_main_optimizer_step(self, step: int) -> None:
        super().after_main_optimizer_step(step)
        tau = self.current_ema_momentum(step)
        self.momentum_update(tau)
        self.log("train/ema_momentum", tau)
