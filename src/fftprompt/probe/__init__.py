"""``fftprompt-probe``: linear (L-BFGS) and k-NN probes on pooled backbone tokens, FFT statistics, or both.

The maths are plain functions (:mod:`.features`, :mod:`.linear`, :mod:`.knn`, :mod:`.protocol`); :mod:`.command`
turns a composed config into ``metrics.json`` and ``probe.md``.
"""

from __future__ import annotations

from fftprompt.linear_probe import LinearProbe, Standardizer, fit_linear_probe, logistic_objective
from fftprompt.probe.features import FEATURE_SETS, extract_features, fft_statistics, pooled_tokens
from fftprompt.probe.knn import knn_predict, knn_votes
from fftprompt.probe.protocol import CLASSIFIERS, evaluate_probes, random_splits, score

__all__ = [
    "CLASSIFIERS",
    "FEATURE_SETS",
    "LinearProbe",
    "Standardizer",
    "evaluate_probes",
    "extract_features",
    "fft_statistics",
    "fit_linear_probe",
    "knn_predict",
    "knn_votes",
    "logistic_objective",
    "pooled_tokens",
    "random_splits",
    "score",
]
