"""Which ops of a training step make the host wait for the accelerator, and how many kernels the
step launches: counted on a CPU.

    python benchmarks/host_sync.py                  # the GPU recipes at their real size (ResNet-18, batch 256)
    python benchmarks/host_sync.py --recipes simclr_cifar10 hvs_simclr --batch-size 32
    python benchmarks/host_sync.py --recipes hard_sample_gen_cifar10   # a generator method (manual optimisation)

On a GPU a step runs fast only while the host queues kernels ahead of the device. An op whose
result the host must read (``.item()``, ``bool(t)``, ``nonzero``, boolean-mask indexing, CUDA's
``bincount``) or a blocking host-to-device copy (``torch.tensor(data, device=cuda)``, a CPU
constant ``.to(cuda)``) drains that queue: the host waits until every queued kernel has run.
``torch.cuda.set_sync_debug_mode`` reports these on a GPU; ``HostRoundTrips`` finds them without
one, by running the step on the ``meta`` device (shapes only, no data) under a dispatch mode that
records them, where each one stands for a stall on an accelerator. Data-dependent ops get a
stand-in result there (a scalar read is ``True``/``0``) so the step runs on to its end.

The same run counts the ops a step dispatches that would each launch a kernel on a GPU (a
multi-tensor ``_foreach`` op counts once, as one dispatch; views and allocations count none): the
host's share of a step grows with it, and once it exceeds the GPU's time for the step, the GPU
waits for the host. ``tests/test_host_sync.py`` holds every
recipe to one round trip a step (the non-finite loss guard's), and each generator recipe to one
a parameter update (its guard's read of that update's loss: main model, generator, discriminator).
"""

from __future__ import annotations

import collections
import contextlib
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

REPO = Path(__file__).resolve().parents[1]
PACKAGE = str(REPO / "hardcl_lightning")
# the GPU recipes: every method on its CIFAR config, with and without hard view selection
RECIPES = ("simclr_cifar10", "hvs_simclr", "mocov2_cifar10", "mochi_cifar10", "hvs_mocov2", "byol_cifar10", "hvs_byol",
           "simsiam_cifar10", "hvs_simsiam", "dino_cifar10", "hvs_dino")
# the generator methods on their CIFAR configs (manual optimisation: several updates a step)
GENERATOR_RECIPES = ("gan_pretrain_cifar10", "hard_sample_gen_cifar10", "positive_pair_cifar10", "hardgen_full_cifar10")
# allocation and bookkeeping ops that launch no kernel
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
             "lift_fresh_copy", "_local_scalar_dense", "set_", "resize_"}

# the oldest torch whose meta device runs the audit: the data-dependent ops' stand-ins (nonzero's
# ``meta_nonzero_assume_all_nonzero``) and meta kernels for every op of a step (torch 2.3-2.6 lack
# some, e.g. the ``_foreach`` ops of the generators' Adam on 2.3); DINO's weight-normalised last
# layer needs ``_weight_norm_interface_backward`` on meta, which torch 2.10 added
MIN_TORCH = (2, 7)
MIN_TORCH_FOR = {"dino_cifar10": (2, 10), "hvs_dino": (2, 10)}


def torch_release() -> tuple[int, int]:
    """(major, minor) of the installed torch."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def unsupported(recipe: str | None = None) -> str | None:
    """Why this torch cannot audit ``recipe`` (None: the audit's own needs), or None when it can."""
    need = max(MIN_TORCH, MIN_TORCH_FOR.get(recipe, MIN_TORCH)) if recipe else MIN_TORCH
    if torch_release() < need:
        what = f"the {recipe} recipe" if recipe and need > MIN_TORCH else "this audit"
        return f"{what} needs torch >= {need[0]}.{need[1]} on the meta device, got torch {torch.__version__}"
    return None


# ops whose output the host must read, or whose output size depends on the data (CUDA syncs for it)
HOST_READS = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique", "_unique2", "unique_dim",
              "unique_consecutive", "is_nonzero", "equal", "bincount", "histc", "masked_scatter"}


class HostRoundTrips(TorchDispatchMode):
    """Records the host round trips of the code run under it on the ``meta`` device.

    ``found``: a Counter of ``"op at file:line"`` (the innermost line of this package that asked
    for it), so an assertion names what to fix; ``kernels``: the ops dispatched that would launch
    a kernel on an accelerator (views of tensors and allocations do not).
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: collections.Counter[str] = collections.Counter()
        self.kernels = 0
        self._patches: contextlib.ExitStack | None = None

    def _record(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack() if f.filename.startswith(PACKAGE)]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "outside the package"
        self.found[f"{what} at {where}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.kernels += not (func.is_view or name in NO_KERNEL)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type != "cpu" for t in tensors)
        if name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else args[0]
            dst_device = args[0].device if name == "copy_" else torch.device(kwargs.get("device") or src.device)
            crosses = (src.device.type == "cpu") != (dst_device.type == "cpu")
            if crosses and not kwargs.get("non_blocking", False):
                self._record(f"blocking copy {src.device.type}->{dst_device.type}")
            if crosses and src.device.type == "meta":  # a read back (``.tolist()``, ``.cpu()``): no data on meta
                if name == "copy_":
                    return args[0].zero_()
                return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
            return func(*args, **kwargs)
        bool_index = name in ("index", "index_put", "index_put_") and any(
            t is not None and isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else []))
        repeat_by_tensor = name == "repeat_interleave" and len(args) > 1 and isinstance(args[1], torch.Tensor) \
            and kwargs.get("output_size") is None
        if on_device and (name in HOST_READS or bool_index or repeat_by_tensor):
            self._record(name if not bool_index else "boolean-mask indexing")
            return _stand_in(func, name, args, kwargs)
        return func(*args, **kwargs)

    def __enter__(self):
        self._patches = contextlib.ExitStack()
        for owner, attr in ((torch, "tensor"), (torch, "as_tensor"), (torch.Tensor, "new_tensor")):
            self._patches.enter_context(_recording_factory(self, owner, attr))
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        if self._patches is not None:
            self._patches.close()
        return out


@contextlib.contextmanager
def _recording_factory(mode: HostRoundTrips, owner: Any, attr: str) -> Iterator[None]:
    """``torch.tensor(data, device=...)`` copies host data to the device inside C++, out of the
    dispatch mode's sight: record the calls that name (or inherit) a device other than the CPU."""
    original = getattr(owner, attr)

    def factory(*args: Any, **kwargs: Any):
        out = original(*args, **kwargs)
        data = args[1] if owner is torch.Tensor else (args[0] if args else kwargs.get("data"))
        if isinstance(out, torch.Tensor) and out.device.type != "cpu" and not (
                isinstance(data, torch.Tensor) and data.device.type != "cpu"):
            mode._record(f"torch.{attr} from host data")
        return out

    setattr(owner, attr, factory)
    try:
        yield
    finally:
        setattr(owner, attr, original)


def _stand_in(func, name: str, args: tuple, kwargs: dict) -> Any:
    """A shape-correct result for a data-dependent op on ``meta``, so the step runs on."""
    if name == "_local_scalar_dense":
        dtype = args[0].dtype
        return True if dtype == torch.bool else (0.0 if dtype.is_floating_point else 0)
    if name in ("is_nonzero", "equal"):
        return True
    if name == "bincount":
        minlength = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
        return torch.zeros(max(1, minlength), dtype=torch.long, device=args[0].device)
    from torch.fx.experimental import _config

    with _config.patch(meta_nonzero_assume_all_nonzero=True):
        return func(*args, **kwargs)


def to_meta(tree: Any) -> Any:
    """Every tensor of a nested structure moved to ``meta`` (shapes and dtypes kept)."""
    return tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, tree)


@contextlib.contextmanager
def autocast_on_meta() -> Iterator[None]:
    """``torch.autocast(device_type="meta")`` is refused; the losses ask for their tensors' device
    type, so on ``meta`` the CPU's autocast (disabled as they ask) stands in."""
    original = torch.autocast

    class MetaAutocast(original):  # type: ignore[misc, valid-type]
        def __init__(self, device_type: str, *args: Any, **kwargs: Any) -> None:
            super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    torch.autocast = MetaAutocast  # type: ignore[misc]
    try:
        yield
    finally:
        torch.autocast = original  # type: ignore[misc]


def build_recipe(config: str, root_dir: str, batch_size: int, *extra: str):
    """``configs/<config>.yaml`` at its real size (its backbone, heads, optimiser, queue: free on
    ``meta``) on a small Shapes10 set, views made on the device; (datamodule, model)."""
    import warnings

    import lightning as L

    from hardcl_lightning.cli import build_cli

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    L.seed_everything(0, verbose=False)
    if config in GENERATOR_RECIPES:  # the joint game from the first step; the discriminator's real images
        extra = (*(["--model.joint_start_epoch=0"] if config != "gan_pretrain_cifar10" else []), "--data.with_image=true",
                 *extra)
    cli = build_cli(["--config", str(REPO / "configs" / f"{config}.yaml"), "--trainer.logger=false", "--trainer.callbacks=[]",
                     f"--trainer.default_root_dir={root_dir}", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                     "--data=hardcl_lightning.data.ShapesDataModule", f"--data.num_train={3 * batch_size}", "--data.num_val=10",
                     f"--data.batch_size={batch_size}", "--data.num_workers=0", "--data.augment_on=device",
                     *(["--model.mix_start_epoch=0"] if "mochi" in config else []), *extra], run=False)  # MoCHi mixes from step 0
    cli.datamodule.setup()
    return cli.datamodule, cli.model


def audit_views(dm, batches: Iterator) -> tuple[dict, HostRoundTrips]:
    """The views of the next batch on ``meta``, audited (the loader's transfer is not: from pinned
    memory it does not block). Call once before to copy the recipe's constants to the device."""
    sent = to_meta(next(batches))
    with HostRoundTrips() as audit:
        batch = dm.on_after_batch_transfer(sent, 0)
    return batch, audit


def audit_step(model, optimizer, batch: dict) -> HostRoundTrips:
    """One training step on ``meta`` as Lightning's automatic optimisation runs it (training step,
    backward, ``on_after_backward``, the optimiser and the EMA update), audited."""
    import warnings

    def closure():
        out = model.training_step(batch, 0)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
        model.on_after_backward()
        return loss

    with HostRoundTrips() as audit, autocast_on_meta(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no trainer: nothing is logged
        model.optimizer_step(0, 0, optimizer, closure)
    return audit


class ManualOptimisationTrainer:
    """What a generator method's ``training_step`` asks of its trainer, for one step outside one
    (a ``Trainer`` cannot run on ``meta``): its schedule's length, the step counters, the world.
    ``attach`` also stands in for Lightning's manual-optimisation calls, as they run at 32-bit
    precision on one device: ``manual_backward`` is ``backward``; toggling an optimiser turns off
    ``requires_grad`` of the other optimisers' parameters until it is untoggled, as
    ``LightningModule.toggle_optimizer`` does (so a backward computes the gradients it would);
    nothing is logged."""

    estimated_stepping_batches, num_training_batches, max_epochs, log_every_n_steps = 1000, 10, 100, 50
    global_step = current_epoch = 0
    world_size = accumulate_grad_batches = 1
    ckpt_path = None

    def __init__(self, model) -> None:
        self.lightning_module = model

    def attach(self, model) -> list:
        """``model`` stepping outside Lightning; returns its optimisers (multi-tensor, as on a GPU)."""
        model._trainer = self
        optimizers, schedulers = model.configure_optimizers()
        schedulers = [s["scheduler"] if isinstance(s, dict) else s for s in schedulers]
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                if "foreach" in group:
                    group["foreach"] = True
        model.optimizers = lambda use_pl_optimizer=True: optimizers
        model.lr_schedulers = lambda: schedulers
        model.manual_backward = lambda loss, *args, **kwargs: loss.backward()
        toggled: list[dict] = []

        def toggle_optimizer(optimizer) -> None:
            own = {id(p) for group in optimizer.param_groups for p in group["params"]}
            others = {p: p.requires_grad for o in optimizers for group in o.param_groups for p in group["params"]
                      if id(p) not in own}
            for p in others:
                p.requires_grad_(False)
            toggled.append(others)

        def untoggle_optimizer(optimizer) -> None:
            for p, requires_grad in toggled.pop().items():
                p.requires_grad_(requires_grad)

        model.toggle_optimizer, model.untoggle_optimizer = toggle_optimizer, untoggle_optimizer
        model.log = model.log_dict = lambda *args, **kwargs: None
        return optimizers


def audit_manual_step(model, batch: dict, batch_idx: int) -> HostRoundTrips:
    """One ``training_step`` of a manually optimised method (its own updates inside) on ``meta``, audited."""
    with HostRoundTrips() as audit, autocast_on_meta():
        model.training_step(batch, batch_idx)
    return audit


def prepare(config: str, root_dir: str, batch_size: int, *extra: str):
    """A recipe's datamodule, its batches (the first already made, so the constants are on the
    device), and its model and optimiser on ``meta``."""
    from hardcl_lightning.optim import build_optimizer

    dm, model = build_recipe(config, root_dir, batch_size, *extra)
    batches = iter(dm.train_dataloader())
    audit_views(dm, batches)
    model.train()
    model.to("meta")
    if not model.automatic_optimization:  # its optimisers: what ManualOptimisationTrainer.attach returns
        return dm, batches, model, ManualOptimisationTrainer(model).attach(model)
    optimizer = build_optimizer(model.optimizer_name, model.param_groups(), 0.1, model.weight_decay, model.sgd_momentum,
                                model.lars_eta, model.lars_clip_lr)
    for group in optimizer.param_groups:  # torch's SGD and AdamW take their multi-tensor path on a GPU by default
        if "foreach" in group:
            group["foreach"] = True
    return dm, batches, model, optimizer


def main() -> None:
    import argparse
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES + GENERATOR_RECIPES), choices=RECIPES + GENERATOR_RECIPES)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    if reason := unsupported():
        parser.error(reason)
    import logging

    from hardcl_lightning.quiet import silence_known_noise

    silence_known_noise()
    logging.getLogger("lightning").setLevel(logging.WARNING)
    print(f"{machine()}; batch {args.batch_size}; one step of each recipe on the meta device")
    print("| recipe | views: kernels | views: host round trips | step: kernels | step: host round trips |")
    print("|---|---|---|---|---|")
    for config in args.recipes:
        if reason := unsupported(config):
            print(f"| {config} | skipped: {reason} | | | |", flush=True)
            continue
        dm, batches, model, optimizer = prepare(config, tempfile.mkdtemp(prefix="host_sync_"), args.batch_size)
        batch, views = audit_views(dm, batches)
        if isinstance(optimizer, list):  # manual optimisation: a first step copies the GAN's constants
            audit_manual_step(model, batch, 0)  # a logging step (gradient norms); the next one is a plain step
            step = audit_manual_step(model, batch, 1)
        else:
            step = audit_step(model, optimizer, batch)
        found = lambda a: ", ".join(f"{n} {k}" for k, n in sorted(a.found.items())) or "0"  # noqa: E731
        print(f"| {config} | {views.kernels} | {found(views)} | {step.kernels} | {found(step)} |", flush=True)


if __name__ == "__main__":
    main()
