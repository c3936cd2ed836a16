"""No training step of the GPU recipes makes the host wait for the accelerator, except once.

A GPU step is fast only while the host queues kernels ahead of the device; every host read of a
device value or blocking host-to-device copy drains the queue (``benchmarks/host_sync.py`` says
how they are found without a GPU: on the ``meta`` device). With ``augment_on: device`` the whole
step runs there, views included, so these tests hold the step to one round trip: the non-finite
loss guard's, which must read the loss before the update to keep NaNs out of the weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from host_sync import (GENERATOR_RECIPES, RECIPES, HostRoundTrips, audit_manual_step, audit_step,  # noqa: E402
                       audit_views, prepare, unsupported)

# the audit runs a step on the meta device, which older torch cannot do for every op
pytestmark = pytest.mark.skipif(unsupported() is not None, reason=str(unsupported()))

GUARD = "_local_scalar_dense at base.py"  # NonFiniteLossGuard.nonfinite: the one read a step keeps


@pytest.mark.parametrize("config", RECIPES)
def test_a_training_step_reads_nothing_on_the_host_but_the_loss_guard(config, tmp_path):
    """The recipe at its real size (ResNet-18, its heads, optimiser, queue; free on ``meta``):
    after the first batch, making the views and the whole step (forward, loss, backward, the
    optimiser, the EMA update, MoCo's enqueue, HVS's selection and its logged statistics)."""
    if reason := unsupported(config):
        pytest.skip(reason)
    dm, batches, model, optimizer = prepare(config, str(tmp_path), 32)
    batch, views = audit_views(dm, batches)
    assert views.found == {}, f"making the views: {dict(views.found)}"
    step = audit_step(model, optimizer, batch)
    kept = {k: n for k, n in step.found.items() if not k.startswith(GUARD)}
    assert kept == {}, f"host round trips of a {config} step: {kept}"
    assert sum(n for k, n in step.found.items() if k.startswith(GUARD)) == 1  # the guard reads the loss once


@pytest.mark.parametrize("config", GENERATOR_RECIPES)
def test_a_generator_step_reads_one_loss_per_update(config, tmp_path):
    """The generator methods update the main model, the generator(s) and the discriminator in one
    step, each behind its own non-finite guard: one read per update, nothing else (the pair
    generators' relative similarity target included), on a plain step after a logging step."""
    dm, batches, model, optimizers = prepare(config, str(tmp_path), 32)
    batch, views = audit_views(dm, batches)
    assert views.found == {}, f"making the views: {dict(views.found)}"
    audit_manual_step(model, batch, 0)  # the first: the GAN's constants reach the device, gradient norms logged
    step = audit_manual_step(model, batch, 1)
    kept = {k: n for k, n in step.found.items() if not k.startswith(GUARD)}
    assert kept == {}, f"host round trips of a {config} step: {kept}"
    assert sum(n for k, n in step.found.items() if k.startswith(GUARD)) == len(optimizers)  # main (if any), G, D


def test_views_from_images_kept_on_the_device_read_nothing_on_the_host(tmp_path):
    dm, batches, _, _ = prepare("hvs_dino", str(tmp_path), 32, "--data.images_on_device=true")
    _, audit = audit_views(dm, batches)
    assert audit.found == {}


def test_the_audit_finds_each_kind_of_round_trip():
    """The detector itself (so the tests above can fail): each way of making the host wait is
    found; a non-blocking copy and reads of CPU tensors are not."""
    x = torch.rand(4, 3, device="meta")
    host = torch.ones(3)
    with HostRoundTrips() as audit:
        float(x.sum())  # a scalar read
        x[x > 0.5]  # a data-dependent size
        torch.bincount(torch.zeros(4, dtype=torch.long, device="meta"), minlength=3)
        x + host.to(x)  # a CPU constant copied per call
        torch.tensor([1.0, 2.0], device=x.device)  # host data made on the device
        x.sum(0).tolist()  # a read back to the host
        x + host.to(x.device, non_blocking=True)  # not waited for
        int(torch.ones((), dtype=torch.long))  # on the CPU: no accelerator to wait for
    kinds = sorted(k.split(" at ")[0] for k in audit.found)
    assert kinds == ["_local_scalar_dense", "bincount", "blocking copy cpu->meta", "blocking copy meta->cpu",
                     "boolean-mask indexing", "torch.tensor from host data"], kinds
    assert audit.kernels >= 5  # sum, compare, the masked read, bincount, the additions
