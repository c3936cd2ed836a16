import math

import pytest
import torch

from hardcl_lightning.optim import LARS, build_optimizer, cosine_schedule, split_decay_groups, warmup_cosine


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_cosine_schedule_endpoints():
    assert cosine_schedule(0, 10, 0.99, 1.0) == pytest.approx(0.99)
    assert cosine_schedule(5, 10, 0.99, 1.0) == pytest.approx(0.995)
    assert cosine_schedule(10, 10, 0.99, 1.0) == pytest.approx(1.0)


def test_no_weight_decay_on_bias_and_norm():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = split_decay_groups(m)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"]


def test_lars_step_hand_computed():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([0.6, 0.8]), torch.tensor([0.5])  # |g| = 1
    opt = LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=0.1, momentum=0.9, weight_decay=0.1, eta=0.02)
    opt.step()
    trust = 0.02 * 5 / (1 + 0.1 * 5)
    expected = torch.tensor([3.0, 4.0]) - 0.1 * trust * (torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0]))
    assert torch.allclose(w.detach(), expected)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.1 * 0.5]))  # excluded: plain SGD, no decay


def test_unknown_optimizer_names_choices():
    with pytest.raises(ValueError, match=r"'adam'.*lars"):
        build_optimizer("adam", [{"params": [torch.nn.Parameter(torch.ones(1))]}], 0.1, 0.0)


def test_lars_with_clipping_equals_a_hand_written_clipped_step():
    """solo-learn's clip_lr (LARC's clipping): a layer's LR is min(trust, lr), not lr * trust."""
    for lr, g_scale in [(0.4, 1.0), (0.05, 1.0), (0.4, 1e-4)]:  # trust < lr, trust > lr, trust >> lr
        w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
        g = torch.tensor([0.6, 0.8]) * g_scale
        w.grad = g.clone()
        opt = LARS([{"params": [w]}], lr=lr, momentum=0.9, weight_decay=1e-4, eta=0.02, clip_lr=True)
        opt.step()
        trust = 0.02 * 5 / (float(g.norm()) + 1e-4 * 5)
        layer_lr = min(trust, lr)
        expected = torch.tensor([3.0, 4.0]) - layer_lr * (g + 1e-4 * torch.tensor([3.0, 4.0]))
        assert torch.allclose(w.detach(), expected, atol=1e-7), (lr, g_scale)


def test_lars_clip_lr_reaches_the_optimizer_from_the_method_and_the_solo_learn_configs():
    from pathlib import Path


    from hardcl_lightning.cli import config_chain
    from hardcl_lightning.methods import SimCLR

    m = SimCLR(backbone="resnet_tiny", optimizer="lars", lars_clip_lr=True, scale_lr=False)
    opt = build_optimizer(m.optimizer_name, m.param_groups(), 0.4, m.weight_decay, lars_clip_lr=m.lars_clip_lr)
    assert all(g["clip_lr"] for g in opt.param_groups)
    configs = Path(__file__).parents[1] / "configs"
    for name in ("simclr_cifar10", "byol_cifar10", "dino_cifar10", "hvs_simclr", "hvs_byol", "hvs_dino"):
        args = {}
        for _, data in config_chain(configs / f"{name}.yaml"):  # a composed config: its base recipe, then itself
            args.update(data.get("model", {}).get("init_args", {}))
        assert args["optimizer"] == "lars" and args["lars_clip_lr"] is True, name


def reference_lars_step(params, grads, bufs, lr, momentum, wd, eta, clip, nesterov, exclude):
    """You et al. 2017's LARS step (LARC's clipping with ``clip``), one parameter at a time in
    Python floats: the independent reference of the multi-tensor implementation."""
    new_params = []
    for i, (w, g) in enumerate(zip(params, grads)):
        if g is None:
            new_params.append(w.clone())
            continue
        d = g.clone()
        if not exclude:
            w_norm, g_norm = float(w.norm()), float(g.norm())
            trust = eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
            if clip:
                trust = min(trust / lr, 1.0)
            d = (g + wd * w) * trust
        bufs[i] = d.clone() if bufs[i] is None else momentum * bufs[i] + d
        new_params.append(w - lr * (d + momentum * bufs[i] if nesterov else bufs[i]))
    return new_params


@pytest.mark.parametrize("clip, nesterov", [(False, False), (True, False), (False, True), (True, True)])
def test_lars_matches_the_per_parameter_reference_over_several_steps(clip, nesterov):
    """Layers of different shapes and gradient scales, a zero weight (trust ratio 1), a parameter
    without a gradient on the first step, a no-decay group; the gradients are left as they were."""
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (16, 8), (5,)]
    decay = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes] + [torch.nn.Parameter(torch.zeros(4, 4))]
    no_decay = [torch.nn.Parameter(torch.randn(6, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]
    lr, momentum, wd, eta = 0.3, 0.9, 5e-4, 0.02
    opt = LARS([{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}], lr=lr,
               momentum=momentum, weight_decay=wd, eta=eta, clip_lr=clip, nesterov=nesterov)
    ref = {"decay": [p.detach().clone() for p in decay], "no_decay": [p.detach().clone() for p in no_decay]}
    bufs = {"decay": [None] * len(decay), "no_decay": [None] * len(no_decay)}
    for step in range(4):
        for k, p in enumerate(decay + no_decay):
            p.grad = None if (step == 0 and k == 1) else torch.randn(p.shape, generator=g) * 10.0 ** (k - 2)
        grads = {"decay": [None if p.grad is None else p.grad.clone() for p in decay],
                 "no_decay": [p.grad.clone() for p in no_decay]}
        opt.step()
        ref["decay"] = reference_lars_step(ref["decay"], grads["decay"], bufs["decay"], lr, momentum, wd, eta, clip, nesterov, False)
        ref["no_decay"] = reference_lars_step(ref["no_decay"], grads["no_decay"], bufs["no_decay"], lr, momentum, 0.0, eta, clip,
                                              nesterov, True)
        for name, group in (("decay", decay), ("no_decay", no_decay)):
            for p, want, grad in zip(group, ref[name], grads[name]):
                assert torch.allclose(p.detach(), want, rtol=1e-5, atol=1e-6), (step, name)
                assert grad is None or torch.equal(p.grad, grad)  # the step does not write the gradient
