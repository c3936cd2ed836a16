"""Datamodules: every one yields the same batch layout.

- training batch: ``{"views": [V x Tensor[B,3,h,w]], "boxes": Tensor[B,V,4], "label": Tensor[B], "index": Tensor[B]}``,
  plus ``"image"`` (the un-augmented image, as in validation) when ``with_image`` is set
  (the generator methods' discriminator trains on it)
- validation batch: ``{"image": Tensor[B,3,S,S], "label": Tensor[B], "index": Tensor[B]}`` (un-augmented)
- ``bank_dataloader()``: the training set un-augmented, in validation layout (for the kNN bank)
- ``predict_dataloader()``: the ``predict_split`` (``train`` or ``val``) un-augmented, in validation
  layout; ``paths(split)`` gives the image files of a split, when it has files

Label -1 means "no label" (STL-10's unlabeled split, a folder of unlabeled images).

The view recipe (``augmentation``, ``num_views``, local crops) is the datamodule's; under the
CLI, ``num_views`` is linked from the model so that it is written once.

``augment_on: device``: the loader yields the uint8 images (``{"raw": Tensor[B,3,H,W] uint8,
"label", "index"}``) and the views are made after the batch reaches the accelerator
(``on_after_batch_transfer``), batched with per-sample parameters, by the ops of
``hardcl_lightning.data.differentiable`` on the same ``ViewSpec`` numbers, drawn and applied as
the CPU path's torchvision ops are; the model sees the training batch layout above either way.
With ``images_on_device`` the training set is decoded once into one uint8 tensor kept on the
accelerator, and the loader yields only ``{"raw_index", "label"}``: the images of a batch are a
gather there.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from hardcl_lightning.checkpointing import ignore_stop_signals_in_worker
from hardcl_lightning.data.differentiable import DifferentiableViewAugmentation, device_constant
from hardcl_lightning.data.procedural import ShapesDataset
from hardcl_lightning.data.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiViewTransform,
    ViewSpec,
    eval_transform,
    to_uint8_tensor,
    view_specs_for,
)

AUGMENT_ON = ("cpu", "device")


class RawImageDataset(Dataset):
    """Training items for augmentation on the device: the image as uint8 [3, H, W], label, index;
    with ``size``, resized (shorter side) and centre-cropped to ``size`` x ``size`` first."""

    def __init__(self, base: Dataset, size: int | None = None) -> None:
        from torchvision.transforms import v2

        self.base = base
        self.resize = None if size is None else v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, label = self.base[i]
        img = to_uint8_tensor(img if isinstance(img, torch.Tensor) else img.convert("RGB"))
        if self.resize is not None:
            img = self.resize(img)
        return {"raw": img, "label": label, "index": i}


def collate_raw_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Default collation, with an error that says what to set when the images differ in size."""
    from torch.utils.data import default_collate

    sizes = {tuple(item["raw"].shape) for item in items}
    if len(sizes) > 1:
        raise ValueError(f"augment_on='device' batches raw images, but this batch has sizes {sorted(sizes)}; set "
                         "data.init_args.device_input_size (e.g. 256) to resize them to one size on the CPU")
    return default_collate(items)


class TrainIndexDataset(Dataset):
    """Training items when the images live on the accelerator (``images_on_device``): a batch is
    ``{"raw_index": Tensor[B], "label": Tensor[B]}``, fetched at once (``__getitems__``), so a step
    costs the loader no per-image work; the datamodule gathers the images where the batch lands."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"raw_index": i, "label": int(self.labels[i])}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"raw_index": index, "label": self.labels[index]}


def collate_index_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``TrainIndexDataset.__getitems__`` already returns the batch."""
    return batch


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: an accelerator's, or for the CPU the host's ``MemAvailable`` (what
    can be had without swapping, page cache included); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def check_fits(need: int, device: torch.device, what: str) -> None:
    """Raise when ``need`` bytes would take more than half of ``device``'s free memory."""
    free = available_memory_bytes(device)
    if free is not None and need > free // 2:
        raise ValueError(f"images_on_device keeps {what} ({need / 2**30:.2f} GiB) on {device}, more than half of its "
                         f"{free / 2**30:.2f} GiB free; set data.init_args.images_on_device=false (the loader then sends "
                         "each batch), or a smaller device_input_size")


class MultiViewDataset(Dataset):
    """Wraps an ``(image, label)`` dataset and returns training items in the multi-view layout."""

    def __init__(self, base: Dataset, transform: MultiViewTransform, image_transform=None) -> None:
        self.base, self.transform, self.image_transform = base, transform, image_transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, label = self.base[i]
        views, boxes = self.transform(img)
        item = {"views": views, "boxes": boxes, "label": label, "index": i}
        if self.image_transform is not None:
            item["image"] = self.image_transform(img)
        return item


class EvalDataset(Dataset):
    """Wraps an ``(image, label)`` dataset and returns ``{"image", "label", "index"}`` un-augmented."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, label = self.base[i]
        return {"image": self.transform(img), "label": label, "index": i}


def class_balanced_subset(targets: Sequence[int], fraction: float, seed: int = 0) -> list[int]:
    """Indices of a deterministic subset holding ``fraction`` of every class (at least one each)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    targets_t = torch.as_tensor(list(targets))
    g = torch.Generator().manual_seed(seed)
    keep: list[torch.Tensor] = []
    for c in torch.unique(targets_t):
        idx = torch.nonzero(targets_t == c).flatten()
        n = max(1, int(round(fraction * idx.numel())))
        keep.append(idx[torch.randperm(idx.numel(), generator=g)[:n]])
    return torch.cat(keep).sort().values.tolist()


class SSLDataModule(L.LightningDataModule):
    """Base datamodule: subclasses provide raw ``(image, label)`` train/val datasets.

    Args:
        batch_size: per-device batch size.
        num_workers: data-loading processes per device.
        image_size: side of the training views and evaluation images.
        num_views: full-size augmented views per image (2 for SimCLR; N candidates for HVS).
        augmentation: recipe name, one of ``simclr, mocov2, byol, dino, none``.
        crop_scale: RandomResizedCrop scale range; ``None`` takes the recipe's default.
        color_jitter_strength: SimCLR's ``s``, scales every jitter magnitude.
        blur_prob: Gaussian-blur probability; ``None`` takes the recipe's default.
        solarize_prob: solarisation probability; ``None`` takes the recipe's default.
        num_local_crops: DINO's small local crops, appended after the full-size views.
        local_crop_size: side of local crops (default 96/224 of ``image_size``).
        local_crop_scale: crop scale range of local crops.
        train_fraction: deterministic class-balanced fraction of the training set to use.
        seed: seed of the ``train_fraction`` subset.
        with_image: training batches also carry the un-augmented ``"image"`` (normalised as in
            validation); also when the model being trained says it needs them (``needs_real_images``,
            the generator methods), without setting this.
        predict_split: what ``hardcl predict`` embeds: ``train`` (the training images, in bank
            order) or ``val``; None takes ``val`` when there is a validation set, else ``train``.
        augment_on: ``cpu``: views cut and jittered per image with PIL in the loader workers;
            ``device``: the loader sends uint8 images and every view is made on the accelerator in
            one batched pass (``hardcl_lightning.data.differentiable`` with ``match_torchvision``:
            crop boxes drawn as ``RandomResizedCrop.get_params``, antialiased resizing, jitter in
            a random order per image, HSV hue; each op equal to torchvision's, tested).
        device_input_size: with ``augment_on: device``, each training image is resized (shorter
            side) and centre-cropped to this square on the CPU before it is sent (images of mixed
            sizes, e.g. an ImageFolder tree; crops then come from that square); None sends the
            images as they are, which must share one size (CIFAR, STL-10, Shapes10).
        images_on_device: with ``augment_on: device``, decode the training set once (in the loader
            workers) into one uint8 tensor [N, 3, H, W] kept on the accelerator (CIFAR-10: 154 MB;
            N x 3 x H x W bytes, refused when over half the free memory): a step then costs the
            loader nothing but drawing indices, and the images of a batch are a gather there. For
            sets of one image size (or with ``device_input_size``).
        compile_views: with ``augment_on: device``, ``torch.compile`` each view recipe with this
            backend (``inductor`` on GPUs: the small kernels of a recipe, about 280 a batch for
            SimCLR's, fused into a few, so that the host launching them stops setting the pace;
            ``eager`` to check that it traces whole). The same ops in the same order; the random
            draws follow the backend's generator. The first batch is made uncompiled, the second
            pays the compilation. None: off.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_resize_ratio: float = 1.0

    def __init__(
        self,
        batch_size: int = 256,
        num_workers: int = 4,
        image_size: int = 32,
        num_views: int = 2,
        augmentation: str = "simclr",
        crop_scale: tuple[float, float] | None = None,
        color_jitter_strength: float = 1.0,
        blur_prob: float | None = None,
        solarize_prob: float | None = None,
        num_local_crops: int = 0,
        local_crop_size: int | None = None,
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        train_fraction: float = 1.0,
        seed: int = 0,
        with_image: bool = False,
        predict_split: str | None = None,
        augment_on: str = "cpu",
        device_input_size: int | None = None,
        images_on_device: bool = False,
        compile_views: str | None = None,
    ) -> None:
        super().__init__()
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {list(AUGMENT_ON)}, got {augment_on!r}")
        if compile_views is not None:
            import torch._dynamo as dynamo

            if augment_on != "device":
                raise ValueError(f"compile_views={compile_views!r} compiles the device view recipe, got "
                                 f"augment_on={augment_on!r}; set augment_on: device, or compile_views: null")
            if compile_views not in dynamo.list_backends(exclude_tags=()):
                raise ValueError(f"unknown compile_views backend {compile_views!r}; choose one of {dynamo.list_backends()}")
        self.compile_views = compile_views
        if device_input_size is not None and device_input_size < 1:
            raise ValueError(f"device_input_size must be >= 1 or None, got {device_input_size}")
        if images_on_device and augment_on != "device":
            raise ValueError(f"images_on_device=True keeps the images for augment_on='device', got augment_on={augment_on!r}; "
                             "set augment_on: device, or images_on_device: false")
        self.augment_on, self.device_input_size, self.images_on_device = augment_on, device_input_size, images_on_device
        self._resident_images: torch.Tensor | None = None  # images_on_device: [N, 3, H, W] uint8
        self._resident_labels: torch.Tensor | None = None
        self._device_augmentations: list[tuple[Callable, list[int]]] | None = None  # a recipe, its views
        self.with_image = with_image
        if predict_split not in (None, "train", "val"):
            raise ValueError(f"predict_split must be 'train', 'val' or None, got {predict_split!r}")
        self.predict_split = predict_split
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size, self.num_workers, self.image_size = batch_size, num_workers, image_size
        self.train_fraction, self.seed = train_fraction, seed
        if not 0 < train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.view_specs = view_specs_for(
            augmentation, num_views, image_size, crop_scale, color_jitter_strength, blur_prob, solarize_prob,
            num_local_crops, local_crop_size, local_crop_scale,
        )
        self.num_views, self.num_local_crops = num_views, num_local_crops
        self._train: Dataset | None = None
        self._val: Dataset | None = None

    # --- what subclasses provide ---------------------------------------------------------
    def train_base(self) -> Dataset:
        """The raw training set: items ``(PIL image or uint8 tensor, int label)``."""
        raise NotImplementedError

    def val_base(self) -> Dataset | None:
        """The raw labelled validation set, or ``None`` when there is none."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    # --- shared machinery ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            train = self.train_base()
            if self.train_fraction < 1.0:
                train = Subset(train, class_balanced_subset(_targets(train), self.train_fraction, self.seed))
            self._train = train
            self._val = self.val_base()
            if len(train) < self.batch_size:  # type: ignore[arg-type]
                raise ValueError(
                    f"batch_size {self.batch_size} is larger than the training set ({len(train)} images); "  # type: ignore[arg-type]
                    "use a batch_size <= the dataset size"
                )

    @property
    def has_labels(self) -> bool:
        """A labelled validation set and bank exist (what the online kNN needs)."""
        return self._val is not None

    @property
    def has_train_labels(self) -> bool:
        """Training images carry labels (some may be -1, unlabeled): the online probe can learn from them."""
        return True

    def train_labels(self) -> torch.Tensor:
        """The label of every training item [N] (-1: none), by the ``index`` its batches carry; for
        diagnostics only (e.g. MoCHi's same-class shares), never for training."""
        self.setup()
        return torch.tensor(_targets(self._train), dtype=torch.long)

    @property
    def evaluation_off_reason(self) -> str:
        """Why the online kNN / probe are off, for their one message."""
        return f"{type(self).__name__} has no labelled validation set"

    def _loader(self, ds: Dataset, shuffle: bool, drop_last: bool, batch_size: int | None = None, collate_fn=None,
                num_workers: int | None = None) -> DataLoader:
        workers = self.num_workers if num_workers is None else num_workers
        return DataLoader(
            ds,
            collate_fn=collate_fn,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            worker_init_fn=init_worker if workers > 0 else None,
        )

    def train_transform(self) -> MultiViewTransform:
        return MultiViewTransform(self.view_specs, self.mean, self.std)

    def eval_transform(self):
        return eval_transform(self.image_size, self.mean, self.std, self.eval_resize_ratio)

    @property
    def batches_carry_image(self) -> bool:
        """``with_image``, or the attached model's ``needs_real_images`` (read, never written)."""
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        return self.with_image or bool(getattr(module, "needs_real_images", False))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        # drop_last: contrastive losses gather equal-sized batches across ranks
        if self.augment_on == "device" and self.images_on_device:
            self.decode_training_images()
            return self._loader(TrainIndexDataset(self._resident_labels), shuffle=True, drop_last=True,  # type: ignore[arg-type]
                                collate_fn=collate_index_batch, num_workers=0)  # no per-image work for workers to share
        if self.augment_on == "device":
            return self._loader(RawImageDataset(self._train, self.device_input_size), shuffle=True, drop_last=True,
                                collate_fn=collate_raw_images)
        image_transform = self.eval_transform() if self.batches_carry_image else None
        train = MultiViewDataset(self._train, self.train_transform(), image_transform)
        return self._loader(train, shuffle=True, drop_last=True)

    def decode_training_images(self) -> None:
        """``images_on_device``: the training set as one uint8 tensor [N, 3, H, W] and its labels [N],
        decoded once by the loader workers (kept on the host until the first batch names a device)."""
        self.setup()
        if self._resident_images is not None:
            return
        raw = RawImageDataset(self._train, self.device_input_size)  # type: ignore[arg-type]
        shape = tuple(raw[0]["raw"].shape)
        check_fits(len(raw) * math.prod(shape), torch.device("cpu"), f"{len(raw)} images of {shape} uint8")
        images = torch.empty((len(raw), *shape), dtype=torch.uint8)
        labels = torch.empty(len(raw), dtype=torch.long)
        for batch in self._loader(raw, shuffle=False, drop_last=False, collate_fn=collate_raw_images):
            if tuple(batch["raw"].shape[1:]) != shape:
                raise ValueError(f"images_on_device keeps one tensor of images of {shape}, but images of "
                                 f"{tuple(batch['raw'].shape[1:])} follow; set data.init_args.device_input_size")
            images[batch["index"]], labels[batch["index"]] = batch["raw"], batch["label"]
        self._resident_images, self._resident_labels = images, labels

    def resident_images(self, device: torch.device) -> torch.Tensor:
        """The training images on ``device`` (moved there once, the host copy then dropped)."""
        if self._resident_images is None:
            self.decode_training_images()
        images = self._resident_images
        if images.device != device:  # type: ignore[union-attr]
            check_fits(images.numel(), device, f"{images.shape[0]} images of {tuple(images.shape[1:])} uint8")  # type: ignore[union-attr]
            self._resident_images = images = images.to(device)  # type: ignore[union-attr]
        return images  # type: ignore[return-value]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Device augmentation: a batch of raw images (or, with ``images_on_device``, of indices into
        the images kept there) becomes the training layout where it now lives."""
        if isinstance(batch, dict) and "raw_index" in batch:
            index = batch.pop("raw_index")
            batch["raw"], batch["index"] = self.resident_images(index.device)[index], index
        if isinstance(batch, dict) and "raw" in batch:
            return self.device_views(batch)
        return batch

    def view_recipe(self, spec: ViewSpec) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Images in [0, 1] -> (views, crop boxes) by ``spec`` on the device; compiled whole (no
        graph break allowed: a break would bring back the launches) with ``compile_views``."""
        recipe = DifferentiableViewAugmentation(spec, self.mean, self.std, match_torchvision=True)
        if self.compile_views is None:
            return recipe
        compiled = torch.compile(recipe.__call__, backend=self.compile_views, fullgraph=True, dynamic=False)
        made_once = False

        def views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal made_once
            if not made_once:  # eagerly first: the recipe's constants reach the device before a trace sees them
                made_once = True
                return recipe(x)
            return compiled(x)

        return views

    @torch.no_grad()
    def device_views(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``{"raw", "label", "index"}`` -> ``{"views", "boxes", "label", "index"}`` (+ ``"image"``):
        every view of the recipe for the whole batch at once, per-sample random parameters."""
        if self._device_augmentations is None:  # one pass per distinct recipe: SimCLR's 2 views, HVS's 4, DINO's locals
            groups: dict[ViewSpec, list[int]] = {}
            for i, spec in enumerate(self.view_specs):
                groups.setdefault(spec, []).append(i)
            self._device_augmentations = [(self.view_recipe(spec), indices) for spec, indices in groups.items()]
        raw = batch.pop("raw")
        x = raw.float().div_(255)
        views: list[torch.Tensor | None] = [None] * len(self.view_specs)
        boxes: list[torch.Tensor | None] = [None] * len(self.view_specs)
        for aug, indices in self._device_augmentations:  # the views of one recipe as one batch of len(indices) x B
            made, made_boxes = aug(x.repeat(len(indices), 1, 1, 1) if len(indices) > 1 else x)
            for i, view, box in zip(indices, made.chunk(len(indices)), made_boxes.chunk(len(indices))):
                views[i], boxes[i] = view, box
        batch["views"] = views
        batch["boxes"] = torch.stack(boxes, dim=1)
        if self.batches_carry_image:
            if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
                x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                    antialias=True, align_corners=False)
            batch["image"] = (x - device_constant(self.mean, x, (1, 3, 1, 1))) / device_constant(self.std, x, (1, 3, 1, 1))
        return batch

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self._val is None:
            return []
        return self._loader(EvalDataset(self._val, self.eval_transform()), shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader | list:
        """The labelled evaluation set (the same split as validation; SSL benchmarks report on it)."""
        return self.val_dataloader()

    def resolved_predict_split(self) -> str:
        self.setup()
        return self.predict_split or ("val" if self._val is not None else "train")

    def predict_dataloader(self) -> DataLoader:
        """The ``predict_split`` images un-augmented, in order (``hardcl predict`` embeds them)."""
        split = self.resolved_predict_split()
        if split == "val" and self._val is None:
            raise ValueError(f"predict_split='val' but {type(self).__name__} has no validation set; use predict_split: train")
        ds = self._val if split == "val" else self._train
        return self._loader(EvalDataset(ds, self.eval_transform()), shuffle=False, drop_last=False)

    def data_source(self) -> str:
        """What the training images are drawn from (``train_subset`` hashes it with the subset)."""
        return type(self).__name__

    def train_subset(self) -> dict[str, Any]:
        """Which images this datamodule trains on: a description and a digest of exactly those items
        (the source, and the file paths or the dataset indices of the subset). The generator methods
        store it with a pre-trained GAN and refuse a GAN that saw other images."""
        import hashlib

        self.setup()
        train = self._train
        indices = list(train.indices) if isinstance(train, Subset) else list(range(len(train)))  # type: ignore[arg-type]
        digest = hashlib.sha256(self.data_source().encode())
        paths = self.paths("train")
        digest.update("\n".join(paths).encode() if paths is not None else torch.tensor(indices, dtype=torch.long).numpy().tobytes())
        total = len(train.dataset) if isinstance(train, Subset) else len(train)  # type: ignore[arg-type]
        return {"digest": digest.hexdigest()[:16], "images": len(indices),
                "description": f"{len(indices)} of {total} images of {self.data_source()} "
                               f"(train_fraction {self.train_fraction}, seed {self.seed})"}

    def paths(self, split: str) -> list[str] | None:
        """The image file of every item of ``split`` (``train`` in bank order, or ``val``), or None
        for datasets that are not files (CIFAR, the embedded dataset)."""
        self.setup()
        return _paths(self._train if split == "train" else self._val)

    def bank_dataloader(self) -> DataLoader:
        """The un-augmented training set for the kNN bank (labels needed)."""
        self.setup()
        return self._loader(EvalDataset(self._train, self.eval_transform()), shuffle=False, drop_last=False)


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` of every datamodule loader.

    1. The RNG seeding Lightning would have installed (``pl_worker_init_function``, when the run
       was seeded with ``seed_everything(workers=True)`` as the CLI does): each worker of each rank
       draws its own torch / numpy / random streams. Lightning adds it only to loaders without a
       ``worker_init_fn``, so ours must call it.
    2. ``ignore_stop_signals_in_worker``: a stop signal sent to the job's process group is the main
       process's to handle (it checkpoints first, then ends its workers).
    """
    if os.environ.get("PL_SEED_WORKERS", "0") == "1":
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
    ignore_stop_signals_in_worker(worker_id)


def _paths(ds: Dataset | None) -> list[str] | None:
    if isinstance(ds, Subset):
        inner = _paths(ds.dataset)
        return None if inner is None else [inner[i] for i in ds.indices]
    samples = getattr(ds, "samples", None)
    return None if samples is None else [str(path) for path, _ in samples]


def _targets(ds: Dataset) -> list[int]:
    for attr in ("targets", "labels"):
        t = getattr(ds, attr, None)
        if t is not None:
            return [int(x) for x in t]
    return [int(ds[i][1]) for i in range(len(ds))]  # type: ignore[arg-type]


class ShapesDataModule(SSLDataModule):
    """The embedded procedural dataset (Shapes10): no download, deterministic, 10 classes.

    ``grayscale``: the same scenes in luminance only (what the quickstart and tiny configs use). On
    the colour images the views of an image share its palette colours, a shortcut that keeps
    negative-free methods (SimSiam, BYOL, DINO) from learning shape (``procedural`` module docstring).

    Args:
        num_train: training images (generated, about 1 s per 10k).
        num_val: validation images (a disjoint seed).
        data_seed: seed of the generated scenes.
        grayscale: luminance-only images (what the quickstart and tiny configs use).
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(
        self, num_train: int = 10000, num_val: int = 2000, data_seed: int = 0, grayscale: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if num_train < 10 or num_val < 10:
            raise ValueError(f"num_train and num_val must be >= 10, got {num_train} and {num_val}")
        self.num_train, self.num_val, self.data_seed, self.grayscale = num_train, num_val, data_seed, grayscale

    def data_source(self) -> str:
        return f"Shapes10(num_train={self.num_train}, data_seed={self.data_seed}, image_size={self.image_size}, grayscale={self.grayscale})"

    def train_base(self) -> Dataset:
        return ShapesDataset(self.num_train, self.image_size, seed=self.data_seed, grayscale=self.grayscale)

    def val_base(self) -> Dataset:
        return ShapesDataset(self.num_val, self.image_size, seed=self.data_seed + 1_000_003, grayscale=self.grayscale)

    def factors(self, split: str) -> dict[str, torch.Tensor]:
        """Nuisance factors (``procedural.FACTORS``) of the ``"train"`` (bank order) or ``"val"`` images."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.setup()
        ds = self._train if split == "train" else self._val
        if isinstance(ds, Subset):  # train_fraction < 1
            return {k: v[torch.as_tensor(ds.indices)] for k, v in ds.dataset.factors.items()}
        return ds.factors

    @property
    def num_classes(self) -> int:
        return 10


class _TorchvisionDataModule(SSLDataModule):
    """Shared loading of torchvision datasets with a clear error when offline and missing.

    Args:
        data_dir: folder holding the dataset in torchvision's layout.
        download: download it there when missing (needs internet).
    """

    dataset_name = ""

    def __init__(self, data_dir: str = "data", download: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir, self.download = data_dir, download

    def prepare_data(self) -> None:
        self._make(train=True)
        self._make(train=False)

    def _construct(self, train: bool, download: bool) -> Dataset:
        raise NotImplementedError

    def _make(self, train: bool) -> Dataset:
        try:
            return self._construct(train, download=False)
        except RuntimeError:
            pass
        if not self.download:
            raise FileNotFoundError(
                f"{self.dataset_name} not found under data_dir={os.path.abspath(self.data_dir)!r} and download=False. "
                f"Put torchvision's {self.dataset_name} files there, or set download: true on a machine with internet."
            )
        try:
            return self._construct(train, download=True)
        except Exception as e:  # network errors come in many types
            raise FileNotFoundError(
                f"{self.dataset_name} is not under data_dir={os.path.abspath(self.data_dir)!r} and downloading it failed "
                f"({type(e).__name__}: {e}). Download it on a machine with internet (torchvision's {self.dataset_name} "
                f"layout) and copy it there, or use ImageFolderDataModule with train_dir/val_dir."
            ) from e

    def train_base(self) -> Dataset:
        return self._make(train=True)

    def val_base(self) -> Dataset:
        return self._make(train=False)


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 (torchvision); ``data_dir`` holds ``cifar-10-batches-py``."""

    dataset_name = "CIFAR-10"
    mean, std = CIFAR_MEAN, CIFAR_STD

    def _construct(self, train: bool, download: bool) -> Dataset:
        from torchvision.datasets import CIFAR10

        return CIFAR10(self.data_dir, train=train, download=download)

    @property
    def num_classes(self) -> int:
        return 10


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (torchvision); ``data_dir`` holds ``cifar-100-python``."""

    dataset_name = "CIFAR-100"

    def _construct(self, train: bool, download: bool) -> Dataset:
        from torchvision.datasets import CIFAR100

        return CIFAR100(self.data_dir, train=train, download=download)

    @property
    def num_classes(self) -> int:
        return 100


class STL10DataModule(_TorchvisionDataModule):
    """STL-10: pre-train on ``train+unlabeled`` (105k images) or ``train``; evaluate on ``test``.

    The kNN bank uses the 5k labelled ``train`` split (unlabeled images have no label, -1; the
    online probe trains on the labelled ones).

    Args:
        use_unlabeled: pre-train on ``train+unlabeled`` (True) or on ``train`` only.
    """

    dataset_name = "STL-10"

    def __init__(self, use_unlabeled: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.use_unlabeled = use_unlabeled

    def _construct(self, train: bool, download: bool) -> Dataset:
        from torchvision.datasets import STL10

        split = ("train+unlabeled" if self.use_unlabeled else "train") if train else "test"
        return STL10(self.data_dir, split=split, download=download)

    def bank_dataloader(self) -> DataLoader:
        from torchvision.datasets import STL10

        labelled = STL10(self.data_dir, split="train", download=False)
        return self._loader(EvalDataset(labelled, self.eval_transform()), shuffle=False, drop_last=False)

    @property
    def num_classes(self) -> int:
        return 10
