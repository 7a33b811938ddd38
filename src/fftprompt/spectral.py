"""Per-patch Fourier features of images: spectra, symmetry, orientation, radial energy, cross-patch symmetry.

The maths are plain tensor functions; :class:`FrequencyFeatures` only holds settings and precomputed index
buffers and calls them. Everything is derived from one forward FFT of the patches. One module on purpose (about
700 lines): the conventions below bind every function to the module that calls them.

Conventions used throughout:

* **Patches.** ``x: (B, C, H, W)`` is cut into non-overlapping ``p x p`` patches on an ``h x w`` grid
  (``h = H / p``, ``w = W / p``), giving ``(B, C, h, w, p, p)`` with the last two axes (row, column).
* **Spectra.** Each patch loses its mean, is multiplied by a separable window (periodic Hann by default, which is
  circularly symmetric about the patch centre and about index 0) and goes through ``torch.fft.fft2``. Public
  spectra are *centred* (``fftshift``): the zero frequency sits at index ``(p // 2, p // 2)``.
* **Angles.** Image coordinates have ``x`` to the right (column index) and ``y`` **up** (against the row index),
  so angles run counterclockwise as the image appears on screen. An orientation ``theta`` in ``[0, pi)`` is the
  direction of the structures themselves (stripes, edges): horizontal stripes have ``theta = 0``, vertical
  stripes ``theta = pi / 2``, stripes rising from bottom-left to top-right ``theta = pi / 4``. The spectral
  energy of a structure at ``theta`` lies along the direction ``theta - pi / 2`` (the stripes' normal).
* **Empty patches.** A patch whose windowed, zero-mean signal has a mean square below :data:`ENERGY_EPS` (far
  below one 8-bit grey level under any usual normalisation) counts as empty: its symmetry, cross-patch,
  orientation and radial values are all 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "CROSS_PATCH_NAMES",
    "ENERGY_EPS",
    "FEATURE_GROUPS",
    "SYMMETRY_NAMES",
    "FrequencyFeatures",
    "FrequencyMaps",
    "cross_patch_symmetry",
    "dominant_orientation",
    "doubled_angle_weights",
    "global_symmetry",
    "log_magnitude",
    "make_window",
    "map_statistics",
    "orientation_bin_index",
    "orientation_energy",
    "patch_spectrum",
    "patchify",
    "phase",
    "power_spectrum",
    "radial_bin_index",
    "radial_energy",
    "symmetry_gather_index",
    "symmetry_map",
    "symmetry_scores",
    "unpatchify",
]

SYMMETRY_NAMES = ("mirror_lr", "mirror_ud", "mirror_diag", "mirror_antidiag", "rot180", "rot90")
CROSS_PATCH_NAMES = ("cross_lr", "cross_ud", "cross_rot180")
FEATURE_GROUPS = ("symmetry", "orientation", "radial", "cross_patch")
ENERGY_EPS = 1e-8

Window = Literal["hann", "none"]
FeatureGroup = Literal["symmetry", "orientation", "radial", "cross_patch"]


# --------------------------------------------------------------------------------------------------- patches


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping square patches.

    Args:
        x: images ``(B, C, H, W)``; ``H`` and ``W`` must be multiples of ``patch_size``.
        patch_size: patch side ``p``.

    Returns:
        ``(B, C, h, w, p, p)`` with ``h = H / p``, ``w = W / p``.
    """
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if patch_size < 2:
        raise ValueError(f"patch_size must be at least 2, got {patch_size}")
    batch, channels, height, width = x.shape
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_size}; "
            f"resize or crop the images to a multiple of {patch_size}"
        )
    h, w = height // patch_size, width // patch_size
    return x.reshape(batch, channels, h, patch_size, w, patch_size).permute(0, 1, 2, 4, 3, 5)


def unpatchify(patches: Tensor) -> Tensor:
    """Tile patches back into images, the inverse of :func:`patchify`: ``(B, C, h, w, p, q) -> (B, C, h p, w q)``."""
    if patches.ndim != 6:
        raise ValueError(f"expected patches of shape (B, C, h, w, p, p), got shape {tuple(patches.shape)}")
    batch, channels, h, w, p, q = patches.shape
    return patches.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, h * p, w * q)


def make_window(size: int, window: Window = "hann", *, device: torch.device | str | None = None) -> Tensor:
    """Separable 2-D analysis window ``(size, size)`` in float32.

    ``"hann"`` is the periodic Hann window (``torch.hann_window(size)``), zero at index 0 and 1 at ``size // 2``:
    circularly symmetric about the patch centre, which the circular symmetry scores rely on. ``"none"`` is all ones.
    """
    if window not in get_args(Window):
        raise ValueError(f"window must be one of {get_args(Window)}, got {window!r}")
    if window == "none":
        return torch.ones(size, size, device=device)
    line = torch.hann_window(size, periodic=True, dtype=torch.float32, device=device)
    return line[:, None] * line[None, :]


def _centred_patches(x: Tensor, patch_size: int) -> Tensor:
    """Zero-mean float32 patches ``(B, C, h, w, p, p)``, contiguous (the FFT and the flips run faster on them)."""
    patches = patchify(x, patch_size).float().contiguous()
    return patches - patches.mean(dim=(-2, -1), keepdim=True)


def _window_tensor(window: Window | Tensor, size: int, device: torch.device) -> Tensor:
    if isinstance(window, Tensor):
        if window.shape != (size, size):
            raise ValueError(f"window tensor must have shape ({size}, {size}), got {tuple(window.shape)}")
        return window.to(device=device, dtype=torch.float32)
    return make_window(size, window, device=device)


def _analysis_window(window: Tensor) -> Tensor:
    """Fold ``fftshift`` into the window when both sides are even.

    ``fft2(q * (-1)^(n1 + n2)) = fftshift(fft2(q))`` for even sides, which saves the two copies a shift costs.
    """
    rows, cols = window.shape
    if rows % 2 or cols % 2:
        return window
    sign_rows = 1.0 - 2.0 * (torch.arange(rows, device=window.device) % 2)
    sign_cols = 1.0 - 2.0 * (torch.arange(cols, device=window.device) % 2)
    return window * (sign_rows[:, None] * sign_cols[None, :])


def _centred_fft(signal: Tensor, analysis_window: Tensor) -> Tensor:
    """Centred ``fft2`` of ``signal * window`` given :func:`_analysis_window` of the window: ``(..., m, n)``."""
    spectrum = torch.fft.fft2(signal * analysis_window)
    rows, cols = analysis_window.shape
    if rows % 2 or cols % 2:
        spectrum = torch.fft.fftshift(spectrum, dim=(-2, -1))
    return spectrum


def patch_spectrum(x: Tensor, patch_size: int, window: Window | Tensor = "hann") -> Tensor:
    """Centred 2-D spectrum of every zero-mean, windowed patch, computed in float32.

    Args:
        x: images ``(B, C, H, W)``.
        patch_size: patch side ``p``.
        window: ``"hann"``, ``"none"`` or a precomputed ``(p, p)`` window (see :func:`make_window`).

    Returns:
        complex64 ``(B, C, h, w, p, p)``; zero frequency at index ``(p // 2, p // 2)``.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        patches = _centred_patches(x, patch_size)
        return _centred_fft(patches, _analysis_window(_window_tensor(window, patch_size, patches.device)))


def log_magnitude(spectrum: Tensor) -> Tensor:
    """``log1p(|F|)``, same shape as ``spectrum``."""
    return torch.log1p(spectrum.abs())


def phase(spectrum: Tensor) -> Tensor:
    """``angle(F)`` in ``(-pi, pi]``, same shape as ``spectrum``."""
    return torch.angle(spectrum)


# -------------------------------------------------------------------------------------------------- symmetry


def symmetry_gather_index(size: int, *, device: torch.device | str | None = None) -> Tensor:
    """Flat indices into a centred ``(n, n)`` spectrum that realise the transforms of :data:`SYMMETRY_NAMES`.

    With ``Q`` the unshifted DFT of a real patch ``q`` (rows ``k1``, columns ``k2``, indices mod ``n``), the DFT of
    each circular transform of ``q`` is a permutation of ``Q``:

    ==================  ==========================  =====================
    transform           ``T q [n1, n2]``            ``DFT(T q)[k1, k2]``
    ==================  ==========================  =====================
    mirror_lr           ``q[n1, -n2]``              ``Q[k1, -k2]``
    mirror_ud           ``q[-n1, n2]``              ``Q[-k1, k2]``
    mirror_diag         ``q[n2, n1]``               ``Q[k2, k1]``
    mirror_antidiag     ``q[-n2, -n1]``             ``Q[-k2, -k1]``
    rot180              ``q[-n1, -n2]``             ``Q[-k1, -k2]``
    rot90               ``q[n2, -n1]``              ``Q[k2, -k1]``
    ==================  ==========================  =====================

    The flips ``n -> n_0 - n`` of a real image differ from these circular ones by a circular shift only, which the
    peak over all shifts absorbs. Only the half spectrum ``k2 in [0, n // 2]`` is gathered, as the correlation
    spectrum is Hermitian and is inverted with ``irfft2``.

    Returns:
        long ``(7, n, n // 2 + 1)``: entry 0 reads ``Q`` itself, entries 1..6 read ``DFT(T q)`` for the transforms in
        :data:`SYMMETRY_NAMES` order, all as flat indices into the *centred* (fftshifted) spectrum.
    """
    n = size
    k1 = torch.arange(n).view(n, 1).expand(n, n // 2 + 1)
    k2 = torch.arange(n // 2 + 1).view(1, n // 2 + 1).expand(n, n // 2 + 1)
    neg1, neg2 = (-k1) % n, (-k2) % n
    sources = [(k1, k2), (k1, neg2), (neg1, k2), (k2, k1), (neg2, neg1), (neg1, neg2), (k2, neg1)]
    # unshifted index k sits at (k + n // 2) mod n in the centred layout
    flat = [((rows + n // 2) % n) * n + (cols + n // 2) % n for rows, cols in sources]
    return torch.stack(flat).to(device)


def symmetry_scores(spectrum: Tensor, gather_index: Tensor | None = None) -> Tensor:
    """Peak normalised circular cross-correlation between a real signal and its six transforms.

    For each transform ``T`` in :data:`SYMMETRY_NAMES`, ``score = max_s <q, shift_s(T q)> / <q, q>`` clipped to
    ``[0, 1]``; 1 means ``q`` is exactly (circularly) symmetric under ``T`` about some axis or centre. By the
    correlation theorem the correlation over all shifts is ``ifft2(conj(Q) * DFT(T q))`` and ``DFT(T q)`` is an
    index permutation of ``Q`` (see :func:`symmetry_gather_index`), so only one inverse FFT per transform is needed
    and no forward FFT. Signals with mean square below :data:`ENERGY_EPS` score 0.

    Args:
        spectrum: centred spectra ``(..., n, n)`` of real signals (e.g. :func:`patch_spectrum` averaged over
            channels).
        gather_index: precomputed :func:`symmetry_gather_index` for ``n`` on the spectrum's device.

    Returns:
        ``(..., 6)`` scores in ``[0, 1]``.
    """
    n = spectrum.shape[-1]
    if spectrum.shape[-2] != n:
        raise ValueError(f"symmetry needs square spectra, got spatial shape {tuple(spectrum.shape[-2:])}")
    if gather_index is None:
        gather_index = symmetry_gather_index(n, device=spectrum.device)
    lead = spectrum.shape[:-2]
    flat = spectrum.reshape(*lead, n * n)
    gathered = flat[..., gather_index.reshape(-1)].reshape(*lead, 7, n, n // 2 + 1)
    cross = gathered[..., :1, :, :].conj() * gathered[..., 1:, :, :]
    correlation = torch.fft.irfft2(cross, s=(n, n))  # (..., 6, n, n), real
    peak = correlation.amax(dim=(-2, -1))
    # Parseval: <q, q> = sum |Q|^2 / n^2
    energy = torch.view_as_real(spectrum).square().sum(dim=(-3, -2, -1)) / (n * n)
    empty = energy <= ENERGY_EPS * n * n
    scores = (peak / energy.clamp_min(1e-30).unsqueeze(-1)).clamp(0.0, 1.0)
    return torch.where(empty.unsqueeze(-1), 0.0, scores)


def symmetry_map(spectrum: Tensor, gather_index: Tensor | None = None) -> Tensor:
    """Per-patch symmetry scores of the channel-averaged patch.

    Args:
        spectrum: centred patch spectra ``(B, C, h, w, p, p)`` (:func:`patch_spectrum`).
        gather_index: precomputed :func:`symmetry_gather_index` for ``p``.

    Returns:
        ``(B, 6, h, w)``, channels in :data:`SYMMETRY_NAMES` order.
    """
    # the FFT is linear, so the channel mean of the spectra is the spectrum of the channel-averaged patch
    return symmetry_scores(spectrum.mean(dim=1), gather_index).permute(0, 3, 1, 2)


def global_symmetry(x: Tensor, window: Window = "hann") -> Tensor:
    """Symmetry scores (:func:`symmetry_scores`) of whole images, channel-averaged.

    Args:
        x: square images ``(B, C, S, S)``.
        window: window applied over the whole image after removing each channel's mean.

    Returns:
        ``(B, 6)`` in :data:`SYMMETRY_NAMES` order.
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"global symmetry needs square images (B, C, S, S), got shape {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        image = x.float()
        image = (image - image.mean(dim=(-2, -1), keepdim=True)).mean(dim=1)
        analysis_window = _analysis_window(make_window(image.shape[-1], window, device=image.device))
        return symmetry_scores(_centred_fft(image, analysis_window))


# ----------------------------------------------------------------------------------- orientation and radial


def _centred_frequencies(size: int, device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical (``y`` up) frequency of each centred spectrum entry, cycles per pixel, ``(n, n)``."""
    freq = (torch.arange(size, dtype=torch.float64, device=device) - size // 2) / size
    fx = freq.view(1, size).expand(size, size)
    fy = -freq.view(size, 1).expand(size, size)  # row index grows downwards, y grows upwards
    return fx, fy


def _structure_angle(size: int, device: torch.device | str | None) -> Tensor:
    """Orientation in ``[0, pi)`` of the structures whose energy sits at each centred frequency, float64."""
    fx, fy = _centred_frequencies(size, device)
    return torch.remainder(torch.atan2(fy, fx) + math.pi / 2, math.pi)


def orientation_bin_index(size: int, num_bins: int, *, device: torch.device | str | None = None) -> Tensor:
    """Angular bin of every centred spectrum entry; long ``(n, n)``, ``-1`` at the zero frequency.

    Bin ``a`` is centred on the structure orientation ``a * pi / num_bins`` (so bin 0 holds horizontal stripes) and
    spans ``pi / num_bins``.
    """
    if num_bins < 1:
        raise ValueError(f"orientation_bins must be at least 1, got {num_bins}")
    width = math.pi / num_bins
    index = torch.floor(_structure_angle(size, device) / width + 0.5).long() % num_bins
    index[size // 2, size // 2] = -1
    return index


def radial_bin_index(size: int, num_bins: int, *, device: torch.device | str | None = None) -> Tensor:
    """Radial band of every centred spectrum entry; long ``(n, n)``, ``-1`` at the zero frequency.

    Band ``r`` holds ``|k| / Nyquist`` in ``[r / R, (r + 1) / R)``; the last band also holds the corners beyond the
    Nyquist circle (up to ``sqrt(2)``).
    """
    if num_bins < 1:
        raise ValueError(f"radial_bins must be at least 1, got {num_bins}")
    fx, fy = _centred_frequencies(size, device)
    radius = torch.sqrt(fx.square() + fy.square()) / 0.5
    index = torch.floor(radius * num_bins).long().clamp_max(num_bins - 1)
    index[size // 2, size // 2] = -1
    return index


def doubled_angle_weights(size: int, *, device: torch.device | str | None = None) -> Tensor:
    """``(cos 2 theta, sin 2 theta)`` of the structure orientation at each centred frequency; ``(2, n, n)``, 0 at DC."""
    theta = _structure_angle(size, device)
    weights = torch.stack([torch.cos(2 * theta), torch.sin(2 * theta)]).float()
    weights[:, size // 2, size // 2] = 0.0
    return weights


def power_spectrum(spectrum: Tensor) -> Tensor:
    """Channel-averaged power ``mean_c |F|^2``: ``(B, C, h, w, p, p) -> (B, h, w, p, p)``."""
    return (spectrum.real.square() + spectrum.imag.square()).mean(dim=1)


def _weighted_fractions(power: Tensor, weights: Tensor) -> Tensor:
    """Energy-normalised projections of the power onto ``weights``: ``(B, h, w, n, n), (K, n, n) -> (B, K, h, w)``.

    The denominator is the energy outside the zero frequency (centre entry), and empty patches give 0.
    """
    n = power.shape[-1]
    flat = power.reshape(*power.shape[:-2], n * n)
    dc = (n // 2) * n + n // 2
    total = flat.sum(dim=-1) - flat[..., dc]
    projected = flat @ weights.reshape(weights.shape[0], n * n).t()
    # Parseval: sum |F|^2 = n^2 sum q^2, so the mean square of the patch is total / n^4
    empty = total <= ENERGY_EPS * n**4
    fractions = projected / total.clamp_min(1e-30).unsqueeze(-1)
    return torch.where(empty.unsqueeze(-1), 0.0, fractions).permute(0, 3, 1, 2)


def _one_hot_bins(bin_index: Tensor, num_bins: int) -> Tensor:
    """``(n, n)`` bin index with ``-1`` = excluded -> float ``(K, n, n)`` indicator."""
    bins = torch.arange(num_bins, device=bin_index.device).view(num_bins, 1, 1)
    return (bin_index.unsqueeze(0) == bins).float()


def orientation_energy(power: Tensor, bin_index: Tensor, num_bins: int) -> Tensor:
    """Fraction of each patch's non-DC energy in each orientation bin.

    Args:
        power: centred power spectra ``(B, h, w, p, p)`` (:func:`power_spectrum`).
        bin_index: :func:`orientation_bin_index` ``(p, p)``.
        num_bins: ``A``.

    Returns:
        ``(B, A, h, w)``; sums to 1 over ``A`` for non-empty patches.
    """
    return _weighted_fractions(power, _one_hot_bins(bin_index, num_bins))


def radial_energy(power: Tensor, bin_index: Tensor, num_bins: int) -> Tensor:
    """Fraction of each patch's non-DC energy in each radial band of ``|k| / Nyquist``.

    Args:
        power: centred power spectra ``(B, h, w, p, p)``.
        bin_index: :func:`radial_bin_index` ``(p, p)``.
        num_bins: ``R``.

    Returns:
        ``(B, R, h, w)``; sums to 1 over ``R`` for non-empty patches.
    """
    return _weighted_fractions(power, _one_hot_bins(bin_index, num_bins))


def dominant_orientation(power: Tensor, doubled_angle: Tensor) -> Tensor:
    """Energy-weighted doubled-angle mean of the structure orientation.

    Args:
        power: centred power spectra ``(B, h, w, p, p)``.
        doubled_angle: :func:`doubled_angle_weights` ``(2, p, p)``.

    Returns:
        ``(B, 2, h, w)`` = ``coherence * (cos 2 theta, sin 2 theta)``: ``theta = atan2(v, u) / 2`` is the dominant
        structure orientation (see the module's angle convention) and the vector length ``coherence`` in ``[0, 1]``
        is 1 for a single orientation and near 0 for isotropic content.
    """
    return _weighted_fractions(power, doubled_angle)


# -------------------------------------------------------------------------------------------- cross-patch


def cross_patch_symmetry(patches: Tensor) -> Tensor:
    """Mirror symmetry between patches placed symmetrically in the image.

    Normalised correlation at zero shift, ``<a, b> / sqrt(<a, a> <b, b>)`` clipped to ``[0, 1]`` and summed over
    channels, between the patch ``a`` at ``(i, j)`` and ``b``: the left-right flip of patch ``(i, w-1-j)``
    (``cross_lr``), the up-down flip of patch ``(h-1-i, j)`` (``cross_ud``) and the 180-degree rotation of patch
    ``(h-1-i, w-1-j)`` (``cross_rot180``). So ``cross_lr`` is 1 everywhere for an image mirrored about its vertical
    centre line. It runs in the pixel domain on unwindowed patches: a zero-shift correlation has no leakage to
    suppress, and the periodic window is not symmetric under the image flip ``n -> p-1-n``. The normalisation of the
    three maps runs batched.

    Args:
        patches: zero-mean patches ``(B, C, h, w, p, p)``.

    Returns:
        ``(B, 3, h, w)`` in :data:`CROSS_PATCH_NAMES` order; 0 where either patch is empty.
    """
    batch, channels, h, w, p, _ = patches.shape
    energy = patches.square().sum(dim=(1, -2, -1))  # (B, h, w)
    empty = energy <= ENERGY_EPS * p * p * channels
    # a flipped copy of the patches holds every patch's partner at its own place (flips are fast strided copies)
    dot = torch.stack(
        [(patches * patches.flip(grid + pixel)).sum(dim=(1, -2, -1)) for grid, pixel in _CROSS_PATCH_FLIPS], dim=1
    )  # (B, 3, h, w)
    # the partners' energies and emptiness: one small gather over the grid
    index = _cross_patch_index.__wrapped__ if torch.compiler.is_compiling() else _cross_patch_index
    partner = index(h, w, patches.device)
    partner_energy = energy.reshape(batch, h * w)[:, partner].reshape(batch, 3, h, w)
    either_empty = empty.unsqueeze(1) | empty.reshape(batch, h * w)[:, partner].reshape(batch, 3, h, w)
    norm = torch.sqrt(energy.unsqueeze(1) * partner_energy).clamp_min(1e-30)
    return torch.where(either_empty, 0.0, (dot / norm).clamp(0.0, 1.0))


# (grid dims, in-patch dims) of (B, C, h, w, p, p) patches flipped for cross_lr, cross_ud, cross_rot180
_CROSS_PATCH_FLIPS = (((3,), (-1,)), ((2,), (-2,)), ((2, 3), (-2, -1)))


@functools.lru_cache(maxsize=32)
def _cross_patch_index(h: int, w: int, device: torch.device) -> Tensor:
    """``(3, h w)``: flat grid index of each patch's partner, :data:`CROSS_PATCH_NAMES` order (built once per grid,
    never written; traced by ``torch.compile``, it is built inside the graph instead)."""
    grid = torch.arange(h * w, device=device).reshape(h, w)
    return torch.stack([grid.flip([d - 2 for d in dims]).reshape(-1) for dims, _ in _CROSS_PATCH_FLIPS])


# --------------------------------------------------------------------------------------------- containers


def _group_channel_names(group: str, orientation_bins: int, radial_bins: int) -> tuple[str, ...]:
    if group == "symmetry":
        return SYMMETRY_NAMES
    if group == "orientation":
        return ("dominant_cos2", "dominant_sin2") + tuple(f"orientation_{a}" for a in range(orientation_bins))
    if group == "radial":
        return tuple(f"radial_{r}" for r in range(radial_bins))
    if group == "cross_patch":
        return CROSS_PATCH_NAMES
    raise ValueError(f"unknown feature group {group!r}; expected one of {FEATURE_GROUPS}")


def _check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    if isinstance(groups, str):
        raise ValueError(f"groups must be a sequence of group names, got the string {groups!r}")
    unknown = [g for g in groups if g not in FEATURE_GROUPS]
    if unknown:
        raise ValueError(f"unknown feature group(s) {unknown}; expected a subset of {FEATURE_GROUPS}")
    if len(set(groups)) != len(groups):
        raise ValueError(f"feature groups must not repeat, got {list(groups)}")
    return tuple(g for g in FEATURE_GROUPS if g in groups)


def _scaled_patch_sizes(patch_size: int, scales: tuple[float, ...]) -> tuple[int, ...]:
    sizes = tuple(round(patch_size * scale) for scale in scales)
    for scale, size in zip(scales, sizes, strict=True):
        if size < 2 or abs(size - patch_size * scale) > 1e-6 or size == patch_size:
            raise ValueError(
                f"statistics_scales={list(scales)}: {scale} x patch_size {patch_size} = {patch_size * scale:g}; each "
                "scale must give a whole patch size of at least 2 other than patch_size (e.g. 0.5 and 2)"
            )
    if len(set(sizes)) < len(sizes):
        raise ValueError(f"statistics_scales={list(scales)} repeat a patch size ({list(sizes)}); give each once")
    return sizes


def _scale_statistics(extractors: Sequence[nn.Module], x: Tensor) -> Tensor | None:
    """:func:`map_statistics` of each extractor's compact maps of ``x``, concatenated: ``(B, 2 * C_f * len)``, or None
    for no extractors (``FrequencyFeatures.scales``, or their real-arithmetic twins)."""
    if not len(extractors):
        return None
    return torch.cat([map_statistics(extractor(x).compact()) for extractor in extractors], dim=-1)


def map_statistics(maps: Tensor) -> Tensor:
    """Per-channel mean and (population) standard deviation of maps over the patch grid.

    An orderless texture descriptor: a linear classifier on these ``2 * C_f`` numbers is the reference every
    frequency method is measured against (``fftprompt-probe features=fft``).

    Args:
        maps: ``(B, C, h, w)``, e.g. ``FrequencyMaps.compact()``.

    Returns:
        ``(B, 2 * C)``: the ``C`` means, then the ``C`` standard deviations.
    """
    flat = maps.flatten(2)
    return torch.cat([flat.mean(dim=-1), flat.std(dim=-1, correction=0)], dim=-1)


@dataclass
class FrequencyMaps:
    """Frequency features of a batch of images (see :class:`FrequencyFeatures`).

    Attributes:
        log_magnitude: ``log1p(|F|)`` of the centred patch spectra ``(B, C, h, w, p, p)``.
        phase: ``angle(F)`` ``(B, C, h, w, p, p)``.
        symmetry: ``(B, 6, h, w)`` in :data:`SYMMETRY_NAMES` order.
        orientation: ``(B, A, h, w)`` energy fractions per orientation bin.
        dominant_orientation: ``(B, 2, h, w)`` coherence * (cos 2 theta, sin 2 theta).
        radial: ``(B, R, h, w)`` energy fractions per radial band.
        cross_patch: ``(B, 3, h, w)`` in :data:`CROSS_PATCH_NAMES` order.
        global_symmetry: ``(B, 6)`` symmetry of the whole image, or None when not computed.
        groups: the :data:`FEATURE_GROUPS` that enter :meth:`compact`, in that order.
        scale_statistics: ``(B, 2 * C_f * (S - 1))``: :func:`map_statistics` of the compact maps at the other patch
            sizes of ``FrequencyFeatures(statistics_scales=...)``, in that order; None without them.
    """

    log_magnitude: Tensor
    phase: Tensor
    symmetry: Tensor
    orientation: Tensor
    dominant_orientation: Tensor
    radial: Tensor
    cross_patch: Tensor
    global_symmetry: Tensor | None
    groups: tuple[str, ...] = FEATURE_GROUPS
    scale_statistics: Tensor | None = None

    def __post_init__(self) -> None:
        self.groups = _check_groups(self.groups)

    def statistics(self) -> Tensor:
        """Orderless statistics: :func:`map_statistics` of :meth:`compact`, then :attr:`scale_statistics` when the
        features computed them: ``(B, 2 * C_f * S)`` for ``S`` patch sizes."""
        statistics = map_statistics(self.compact())
        if self.scale_statistics is None:
            return statistics
        return torch.cat([statistics, self.scale_statistics.to(statistics.dtype)], dim=-1)

    def _group_tensors(self, group: str) -> list[Tensor]:
        if group == "symmetry":
            return [self.symmetry]
        if group == "orientation":
            return [self.dominant_orientation, self.orientation]
        if group == "radial":
            return [self.radial]
        return [self.cross_patch]

    def compact(self) -> Tensor:
        """The selected groups concatenated along channels: ``(B, C_f, h, w)``, names in :attr:`channel_names`."""
        tensors = [t for group in self.groups for t in self._group_tensors(group)]
        if not tensors:
            batch, _, h, w = self.symmetry.shape
            return self.symmetry.new_zeros(batch, 0, h, w)
        return torch.cat(tensors, dim=1)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Names of the :meth:`compact` channels, length ``C_f``."""
        orientation_bins, radial_bins = self.orientation.shape[1], self.radial.shape[1]
        return tuple(n for g in self.groups for n in _group_channel_names(g, orientation_bins, radial_bins))


class FrequencyFeatures(nn.Module):
    """Per-patch frequency features of images, from one forward FFT of the patches.

    Args:
        patch_size: patch side ``p`` (the backbone's patch size).
        window: ``"hann"`` (default) or ``"none"``.
        orientation_bins: ``A``, angular bins over ``[0, pi)``.
        radial_bins: ``R``, bands of ``|k| / Nyquist``.
        global_symmetry: also compute the ``(B, 6)`` symmetry of the whole (square) image.
        groups: the :data:`FEATURE_GROUPS` that form :meth:`FrequencyMaps.compact`; the channels are ordered
            symmetry (6), orientation (``dominant_cos2``, ``dominant_sin2``, then ``A`` bins), radial (``R``),
            cross_patch (3), keeping only the selected groups.
        statistics_scales: patch sizes besides ``p``, as multiples of it (``(0.5, 2)``: ``p / 2`` and ``2 p``), whose
            compact maps are summarised into :attr:`FrequencyMaps.scale_statistics` (orderless texture statistics at
            several scales; the per-patch maps stay at ``p``). Image sides must be multiples of every such size.

    Attributes:
        channel_names: names of the compact channels.
        num_channels: ``C_f``.
        channel_groups: group -> indices of its channels in the compact map.
        statistics_patch_sizes: the patch sizes of ``statistics_scales``.
        num_statistics: ``2 * C_f * S``, the width of :meth:`FrequencyMaps.statistics` for ``S`` patch sizes.
    """

    def __init__(
        self,
        patch_size: int = 16,
        window: Window = "hann",
        orientation_bins: int = 8,
        radial_bins: int = 4,
        global_symmetry: bool = False,
        groups: Sequence[FeatureGroup] = FEATURE_GROUPS,
        statistics_scales: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if patch_size < 2:
            raise ValueError(f"patch_size must be at least 2, got {patch_size}")
        self.statistics_scales = tuple(float(scale) for scale in statistics_scales)
        self.statistics_patch_sizes = _scaled_patch_sizes(patch_size, self.statistics_scales)
        self.patch_size = patch_size
        self.window_name: Window = window
        self.orientation_bins = orientation_bins
        self.radial_bins = radial_bins
        self.global_symmetry = global_symmetry
        self.groups = _check_groups(groups)
        # derived from the settings, so kept out of the state dict
        self.register_buffer("window", make_window(patch_size, window), persistent=False)
        self.register_buffer("analysis_window", _analysis_window(self.window), persistent=False)
        self.register_buffer("symmetry_index", symmetry_gather_index(patch_size), persistent=False)
        self.register_buffer("orientation_index", orientation_bin_index(patch_size, orientation_bins), persistent=False)
        self.register_buffer("radial_index", radial_bin_index(patch_size, radial_bins), persistent=False)
        self.register_buffer("doubled_angle", doubled_angle_weights(patch_size), persistent=False)
        # dominant orientation, orientation bins and radial bands as one projection of the power spectrum
        spectral_weights = torch.cat(
            [
                self.doubled_angle,
                _one_hot_bins(self.orientation_index, orientation_bins),
                _one_hot_bins(self.radial_index, radial_bins),
            ]
        )
        self.register_buffer("spectral_weights", spectral_weights, persistent=False)

        self.channel_names: tuple[str, ...] = ()
        self.channel_groups: dict[str, list[int]] = {}
        for group in self.groups:
            names = _group_channel_names(group, orientation_bins, radial_bins)
            start = len(self.channel_names)
            self.channel_groups[group] = list(range(start, start + len(names)))
            self.channel_names += names
        self.num_channels = len(self.channel_names)
        # the other scales' extractors: same settings, no state (their buffers are not persistent either)
        self.scales = nn.ModuleList(
            FrequencyFeatures(size, window, orientation_bins, radial_bins, groups=self.groups)
            for size in self.statistics_patch_sizes
        )
        self.num_statistics = 2 * self.num_channels * (1 + len(self.scales))

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, window={self.window_name!r}, orientation_bins={self.orientation_bins}, "
            f"radial_bins={self.radial_bins}, global_symmetry={self.global_symmetry}, groups={self.groups}, "
            f"statistics_scales={self.statistics_scales}"
        )

    def forward(self, x: Tensor) -> FrequencyMaps:
        """Compute the maps of ``x: (B, C, H, W)``, ``C`` in {1, 3}, ``H`` and ``W`` multiples of ``patch_size``.

        All FFT work runs in float32 on ``x``'s device, whatever autocast is active.
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, C, H, W) with C in (1, 3), got shape {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            patches = _centred_patches(x, self.patch_size)
            spectrum = _centred_fft(patches, self.analysis_window)
            magnitude = spectrum.abs()
            power = magnitude.square().mean(dim=1)
            # dominant_orientation, orientation_energy and radial_energy in one projection
            dominant, orientation, radial = _weighted_fractions(power, self.spectral_weights).split(
                [2, self.orientation_bins, self.radial_bins], dim=1
            )
            return FrequencyMaps(
                log_magnitude=torch.log1p(magnitude),
                phase=phase(spectrum),
                symmetry=symmetry_map(spectrum, self.symmetry_index),
                orientation=orientation,
                dominant_orientation=dominant,
                radial=radial,
                cross_patch=cross_patch_symmetry(patches),
                global_symmetry=global_symmetry(x, self.window_name) if self.global_symmetry else None,
                groups=self.groups,
                scale_statistics=_scale_statistics(self.scales, x),
            )
