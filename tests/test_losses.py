import math

import pytest
import torch
import torch.nn.functional as F

from hardcl_lightning.losses import byol_regression, info_nce, negative_cosine, nt_xent


def naive_nt_xent(a, b, t):
    """Per-sample NT-Xent by explicit loops over anchors and candidates."""
    z = F.normalize(torch.cat([a, b]).double(), dim=1)
    n = a.shape[0]
    per_anchor = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        per_anchor.append(-math.log(num / den))
    return torch.tensor([(per_anchor[i] + per_anchor[i + n]) / 2 for i in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_matches_naive_loop(t):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    got = nt_xent(a, b, t, reduction="none")
    assert torch.allclose(got.double(), naive_nt_xent(a, b, t), atol=1e-5)


def test_nt_xent_per_sample_mean_is_batch_loss():
    a, b = torch.randn(9, 4), torch.randn(9, 4)
    assert torch.allclose(nt_xent(a, b, 0.2, reduction="none").mean(), nt_xent(a, b, 0.2))


def test_nt_xent_in_bf16_autocast_is_float32():
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nt_xent(a.bfloat16(), b.bfloat16(), 0.1, reduction="none")
    assert out.dtype == torch.float32
    assert torch.allclose(out, nt_xent(a.bfloat16().float(), b.bfloat16().float(), 0.1, reduction="none"), atol=1e-5)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        nt_xent(torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="reduction"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), reduction="sum")


def test_info_nce_matches_naive_loop():
    g = torch.Generator().manual_seed(2)
    q, k, queue = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.randn(10, 6, generator=g)
    t = 0.2
    got = info_nce(q, k, queue, t, reduction="none")
    qn, kn, nn_ = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    for i in range(4):
        pos = math.exp(float(qn[i] @ kn[i]) / t)
        negs = sum(math.exp(float(qn[i] @ nn_[j]) / t) for j in range(10))
        assert got[i].item() == pytest.approx(-math.log(pos / (pos + negs)), rel=1e-5)


def test_info_nce_extra_logits_are_extra_negatives():
    q, k, queue = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    extra = torch.full((3, 2), -1e9)  # negatives with zero weight change nothing
    assert torch.allclose(info_nce(q, k, queue, extra_negative_logits=extra), info_nce(q, k, queue))
    hard = torch.full((3, 2), 5.0)  # hard extra negatives raise the loss
    assert (info_nce(q, k, queue, extra_negative_logits=hard, reduction="none") > info_nce(q, k, queue, reduction="none")).all()


def test_cosine_losses_hand_computed_and_stop_gradient():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0], [0.0, -1.0]], requires_grad=True)
    assert torch.allclose(negative_cosine(p, z, reduction="none"), torch.tensor([-1 / math.sqrt(2), 1.0]))
    assert torch.allclose(byol_regression(p, z, reduction="none"), torch.tensor([2 - math.sqrt(2), 4.0]))
    byol_regression(p, z).backward()
    assert z.grad is None and p.grad is not None
