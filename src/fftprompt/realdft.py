"""The model's FFTs as fixed real matrix products, for the exporters whose runtimes have no complex tensors.

ONNX has no complex dtype and torch's ONNX exporter cannot index, conjugate or multiply complex tensors, so the
frequency features of :mod:`fftprompt.spectral` (``fft2`` of every patch, ``irfft2`` of the symmetry
correlations) and VFPT's Fourier prompts are written here in real arithmetic: a length-``n`` DFT is the product
with the ``n x n`` matrices ``cos(2 pi k m / n)`` and ``sin(2 pi k m / n)``, and a complex value is a pair of real
tensors. At a ViT's patch size (8-32) the matrices are tiny and the products cost about what the FFT does.

:func:`use_real_dft` swaps them into a model at export time (a copy: training keeps ``torch.fft``); the functions
equal ``torch.fft`` within float32 rounding (tested against it), so the exported model computes the run's outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fftprompt.prompts import VFPTPrompt, _expand_batch
from fftprompt.spectral import (
    ENERGY_EPS,
    FrequencyFeatures,
    FrequencyMaps,
    _centred_patches,
    _scale_statistics,
    _weighted_fractions,
    cross_patch_symmetry,
    make_window,
    symmetry_gather_index,
)

__all__ = [
    "RealFrequencyFeatures",
    "RealVFPTPrompt",
    "dft_matrices",
    "real_centred_fft2",
    "real_irfft2",
    "real_symmetry_scores",
    "use_real_dft",
]


def dft_matrices(
    size: int, *, centred: bool = False, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of the DFT angles ``2 pi k m / n``, float32 ``(n, n)`` with rows ``k`` and columns ``m``.

    ``centred`` puts the rows in ``fftshift`` order (zero frequency at row ``n // 2``). Angles are reduced modulo
    ``n`` in integers and built in float64; entries that are exactly 0 in theory (``sin`` at multiples of ``pi``,
    ``cos`` at odd multiples of ``pi / 2``) are exact zeros, so the imaginary parts of the self-conjugate
    frequencies of a real signal come out exactly 0, as from ``torch.fft``.
    """
    index = torch.arange(size, dtype=torch.int64)
    if centred:
        index = torch.roll(index, size // 2)  # row i holds frequency (i - n // 2) mod n, as fftshift places it
    turns = (index[:, None] * torch.arange(size, dtype=torch.int64)[None, :]) % size
    angle = turns.double() * (2 * math.pi / size)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cos[(4 * turns) % (2 * size) == size] = 0.0  # a quarter or three quarters of a turn
    sin[(2 * turns) % size == 0] = 0.0  # no or half a turn
    return cos.float().to(device), sin.float().to(device)


def real_centred_fft2(signal: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Centred 2-D DFT of real signals: ``fftshift(fft2(signal))`` as (real, imaginary) parts.

    Args:
        signal: real ``(..., n, n)``.
        cos, sin: :func:`dft_matrices` ``(n, n)`` with ``centred=True``.

    Returns:
        Two ``(..., n, n)`` tensors. With ``W = cos - i sin``, ``F = W x W^T``.
    """
    by_cos, by_sin = signal @ cos.t(), signal @ sin.t()
    return cos @ by_cos - sin @ by_sin, -(cos @ by_sin + sin @ by_cos)


def real_irfft2(real: Tensor, imag: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``torch.fft.irfft2(real + i imag, s=(n, n))`` of half spectra ``(..., n, n // 2 + 1)`` -> ``(..., n, n)``.

    The inverse DFT along rows (complex, full length), then the Hermitian inverse along columns: each of the
    ``n // 2 + 1`` columns counts twice except the zero and (even ``n``) Nyquist frequencies, whose imaginary
    parts are ignored as ``irfft`` ignores them (their ``sin`` entries are exact zeros).

    Args:
        real, imag: ``(..., n, n // 2 + 1)``.
        cos, sin: :func:`dft_matrices` ``(n, n)``, not centred.
    """
    n = cos.shape[0]
    half = n // 2 + 1
    rows_real, rows_imag = cos @ real - sin @ imag, sin @ real + cos @ imag  # exp(+i angle) along rows
    weight = torch.full((half, 1), 2.0, device=cos.device)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    column_cos, column_sin = cos[:half] * weight, sin[:half] * weight
    return (rows_real @ column_cos - rows_imag @ column_sin) / (n * n)


def real_symmetry_scores(real: Tensor, imag: Tensor, gather_index: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """:func:`fftprompt.spectral.symmetry_scores` of centred spectra given as real parts: ``(..., n, n) -> (..., 6)``.

    Args:
        real, imag: centred spectra ``(..., n, n)``.
        gather_index: :func:`~fftprompt.spectral.symmetry_gather_index` ``(7, n, n // 2 + 1)``.
        cos, sin: :func:`dft_matrices` ``(n, n)``, not centred.
    """
    n = real.shape[-1]
    lead = real.shape[:-2]
    index = gather_index.reshape(-1)
    gathered_real = real.reshape(*lead, n * n)[..., index].reshape(*lead, 7, n, n // 2 + 1)
    gathered_imag = imag.reshape(*lead, n * n)[..., index].reshape(*lead, 7, n, n // 2 + 1)
    # conj(Q) * DFT(T q), as pairs
    first_real, first_imag = gathered_real[..., :1, :, :], gathered_imag[..., :1, :, :]
    cross_real = first_real * gathered_real[..., 1:, :, :] + first_imag * gathered_imag[..., 1:, :, :]
    cross_imag = first_real * gathered_imag[..., 1:, :, :] - first_imag * gathered_real[..., 1:, :, :]
    peak = real_irfft2(cross_real, cross_imag, cos, sin).amax(dim=(-2, -1))
    # the normalisation of spectral.symmetry_scores (Parseval), unchanged
    energy = (real.square() + imag.square()).sum(dim=(-2, -1)) / (n * n)
    empty = energy <= ENERGY_EPS * n * n
    scores = (peak / energy.clamp_min(1e-30).unsqueeze(-1)).clamp(0.0, 1.0)
    return torch.where(empty.unsqueeze(-1), 0.0, scores)


class _Twin(nn.Module):
    """Holds the module it reproduces as ``original`` and answers for it, as PEFT's tuners answer for their model."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original

    def __getattr__(self, name: str):  # the model reads settings (num_tokens, deep, patch_size...) off its parts
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "original":
                raise
            return getattr(self.original, name)


class RealFrequencyFeatures(_Twin):
    """A :class:`~fftprompt.spectral.FrequencyFeatures` computed with :func:`real_centred_fft2` (same maps).

    Args:
        features: The module to reproduce; its settings and buffers are shared, not copied.
    """

    def __init__(self, features: FrequencyFeatures) -> None:
        super().__init__(features)
        size = features.patch_size
        for name, centred in (("centred", True), ("plain", False)):
            cos, sin = dft_matrices(size, centred=centred, device=features.window.device)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        self.scales = nn.ModuleList(RealFrequencyFeatures(scale) for scale in features.scales)

    def forward(self, x: Tensor) -> FrequencyMaps:
        """``(B, C, H, W) ->`` the :class:`~fftprompt.spectral.FrequencyMaps` of ``FrequencyFeatures.forward``."""
        features = self.original
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, C, H, W) with C in (1, 3), got shape {tuple(x.shape)}")
        x = x.float()
        patches = _centred_patches(x, features.patch_size)
        real, imag = real_centred_fft2(patches * features.window, self.centred_cos, self.centred_sin)
        power_per_channel = real.square() + imag.square()
        magnitude = power_per_channel.sqrt()
        dominant, orientation, radial = _weighted_fractions(
            power_per_channel.mean(dim=1), features.spectral_weights
        ).split([2, features.orientation_bins, features.radial_bins], dim=1)
        symmetry = real_symmetry_scores(
            real.mean(dim=1), imag.mean(dim=1), features.symmetry_index, self.plain_cos, self.plain_sin
        ).permute(0, 3, 1, 2)
        return FrequencyMaps(
            log_magnitude=torch.log1p(magnitude),
            phase=torch.atan2(imag, real),
            symmetry=symmetry,
            orientation=orientation,
            dominant_orientation=dominant,
            radial=radial,
            cross_patch=cross_patch_symmetry(patches),
            global_symmetry=self._global_symmetry(x) if features.global_symmetry else None,
            groups=features.groups,
            scale_statistics=_scale_statistics(self.scales, x),
        )

    def _global_symmetry(self, x: Tensor) -> Tensor:
        """:func:`fftprompt.spectral.global_symmetry` at the (fixed) size of ``x``: ``(B, C, S, S) -> (B, 6)``."""
        size = x.shape[-1]
        if x.shape[-2] != size:
            raise ValueError(f"global symmetry needs square images (B, C, S, S), got shape {tuple(x.shape)}")
        image = (x - x.mean(dim=(-2, -1), keepdim=True)).mean(dim=1)
        window = make_window(size, self.original.window_name, device=x.device)
        real, imag = real_centred_fft2(image * window, *dft_matrices(size, centred=True, device=x.device))
        index = symmetry_gather_index(size, device=x.device)
        return real_symmetry_scores(real, imag, index, *dft_matrices(size, device=x.device))


class RealVFPTPrompt(_Twin):
    """A :class:`~fftprompt.prompts.VFPTPrompt` whose Fourier prompts are ``Re(fft2)`` as matrix products.

    Args:
        prompt: The module to reproduce; its parameters are shared, not copied.
    """

    def __init__(self, prompt: VFPTPrompt) -> None:
        super().__init__(prompt)
        tokens, dim = prompt.num_fourier_tokens, prompt.prompt_embeddings.shape[-1]
        device = prompt.prompt_embeddings.device
        for name, size in (("token", tokens), ("dim", dim)):
            cos, sin = dft_matrices(max(size, 1), device=device)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)

    def forward(self, images: Tensor, maps: FrequencyMaps | None, patch_tokens: Tensor) -> Tensor:
        """``-> (B, P, D)`` or ``(L, B, P, D)``, as :meth:`VFPTPrompt.forward` (no dropout: export is eval)."""
        prompt = self.original
        prompts = prompt.prompt_dropout(prompt.prompt_embeddings)
        n = prompt.num_fourier_tokens
        if n > 0:
            fourier = prompts[..., :n, :].float()
            # Re(W_t x W_d^T) with W = cos - i sin on both sides
            fourier = self.token_cos @ fourier @ self.dim_cos.t() - self.token_sin @ fourier @ self.dim_sin.t()
            prompts = torch.cat([fourier.to(prompts.dtype), prompts[..., n:, :]], dim=-2)
        return _expand_batch(prompts, patch_tokens.shape[0], prompt.deep)


def use_real_dft(model: nn.Module) -> nn.Module:
    """Replaces every ``FrequencyFeatures`` and ``VFPTPrompt`` in ``model`` by its real-arithmetic twin, in place.

    Returns:
        ``model``; call it on a copy to keep the original on ``torch.fft``.
    """
    swaps = {FrequencyFeatures: RealFrequencyFeatures, VFPTPrompt: RealVFPTPrompt}
    # a FrequencyFeatures' own extractors of other patch sizes get their twins from its twin
    inner = {id(m) for f in model.modules() if isinstance(f, FrequencyFeatures) for m in f.scales.modules()}
    for parent in list(model.modules()):
        if id(parent) in inner:
            continue
        for name, child in list(parent.named_children()):
            twin = swaps.get(type(child))
            if twin is not None:
                setattr(parent, name, twin(child))
    return model
