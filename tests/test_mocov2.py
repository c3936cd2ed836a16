import pytest
import torch

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
