"""``augment_on: device``: the loader sends uint8 images, the views are made where the batch lands.

The ops are those of ``hardcl_lightning.data.differentiable`` with ``match_torchvision=True``
(each tested against torchvision in tests/test_differentiable.py, the crop boxes against
``RandomResizedCrop.get_params``'s distribution); here: the batch layout is the CPU path's,
recipes with known outcomes give them exactly, the boxes are the views' crops, a seed repeats
the views, evaluation images do not change, and every tiny config trains on device-made views.
With ``images_on_device`` the loader sends indices into the images kept on the device: the same
batches as the loader path's, every image once an epoch, split between DDP ranks.
"""

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from hardcl_lightning.cli import build_cli
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


def test_solarize_and_jitter_probabilities_follow_the_recipe():
    """Solarize inverts exactly the pixels >= 128 of the uint8 image (``RandomSolarize(128)``);
    jitter, grayscale and solarize each hit about their probability of the samples."""
    from torchvision.transforms.v2 import functional as TF

    from hardcl_lightning.data.differentiable import DifferentiableViewAugmentation

    raw = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    spec = ViewSpec(8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
                    solarize_prob=1.0)
    views, _ = DifferentiableViewAugmentation(spec, (0, 0, 0), (1, 1, 1), match_torchvision=True)(raw.float() / 255)
    assert torch.allclose(views, TF.solarize(raw, 128).float() / 255, atol=1e-6)
    n = 4000
    x = torch.rand(1, 3, 8, 8).expand(n, -1, -1, -1)
    for name, p in [("jitter_prob", 0.8), ("grayscale_prob", 0.2), ("solarize_prob", 0.3)]:
        spec = ViewSpec(8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
                        **{k: 0.0 for k in ("jitter_prob", "grayscale_prob", "solarize_prob") if k != name}, **{name: p})
        views, _ = DifferentiableViewAugmentation(spec, (0, 0, 0), (1, 1, 1), match_torchvision=True)(
            x, torch.Generator().manual_seed(0))
        changed = (views - x).abs().flatten(1).amax(1) > 1e-4
        assert abs(changed.float().mean().item() - p) < 0.03, name


def test_jitter_factors_stay_in_colorjitters_ranges_for_strong_jitter():
    """``ColorJitter(brightness=1.5)`` draws factors in [max(0, 1 - 1.5), 2.5]: never negative, so
    no view is the black image that a factor below 0 would clamp to."""
    from hardcl_lightning.data.differentiable import DifferentiableViewAugmentation

    spec = ViewSpec(8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=1.0, brightness=1.5,
                    contrast=0.0, saturation=0.0, hue=0.0, grayscale_prob=0.0)
    x = torch.rand(1, 3, 8, 8).clamp(0.2, 0.8).expand(2000, -1, -1, -1)
    for match in (True, False):
        views, _ = DifferentiableViewAugmentation(spec, (0, 0, 0), (1, 1, 1), match_torchvision=match)(
            x, torch.Generator().manual_seed(0))
        factor = (views / x).flatten(1).amin(1)  # below the clamp at 1, the view is factor * x
        assert (factor > 0).float().mean() > 0.995 and (views.flatten(1).amax(1) > 0).all(), match


def test_recorded_boxes_are_the_crops_of_the_views():
    """Colour off: each view is torchvision's antialiased resized crop of its recorded box."""
    from torchvision.transforms.v2 import functional as TF

    dm = shapes(augment_on="device", image_size=24, crop_scale=(0.2, 1.0))
    dm.view_specs = [ViewSpec(24, crop_scale=(0.2, 1.0), flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)] * 2
    raw = next(iter(dm.train_dataloader()))
    images = raw["raw"].clone()
    dev = dm.on_after_batch_transfer(raw, 0)
    assert torch.equal(dev["boxes"], dev["boxes"].round())
    for v, view in enumerate(dev["views"]):
        for i in range(images.shape[0]):
            x0, y0, x1, y1 = dev["boxes"][i, v].int().tolist()
            ref = TF.resized_crop(images[i].float() / 255, y0, x0, y1 - y0, x1 - x0, [24, 24], antialias=True)
            assert torch.allclose(view[i], normalised(dm, ref.unsqueeze(0) * 255)[0], atol=1e-4), (v, i)


def test_views_of_one_image_differ_and_a_seed_repeats_them():
    dm = shapes(augment_on="device")
    raw = next(iter(dm.train_dataloader()))

    def views(seed):
        torch.manual_seed(seed)
        out = dm.device_views({**raw, "raw": raw["raw"].clone()})
        return torch.stack(out["views"]), out["boxes"]

    (a, boxes_a), (b, boxes_b), (c, _) = views(0), views(0), views(1)
    assert torch.equal(a, b) and torch.equal(boxes_a, boxes_b)  # a fixed seed: the same views
    assert not torch.allclose(a, c)
    assert ((a[0] - a[1]).flatten(1).abs().amax(1) > 1e-3).all()  # every image's two views differ
    assert (boxes_a[:, 0] != boxes_a[:, 1]).any(1).all()


def test_validation_and_knn_bank_images_do_not_depend_on_augment_on():
    cpu, dev = shapes(), shapes(augment_on="device")
    for name in ("val_dataloader", "bank_dataloader"):
        for x, y in zip(getattr(cpu, name)(), getattr(dev, name)()):
            assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x), name


TINY = sorted(p for p in (Path(__file__).parents[1] / "configs" / "tiny").glob("*.yaml")
              if not p.stem.startswith(("linear_eval", "knn_sweep")))


@pytest.mark.parametrize("config", TINY, ids=lambda p: p.stem)
def test_fast_dev_run_of_each_tiny_config_on_device_made_views(config, tmp_path, monkeypatch):
    """Every method trains a batch from views made by ``augment_on: device`` (the batch reaching
    the model was made from uint8 images after transfer, not by the loader's PIL workers)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["hardcl"])
    cli = build_cli(["--config", str(config), "--trainer.fast_dev_run=true", "--trainer.logger=false",
                     "--data.augment_on=device", "--data.num_workers=0", "--data.num_train=64", "--data.num_val=32",
                     "--data.batch_size=16"], run=False)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(("raw" in batch, len(batch["views"]), tuple(batch["boxes"].shape[:2])))

    cli.trainer.callbacks.append(Spy())
    first = next(iter(cli.datamodule.train_dataloader()))
    assert first["raw"].dtype == torch.uint8 and "views" not in first
    cli.trainer.fit(cli.model, cli.datamodule)
    views = len(cli.datamodule.view_specs)
    assert seen == [(False, views, (16, views))]


def test_images_on_device_give_the_loader_paths_batches():
    """A batch gathered from the images kept on the device is the batch the loader would have sent
    for those indices: with one seed, the same views, boxes, labels and un-augmented images."""
    kw = dict(num_views=4, augmentation="dino", num_local_crops=2, with_image=True, augment_on="device")
    loader_dm, resident_dm = shapes(**kw), shapes(**kw, images_on_device=True)
    batch = next(iter(resident_dm.train_dataloader()))
    assert sorted(batch) == ["label", "raw_index"]  # the loader sends indices only
    index = batch["raw_index"].clone()
    items = [loader_dm.train_dataloader().dataset[int(i)] for i in index]
    sent = {"raw": torch.stack([it["raw"] for it in items]), "label": torch.tensor([it["label"] for it in items]),
            "index": index.clone()}
    torch.manual_seed(3)
    got = resident_dm.on_after_batch_transfer(batch, 0)
    torch.manual_seed(3)
    want = loader_dm.on_after_batch_transfer(sent, 0)
    assert sorted(got) == sorted(want)
    for key in ("boxes", "label", "index", "image"):
        assert torch.equal(got[key], want[key]), key
    assert all(torch.equal(a, b) for a, b in zip(got["views"], want["views"]))


def test_images_on_device_decode_every_image_once_and_each_epoch_reshuffles():
    dm = shapes(images_on_device=True, augment_on="device", num_workers=2)
    loader = dm.train_dataloader()
    made = [dm.on_after_batch_transfer(b, 0) for b in loader]
    ref = ShapesDataModule(num_train=40, num_val=10, batch_size=8, num_workers=0, augment_on="device")
    per_item = ref.train_dataloader().dataset
    images = dm.resident_images(torch.device("cpu"))
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.uint8
    assert all(torch.equal(images[i], per_item[i]["raw"]) for i in range(40))  # the workers' decode = the per-item path
    first = torch.cat([b["index"] for b in made])
    assert sorted(first.tolist()) == list(range(40))  # 5 batches of 8: every image once
    labels = torch.cat([b["label"] for b in made])
    assert labels.tolist() == [per_item[int(i)]["label"] for i in first]
    second = torch.cat([b["raw_index"] for b in loader])
    assert sorted(second.tolist()) == list(range(40)) and not torch.equal(first, second)


def test_images_on_device_refuse_what_they_cannot_hold(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="images_on_device=True keeps the images for augment_on='device', got augment_on='cpu'"):
        shapes(images_on_device=True)
    from PIL import Image

    for i, (w, h) in enumerate([(40, 30), (32, 32), (40, 30), (32, 32)]):
        (tmp_path / "c").mkdir(exist_ok=True)
        Image.fromarray((torch.rand(h, w, 3) * 255).to(torch.uint8).numpy()).save(tmp_path / "c" / f"{i}.png")
    kw = dict(train_dir=str(tmp_path), num_workers=0, image_size=16, augment_on="device", images_on_device=True)
    follow = r"images of \(3, 30, 40\), but images of \(3, 32, 32\) follow; set data.init_args.device_input_size"
    with pytest.raises(ValueError, match=follow):
        ImageFolderDataModule(**kw, batch_size=1).train_dataloader()
    resized = ImageFolderDataModule(**kw, batch_size=2, device_input_size=24)
    assert resized.resident_images(torch.device("cpu")).shape == (4, 3, 24, 24)
    from hardcl_lightning.data.datamodules import available_memory_bytes

    free = available_memory_bytes(torch.device("cpu"))  # the host's: some, and no more than it has
    assert 0 < free <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr("hardcl_lightning.data.datamodules.available_memory_bytes", lambda device: 1000)
    with pytest.raises(ValueError, match=r"keeps 40 images of \(3, 32, 32\) uint8 \(0.00 GiB\) on cpu, more than half of its"):
        shapes(images_on_device=True, augment_on="device").train_dataloader()


class _RecordIndices(L.Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        path = Path(self.folder) / f"rank{trainer.global_rank}_{batch_idx}.pt"
        torch.save({"index": batch["index"], "views": len(batch["views"]), "raw": "raw" in batch}, path)


def test_images_on_device_split_an_epoch_between_two_ddp_processes(tmp_path):
    """Under DDP (2 gloo processes) Lightning's distributed sampler still splits the index loader:
    the ranks train on disjoint halves of the images, each from its own copy on its device."""
    from hardcl_lightning.methods import SimCLR

    dm = ShapesDataModule(num_train=64, num_val=10, batch_size=8, num_workers=0, augment_on="device", images_on_device=True)
    model = SimCLR(backbone="resnet_tiny", cifar_stem=True, proj_hidden_dim=16, proj_output_dim=8, optimizer="adamw",
                   lr=1e-3, batch_size=8)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[_RecordIndices(tmp_path)], default_root_dir=tmp_path)
    trainer.fit(model, dm)
    seen = {r: [torch.load(p) for p in sorted(tmp_path.glob(f"rank{r}_*.pt"))] for r in (0, 1)}
    assert [len(seen[r]) for r in (0, 1)] == [4, 4]  # 64 images / 2 ranks / batch 8
    assert all(s["views"] == 2 and not s["raw"] for r in (0, 1) for s in seen[r])
    halves = [torch.cat([s["index"] for s in seen[r]]) for r in (0, 1)]
    assert sorted(torch.cat(halves).tolist()) == list(range(64))


def test_fast_dev_run_with_images_kept_on_the_device(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["hardcl"])
    for config in ("hvs_simclr", "mochi", "hard_sample_gen"):
        cli = build_cli(["--config", str(Path(__file__).parents[1] / "configs" / "tiny" / f"{config}.yaml"),
                         "--trainer.fast_dev_run=true", "--trainer.logger=false", "--data.augment_on=device",
                         "--data.images_on_device=true", "--data.num_workers=0", "--data.num_train=64",
                         "--data.num_val=32", "--data.batch_size=16"], run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
        assert cli.datamodule.resident_images(torch.device("cpu")).shape == (64, 3, 32, 32), config
        assert cli.trainer.global_step >= 1, config


def test_compiled_view_recipe_makes_the_same_views_in_one_graph(monkeypatch):
    """``compile_views``: the recipe traced whole (``fullgraph``: a graph break would raise) and
    compiled once, whatever constants are added later; with the ``eager`` backend the draws are
    the uncompiled recipe's, so the views and boxes are equal batch for batch."""
    import torch._dynamo as dynamo

    import hardcl_lightning.data.differentiable as differentiable
    from hardcl_lightning.data.differentiable import device_constant

    def batches(compile_views):
        torch.manual_seed(0)
        dm = shapes(augment_on="device", num_views=4, compile_views=compile_views)
        out = []
        for i, raw in enumerate(dm.train_dataloader()):
            if i == 2:
                device_constant([0.25, 0.5], raw["raw"].float())  # another part's constant, after the trace
            out.append(dm.on_after_batch_transfer(raw, 0))
        return out

    monkeypatch.setattr(differentiable, "_ON_DEVICE", {})  # no constant on the device yet, as in a fresh run
    dynamo.reset()
    dynamo.utils.counters.clear()
    compiled, plain = batches("eager"), batches(None)
    # traced once: no recompilation a batch. Before torch 2.7 dynamo guards the length of the
    # constants' cache, so the constant added above recompiles once (once a run, not once a batch)
    release = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    assert dynamo.utils.counters["stats"]["unique_graphs"] == (1 if release >= (2, 7) else 2)
    assert len(plain) == len(compiled) == 5
    for a, b in zip(plain, compiled):
        assert all(torch.equal(u, v) for u, v in zip(a["views"], b["views"])) and torch.equal(a["boxes"], b["boxes"])
    with pytest.raises(ValueError, match="compile_views='eager' compiles the device view recipe, got augment_on='cpu'"):
        shapes(compile_views="eager")
    with pytest.raises(ValueError, match="unknown compile_views backend 'fast'"):
        shapes(augment_on="device", compile_views="fast")
