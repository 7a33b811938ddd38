"""The probe's features: FFT statistics of the frequency maps, pooled backbone tokens, and both, computed once.

Everything runs without gradients in float32 on the images the model sees (the data module's normalised batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from fftprompt.spectral import FrequencyFeatures
from fftprompt.utils import check_choice

__all__ = ["FEATURE_SETS", "FeatureSet", "extract_features", "fft_statistics", "pooled_tokens"]

FeatureSet = Literal["fft", "backbone", "both"]
FEATURE_SETS: tuple[str, ...] = ("fft", "backbone", "both")


def fft_statistics(images: Tensor, features: FrequencyFeatures) -> Tensor:
    """Orderless statistics of the frequency maps: per-channel mean, then per-channel std, over the patch grid, at
    the features' patch size and then at each of its ``statistics_scales``.

    Args:
        images: ``(B, C, H, W)`` images, ``H`` and ``W`` multiples of every patch size of ``features``.
        features: The frequency features whose ``compact()`` maps ``(B, C_f, h, w)`` are summarised.

    Returns:
        ``(B, 2 * C_f * S)`` for ``S`` patch sizes (``FrequencyMaps.statistics()``): per size, the ``C_f`` means, then
        the ``C_f`` (population) standard deviations.
    """
    with torch.no_grad():
        return features(images.float()).statistics()


def pooled_tokens(
    forward_features: Callable[[Tensor], Tensor], pool: Callable[[Tensor], Tensor], images: Tensor
) -> Tensor:
    """``(B, C, H, W) -> (B, D)``: ``pool(forward_features(images))`` without gradients.

    Args:
        forward_features: Images to normed tokens ``(B, N, D)`` (a backbone, or a run's model with its prompts and
            adapters).
        pool: Tokens to ``(B, D)`` (class token or mean of the patch tokens, skipping prompt tokens).
        images: ``(B, C, H, W)`` normalised images.
    """
    with torch.no_grad():
        return pool(forward_features(images)).float()


def extract_features(
    batches: Iterable[tuple[Tensor, Tensor]],
    feature_sets: Sequence[str],
    *,
    backbone: Callable[[Tensor], Tensor] | None = None,
    frequency: FrequencyFeatures | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, Tensor], Tensor]:
    """Features of every image of ``batches`` for each of ``feature_sets``, each image passed through once.

    Args:
        batches: ``(images (B, C, H, W), labels (B,))`` pairs.
        feature_sets: Subset of :data:`FEATURE_SETS`; ``"both"`` is ``fft`` then ``backbone``, concatenated.
        backbone: Images to pooled tokens ``(B, D)`` (see :func:`pooled_tokens`); needed for ``backbone`` and ``both``.
        frequency: Frequency features for :func:`fft_statistics`; needed for ``fft`` and ``both``.
        device: Where the images are processed.

    Returns:
        ``({feature_set: (N, F) float64 on the CPU}, labels (N,) int64)``.
    """
    for name in feature_sets:
        check_choice("feature_sets", name, FEATURE_SETS)
    need_fft = any(name in ("fft", "both") for name in feature_sets)
    need_tokens = any(name in ("backbone", "both") for name in feature_sets)
    if need_fft and frequency is None:
        raise ValueError(f"feature_sets={list(feature_sets)} need the frequency features; none were given")
    if need_tokens and backbone is None:
        raise ValueError(f"feature_sets={list(feature_sets)} need a backbone; none was given")
    parts: dict[str, list[Tensor]] = {"fft": [], "backbone": []}
    labels: list[Tensor] = []
    for images, targets in batches:
        images = images.to(device)
        if need_fft:
            parts["fft"].append(fft_statistics(images, frequency).double().cpu())  # type: ignore[arg-type]
        if need_tokens:
            parts["backbone"].append(backbone(images).double().cpu())  # type: ignore[misc]
        labels.append(torch.as_tensor(targets).long().cpu())
    if not labels:
        raise ValueError("no images to compute features of (the split is empty)")
    stacked = {name: torch.cat(values) for name, values in parts.items() if values}
    result = {}
    for name in feature_sets:
        result[name] = torch.cat([stacked["fft"], stacked["backbone"]], dim=1) if name == "both" else stacked[name]
    return result, torch.cat(labels)
