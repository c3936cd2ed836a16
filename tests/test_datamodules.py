import pytest
import torch

from hardcl_lightning.data import (
    CIFAR10DataModule,
    ImageFolderDataModule,
    ShapesDataModule,
    class_balanced_subset,
    make_shapes,
    make_shapes_with_factors,
)
from hardcl_lightning.data.procedural import PALETTE


def test_shapes_are_deterministic_balanced_and_varied():
    a, ya = make_shapes(200, 16, seed=3)
    b, yb = make_shapes(200, 16, seed=3)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert torch.bincount(ya).tolist() == [20] * 10
    c, _ = make_shapes(200, 16, seed=4)
    assert not torch.equal(a, c)
    # intra-class variation: images of one class are not copies of each other
    cls0 = a[ya == 0].float()
    assert (cls0 - cls0.mean(0)).abs().mean() > 20


def test_shape_factors_describe_the_pixels():
    """The reported factors agree with the images: the masked pixels have the foreground colour,
    the mask's centroid lies in the reported quadrant, big shapes cover more pixels than small
    ones of the same class; and they are the images ``make_shapes`` makes."""
    images, labels, f = make_shapes_with_factors(600, 32, seed=5)
    ref_images, ref_labels = make_shapes(600, 32, seed=5)
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    mask, img = f["mask"], images.float() / 255
    # median colour of each image's shape pixels vs the palette entry the factor names
    fg_pixels = [img[i][:, mask[i]].median(dim=1).values for i in range(len(img))]
    for i, colour in enumerate(fg_pixels):
        idx = int(f["foreground_colour"][i])
        if idx < len(PALETTE):  # noise is 0.05 per channel on the colour, 0.06 per pixel
            assert (colour - PALETTE[idx]).abs().max() < 0.2, (i, colour, PALETTE[idx])
    assert (f["foreground_colour"] == len(PALETTE)).float().mean() < 0.3  # complements are the exception
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    area = mask.flatten(1).sum(1).float()
    cy = (mask * ys).flatten(1).sum(1) / area
    cx = (mask * xs).flatten(1).sum(1) / area
    quadrant = 2 * (cy > 15.5).long() + (cx > 15.5).long()
    # point-symmetric shapes (not the triangle or the crescent) have their centroid at the centre
    symmetric = (labels != 2) & (labels != 8)
    clear = symmetric & ((cy - 15.5).abs() > 1) & ((cx - 15.5).abs() > 1)  # not on a dividing line
    assert clear.sum() > 200
    assert torch.equal(quadrant[clear], f["position"][clear])
    for c in range(10):
        big, small = area[(labels == c) & (f["size"] == 1)], area[(labels == c) & (f["size"] == 0)]
        assert big.mean() > 1.2 * small.mean()
    # factors are drawn independently of the class: every class sees most colours and positions
    for c in range(10):
        assert f["foreground_colour"][labels == c].unique().numel() >= 7
        assert f["position"][labels == c].unique().numel() == 4


def test_grayscale_shapes_are_the_same_scenes_in_luminance_with_visible_shapes():
    """``grayscale=True`` keeps every scene (labels, masks, positions, sizes) of the colour images,
    has three equal channels, stays within noise of the colour image's luminance where the shape
    was visible enough, and gives every shape at least ``MIN_LUMA_CONTRAST`` (less noise) against
    its background."""
    colour, labels, fc = make_shapes_with_factors(500, 32, seed=7)
    gray, glabels, fg = make_shapes_with_factors(500, 32, seed=7, grayscale=True)
    assert torch.equal(labels, glabels)
    assert all(torch.equal(fc[k], fg[k]) for k in ("mask", "position", "size", "background_colour"))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])
    g, c = gray[:, 0].float() / 255, colour.float() / 255
    luma = 0.299 * c[:, 0] + 0.587 * c[:, 1] + 0.114 * c[:, 2]  # BT.601, written out independently
    mask = fg["mask"]
    # the background is the colour background's luminance (noise differs: one channel vs three)
    bg_err = ((g - luma) * ~mask).abs().sum((1, 2)) / (~mask).sum((1, 2))
    assert bg_err.max() < 0.1, bg_err.max()
    shape_l = (g * mask).sum((1, 2)) / mask.sum((1, 2))
    back_l = (g * ~mask).sum((1, 2)) / (~mask).sum((1, 2))
    assert ((shape_l - back_l).abs() > 0.2).all()  # 0.3 apart before noise, ramp and clamping
    # where the foreground was kept, the shape has the colour shape's luminance
    kept = fg["foreground_colour"] < len(PALETTE)
    assert kept.sum() > 50
    colour_shape_l = (luma * mask).sum((1, 2)) / mask.sum((1, 2))
    assert (shape_l[kept] - colour_shape_l[kept]).abs().max() < 0.1
    # make_shapes returns the same colour images as make_shapes_with_factors
    assert torch.equal(colour, make_shapes(500, 32, seed=7)[0])
    dm = ShapesDataModule(num_train=20, num_val=10, batch_size=4, num_workers=0, image_size=16, grayscale=True)
    image = next(iter(dm.val_dataloader()))["image"]
    assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])


def test_datamodule_factors_follow_the_bank_order():
    dm = ShapesDataModule(num_train=100, num_val=30, batch_size=8, num_workers=0, image_size=16, train_fraction=0.5)
    full_images, full_labels, full = make_shapes_with_factors(100, 16, seed=0)
    f = dm.factors("train")
    bank = [b for b in dm.bank_dataloader()]
    bank_labels = torch.cat([b["label"] for b in bank])
    assert f["size"].shape == bank_labels.shape == (50,)
    # each bank image is found in the full set at the index whose factors are reported
    idx = torch.as_tensor(dm._train.indices)
    bank_images = torch.cat([b["image"] for b in bank]) * 0.25 + 0.5  # undo Shapes10's normalisation
    assert torch.allclose(bank_images, full_images[idx].float() / 255, atol=1e-5)
    assert torch.equal(full_labels[idx], bank_labels)
    assert all(torch.equal(full[k][idx], f[k]) for k in ("foreground_colour", "position", "size"))
    assert dm.factors("val")["position"].shape == (30,)
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        dm.factors("test")


def test_training_and_validation_batch_layout():
    dm = ShapesDataModule(num_train=40, num_val=20, batch_size=8, num_workers=0, image_size=16, num_views=3)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["views"]) == 3 and all(v.shape == (8, 3, 16, 16) for v in batch["views"])
    assert batch["boxes"].shape == (8, 3, 4) and batch["label"].shape == (8,) and batch["index"].shape == (8,)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (8, 3, 16, 16) and val["label"].shape == (8,)
    bank = torch.cat([b["label"] for b in dm.bank_dataloader()])
    assert torch.equal(bank, dm._train.labels)  # the un-augmented training set, in order


def test_train_fraction_is_class_balanced_and_deterministic():
    targets = [i % 5 for i in range(100)]
    idx = class_balanced_subset(targets, 0.2, seed=1)
    assert idx == class_balanced_subset(targets, 0.2, seed=1)
    assert sorted(torch.bincount(torch.tensor(targets)[idx]).tolist()) == [4] * 5
    with pytest.raises(ValueError, match="1.5"):
        class_balanced_subset(targets, 1.5)


def test_imagefolder_datamodule_reads_a_tree(image_folder):
    dm = ImageFolderDataModule(
        train_dir=str(image_folder / "train"), val_dir=str(image_folder / "val"), image_size=24, batch_size=4, num_workers=0
    )
    dm.setup()
    assert dm.num_classes == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["views"][0].shape == (4, 3, 24, 24)


def test_missing_image_folder_names_the_path(tmp_path):
    dm = ImageFolderDataModule(train_dir=str(tmp_path / "nope"), batch_size=2, num_workers=0)
    with pytest.raises(FileNotFoundError, match="nope"):
        dm.setup()


def test_batch_larger_than_dataset_is_rejected():
    dm = ShapesDataModule(num_train=20, num_val=10, batch_size=64, num_workers=0)
    with pytest.raises(ValueError, match="batch_size 64"):
        dm.setup()


def test_cifar_offline_and_missing_says_where_to_put_it(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "cifar"), download=False, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found under data_dir=.*cifar"):
        dm.setup()


def test_impossible_view_counts_are_rejected():
    with pytest.raises(ValueError, match="num_views"):
        ShapesDataModule(num_views=0)
    from hardcl_lightning.methods import SimCLR

    with pytest.raises(ValueError, match="num_views must be >= 2"):
        SimCLR(backbone="resnet_tiny", num_views=1)


def test_corrupt_and_truncated_images_fail_by_name_or_are_skipped(image_folder):
    train = image_folder / "train" / "class_0"
    (train / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    good = (train / "0.jpg").read_bytes()
    (train / "truncated.jpg").write_bytes(good[: len(good) // 3])
    kw = dict(train_dir=str(image_folder / "train"), val_dir=str(image_folder / "val"), image_size=24, batch_size=4, num_workers=0)
    dm = ImageFolderDataModule(**kw)
    dm.setup()
    with pytest.raises(ValueError, match=r"corrupt\.jpg|truncated\.jpg"):
        for _ in dm.bank_dataloader():
            pass
    dm = ImageFolderDataModule(**kw, bad_images="skip")
    dm.setup()
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        n = sum(b["image"].shape[0] for b in dm.bank_dataloader())
    assert n == 20 and {p.rsplit("/", 1)[-1] for p in dm._train.skipped} == {"corrupt.jpg", "truncated.jpg"}
    with pytest.raises(ValueError, match="'ignore'"):
        ImageFolderDataModule(**kw, bad_images="ignore")


def test_empty_image_folder_names_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    dm = ImageFolderDataModule(train_dir=str(tmp_path / "empty"), batch_size=2, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"empty.*no class sub-folders"):
        dm.setup()
    (tmp_path / "empty" / "cats").mkdir()
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("no image")
    with pytest.raises(FileNotFoundError, match=r"class folder 'cats' holds no image files"):
        ImageFolderDataModule(train_dir=str(tmp_path / "empty"), batch_size=2, num_workers=0).setup()


def test_a_symlink_loop_in_an_image_folder_reads_each_image_once(image_folder):
    """A link from a class folder to its parent made torchvision's walk list the files again on
    every turn of the loop (128 files read as 2,688 samples); each real folder is now read once.
    A linked class folder (how ImageNet-100 subsets are made) still counts."""
    train = image_folder / "train"
    before = ImageFolderDataModule(train_dir=str(train), batch_size=2, num_workers=0)
    before.setup()
    n = len(before._train)
    (train / "class_0" / "loop").symlink_to(train, target_is_directory=True)
    (train / "class_1" / "self").symlink_to(train / "class_1", target_is_directory=True)
    dm = ImageFolderDataModule(train_dir=str(train), batch_size=2, num_workers=0)
    with pytest.warns(UserWarning, match="symbolic links to folders already read"):
        dm.setup()
    # 3 classes x 6 images: class_0's loop reaches class_1 and class_2 once each (6 + 12), class_1's
    # link to itself adds nothing; no (file, class) pair is listed twice
    assert n == 18 and torch.bincount(torch.tensor(dm._train.targets)).tolist() == [18, 6, 6]
    assert len(set(dm._train.samples)) == len(dm._train.samples)
    linked = image_folder / "linked"
    linked.mkdir()
    for c in ("class_0", "class_1"):
        (linked / c).symlink_to(train / c, target_is_directory=True)
    dm = ImageFolderDataModule(train_dir=str(linked), batch_size=2, num_workers=0)
    dm.setup()
    assert len(dm._train) > 0 and dm._train.classes == ["class_0", "class_1"]


def test_a_decompression_bomb_is_named_and_skipped_under_skip(image_folder, monkeypatch):
    from PIL import Image

    train = image_folder / "train" / "class_0"
    Image.new("L", (400, 400)).save(train / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 400 x 400 > 2 x 10,000: PIL refuses it
    kw = dict(train_dir=str(image_folder / "train"), val_dir=str(image_folder / "val"), image_size=24, batch_size=4, num_workers=0)
    dm = ImageFolderDataModule(**kw)
    dm.setup()
    with pytest.raises(ValueError, match=r"bomb\.png.*DecompressionBombError"):
        for _ in dm.bank_dataloader():
            pass
    dm = ImageFolderDataModule(**kw, bad_images="skip")
    dm.setup()
    with pytest.warns(UserWarning, match=r"bomb\.png.*DecompressionBombError"):
        for _ in dm.bank_dataloader():
            pass
    assert {p.rsplit("/", 1)[-1] for p in dm._train.skipped} == {"bomb.png"}


def test_16_bit_images_are_read_at_full_range(tmp_path):
    """PIL's convert("RGB") clips 16-bit values to 255 (a mid-grey 16-bit PNG came out near-white)."""
    import numpy as np
    from PIL import Image

    from hardcl_lightning.data.folders import open_rgb

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    rgb = np.asarray(open_rgb(str(tmp_path / "ramp16.png")))
    expected = np.rint(ramp.astype(np.float64) / 65535 * 255)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert np.abs(rgb[..., 0].astype(np.float64) - expected).max() <= 1 and (rgb[..., 0] == rgb[..., 2]).all()
    assert 120 < rgb.mean() < 135  # a full ramp averages mid-grey, not near-white
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(tmp_path / "rgb8.png")
    assert (np.asarray(open_rgb(str(tmp_path / "rgb8.png"))) == 77).all()  # 8-bit images unchanged


def _nested_unlabeled_folder(root, n=14):
    """Images at several depths, with mixed-case extensions and a non-image file; no class folders."""
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    paths = []
    for i in range(n):
        d = root / ("a" if i % 3 == 0 else "b/c" if i % 3 == 1 else ".")
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img{i}.{'JPG' if i % 2 else 'png'}"
        Image.fromarray((torch.rand(36, 36, 3, generator=g) * 255).to(torch.uint8).numpy()).save(p, format="PNG" if i % 2 == 0 else "JPEG")
        paths.append(p.resolve())
    (root / "b" / "notes.txt").write_text("not an image")
    return sorted(str(p) for p in paths)


def test_unlabeled_folder_reads_every_image_under_a_nested_folder(tmp_path):
    from hardcl_lightning.data import UnlabeledFolderDataModule

    files = _nested_unlabeled_folder(tmp_path / "mine")
    dm = UnlabeledFolderDataModule(train_dir=str((tmp_path / "mine").resolve()), batch_size=4, num_workers=0, image_size=32, num_views=3)
    dm.setup()
    assert sorted(dm.paths("train")) == files  # recursive, case-insensitive extensions, the .txt left out
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["views"]) == 3 and batch["views"][0].shape == (4, 3, 32, 32)
    assert batch["boxes"].shape == (4, 3, 4) and (batch["label"] == -1).all()  # HVS boxes; no labels
    assert not dm.has_labels and not dm.has_train_labels and "val_dir and bank_dir" in dm.evaluation_off_reason
    assert dm.val_dataloader() == [] and dm.resolved_predict_split() == "train"
    half = UnlabeledFolderDataModule(train_dir=str(tmp_path / "mine"), batch_size=2, num_workers=0, train_fraction=0.5)
    half.setup()
    again = UnlabeledFolderDataModule(train_dir=str(tmp_path / "mine"), batch_size=2, num_workers=0, train_fraction=0.5)
    again.setup()
    assert len(half.paths("train")) == 7 and half.paths("train") == again.paths("train") and set(half.paths("train")) < set(files)


def test_unlabeled_folder_errors_name_the_value(tmp_path, image_folder):
    from hardcl_lightning.data import UnlabeledFolderDataModule

    with pytest.raises(FileNotFoundError, match="no image files"):
        (tmp_path / "empty").mkdir()
        UnlabeledFolderDataModule(train_dir=str(tmp_path / "empty"), batch_size=2).setup()
    with pytest.raises(FileNotFoundError, match="not a directory"):
        UnlabeledFolderDataModule(train_dir=str(tmp_path / "nope"), batch_size=2).setup()
    with pytest.raises(ValueError, match="both val_dir and bank_dir"):
        UnlabeledFolderDataModule(train_dir=str(image_folder / "train"), val_dir=str(image_folder / "val"))
    with pytest.raises(ValueError, match="predict_split"):
        UnlabeledFolderDataModule(train_dir=str(image_folder / "train"), predict_split="test")


def test_unlabeled_folder_skips_or_names_a_corrupt_file(tmp_path):
    from hardcl_lightning.data import UnlabeledFolderDataModule

    _nested_unlabeled_folder(tmp_path / "mine", n=6)
    bad = tmp_path / "mine" / "b" / "c" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    dm = UnlabeledFolderDataModule(train_dir=str(tmp_path / "mine"), batch_size=7, num_workers=0, image_size=32)
    with pytest.raises(ValueError, match="broken.jpg"):
        next(iter(dm.train_dataloader()))
    dm = UnlabeledFolderDataModule(train_dir=str(tmp_path / "mine"), batch_size=7, num_workers=0, image_size=32, bad_images="skip")
    with pytest.warns(UserWarning, match="skipped unreadable image .*broken.jpg"):
        batch = next(iter(dm.train_dataloader()))
    assert batch["views"][0].shape[0] == 7


def test_unlabeled_folder_bank_and_queries_come_from_the_labelled_folders(tmp_path, image_folder):
    from hardcl_lightning.data import UnlabeledFolderDataModule

    _nested_unlabeled_folder(tmp_path / "mine")
    dm = UnlabeledFolderDataModule(train_dir=str(tmp_path / "mine"), val_dir=str(image_folder / "val"),
                                   bank_dir=str(image_folder / "train"), batch_size=4, num_workers=0, image_size=32)
    dm.setup()
    assert dm.has_labels and not dm.has_train_labels and dm.num_classes == 3
    bank = torch.cat([b["label"] for b in dm.bank_dataloader()])
    assert bank.tolist() == sorted([0, 1, 2] * 6)  # the bank_dir images, labelled by class folder
    assert torch.cat([b["label"] for b in dm.val_dataloader()]).tolist() == sorted([0, 1, 2] * 6)
    (tmp_path / "other" / "x").mkdir(parents=True)
    import shutil

    shutil.copy(next((image_folder / "val" / "class_0").iterdir()), tmp_path / "other" / "x" / "0.jpg")
    mismatched = UnlabeledFolderDataModule(train_dir=str(tmp_path / "mine"), val_dir=str(image_folder / "val"),
                                           bank_dir=str(tmp_path / "other"), batch_size=4, num_workers=0)
    with pytest.raises(ValueError, match="same class folders"):
        mismatched.setup()


class _Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        import random

        import numpy as np

        return torch.tensor([torch.rand(()).item(), random.random(), float(np.random.rand())])


def test_workers_are_seeded_as_lightning_seeds_them_and_ignore_stop_signals(monkeypatch):
    """Our worker_init_fn replaces Lightning's automatic one, so it must seed the same streams
    (torch, random, numpy per worker and rank) and then shield the worker from stop signals."""
    from functools import partial

    from lightning.fabric.utilities.seed import pl_worker_init_function

    from hardcl_lightning.data.datamodules import init_worker

    monkeypatch.setenv("PL_SEED_WORKERS", "1")

    def draws(fn):
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(_Draws(), batch_size=1, num_workers=2, worker_init_fn=fn)
        return torch.cat(list(loader))

    ours, lightnings = draws(init_worker), draws(partial(pl_worker_init_function, rank=0))
    assert torch.equal(ours, lightnings)
    assert not torch.equal(ours[0], ours[1])  # the two workers draw different streams
    dm = ShapesDataModule(num_train=32, num_val=16, batch_size=8, num_workers=2)
    assert dm.train_dataloader().worker_init_fn is init_worker
