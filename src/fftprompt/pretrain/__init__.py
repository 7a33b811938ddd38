"""Formula-driven supervised pretraining (``fftprompt-pretrain``): FractalDB-style fractal classes rendered on the
training device, a Lightning module that trains a whole timm ViT on them, and the files of the resulting backbone.

``render`` holds the maths as plain tensor functions; :class:`FractalDB` the classes and their settings;
:class:`FormulaPretrainModule` the training; :func:`write_pretrained` the weights, SHA256 and model card;
:class:`ProbeSelection` the checkpoint selection by a linear probe on real images' validation splits.
"""

from __future__ import annotations

from fftprompt.pretrain.card import hardware, sha256_of, write_pretrained
from fftprompt.pretrain.formula import FractalDB
from fftprompt.pretrain.module import FormulaPretrainModule, batch_seed
from fftprompt.pretrain.selection import ProbeSelection

__all__ = [
    "FormulaPretrainModule",
    "FractalDB",
    "ProbeSelection",
    "batch_seed",
    "hardware",
    "sha256_of",
    "write_pretrained",
]
