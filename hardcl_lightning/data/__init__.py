"""Datamodules, multi-view transforms and the embedded procedural dataset."""

from hardcl_lightning.data.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    ShapesDataModule,
    SSLDataModule,
    STL10DataModule,
    class_balanced_subset,
)
from hardcl_lightning.data.folders import ImageFolderDataModule, UnlabeledFolderDataModule
from hardcl_lightning.data.procedural import FACTORS, ShapesDataset, make_shapes, make_shapes_with_factors
from hardcl_lightning.data.transforms import MultiViewTransform, ViewSpec, view_specs_for

__all__ = [
    "FACTORS",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageFolderDataModule",
    "MultiViewTransform",
    "ShapesDataModule",
    "ShapesDataset",
    "SSLDataModule",
    "STL10DataModule",
    "UnlabeledFolderDataModule",
    "ViewSpec",
    "class_balanced_subset",
    "make_shapes",
    "make_shapes_with_factors",
    "view_specs_for",
]
