"""Where a FourierFT layer's spectral entries lie, and the index tensors derived from them once per layer shape.

A FourierFT layer learns ``n`` spectral coefficients ``c`` of a ``d_out x d_in`` spectrum ``S`` that is zero except
at ``n`` fixed random entries ``S[u_k, v_k] = c_k``. The entries are drawn exactly as PEFT draws them,
``torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(seed))[:n]`` with row ``idx // d_in`` and
column ``idx % d_in``, so layers of equal shape share them and a checkpoint stores only the coefficients.

Everything here is integer index maths on the CPU; :mod:`fftprompt.fourierft.functional` uses the indices.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

__all__ = ["fourierft_locations"]


def fourierft_locations(d_out: int, d_in: int, n_frequency: int, seed: int) -> Tensor:
    """Spectral entry locations, drawn exactly as PEFT's FourierFT draws them.

    Args:
        d_out: Rows of the adapted matrix.
        d_in: Columns of the adapted matrix.
        n_frequency: Number of entries ``n``.
        seed: Seed of a fresh CPU ``torch.Generator``.

    Returns:
        ``(2, n)`` int64 on the CPU: rows ``u`` then columns ``v``.

    Raises:
        ValueError: ``n_frequency`` is not in ``[1, d_out * d_in]``.
    """
    if not 0 < n_frequency <= d_out * d_in:
        raise ValueError(f"n_frequency={n_frequency} must be in [1, {d_out * d_in}]")
    flat = torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(seed))[:n_frequency]
    return torch.stack([flat // d_in, flat % d_in])


def _half_spectrum_index(rows: Tensor, cols: Tensor, block_rows: int, d_in: int) -> Tensor:
    """Where the coefficients go in the half spectrum whose ``irfft2`` is ``Re(ifft2(S))``.

    ``Re(ifft2(S)) = ifft2((S[u, v] + S[-u, -v]) / 2)``, a real even spectrum, so its columns ``0 .. d_in / 2`` suffice:
    each entry adds half its coefficient at ``(u, v)`` and half at ``(-u, -v)``, where these fall in that range.

    Args:
        rows: ``(n,)`` spectrum rows.
        cols: ``(n,)`` spectrum columns.
        block_rows: Rows ``d``.
        d_in: Columns.

    Returns:
        ``(2, m)``: flat position in the ``(d, d_in / 2 + 1)`` half spectrum, and the coefficient index.
    """
    width = d_in // 2 + 1
    entries = torch.arange(rows.shape[0])
    mirrored_rows, mirrored_cols = (block_rows - rows) % block_rows, (d_in - cols) % d_in
    keep, keep_mirrored = cols < width, mirrored_cols < width
    position = torch.cat([(rows * width + cols)[keep], (mirrored_rows * width + mirrored_cols)[keep_mirrored]])
    return torch.stack([position, torch.cat([entries[keep], entries[keep_mirrored]])])


def _dense_gather_index(rows: Tensor, cols: Tensor, block_rows: int, d_in: int) -> Tensor:
    """Flat position of each entry in an ``rfft2`` half spectrum ``(d, d_in / 2 + 1)``; entries in the upper columns
    read their conjugate twin ``(-u, -v)`` (same real part)."""
    upper = cols > d_in // 2
    half_rows = torch.where(upper, (block_rows - rows) % block_rows, rows)
    half_cols = torch.where(upper, d_in - cols, cols)
    return half_rows * (d_in // 2 + 1) + half_cols


def _conjugated_side(num_blocks: int, block_rows: int, d_in: int) -> Literal["inputs", "grads"]:
    """Which factor of the FFT path also gets its conjugate rows: the one with fewer half-spectrum rows."""
    return "inputs" if d_in // 2 + 1 <= num_blocks * (block_rows // 2 + 1) else "grads"


def _fft_sampling_index(rows: Tensor, cols: Tensor, block_rows: int, d_in: int, num_blocks: int) -> tuple[Tensor, ...]:
    """Sparse (CSR) pattern of the FFT-path product, built once per layer.

    For real signals the full spectrum is the half spectrum ``H`` and its conjugate:
    ``F[u] = H[u']`` with ``u' = u`` for ``u <= d / 2`` and ``F[u] = conj(H[u'])`` with ``u' = d - u`` above. The
    sampled product computes ``Re(L conj(R))`` (a dot product of interleaved real and imaginary parts), so with ``L``
    the gradients' half spectrum and ``R`` the inputs' half spectrum or its conjugate,
    ``Re(Gf[u] Xf[v]) = Re(Gh[u'] conj(R[v']))`` where ``R`` is conjugated exactly when both or neither of ``u, v``
    lie in the upper half (symmetrically when the gradients carry the conjugate rows). Entries ``(u, v)`` and
    ``(-u, -v)`` give the same product, hence the deduplication.

    Args:
        rows: ``(n,)`` spectrum rows ``u``.
        cols: ``(n,)`` spectrum columns ``v``.
        block_rows: Rows ``d`` of one block.
        d_in: Columns.
        num_blocks: Adapted blocks ``nb``.

    Returns:
        ``crow``, ``col`` (``(m,)``) of the CSR pattern (left rows: block, conjugation, ``u'``; right rows:
        conjugation, ``v'``), and ``inverse`` ``(nb n,)`` mapping each (block, entry) to its product.
    """
    left_half, right_half = block_rows // 2 + 1, d_in // 2 + 1
    upper_rows, upper_cols = rows > block_rows // 2, cols > d_in // 2
    half_rows = torch.where(upper_rows, block_rows - rows, rows)
    half_cols = torch.where(upper_cols, d_in - cols, cols)
    conjugate = (upper_rows == upper_cols).long()
    block = torch.arange(num_blocks).unsqueeze(1)
    if _conjugated_side(num_blocks, block_rows, d_in) == "inputs":
        left, right = block * left_half + half_rows, half_cols + right_half * conjugate
        left_rows, right_rows = num_blocks * left_half, 2 * right_half
    else:
        left, right = block * 2 * left_half + left_half * conjugate + half_rows, half_cols.expand(num_blocks, -1)
        left_rows, right_rows = 2 * num_blocks * left_half, right_half
    keys = (left * right_rows + right).reshape(-1)
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    counts = torch.bincount(unique // right_rows, minlength=left_rows)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return crow, unique % right_rows, inverse


@functools.lru_cache(maxsize=64)
def _layer_indices(block_rows: int, d_in: int, n_frequency: int, seed: int, num_blocks: int) -> dict[str, Tensor]:
    """The locations and the index tensors derived from them, built once per shape (tensors shared, never written).

    Raises:
        ValueError: ``n_frequency`` exceeds ``block_rows * d_in`` (from :func:`fourierft_locations`).
    """
    locations = fourierft_locations(block_rows, d_in, n_frequency, seed)
    rows, cols = locations
    crow, col, inverse = _fft_sampling_index(rows, cols, block_rows, d_in, num_blocks)
    return {
        "locations": locations,
        "half_index": _half_spectrum_index(rows, cols, block_rows, d_in),
        "dense_index": _dense_gather_index(rows, cols, block_rows, d_in),
        "_fft_crow": crow,
        "_fft_col": col,
        "_fft_inverse": inverse,
    }
