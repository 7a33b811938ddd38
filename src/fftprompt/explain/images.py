"""The images to explain, from an ``images=`` value: ``"<split>[:<count>]"`` of the run's data, or files."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors

from fftprompt.data.io import list_images, read_image
from fftprompt.data.splits import evenly_spaced, split_selection
from fftprompt.rundir import LoadedRun

__all__ = ["image_paths", "load_images"]


def image_paths(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files named by paths, globs and folders (one or a list), in order; raises when an entry names none.

    A folder gives its image files and those of its sub-folders (class folders, say), sorted by path; a file named
    twice (by a folder and by its own path, say) is listed once.
    """
    entries = [spec] if isinstance(spec, (str, Path)) else list(spec)
    paths: list[Path] = []
    seen: set[Path] = set()
    for entry in entries:
        text = str(entry)
        if any(c in text for c in "*?["):
            found = [p for p in map(Path, sorted(glob.glob(text, recursive=True))) if p.is_file()]
        elif Path(text).is_dir():
            found = list_images(Path(text), recursive=True)
        elif Path(text).is_file():
            found = [Path(text)]
        else:
            found = []
        if not found:
            raise ValueError(
                f"images entry {text!r} names no image file, folder of images or matching glob; expected paths, a "
                "glob, a folder, or a split of the run's data as '<split>[:<count>]' (e.g. test or test:8)"
            )
        for path in found:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                paths.append(path)
    return paths


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
