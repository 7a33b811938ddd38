"""Frequency-domain augmentations and filters as plain tensor functions (the maths of :mod:`fftprompt.augment`).

Images are ``(..., H, W)`` real tensors (typically ``(B, C, H, W)``); every function works on the last two axes, in
float32, on the input's device, through ``torch.fft.rfft2`` / ``irfft2`` (half spectra ``(..., H, W // 2 + 1)``).
Frequencies are integers ``k`` in FFT order (``torch.fft.fftfreq(n) * n``); every window and response here depends
on ``|k_y|`` and ``|k_x|`` only, so it is symmetric under ``k -> -k`` and a real image stays real.

- Fourier Domain Adaptation (Yang and Soatto, CVPR 2020): :func:`swap_low_amplitude` replaces the amplitude inside a
  low-frequency window by another image's and keeps the phase. The window is FDA's square ``|k_y|, |k_x| < b`` with
  ``b = floor(beta * min(H, W))``, made symmetric (FDA's code takes ``-b <= k < b``) so that the result is real;
  ``beta = 0`` selects no frequency (the identity).
- Amplitude mix (FACT, Xu et al., CVPR 2021): :func:`mix_amplitude` interpolates the amplitudes of two images with a
  per-image weight inside a window and keeps the phase.
- Ideal radial filters: :func:`band_response` (low-pass, band-pass, high-pass, notch, high-frequency emphasis) and
  :func:`apply_response`. The zero frequency always has gain 1: filters change patterns, never the mean colour,
  which also makes them commute with per-channel normalisation.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "BAND_KINDS",
    "BandKind",
    "amplitude",
    "apply_response",
    "band_response",
    "fda_radius",
    "frequency_radius",
    "low_frequency_window",
    "mix_amplitude",
    "seeded_generator",
    "swap_low_amplitude",
]

BandKind = Literal["lowpass", "bandpass", "highpass", "notch", "emphasis"]
BAND_KINDS: tuple[str, ...] = get_args(BandKind)


def _half_frequencies(height: int, width: int, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    """Integer frequencies ``(H, 1)`` and ``(1, W // 2 + 1)`` of a half spectrum (``rfft2`` layout)."""
    ky = torch.fft.fftfreq(height, d=1.0 / height, device=device).round().view(-1, 1)
    kx = torch.fft.rfftfreq(width, d=1.0 / width, device=device).round().view(1, -1)
    return ky, kx


def fda_radius(beta: float, height: int, width: int) -> int:
    """FDA's window half-size ``b = floor(beta * min(H, W))`` (``beta`` in ``[0, 0.5]``)."""
    if not 0.0 <= beta <= 0.5:
        raise ValueError(f"beta={beta} must lie in [0, 0.5] (fraction of the image side; 0 selects nothing)")
    return math.floor(beta * min(height, width) + 1e-9)


def low_frequency_window(height: int, width: int, radius: int, device: torch.device | str | None = None) -> Tensor:
    """The square low-frequency window ``|k_y| < radius and |k_x| < radius`` of a half spectrum.

    Args:
        height: image height ``H``.
        width: image width ``W``.
        radius: half-size in frequency steps (0: empty window; above ``min(H, W) / 2``: every frequency).
        device: where to build it.

    Returns:
        ``(H, W // 2 + 1)`` bool.
    """
    if radius < 0:
        raise ValueError(f"radius={radius} must be >= 0")
    ky, kx = _half_frequencies(height, width, device)
    return (ky.abs() < radius) & (kx.abs() < radius)


def frequency_radius(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """Radial frequency ``sqrt((k_y / H)^2 + (k_x / W)^2) / 0.5`` of a half spectrum: 1 is the Nyquist frequency
    along an axis, ``sqrt(2)`` the corner. ``(H, W // 2 + 1)`` float32."""
    ky, kx = _half_frequencies(height, width, device)
    return torch.sqrt((ky / height) ** 2 + (kx / width) ** 2) / 0.5


def amplitude(images: Tensor) -> Tensor:
    """``|rfft2(images)|``: ``(..., H, W) -> (..., H, W // 2 + 1)`` float32."""
    return torch.fft.rfft2(images.float()).abs()


def _rescale(values: Tensor, new_amplitude: Tensor, old_amplitude: Tensor | None = None) -> Tensor:
    """Complex ``values`` with their amplitude set to ``new_amplitude`` and their phase kept.

    Real and imaginary parts are multiplied by the same positive factor ``|new| / |old|``, so the phase is kept to
    rounding of each part (and the work stays in real arithmetic); values that are exactly zero take phase 0.
    """
    old = values.abs() if old_amplitude is None else old_amplitude
    zero = old == 0
    parts = torch.view_as_real(values) * (new_amplitude / torch.where(zero, 1.0, old)).unsqueeze(-1)
    parts[..., 0] += new_amplitude * zero
    return torch.view_as_complex(parts)


def swap_low_amplitude(
    images: Tensor, window: Tensor, *, style_amplitude: Tensor | None = None, partner: Tensor | None = None
) -> Tensor:
    """FDA: the amplitude of ``images`` inside ``window`` replaced by a style's; the phase is kept.

    Args:
        images: ``(B, C, H, W)`` real images.
        window: ``(H, W // 2 + 1)`` bool, e.g. :func:`low_frequency_window` with :func:`fda_radius`.
        style_amplitude: ``(B, C, H, W // 2 + 1)`` amplitudes to paste (e.g. :func:`amplitude` of style images).
        partner: ``(B,)`` indices into the batch instead: image ``i`` takes image ``partner[i]``'s amplitude.

    Returns:
        ``(B, C, H, W)`` float32; equal to ``images`` (to float precision) for an empty window.
    """
    if (style_amplitude is None) == (partner is None):
        raise ValueError("swap_low_amplitude needs exactly one of style_amplitude and partner")
    spectrum = torch.fft.rfft2(images.float())
    inside = spectrum[..., window]  # (B, C, N): only the window's entries change
    style = inside.abs()[partner] if partner is not None else style_amplitude[..., window].to(inside.real.dtype)
    spectrum[..., window] = _rescale(inside, style)
    return torch.fft.irfft2(spectrum, s=images.shape[-2:])


def mix_amplitude(images: Tensor, weight: Tensor, partner: Tensor, window: Tensor | None = None) -> Tensor:
    """FACT's amplitude mix: ``(1 - w_i) |F(x_i)| + w_i |F(x_partner[i])|`` inside ``window`` (everywhere when None),
    with the phase of ``x_i``.

    Args:
        images: ``(B, C, H, W)`` real images.
        weight: ``(B,)`` mixing weights ``w`` (0 keeps the image's amplitude, 1 takes the partner's).
        partner: ``(B,)`` indices into the batch of the images to mix with.
        window: ``(H, W // 2 + 1)`` bool, or None for the whole spectrum.

    Returns:
        ``(B, C, H, W)`` float32.
    """
    spectrum = torch.fft.rfft2(images.float())
    values = spectrum if window is None else spectrum[..., window]
    own = values.abs()
    w = weight.to(own.dtype).view(-1, *([1] * (own.ndim - 1)))
    mixed = _rescale(values, own + w * (own[partner] - own), own)
    if window is None:
        return torch.fft.irfft2(mixed, s=images.shape[-2:])
    spectrum[..., window] = mixed
    return torch.fft.irfft2(spectrum, s=images.shape[-2:])


def band_response(
    height: int,
    width: int,
    kind: BandKind,
    low: float = 0.0,
    high: float = 1.0,
    gain: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Ideal radial filter response on a half spectrum, with gain 1 at the zero frequency.

    With ``r`` = :func:`frequency_radius` (1 = Nyquist along an axis):

    - ``lowpass``: 1 for ``r <= high``, else 0;
    - ``bandpass``: 1 for ``low <= r <= high``, else 0;
    - ``highpass``: 1 for ``r >= low``, else 0;
    - ``notch``: 0 for ``low <= r <= high`` (a band-stop ring, e.g. for periodic noise), else 1;
    - ``emphasis``: ``1 + gain`` for ``r >= low``, else 1 (high-frequency emphasis, detail enhancement).

    Returns:
        ``(H, W // 2 + 1)`` float32.
    """
    if kind not in BAND_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(BAND_KINDS)}")
    r = frequency_radius(height, width, device)
    if kind == "lowpass":
        response = (r <= high).float()
    elif kind == "bandpass":
        response = ((r >= low) & (r <= high)).float()
    elif kind == "highpass":
        response = (r >= low).float()
    elif kind == "notch":
        response = 1.0 - ((r >= low) & (r <= high)).float()
    else:
        response = 1.0 + gain * (r >= low).float()
    response[0, 0] = 1.0
    return response


def apply_response(images: Tensor, response: Tensor) -> Tensor:
    """``irfft2(rfft2(images) * response)``: ``(..., H, W)`` with a ``(H, W // 2 + 1)`` response -> float32."""
    spectrum = torch.view_as_real(torch.fft.rfft2(images.float())) * response.unsqueeze(-1)  # real arithmetic
    return torch.fft.irfft2(torch.view_as_complex(spectrum), s=images.shape[-2:])


def seeded_generator(parts: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from integers (e.g. ``(seed, step, rank)``), the same in every
    process and on every run."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
