"""Data: the generated symmetry benchmark and real datasets in their genuine layouts, as LightningDataModules.

Every data module exposes, after ``setup()``, ``task``, ``num_classes`` and ``class_names``, loaders yielding
``(images (B, 3, S, S) float32 normalised with mean/std, targets)`` with targets ``(B,)`` int64 (classification) or
``(B, S, S)`` int64 (segmentation), and ``denormalize`` for figures.
"""

from __future__ import annotations

from fftprompt.data.base import DataWarning, FileDataModule, ImageDataModule
from fftprompt.data.classification import (
    DTDDataModule,
    ImageFolderDataModule,
    KTHTips2DataModule,
    MedMNISTDataModule,
)
from fftprompt.data.io import read_image, read_mask
from fftprompt.data.segmentation import ISIC2018DataModule, KvasirSegDataModule, SegFolderDataModule
from fftprompt.data.symmetry import (
    DEFAULT_SYMMETRY_CLASSES,
    SYMMETRY_CLASSES,
    SymmetryBatch,
    SymmetryDataModule,
    SymmetryDataset,
    SymmetryGenerator,
)
from fftprompt.data.transforms import build_transform, denormalize
from fftprompt.utils import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DEFAULT_SYMMETRY_CLASSES",
    "DTDDataModule",
    "DataWarning",
    "FileDataModule",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISIC2018DataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "KTHTips2DataModule",
    "KvasirSegDataModule",
    "MedMNISTDataModule",
    "SYMMETRY_CLASSES",
    "SegFolderDataModule",
    "SymmetryBatch",
    "SymmetryDataModule",
    "SymmetryDataset",
    "SymmetryGenerator",
    "build_transform",
    "denormalize",
    "read_image",
    "read_mask",
]
