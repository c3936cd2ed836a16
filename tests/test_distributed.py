"""NT-Xent with cross-rank negatives: 2 gloo processes x batch B == 1 process x batch 2B.

DDP averages gradients over ranks; with the autograd-aware gather summing gradients in its
backward, the result must equal the single-process gradient of the global-batch mean loss.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hardcl_lightning.distributed import gather_no_grad
from hardcl_lightning.losses import nt_xent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, w, x_a, x_b, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = x_a.shape[0] // world
        sl = slice(rank * b, (rank + 1) * b)
        w = w.clone().requires_grad_(True)
        loss = nt_xent(x_a[sl] @ w, x_b[sl] @ w, temperature=0.3)
        loss.backward()
        grad = w.grad.clone()
        dist.all_reduce(grad)  # what DDP does: average over ranks
        grad /= world
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        uneven = gather_no_grad(torch.full((rank + 1, 2), float(rank)))  # ranks with 1 and 2 rows
        if rank == 0:
            out["grad"], out["loss"], out["uneven"] = grad, mean_loss / world, uneven
    finally:
        dist.destroy_process_group()


def test_two_rank_nt_xent_matches_single_process():
    torch.manual_seed(0)
    w, x_a, x_b = torch.randn(6, 4), torch.randn(8, 6), torch.randn(8, 6)
    w1 = w.clone().requires_grad_(True)
    ref_loss = nt_xent(x_a @ w1, x_b @ w1, temperature=0.3)
    ref_loss.backward()

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), w, x_a, x_b, out), nprocs=2, join=True)
        grad, loss, uneven = out["grad"], out["loss"], out["uneven"]
    assert torch.allclose(loss, ref_loss.detach(), atol=1e-5)
    assert torch.allclose(grad, w1.grad, atol=1e-5), (grad - w1.grad).abs().max()
    assert uneven.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]


class _FakeModule(torch.nn.Module):
    """What extract_features needs of a LightningModule: a backbone, a device and a feature dim."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Flatten()
        self.device = torch.device("cpu")
        self.feature_dim = 3


def _bank_worker(rank, world, port, out):
    from hardcl_lightning.callbacks.features import extract_features

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        images = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
        loader = [{"image": images[i : i + 2], "label": torch.arange(i, min(i + 2, 7))} for i in range(0, 7, 2)]
        feats, labels = extract_features(_FakeModule(), loader)
        if rank == 0:
            out["feats"], out["labels"] = feats, labels
    finally:
        dist.destroy_process_group()


def test_knn_bank_holds_every_image_once_across_ranks():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_bank_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        feats, labels = out["feats"], out["labels"]
    assert sorted(labels.tolist()) == list(range(7))
    for f, y in zip(feats, labels):
        assert torch.equal(f, torch.arange(3, dtype=torch.float32) + 3 * y)


def _loader_bank_worker(rank, world, port, out):
    from torch.utils.data import DataLoader

    from hardcl_lightning.callbacks.features import extract_features

    class Recording(torch.utils.data.Dataset):
        def __init__(self):
            self.read = []

        def __len__(self):
            return 7

        def __getitem__(self, i):
            self.read.append(i)
            return {"image": torch.arange(3, dtype=torch.float32) + 3 * i, "label": i}

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = Recording()
        feats, labels = extract_features(_FakeModule(), DataLoader(ds, batch_size=2))
        out[f"read{rank}"] = sorted(ds.read)
        if rank == 0:
            out["feats"], out["labels"] = feats, labels
    finally:
        dist.destroy_process_group()


def test_knn_bank_from_a_dataloader_reads_each_image_on_one_rank_only():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_loader_bank_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        assert out["read0"] == [0, 2, 4, 6] and out["read1"] == [1, 3, 5]
        feats, labels = out["feats"], out["labels"]
    assert sorted(labels.tolist()) == list(range(7))
    for f, y in zip(feats, labels):
        assert torch.equal(f, torch.arange(3, dtype=torch.float32) + 3 * y)
