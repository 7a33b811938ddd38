"""Pretraining from rendered images (``fftprompt-pretrain``): procedural sources rendered on the training device,
objectives (supervised on the source's classes, SimCLR between two views), a Lightning module that trains a whole
timm ViT with them, and the files of the resulting backbone.

``render`` holds the IFS maths as plain tensor functions and ``procedural`` those of the other sources;
:class:`FractalDB` the fractal classes; :class:`ColouredNoise`, :class:`DeadLeaves`, :class:`SinusoidalContours` and
:class:`Mixture` further sources with the same interface (:class:`Source`); ``views`` the per-image random views;
``mixing`` MixUp/CutMix; ``objectives`` the losses; :class:`PretrainModule` the training; :func:`write_pretrained`
the weights, SHA256 and model card; :class:`ProbeSelection` the checkpoint selection by a linear probe on real
images' validation splits.
"""

from __future__ import annotations

from fftprompt.pretrain.card import hardware, sha256_of, write_pretrained
from fftprompt.pretrain.formula import FractalDB
from fftprompt.pretrain.mixing import BatchMix
from fftprompt.pretrain.module import PretrainModule, Source, batch_seed
from fftprompt.pretrain.objectives import SimCLR, Supervised, nt_xent
from fftprompt.pretrain.selection import ProbeSelection
from fftprompt.pretrain.sources import ColouredNoise, DeadLeaves, Mixture, SinusoidalContours
from fftprompt.pretrain.views import ViewAugment

__all__ = [
    "BatchMix",
    "ColouredNoise",
    "DeadLeaves",
    "FractalDB",
    "Mixture",
    "PretrainModule",
    "ProbeSelection",
    "SimCLR",
    "SinusoidalContours",
    "Source",
    "Supervised",
    "ViewAugment",
    "batch_seed",
    "hardware",
    "nt_xent",
    "sha256_of",
    "write_pretrained",
]
