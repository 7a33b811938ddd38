"""Formula-driven supervised pretraining (``fftprompt-pretrain``): FractalDB-style fractal classes rendered on the
training device, a Lightning module that trains a whole timm ViT on them, and the files of the resulting backbone.

``render`` holds the IFS maths as plain tensor functions and ``procedural`` those of the other sources;
:class:`FractalDB` the fractal classes and their settings; :class:`ColouredNoise`, :class:`DeadLeaves`,
:class:`SinusoidalContours` and :class:`Mixture` further sources with the same interface;
:class:`FormulaPretrainModule` the training; :func:`write_pretrained` the weights, SHA256 and model card.
"""

from __future__ import annotations

from fftprompt.pretrain.card import hardware, sha256_of, write_pretrained
from fftprompt.pretrain.formula import FractalDB
from fftprompt.pretrain.module import FormulaPretrainModule, batch_seed
from fftprompt.pretrain.sources import ColouredNoise, DeadLeaves, Mixture, SinusoidalContours

__all__ = [
    "ColouredNoise",
    "DeadLeaves",
    "FormulaPretrainModule",
    "FractalDB",
    "Mixture",
    "SinusoidalContours",
    "batch_seed",
    "hardware",
    "sha256_of",
    "write_pretrained",
]
