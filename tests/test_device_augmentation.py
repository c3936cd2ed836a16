"""``augment_on: device``: the loader sends uint8 images, the views are made where the batch lands.

The ops are those of ``hardcl_lightning.data.differentiable`` (tested against torchvision in
tests/test_differentiable.py); here: the batch layout is the CPU path's, recipes with known
outcomes give them exactly, and a training run goes through Lightning's transfer hook.
"""

import lightning as L
import pytest
import torch

from hardcl_lightning.data import ImageFolderDataModule, ShapesDataModule
from hardcl_lightning.data.transforms import ViewSpec
from hardcl_lightning.methods import HVSSimCLR


def shapes(**kw):
    base = dict(num_train=40, num_val=10, batch_size=8, num_workers=0)
    return ShapesDataModule(**{**base, **kw})


def normalised(dm, raw):
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    return (raw.float() / 255 - mean) / std


def test_device_batches_have_the_cpu_layout():
    kw = dict(num_views=4, augmentation="dino", num_local_crops=2, with_image=True)
    cpu = next(iter(shapes(**kw).train_dataloader()))
    dm = shapes(**kw, augment_on="device")
    raw = next(iter(dm.train_dataloader()))
    assert raw["raw"].dtype == torch.uint8 and "views" not in raw
    dev = dm.on_after_batch_transfer(raw, 0)
    assert sorted(dev) == sorted(cpu)
    assert [v.shape for v in dev["views"]] == [v.shape for v in cpu["views"]]
    assert dev["boxes"].shape == cpu["boxes"].shape and dev["image"].shape == cpu["image"].shape
    assert (dev["boxes"] >= 0).all() and (dev["boxes"] <= 32 + 1e-4).all()
    assert (dev["boxes"][..., 2:] > dev["boxes"][..., :2]).all()
    assert torch.equal(dev["index"], raw["index"])


def test_identity_recipe_gives_the_normalised_image_and_full_boxes():
    dm = shapes(augmentation="none", augment_on="device")
    raw = next(iter(dm.train_dataloader()))
    images = raw["raw"].clone()
    dev = dm.on_after_batch_transfer(raw, 0)
    for view in dev["views"]:
        assert torch.allclose(view, normalised(dm, images), atol=1e-5)
    assert torch.allclose(dev["boxes"], torch.tensor([0.0, 0.0, 32.0, 32.0]).expand_as(dev["boxes"]), atol=1e-4)
    cpu = shapes(augmentation="none")
    first = int(dev["index"][0])
    item = cpu.train_dataloader().dataset[first]  # the CPU (PIL) path on the same image
    assert torch.allclose(item["views"][0], dev["views"][0][0], atol=1e-5)

def test_flip_and_grayscale_recipes_act_on_every_sample():
    dm = shapes(augment_on="device")
    dm.view_specs = [ViewSpec(32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=1.0, jitter_prob=0.0,
                              grayscale_prob=1.0, blur_prob=0.0)] * 2
    raw = next(iter(dm.train_dataloader()))
    images = raw["raw"].clone()
    view = dm.on_after_batch_transfer(raw, 0)["views"][0]
    pixels = view * torch.tensor(dm.std).view(1, 3, 1, 1) + torch.tensor(dm.mean).view(1, 3, 1, 1)
    gray = (images.float() / 255 * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(pixels, gray.flip(-1).expand_as(pixels), atol=1e-4)


def test_hvs_trains_on_device_made_views_through_the_trainer(tmp_path):
    dm = shapes(num_views=4, augment_on="device")
    model = HVSSimCLR(backbone="resnet_tiny", cifar_stem=True, proj_hidden_dim=16, proj_output_dim=8, num_views=4,
                      optimizer="adamw", lr=1e-3, batch_size=8)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((len(batch["views"]), tuple(batch["boxes"].shape), "raw" in batch))

    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[Spy()], default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert seen == [(4, (8, 4, 4), False)] * 2
    assert model.last_selection["index_a"].shape == (8,)


def test_images_of_mixed_sizes_need_a_device_input_size(tmp_path):
    """An ImageFolder tree of mixed sizes: without device_input_size the batch error says what to
    set; with it, every raw image is that square (decoded and resized on the CPU)."""
    from PIL import Image

    for i, (w, h) in enumerate([(40, 30), (50, 64), (32, 32), (64, 48)]):
        (tmp_path / "c").mkdir(exist_ok=True)
        Image.fromarray((torch.rand(h, w, 3) * 255).to(torch.uint8).numpy()).save(tmp_path / "c" / f"{i}.png")
    kw = dict(train_dir=str(tmp_path), batch_size=4, num_workers=0, image_size=16, augment_on="device")
    with pytest.raises(ValueError, match="this batch has sizes .* set data.init_args.device_input_size"):
        next(iter(ImageFolderDataModule(**kw).train_dataloader()))
    dm = ImageFolderDataModule(**kw, device_input_size=24)
    batch = next(iter(dm.train_dataloader()))
    assert batch["raw"].shape == (4, 3, 24, 24)
    assert [v.shape for v in dm.on_after_batch_transfer(batch, 0)["views"]] == [(4, 3, 16, 16)] * 2
    with pytest.raises(ValueError, match="augment_on must be one of \\['cpu', 'device'\\], got 'gpu'"):
        shapes(augment_on="gpu")
    with pytest.raises(ValueError, match="device_input_size must be >= 1 or None, got 0"):
        shapes(augment_on="device", device_input_size=0)
