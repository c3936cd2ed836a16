"""Image files on disk: reading them safely and the two folder datamodules.

``CheckedImages`` reads each file as RGB and deals with the files that cannot be: corrupt,
truncated, not an image, or a decompression bomb (named with its path; ``bad_images: skip`` uses
the next readable file). 16-bit images keep their full range (PIL's own conversion clips them to
near-white). The folder walkers follow symbolic links (an ImageNet-100 tree is often made of them)
but never enter one directory twice, so a link loop cannot multiply the samples.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from hardcl_lightning.data.datamodules import EvalDataset, SSLDataModule
from hardcl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS)  # torchvision's: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp
BAD_IMAGES = ("fail", "skip")


def open_rgb(path: str) -> Any:
    """The image at ``path`` as an 8-bit RGB PIL image, 16-bit and 32-bit integer images scaled.

    PIL's ``convert("RGB")`` of a 16-bit (``I;16``) or integer (``I``) image clips every value above
    255, so a 16-bit PNG comes out near-white; the values are scaled to 0-255 here instead (by
    1/257, 65535 -> 255; ``I`` images are taken as 16-bit when their maximum allows it).
    """
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) <= 65535 else float(values.max())
        img = Image.fromarray(np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # what PIL raises for corrupt or truncated files, plus its guard against decompression bombs
    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class CheckedImages(Dataset):
    """``(PIL image, label)`` items of image files whose unreadable ones (corrupt, truncated, not an
    image, a decompression bomb) fail with their path (``bad_images="fail"``) or are skipped for
    the next readable one (``"skip"``, with a running count)."""

    def __init__(self, samples: list[tuple[str, int]], root: str, bad_images: str, classes: list[str] | None = None) -> None:
        self.samples, self.root, self.bad_images = samples, root, bad_images
        self.targets = [label for _, label in samples]
        self.classes = classes or []
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        errors = _unreadable_errors()
        for attempt in range(len(self.samples)):
            path, label = self.samples[(i + attempt) % len(self.samples)]
            try:
                return open_rgb(path), label
            except errors as e:
                if self.bad_images == "fail":
                    raise ValueError(
                        f"cannot read image {path!r} ({type(e).__name__}: {e}); remove it, or set "
                        "data.init_args.bad_images: skip to skip unreadable files"
                    ) from None
                if path not in self.skipped:
                    self.skipped.add(path)
                    warnings.warn(
                        f"skipped unreadable image {path!r} ({type(e).__name__}; {len(self.skipped)} skipped so far "
                        "in this loader process)"
                    )
        raise ValueError(f"no readable image in {self.root!r}")


def walk_files(root: Path) -> list[Path]:
    """Every file under ``root``, following symbolic links but entering each real directory once.

    ``os.walk(followlinks=True)`` (what torchvision's ImageFolder uses) loops through a link to a
    parent until the path length limit, listing the same files again on every turn. A directory
    reached a second time is skipped here, with one warning naming it.
    """
    files: list[Path] = []
    seen: set[str] = set()
    repeated: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            repeated.append(dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        files.extend(Path(dirpath) / name for name in filenames)
    if repeated:
        warnings.warn(
            f"{len(repeated)} folder(s) under {str(root)!r} lead by symbolic links to folders already read "
            f"(e.g. {repeated[0]!r}); read once each"
        )
    return files


def _is_image(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.suffix.lower() in extensions and path.is_file()


def labelled_folder(path: str, what: str, bad_images: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> CheckedImages:
    """An ImageFolder tree ``root/<class>/<image>``, with errors that name the argument.

    Classes are the sorted sub-folder names and images are found recursively inside each, as in
    torchvision's ``ImageFolder``; a class folder without images is an error, as there.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{what}={str(root)!r} is not a directory; expected an ImageFolder tree root/<class>/<image>")
    exts = tuple(e.lower() for e in extensions)
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{what}={str(root)!r} has no class sub-folders; expected root/<class>/<image>")
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        found = sorted(str(f) for f in walk_files(root / name) if _is_image(f, exts))
        if not found:
            raise FileNotFoundError(
                f"{what}={str(root)!r}: class folder {name!r} holds no image files (looked for {', '.join(exts)})"
            )
        samples.extend((f, label) for f in found)
    return CheckedImages(samples, str(root), bad_images, classes)


def image_files(path: str, what: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Every image file under ``path`` (recursively, by extension, case-insensitive), sorted."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{what}={str(root)!r} is not a directory")
    exts = tuple(e.lower() for e in extensions)
    files = sorted(str(f) for f in walk_files(root) if _is_image(f, exts))
    if not files:
        raise FileNotFoundError(f"{what}={str(root)!r} holds no image files (looked recursively for {', '.join(exts)})")
    return files


class ImageFolderDataModule(SSLDataModule):
    """Any ``root/<class>/<image>`` tree (ImageNet-100 is one); ``val_dir`` is optional.

    Without ``val_dir``, the online kNN and linear probe switch themselves off with a message.

    Args:
        train_dir: the training tree ``root/<class>/<image>``.
        val_dir: the labelled validation tree (same classes); None switches kNN and probe off.
        mean: per-channel normalisation mean (ImageNet's by default).
        std: per-channel normalisation std.
        eval_resize_ratio: evaluation images are resized to ``image_size`` x this, then centre-cropped
            (256/224, the ImageNet protocol).
        bad_images: ``fail`` stops at an unreadable file and names it; ``skip`` uses the next
            readable image instead and logs each skipped file with a running count.
    """

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        eval_resize_ratio: float = 256 / 224,
        bad_images: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if bad_images not in BAD_IMAGES:
            raise ValueError(f"bad_images must be one of {list(BAD_IMAGES)}, got {bad_images!r}")
        self.bad_images = bad_images
        self.train_dir, self.val_dir = train_dir, val_dir
        self.mean, self.std, self.eval_resize_ratio = tuple(mean), tuple(std), eval_resize_ratio  # type: ignore[assignment]
        self._num_classes: int | None = None

    def train_base(self) -> Dataset:
        ds = labelled_folder(self.train_dir, "train_dir", self.bad_images)
        self._num_classes = len(ds.classes)
        return ds

    def val_base(self) -> Dataset | None:
        return None if self.val_dir is None else labelled_folder(self.val_dir, "val_dir", self.bad_images)

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self.setup()
        return int(self._num_classes)  # type: ignore[arg-type]


class UnlabeledFolderDataModule(ImageFolderDataModule):
    """Your own images: every image file under ``train_dir``, in any sub-folder layout, no labels.

    Files are found recursively by extension (``extensions``, case-insensitive); unreadable ones
    fail or are skipped as in ``ImageFolderDataModule`` (``bad_images``). ``train_fraction`` takes a
    deterministic random subset. For the online kNN, give two labelled ImageFolder trees: a
    ``bank_dir`` (the kNN's neighbours) and a ``val_dir`` (its queries), e.g. a small labelled
    part of your data; without them the kNN is off with one message. The online linear probe
    trains on labelled training views, so it is off here whatever is given.

    Args:
        train_dir: folder of unlabeled images (searched recursively).
        val_dir: labelled ImageFolder tree ``root/<class>/<image>``: the kNN's queries.
        bank_dir: labelled ImageFolder tree with the same classes: the kNN's bank.
        extensions: file extensions that count as images.
    """

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        bank_dir: str | None = None,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(train_dir=train_dir, val_dir=val_dir, **kwargs)
        if (val_dir is None) != (bank_dir is None):
            raise ValueError(
                f"give both val_dir and bank_dir (labelled ImageFolder trees) for the kNN, or neither; got "
                f"val_dir={val_dir!r}, bank_dir={bank_dir!r}"
            )
        self.bank_dir, self.extensions = bank_dir, tuple(extensions)
        self._bank: CheckedImages | None = None

    def train_base(self) -> Dataset:
        files = image_files(self.train_dir, "train_dir", self.extensions)
        return CheckedImages([(f, -1) for f in files], self.train_dir, self.bad_images)

    def val_base(self) -> Dataset | None:
        if self.val_dir is None:
            return None
        val = labelled_folder(self.val_dir, "val_dir", self.bad_images)
        self._bank = labelled_folder(self.bank_dir, "bank_dir", self.bad_images)  # type: ignore[arg-type]
        if self._bank.classes != val.classes:
            raise ValueError(f"bank_dir and val_dir must have the same class folders; got {self._bank.classes} and {val.classes}")
        self._num_classes = len(val.classes)
        return val

    @property
    def has_train_labels(self) -> bool:
        return False

    @property
    def evaluation_off_reason(self) -> str:
        if self.val_dir is None:
            return "UnlabeledFolderDataModule has no labelled images: set val_dir and bank_dir (ImageFolder trees) for the kNN"
        return "UnlabeledFolderDataModule's training images have no labels"

    def bank_dataloader(self) -> DataLoader:
        """The labelled ``bank_dir`` images un-augmented (the training images have no labels)."""
        self.setup()
        if self._bank is None:
            raise ValueError(self.evaluation_off_reason)
        return self._loader(EvalDataset(self._bank, self.eval_transform()), shuffle=False, drop_last=False)

    @property
    def num_classes(self) -> int:
        self.setup()
        if self._num_classes is None:
            raise ValueError(self.evaluation_off_reason)
        return int(self._num_classes)
