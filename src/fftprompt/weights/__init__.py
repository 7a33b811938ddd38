"""Backbone weights shipped with fftprompt (package data, also reachable as ``weights/`` from the repository root).

``vit_demo_patch8_fractaldb.safetensors`` is the demo ViT pretrained by ``fftprompt-pretrain`` on FractalDB-style
fractals (its model card and SHA256 lie next to it). Configs name these files through the ``fftprompt.weights``
resolver that :mod:`fftprompt.run` and :mod:`fftprompt.cli` register when imported:
``${fftprompt.weights:vit_demo_patch8_fractaldb.safetensors}`` becomes the absolute path of the file inside the
installed package, whatever the working directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_WEIGHTS", "RESOLVER", "WEIGHTS_DIR", "weights_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent
DEMO_WEIGHTS = "vit_demo_patch8_fractaldb.safetensors"
RESOLVER = "fftprompt.weights"  # the OmegaConf resolver name, registered with weights_path by fftprompt.run and .cli


def weights_path(name: str) -> str:
    """Absolute path of the shipped file ``name`` (a plain file name, no directories)."""
    if not name or Path(name).name != name:
        raise ValueError(f"shipped weights name {name!r} must be a file name in {WEIGHTS_DIR}, without directories")
    return str(WEIGHTS_DIR / name)
