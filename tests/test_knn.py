import math

import torch
import torch.nn.functional as F

from hardcl_lightning.callbacks.knn import weighted_knn_predict


def brute_force_knn(bank, bank_y, queries, num_classes, k, t):
    preds = []
    for q in queries:
        sims = [float(F.cosine_similarity(q, b, dim=0)) for b in bank]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(bank_y[i])] += math.exp(sims[i] / t)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def test_weighted_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    bank, bank_y = torch.randn(60, 8, generator=g), torch.randint(0, 4, (60,), generator=g)
    queries = torch.randn(25, 8, generator=g)
    for k, t in [(1, 0.07), (5, 0.07), (20, 0.5)]:
        got = weighted_knn_predict(bank, bank_y, queries, 4, k=k, temperature=t, chunk_size=7)
        assert torch.equal(got, brute_force_knn(bank, bank_y, queries, 4, k, t))


def test_knn_k_larger_than_bank_uses_whole_bank():
    bank, y = torch.eye(3), torch.tensor([0, 1, 1])
    pred = weighted_knn_predict(bank, y, torch.tensor([[1.0, 0.0, 0.0]]), 2, k=200, temperature=0.07)
    assert pred.tolist() == [0]
