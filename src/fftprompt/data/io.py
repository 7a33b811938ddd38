"""Reading images and masks from disk, with errors that name the file.

Images come back as ``(3, H, W)`` tensors whatever the file holds: grayscale, palette and bilevel images are expanded
to RGB, alpha is dropped, 8-bit files give ``uint8`` and 16-bit files give ``float32`` scaled to ``[0, 1]`` (so that
``ToDtype(float32, scale=True)`` treats both alike). Masks come back as ``(H, W)`` ``uint8`` tensors.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".pbm"}
)
OnBadFile = Literal["error", "skip"]
MaskMode = Literal["binary", "index"]

# PIL modes holding more than 8 bits per sample. "I" is what older Pillow versions (and some TIFF writers) give for
# 16-bit grayscale, so its values are read on the 16-bit scale as well.
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_UINT16_MAX = 65535.0
# Formats whose compression changes pixel values (Pillow's names; MPO is the multi-picture JPEG of some cameras).
_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})
# A binary mask whose values all lie in 1..SMALL_VALUES (below the threshold) holds class indices, not intensities:
# JPEG noise on a 0/1 mask reaches 2 or 3, while the smallest 0/255 object a JPEG keeps stays far above 15.
SMALL_VALUES = 15


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image by its extension (hidden files excluded)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Sorted image files in ``folder`` (and its subfolders when ``recursive``)."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.is_file() and is_image_file(p))


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


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError as err:
        raise ValueError(f"image file {path} does not exist") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image file {path}: {err}") from err


def _load(image: Image.Image, path: Path) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image file {path} (corrupt or truncated?): {err}") from err


def read_image(path: str | Path, draft_size: int | None = None) -> torch.Tensor:
    """Read an image file as RGB.

    Args:
        path: image file.
        draft_size: when given, JPEGs are decoded at the smallest power-of-two reduction whose sides are still at
            least this size (a cheap way to read large photos that will be resized anyway).

    Returns:
        ``(3, H, W)`` ``uint8`` for 8-bit files, ``float32`` in ``[0, 1]`` for 16-bit files.

    Raises:
        ValueError: naming the file when it is missing, not an image, corrupt or truncated, or of a mode that has
            no RGB meaning (32-bit float).
    """
    path = Path(path)
    with _open(path) as image:
        if draft_size is not None and image.format == "JPEG":
            image.draft(image.mode, (draft_size, draft_size))
        _load(image, path)
        if image.mode in _HIGH_DEPTH_MODES:
            values = np.asarray(image).astype(np.float32) / _UINT16_MAX
            gray = torch.from_numpy(np.clip(values, 0.0, 1.0))
            return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
        if image.mode == "F":
            raise ValueError(
                f"image file {path} holds 32-bit floating point samples (PIL mode F), which have no fixed intensity "
                "range; convert it to 8- or 16-bit"
            )
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_mask(path: str | Path, mode: MaskMode = "binary", threshold: int = 128, invert: bool = False) -> torch.Tensor:
    """Read a segmentation mask.

    Args:
        path: mask file.
        mode: ``"binary"``: foreground where the (luminance of the) mask is at least ``threshold`` (robust to
            JPEG compression noise in 0/255 masks). A lossless mask whose values are all below ``threshold`` and
            that holds two values ``{0, v}`` (0/1 coding) has foreground ``v``; one holding several small values
            (at most :data:`SMALL_VALUES`: class indices) is an error, and so is a JPEG holding only small values
            (class indices whose compression noise turns 0/1 into 0/1/2). ``"index"``: the stored values (palette
            indices for palette images) are class indices; JPEG files are refused (lossy compression changes the
            indices along region borders).
        threshold: on the 8-bit scale; 16-bit masks are compared with ``threshold * 257``.
        invert: swap foreground and background of a binary mask (for masks that mark the background).

    Returns:
        ``(H, W)`` ``uint8``; values in ``{0, 1}`` for binary masks.

    Raises:
        ValueError: naming the file when it is unreadable or ambiguous as described above, or, in index mode, a
            JPEG, not single-channel or holding indices above 255.
    """
    path = Path(path)
    with _open(path) as image:
        _load(image, path)
        lossy = image.format in _LOSSY_FORMATS
        if mode == "binary":
            if image.mode == "1":
                values = np.asarray(image, dtype=bool)
            elif image.mode in _HIGH_DEPTH_MODES:
                values = _binarize(np.asarray(image).astype(np.int64), threshold * 257, lossy, path, threshold)
            else:
                values = _binarize(np.asarray(image.convert("L")), threshold, lossy, path, threshold)
            return torch.from_numpy((values != invert).astype(np.uint8))
        if mode != "index":
            raise ValueError(f"mask mode {mode!r} is not one of ('binary', 'index')")
        if invert:
            raise ValueError("invert applies to binary masks, not to mask mode 'index'")
        if lossy:
            raise ValueError(
                f"mask file {path} is a {image.format}: lossy compression changes class indices along region "
                "borders; index masks must be lossless (PNG, TIFF, GIF, BMP): re-export the original masks "
                "(converting this file keeps its noise), or read 0/1 masks with mask_mode=binary and mask_threshold=1"
            )
        if image.mode not in ("1", "L", "P") and image.mode not in _HIGH_DEPTH_MODES:
            raise ValueError(
                f"mask file {path} has PIL mode {image.mode}; index masks must be single-channel (L, P, I;16)"
            )
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(f"mask file {path} holds class indices outside [0, 255]: {np.unique(values)[:10]}")
        return torch.from_numpy(values.astype(np.uint8))


def _binarize(values: np.ndarray, cut: int, lossy: bool, path: Path, threshold: int) -> np.ndarray:
    """Foreground of a binary mask ``(H, W)`` whose values are compared with ``cut`` (``threshold`` on its scale)."""
    top = int(values.max()) if values.size else 0
    if top >= cut or top == 0:
        return values >= cut
    # Every value is below the threshold, so thresholding would give an all-background mask.
    distinct = np.unique(values)
    if not lossy and len(distinct) <= 2:  # 0/1 (or 0/v) coding: unambiguous
        return values > 0
    if top > SMALL_VALUES:  # faint values (e.g. anti-aliasing residue): background, as thresholded
        return values >= cut
    if lossy:
        raise ValueError(
            f"mask file {path} is a JPEG holding only small values (0..{top}, all below mask_threshold={threshold}): "
            "class indices saved with lossy compression (its noise turns 0/1 into 0/1/2), which would read as all "
            "background; pass mask_threshold=1 (data.mask_threshold=1) to take values >= 1 as foreground, or "
            "re-export the original masks losslessly (PNG)"
        )
    raise ValueError(
        f"mask file {path} holds only small values {distinct.tolist()[:10]} (all below mask_threshold={threshold}), "
        "which look like class indices and would read as all background; binary masks are coded 0/255 or 0/1: for "
        "class-index masks use data=seg_folder with data.mask_mode=index and data.class_names"
    )


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding the pixels."""
    path = Path(path)
    with _open(path) as image:
        return image.size


def check_image(path: str | Path) -> str | None:
    """Cheaply check that an image file decodes.

    Runs PIL's ``verify`` (structure and checksums, e.g. PNG CRCs), then decodes the pixels, JPEGs at 1/8 scale,
    which still reads every entropy-coded byte, so a truncated file fails.

    Returns:
        None when the file is fine, else a one-line description of the problem.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except Exception as err:  # noqa: BLE001 -- any decoder failure means the file is unusable
        return f"{type(err).__name__}: {err}"
    return None


def find_bad_images(paths: Iterable[Path]) -> dict[Path, str]:
    """Files among ``paths`` that fail :func:`check_image`, with the reason."""
    bad = {}
    for path in paths:
        problem = check_image(path)
        if problem is not None:
            bad[path] = problem
    return bad
