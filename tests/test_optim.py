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
