"""Map-style datasets over image files, image/mask file pairs and in-memory arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from fftprompt.data.io import MaskMode, read_image, read_mask

Transform = Callable[..., object]


def _untyped(tensor: torch.Tensor) -> torch.Tensor:
    """Drop the tv_tensors subclass so that batches are ordinary tensors."""
    return tensor.as_subclass(torch.Tensor)


class FileClassificationDataset(Dataset):
    """Images read from files, one class index each.

    Items are ``(image (3, S, S) float32, label () int64)`` after ``transform``.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        transform: Transform,
        draft_size: int | None = None,
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = list(files)
        self.labels = [int(label) for label in labels]
        self.transform = transform
        self.draft_size = draft_size

    @property
    def image_files(self) -> list[Path]:
        """The image files, in item order."""
        return list(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(read_image(self.files[index], self.draft_size))
        return _untyped(self.transform(image)), torch.tensor(self.labels[index], dtype=torch.int64)


class ArrayClassificationDataset(Dataset):
    """Images held in a ``uint8`` array ``(N, H, W)`` (grayscale, expanded to RGB) or ``(N, H, W, 3)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform) -> None:
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise ValueError(f"images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        array = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        image = array.unsqueeze(0).expand(3, -1, -1) if array.ndim == 2 else array.permute(2, 0, 1)
        return _untyped(self.transform(tv_tensors.Image(image.contiguous()))), torch.tensor(self.labels[index])


class FileSegmentationDataset(Dataset):
    """Image/mask file pairs; items are ``(image (3, S, S) float32, mask (S, S) int64)`` after ``transform``.

    Args:
        pairs: ``(image file, mask file)`` pairs.
        transform: joint transform over ``(Image, Mask)``.
        mask_mode: ``"binary"`` or ``"index"``, see :func:`~fftprompt.data.io.read_mask`.
        mask_threshold: binary threshold on the 8-bit scale.
        num_classes: for index masks, values must be below this.
        invert_masks: swap foreground and background of binary masks.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        transform: Transform,
        mask_mode: MaskMode = "binary",
        mask_threshold: int = 128,
        num_classes: int = 2,
        invert_masks: bool = False,
    ) -> None:
        self.pairs = list(pairs)
        self.transform = transform
        self.mask_mode = mask_mode
        self.mask_threshold = mask_threshold
        self.num_classes = num_classes
        self.invert_masks = invert_masks

    @property
    def image_files(self) -> list[Path]:
        """The image files, in item order."""
        return [image_path for image_path, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def read_target(self, mask_path: Path) -> torch.Tensor:
        """The ``(H, W)`` ``uint8`` class map of ``mask_path``, checked against ``num_classes`` (a ``ValueError``)."""
        mask = read_mask(mask_path, self.mask_mode, self.mask_threshold, invert=self.invert_masks)
        if self.mask_mode == "index" and mask.numel() and int(mask.max()) >= self.num_classes:
            raise ValueError(
                f"mask {mask_path} holds class index {int(mask.max())} but there are only {self.num_classes} classes"
            )
        return mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = self.read_target(mask_path)
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise ValueError(
                f"image {image_path} is {image.shape[-1]}x{image.shape[-2]} but its mask {mask_path} is "
                f"{mask.shape[-1]}x{mask.shape[-2]} (width x height); they must match"
            )
        image_out, mask_out = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return _untyped(image_out), _untyped(mask_out)


class LabelledSubset(Dataset):
    """The items ``indices`` of a classification dataset that lists its ``labels`` (and ``image_files``, if any)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        all_labels = dataset.labels  # type: ignore[attr-defined]
        self.labels = [int(all_labels[i]) for i in self.indices]

    @property
    def image_files(self) -> list[Path]:
        """The image files, in item order (none for in-memory datasets)."""
        files = getattr(self.dataset, "image_files", [])
        return [files[i] for i in self.indices] if files else []

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[self.indices[index]]
