import pytest
import torch
import torch.nn.functional as F

from hardcl_lightning.methods import MoCoV2


def tiny_moco(**kw):
    return MoCoV2(backbone="resnet_tiny", cifar_stem=True, proj_hidden_dim=32, proj_output_dim=8, **kw)


def test_queue_is_a_fifo_ring_buffer():
    m = tiny_moco(queue_size=10)
    reference = [row.clone() for row in m.queue]  # naive FIFO: oldest entries overwritten in order
    ptr = 0
    for step in range(5):
        keys = torch.randn(4, 8)
        m.enqueue(keys)
        for k in keys:
            reference[ptr] = k
            ptr = (ptr + 1) % 10
        assert torch.equal(m.queue, torch.stack(reference))
        assert int(m.queue_ptr) == ptr


def test_queue_rejects_more_keys_than_it_holds():
    m = tiny_moco(queue_size=4)
    with pytest.raises(ValueError, match="queue_size 4"):
        m.enqueue(torch.randn(5, 8))


def test_pair_loss_is_symmetric_infonce_and_training_step_enqueues_view0_keys():
    torch.manual_seed(0)
    m = tiny_moco(queue_size=16)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    outs = m.embed(views)
    la, lb = m.pair_loss(outs[0], outs[1]), m.pair_loss(outs[1], outs[0])
    assert la.shape == (4,) and torch.allclose(la, lb)
    assert not outs[0]["k"].requires_grad and outs[0]["q"].requires_grad
    before = m.queue.clone()
    m.after_training_loss(outs)
    assert torch.allclose(m.queue[:4], outs[0]["k"]) and torch.equal(m.queue[4:], before[4:])


def test_momentum_update_formula():
    m = tiny_moco(queue_size=8)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    online = [p.clone() for p in m.backbone.parameters()]
    target = [p.clone() for p in m.momentum_backbone.parameters()]
    m.momentum_update(0.9)
    for o, t, new in zip(online, target, m.momentum_backbone.parameters()):
        assert torch.allclose(new, 0.9 * t + 0.1 * o)


def test_queue_size_must_divide_by_the_global_batch(tmp_path):
    import lightning as L

    from hardcl_lightning.data import ShapesDataModule

    m = tiny_moco(queue_size=64, batch_size=24)
    dm = ShapesDataModule(num_train=48, num_val=12, batch_size=24, num_workers=0, image_size=16)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"queue_size 64 is not a multiple of the global batch 24"):
        trainer.fit(m, dm)


def naive_infonce(q, k, negatives, t):
    """-log(e^{q.k/t} / (e^{q.k/t} + sum_n e^{q.n/t})) for one query, with a Python sum over negatives."""
    q, k = F.normalize(q, dim=0), F.normalize(k, dim=0)
    pos = torch.exp(q @ k / t)
    neg = sum(torch.exp(q @ F.normalize(n, dim=0) / t) for n in negatives)
    return -torch.log(pos / (pos + neg))


def test_queue_records_key_indices_and_own_keys_are_not_negatives():
    """Each queued key keeps its dataset index; a query's loss leaves out the queued keys of its own
    image (earlier epochs' keys), computed here by a loop over the other entries."""
    torch.manual_seed(0)
    m = tiny_moco(queue_size=12, key_bn="batch")
    m.enqueue(torch.randn(4, 8), torch.tensor([7, 3, 7, 9]))
    assert m.queue_index.tolist() == [7, 3, 7, 9] + [-1] * 8
    q, k = torch.randn(2, 8), torch.randn(2, 8)
    index = torch.tensor([7, 5])
    out_a = {"q": q, "k": k, "index": index}
    out_b = {"q": k.flip(0), "k": q.flip(0), "index": index}
    loss = m.pair_loss(out_a, out_b)
    for b in range(2):
        others = [m.queue[j] for j in range(12) if int(m.queue_index[j]) != int(index[b])]
        assert len(others) == (10 if b == 0 else 12)
        ref = 0.5 * (naive_infonce(q[b], out_b["k"][b], others, m.temperature)
                     + naive_infonce(out_b["q"][b], k[b], others, m.temperature))
        assert torch.allclose(loss[b], ref, atol=1e-5), b
    unmasked = tiny_moco(queue_size=12, key_bn="batch", exclude_own_keys=False)
    assert unmasked.sample_info({"index": index}) == {}
    assert torch.equal(m.sample_info({"index": index})["index"], index)


def test_training_step_enqueues_the_batch_indices():
    torch.manual_seed(0)
    m = tiny_moco(queue_size=16)
    batch = {"views": [torch.randn(4, 3, 16, 16) for _ in range(2)], "label": torch.zeros(4, dtype=torch.long),
             "index": torch.tensor([10, 11, 12, 13])}
    outs = m.embed_training_views(batch)
    assert all(torch.equal(o["index"], batch["index"]) for o in outs)
    m.after_training_loss(outs)
    assert m.queue_index[:4].tolist() == [10, 11, 12, 13] and m.queue_index[4:].eq(-1).all()


def test_checkpoint_from_before_queue_indices_loads_with_unknown_indices():
    m = tiny_moco(queue_size=8)
    state = {k: v for k, v in m.state_dict().items() if k != "queue_index"}
    checkpoint = {"state_dict": state}
    m.on_load_checkpoint(checkpoint)
    fresh = tiny_moco(queue_size=8)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert fresh.queue_index.eq(-1).all()
