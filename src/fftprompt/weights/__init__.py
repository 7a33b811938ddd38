"""Backbone weights shipped with fftprompt (package data, also reachable as ``weights/`` from the repository root).

:data:`DEMO_WEIGHTS` (``vit_demo_patch8_mixture_simclr.safetensors``) is the demo ViT's default: pretrained by
``fftprompt-pretrain`` on FractalDB-style fractals, then contrastively on a mixture of procedural images, the step
chosen by a validation probe; ``vit_demo_patch8_fractaldb.safetensors`` holds the first, fractal-only weights. Model
cards and SHA256s lie next to them. Configs name these files through the ``fftprompt.weights`` resolver that
:mod:`fftprompt.run` and :mod:`fftprompt.cli` register when imported:
``${fftprompt.weights:vit_demo_patch8_fractaldb.safetensors}`` becomes the absolute path of the file inside the
installed package, whatever the working directory.

A run records the weights file it was trained on by path and SHA256 (:func:`file_sha256`); :func:`locate_weights`
finds it again after the run (or the clone holding the shipped weights) has moved: the recorded path if it still
holds the same bytes, else the shipped file of that name with the recorded SHA256.

Submodules (imported on use, they need torch or the hub client): :mod:`~fftprompt.weights.checkpoint` reads a local
weights file into a state dict, :mod:`~fftprompt.weights.hub` checks that timm's pretrained weights can be had.
Neither imports timm: adapting weights to a timm model is :mod:`fftprompt.backbone`'s.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["DEMO_WEIGHTS", "RESOLVER", "WEIGHTS_DIR", "file_sha256", "locate_weights", "shipped_name", "weights_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent
DEMO_WEIGHTS = "vit_demo_patch8_mixture_simclr.safetensors"
RESOLVER = "fftprompt.weights"  # the OmegaConf resolver name, registered with weights_path by fftprompt.run and .cli
_HASHES: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> SHA256: files are hashed once


def weights_path(name: str) -> str:
    """Absolute path of the shipped file ``name`` (a plain file name, no directories)."""
    if not name or Path(name).name != name:
        raise ValueError(f"shipped weights name {name!r} must be a file name in {WEIGHTS_DIR}, without directories")
    return str(WEIGHTS_DIR / name)


def file_sha256(path: str | Path) -> str:
    """The SHA256 (hex) of the file at ``path``."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with resolved.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def shipped_name(path: str | Path) -> str | None:
    """The package-relative name of ``path`` when a file of that name ships with fftprompt (a ``<stem>.sha256``
    beside it), else None; ``path`` itself need not exist (a run trained in another clone records that clone's)."""
    name = Path(path).name
    return name if (WEIGHTS_DIR / name).is_file() and (WEIGHTS_DIR / f"{Path(name).stem}.sha256").is_file() else None


def locate_weights(recorded: str | Path, sha256: str | None, *, given: str | Path | None = None) -> Path:
    """The weights file a run recorded as ``recorded`` (with ``sha256``, None when it recorded none).

    Args:
        recorded: The path the run was trained with.
        sha256: Its recorded SHA256; a file with other bytes is another model and is refused.
        given: A path the user gave instead (``backbone.checkpoint_path=``), for a file that moved.

    Returns:
        ``given`` (with the recorded SHA256); else ``recorded`` when it still holds the recorded bytes; else the
        shipped file of the same name (:func:`shipped_name`) when its SHA256 is the recorded one (or none was).

    Raises:
        ValueError: naming the recorded path and SHA256 and how to point at the file.
    """
    candidates = [Path(given)] if given is not None else [Path(recorded)]
    name = shipped_name(recorded)
    if given is None and name is not None:
        candidates.append(WEIGHTS_DIR / name)
    other = None  # (file, its SHA256) of a candidate holding other bytes
    for candidate in candidates:
        if not candidate.is_file():
            continue
        actual = file_sha256(candidate)
        if sha256 is None or actual == sha256:
            return candidate
        other = other or (candidate, actual)
    expected = "" if sha256 is None else f" (SHA256 {sha256})"
    found = "" if other is None else f"; {other[0]} holds other weights (SHA256 {other[1]}): another model"
    where = str(recorded) if given is None else f"backbone.checkpoint_path={str(given)!r}"
    missing = "" if other is not None else f"{where} does not exist or is not a file"
    raise ValueError(
        f"backbone weights {recorded}{expected}: {missing}{found.lstrip('; ') if not missing else found}; pass "
        "backbone.checkpoint_path=<the path of that weights file now>"
    )
