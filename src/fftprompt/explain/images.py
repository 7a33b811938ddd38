"""The images to explain, from an ``images=`` value: ``"<split>[:<count>]"`` of the run's data, or files."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors

from fftprompt.data.io import image_paths, read_image
from fftprompt.data.splits import evenly_spaced, split_selection
from fftprompt.rundir import LoadedRun

__all__ = ["load_images"]


def load_images(spec: Any, run: LoadedRun) -> tuple[Tensor, Tensor | None, list[str], str]:
    """``(images (B, C, H, W), targets or None, captions, description)`` for an ``images=`` value."""
    selection = split_selection(spec)
    if selection is not None:
        split, count = selection
        dataset = run.datamodule.dataset(split)  # type: ignore[arg-type]
        indices = evenly_spaced(len(dataset), count)  # type: ignore[arg-type]
        items = [dataset[i] for i in indices]
        images, targets = torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
        description = f"{len(indices)} {split} images of {type(run.datamodule).__name__}, evenly spaced in the split."
        return images, targets, [f"{split} #{i}" for i in indices], description
    paths = image_paths(spec)
    transform = run.datamodule.transform("test")
    images = torch.stack([transform(tv_tensors.Image(read_image(p))).as_subclass(Tensor) for p in paths])
    return images, None, [p.name for p in paths], f"{len(paths)} image files, preprocessed as the run's test split."
