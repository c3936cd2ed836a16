"""Which ops of a training step make the host wait for the accelerator, and how many kernels the
step launches: counted on a CPU.

    python benchmarks/host_sync.py                  # the GPU recipes at their real size (ResNet-18, batch 256)
    python benchmarks/host_sync.py --recipes simclr_cifar10 hvs_simclr --batch-size 32

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
recipe to one round trip a step (the non-finite loss guard's).
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
# allocation and bookkeeping ops that launch no kernel
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
             "lift_fresh_copy", "_local_scalar_dense", "set_", "resize_"}

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


def prepare(config: str, root_dir: str, batch_size: int, *extra: str):
    """A recipe's datamodule, its batches (the first already made, so the constants are on the
    device), and its model and optimiser on ``meta``."""
    from hardcl_lightning.optim import build_optimizer

    dm, model = build_recipe(config, root_dir, batch_size, *extra)
    batches = iter(dm.train_dataloader())
    audit_views(dm, batches)
    model.train()
    model.to("meta")
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
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    import logging

    from hardcl_lightning.quiet import silence_known_noise

    silence_known_noise()
    logging.getLogger("lightning").setLevel(logging.WARNING)
    print(f"{machine()}; batch {args.batch_size}; one step of each recipe on the meta device")
    print("| recipe | views: kernels | views: host round trips | step: kernels | step: host round trips |")
    print("|---|---|---|---|---|")
    for config in args.recipes:
        dm, batches, model, optimizer = prepare(config, tempfile.mkdtemp(prefix="host_sync_"), args.batch_size)
        batch, views = audit_views(dm, batches)
        step = audit_step(model, optimizer, batch)
        found = lambda a: ", ".join(f"{n} {k}" for k, n in sorted(a.found.items())) or "0"  # noqa: E731
        print(f"| {config} | {views.kernels} | {found(views)} | {step.kernels} | {found(step)} |", flush=True)


if __name__ == "__main__":
    main()
