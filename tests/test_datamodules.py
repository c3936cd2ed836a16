import pytest
import torch

from hardcl_lightning.data import (
    CIFAR10DataModule,
    ImageFolderDataModule,
    ShapesDataModule,
    class_balanced_subset,
    make_shapes,
)


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
    with pytest.raises(FileNotFoundError, match=r"empty.*no images in class sub-folders"):
        dm.setup()
