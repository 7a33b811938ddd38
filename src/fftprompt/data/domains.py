"""Domain parameters of the generated symmetry benchmark: how an image is rendered, independently of its label.

A domain is a choice of texture generator (``textures``), colour palette, pixel-noise colour and strength, and
optical blur. Training on one domain and testing on another (``experiment=symmetry_shift``) measures how much of
what a model learnt is the symmetry and how much the rendering. The defaults (``natural`` palette, ``white`` noise,
no blur) are the benchmark as it always was: they leave every generated image unchanged.

- ``palette``: ``natural`` (random colours), or a 3 x 3 colour matrix applied to every drawn colour: ``grey``
  (luminance), ``warm`` (sepia) or ``cool`` (sepia with red and blue swapped). Texture contrast is kept: each
  texture field's colour vector keeps its length.
- ``noise_colour``: the power spectrum of the additive pixel noise, ``white`` (flat), ``pink`` (``1/f``) or
  ``brown`` (``1/f^2``), at the same standard deviation ``noise_std``.
- ``blur``: standard deviation of a Gaussian blur as a fraction of the image side (0: none), applied before the
  noise, as optics blur before the sensor adds noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from fftprompt.utils import check_choice

__all__ = [
    "DOMAIN_KEYS",
    "NOISE_COLOURS",
    "PALETTES",
    "NoiseColour",
    "Palette",
    "apply_palette",
    "blur_images",
    "check_domain",
    "colour_noise",
]

Palette = Literal["natural", "grey", "warm", "cool"]
PALETTES: tuple[str, ...] = get_args(Palette)
NoiseColour = Literal["white", "pink", "brown"]
NOISE_COLOURS: tuple[str, ...] = get_args(NoiseColour)
DOMAIN_KEYS = ("textures", "palette", "noise_colour", "noise_std", "blur")
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
_MATRICES = {
    "grey": np.tile(np.array([[0.299, 0.587, 0.114]]), (3, 1)),
    "warm": _SEPIA,
    "cool": _SEPIA[::-1].copy(),
}
_NOISE_EXPONENTS = {"pink": 0.5, "brown": 1.0}  # amplitude ~ 1 / f^exponent


def check_domain(domain: Mapping[str, Any], name: str = "test_domain") -> dict[str, Any]:
    """``domain`` as a plain dict after checking its keys (a subset of :data:`DOMAIN_KEYS`) and choices."""
    if not isinstance(domain, Mapping):
        raise ValueError(f"{name}={domain!r} must be a mapping of domain parameters {list(DOMAIN_KEYS)}")
    plain = dict(domain.items())
    unknown = sorted(set(plain) - set(DOMAIN_KEYS))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; expected some of {list(DOMAIN_KEYS)}")
    if "palette" in plain:
        check_choice(f"{name}.palette", plain["palette"], Palette)
    if "noise_colour" in plain:
        check_choice(f"{name}.noise_colour", plain["noise_colour"], NoiseColour)
    if "textures" in plain:
        plain["textures"] = [str(t) for t in plain["textures"]]
    return plain


def apply_palette(mean: np.ndarray, mixing: np.ndarray, palette: str) -> tuple[np.ndarray, np.ndarray]:
    """A drawn colour (mean ``(3,)``, mixing ``(3, 2)``) in ``palette`` (``natural``: unchanged)."""
    if palette == "natural":
        return mean, mixing
    matrix = _MATRICES[palette]
    mapped = matrix @ mixing
    lengths = np.linalg.norm(mixing, axis=0) / np.maximum(np.linalg.norm(mapped, axis=0), 1e-12)
    return np.clip(matrix @ mean, 0.1, 0.9), mapped * lengths


def colour_noise(noise: np.ndarray, colour: str) -> np.ndarray:
    """White noise ``(B, C, S, S)`` filtered to ``colour`` with each image's and channel's standard deviation kept."""
    if colour == "white":
        return noise
    size = noise.shape[-1]
    frequency = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2)
    response = torch.from_numpy(np.where(frequency > 0, np.maximum(frequency, 1e-12) ** -_NOISE_EXPONENTS[colour], 0))
    source = torch.from_numpy(noise)
    filtered = torch.fft.irfft2(torch.fft.rfft2(source) * response.to(torch.float32), s=(size, size))
    filtered = filtered - filtered.mean(dim=(-2, -1), keepdim=True)
    scale = source.std(dim=(-2, -1), keepdim=True) / filtered.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (filtered * scale).numpy().astype(noise.dtype)


def blur_images(images: np.ndarray, blur: float) -> np.ndarray:
    """``(B, C, S, S)`` images blurred by a Gaussian of standard deviation ``blur * S`` (edges reflected)."""
    if blur <= 0:
        return images
    sigma = blur * images.shape[-1]
    return gaussian_filter(images, sigma=(0, 0, sigma, sigma), mode="reflect").astype(images.dtype)
