"""The probe's linear classifier; the maths live in :mod:`fftprompt.linear_probe`, below the training layers, so that
``fftprompt.pretrain`` (checkpoint selection) fits the same probe without importing this command package."""

from __future__ import annotations

from fftprompt.linear_probe import LinearProbe, Standardizer, fit_linear_probe, logistic_objective

__all__ = ["LinearProbe", "Standardizer", "fit_linear_probe", "logistic_objective"]
