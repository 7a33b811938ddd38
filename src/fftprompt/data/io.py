"""Reading images and masks from disk, with errors that name the file.

Images come back as ``(3, H, W)`` tensors whatever the file holds: grayscale, palette and bilevel images are expanded
to RGB, alpha is dropped, 8-bit files give ``uint8`` and 16-bit files give ``float32`` scaled to ``[0, 1]`` (so that
``ToDtype(float32, scale=True)`` treats both alike). Masks come back as ``(H, W)`` ``uint8`` tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image by its extension (hidden files excluded)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Sorted image files in ``folder`` (and its subfolders when ``recursive``)."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.is_file() and is_image_file(p))


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


def read_mask(path: str | Path, mode: MaskMode = "binary", threshold: int = 128) -> torch.Tensor:
    """Read a segmentation mask.

    Args:
        path: mask file.
        mode: ``"binary"``: foreground where the (luminance of the) mask is at least ``threshold`` (robust to
            JPEG compression noise in 0/255 masks; lossless masks whose maximum is 1 are read as 0/1 coded);
            ``"index"``: the stored values (palette indices for palette images) are class indices.
        threshold: on the 8-bit scale; 16-bit masks are compared with ``threshold * 257``.

    Returns:
        ``(H, W)`` ``uint8``; values in ``{0, 1}`` for binary masks.

    Raises:
        ValueError: naming the file when it is unreadable, or, in index mode, not single-channel or holding indices
            above 255.
    """
    path = Path(path)
    with _open(path) as image:
        _load(image, path)
        if mode == "binary":
            if image.mode == "1":
                values = np.asarray(image, dtype=bool)
            elif image.mode in _HIGH_DEPTH_MODES:
                values = np.asarray(image).astype(np.int64) >= threshold * 257
            else:
                luminance = np.asarray(image.convert("L"))
                # Lossless masks coded 0/1 instead of 0/255: a threshold of 128 would silently erase them.
                if image.format != "JPEG" and luminance.size and luminance.max() == 1:
                    values = luminance >= 1
                else:
                    values = luminance >= threshold
            return torch.from_numpy(values.astype(np.uint8))
        if mode != "index":
            raise ValueError(f"mask mode {mode!r} is not one of ('binary', 'index')")
        if image.mode not in ("1", "L", "P") and image.mode not in _HIGH_DEPTH_MODES:
            raise ValueError(
                f"mask file {path} has PIL mode {image.mode}; index masks must be single-channel (L, P, I;16)"
            )
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(f"mask file {path} holds class indices outside [0, 255]: {np.unique(values)[:10]}")
        return torch.from_numpy(values.astype(np.uint8))


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
