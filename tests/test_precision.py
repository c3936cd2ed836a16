"""Mixed precision on the CPU (bf16), channels-last and torch.compile options."""

import lightning as L
import pytest
import torch

from hardcl_lightning.gan import GANOptions
from hardcl_lightning.data import ShapesDataModule
from hardcl_lightning.losses import dino_cross_entropy, info_nce, multi_positive_nt_xent, nt_xent
from hardcl_lightning.methods import DINO, HardSampleCL, MoCoV2, SimCLR

TINY = dict(backbone="resnet_tiny", cifar_stem=True, backbone_kwargs={"widths": (8, 16, 16, 16)}, batch_size=16,
            optimizer="adamw", lr=1e-3, warmup_epochs=0.0)
HEADS = {SimCLR: dict(proj_hidden_dim=32, proj_output_dim=16), MoCoV2: dict(proj_hidden_dim=32, proj_output_dim=16, queue_size=64),
         DINO: dict(proj_hidden_dim=32, bottleneck_dim=16, num_prototypes=64),
         HardSampleCL: dict(proj_hidden_dim=32, proj_output_dim=16, gan=GANOptions(latent_dim=16, g_channels=8, d_channels=8))}


def fit(model, precision="32-true", batches=2):
    dm = ShapesDataModule(num_train=64, num_val=32, batch_size=16, num_workers=0, num_views=model.num_views, crop_scale=(0.4, 1.0))
    t = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
                  logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    t.fit(model, dm)
    return t


def test_losses_are_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        za, zb = torch.nn.Linear(8, 8)(a), torch.nn.Linear(8, 8)(b)
        assert za.dtype == torch.bfloat16
        losses = [nt_xent(za, zb), info_nce(za, zb, torch.randn(10, 8), 0.2), multi_positive_nt_xent(torch.stack([za, zb], 1)),
                  dino_cross_entropy(za, zb, torch.zeros(1, 8), 0.1, 0.04)]
    assert all(loss.dtype == torch.float32 for loss in losses)


@pytest.mark.parametrize("cls", [SimCLR, MoCoV2, DINO, HardSampleCL])
def test_bf16_mixed_training_runs_on_cpu(cls):
    torch.manual_seed(0)
    model = cls(**TINY, **HEADS[cls])
    before = [p.detach().clone() for p in model.backbone.parameters()]
    t = fit(model, "bf16-mixed")
    assert torch.isfinite(torch.as_tensor(float(t.logged_metrics["train/loss"])))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    plain = SimCLR(**TINY, **HEADS[SimCLR])
    torch.manual_seed(0)
    cl = SimCLR(**TINY, **HEADS[SimCLR], channels_last=True)
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), cl.eval()
    assert cl.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(plain(x), cl(x), atol=1e-5)
    fit(cl, batches=1)


def test_compiled_backbone_trains_and_keeps_checkpoint_keys():
    torch.manual_seed(0)
    model = SimCLR(**TINY, **HEADS[SimCLR], compile_backend="eager")
    keys = set(model.state_dict())
    fit(model, batches=1)
    assert model._compiled and set(model.state_dict()) == keys
    with pytest.raises(ValueError, match="unknown compile_backend 'fast'"):
        SimCLR(**TINY, **HEADS[SimCLR], compile_backend="fast")
