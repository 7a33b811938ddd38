"""FourierFT weight deltas (arXiv 2405.03003) for frozen linear layers, numerically identical to PEFT's.

A FourierFT layer learns ``n`` spectral coefficients ``c`` of a weight change
``dW = scaling * Re(ifft2(S))``, where the ``d_out x d_in`` spectrum ``S`` is zero except at ``n`` fixed random entries
``S[u_k, v_k] = c_k``. The entries are drawn exactly as PEFT draws them,
``torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(seed))[:n]`` with row ``idx // d_in`` and
column ``idx % d_in``, so layers of equal shape share them and a checkpoint stores only the coefficients.

Targets (:attr:`FourierFTConfig.targets`):

- ``"q"``, ``"k"``, ``"v"``: the matching ``d x d_in`` row block of timm's fused ``qkv`` linear (``d = d_out / 3``),
  each block with its own coefficients and the entries of a ``d x d_in`` matrix. All blocks of one ``qkv`` live in a
  single wrapper whose delta is the block-stacked delta (zeros for the other blocks), so the layer keeps its one
  matrix product. A linear layer whose own name is ``q``, ``k`` or ``v`` is adapted whole.
- any other plain name (``"qkv"``, ``"proj"``, ``"fc1"``, ``"fc2"``, ...): every ``nn.Linear`` whose module path ends
  in that component.
- ``"re:<regex>"``: every ``nn.Linear`` whose full module path (``blocks.3.mlp.fc1``) matches ``<regex>`` entirely.

Only ``nn.Linear`` modules are adapted (timm's ``patch_embed.proj`` is a convolution and never matches ``"proj"``).

Speed. PEFT computes ``x @ W^T + x @ dW^T``: a second full matrix product per token and, in the backward, a dense
``d_out x d_in`` gradient of ``dW``. Here the delta joins the frozen weight before the layer's one product
(``F.linear(x, W + dW, b)``, exact), inside a custom autograd function whose backward computes ``grad_x`` with the same
one product and the coefficient gradient, exactly, in the cheaper of two ways:

- ``"dense"``: the weight gradient ``G = g^T x`` (``T d_out d_in`` multiply-adds) and
  ``dL/dc_k = scaling / (d_out d_in) * Re(fft2(G))[u_k, v_k]`` from a half-spectrum ``rfft2``;
- ``"fft"``: since ``fft2(g^T x)[u, v] = sum_t fft(g_t)[u] fft(x_t)[v]``,
  ``dL/dc_k = scaling * Re(sum_t ifft(g_t)[u_k] ifft(x_t)[v_k])`` from ``rfft`` of the ``T`` inputs and output
  gradients (conjugate symmetry gives the upper half) and a sampled product at the ``n`` entries:
  ``O(T (d log d + n))`` instead of ``O(T d_out d_in)``.

``grad_mode="auto"`` picks ``"dense"`` on accelerators (their matrix units make the dense product cheap) and compares
the two costs on CPUs. No gradient of the frozen weight is ever formed unless that weight requires one. Without
gradients (evaluation, ``torch.no_grad``) ``W + dW`` is computed once and cached until a coefficient or the weight
changes (tracked by the tensors' version counters).
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FourierFTConfig",
    "FourierFTLinear",
    "fourierft_locations",
    "fourierft_state_dict",
    "inject_fourierft",
    "load_fourierft_state_dict",
    "merge_fourierft",
]

GradMode = Literal["auto", "dense", "fft"]
Init = Literal["normal", "zeros"]

QKV_BLOCKS = ("q", "k", "v")
REGEX_PREFIX = "re:"
FULL_LAYER = "full"  # coefficient key of a layer adapted whole

# CPU cost model of grad_mode="auto", in multiply-adds of a large float32 matrix product, per token: the dense path
# costs d_out * d_in, the FFT path FEATURE_COST per feature (rfft, transposes and conjugate copies of both spectra)
# plus ENTRY_COST per spectral entry (sampled products). Fitted to layer timings on a 2-core Xeon with AVX-512
# (float32 products at ~75 GMAC/s per core) and rounded towards the dense path, which needs fewer, larger operations:
# on ViT-S layers (d = 384) the two paths are within 10% of each other and the FFT path loses badly when the CPU is
# oversubscribed (its many thread synchronisations), so they stay dense; ViT-B/L layers (d >= 768) take the FFT path.
_FFT_FEATURE_COST = 300.0
_FFT_ENTRY_COST = 26.0
# bfloat16 products (autocast) run on the CPU's matrix units about 4x faster; the FFT path stays in float32
_BF16_MATMUL_COST = 0.25
# tokens per chunk of the FFT-path gradient: the chunk's transposed spectra stay in the CPU caches
_FFT_CHUNK_TOKENS = 512


@dataclass
class FourierFTConfig:
    """Where and how FourierFT adapts a model.

    Args:
        n_frequency: Learnable spectral entries ``n`` per adapted matrix (per row block for ``q``/``k``/``v``).
        scaling: Factor applied to ``Re(ifft2(S))``.
        seed: Seed of the entry locations (PEFT's ``random_loc_seed``); equal shapes share locations.
        targets: What to adapt: ``"q"``, ``"k"``, ``"v"`` (row blocks of fused ``qkv``), module-name components
            such as ``"qkv"``, ``"proj"``, ``"fc1"``, ``"fc2"``, or ``"re:<regex>"`` over full module paths.
        init: Coefficient initialisation: ``"normal"`` (standard normal, as PEFT with ``init_weights=False``) or
            ``"zeros"`` (the adapted model starts equal to the base model).
        grad_mode: How the coefficient gradient is computed: ``"dense"`` (from the weight gradient), ``"fft"`` (from
            FFTs of the layer inputs and output gradients) or ``"auto"`` (cheaper one for the device and shape).
    """

    n_frequency: int = 1000
    scaling: float = 150.0
    seed: int = 777
    targets: tuple[str, ...] = ("q", "v")
    init: Init = "normal"
    grad_mode: GradMode = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.n_frequency, bool) or not isinstance(self.n_frequency, int) or self.n_frequency <= 0:
            raise ValueError(f"FourierFTConfig.n_frequency={self.n_frequency!r}; expected a positive int")
        if (
            isinstance(self.scaling, bool)
            or not isinstance(self.scaling, (int, float))
            or not math.isfinite(self.scaling)
        ):
            raise ValueError(f"FourierFTConfig.scaling={self.scaling!r}; expected a finite number")
        self.scaling = float(self.scaling)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"FourierFTConfig.seed={self.seed!r}; expected a non-negative int")
        if isinstance(self.targets, str) or not isinstance(self.targets, Sequence):
            raise ValueError(
                f"FourierFTConfig.targets={self.targets!r}; expected a sequence of strings such as ('q', 'v')"
            )
        self.targets = tuple(self.targets)
        if not self.targets:
            raise ValueError("FourierFTConfig.targets is empty; expected at least one target such as 'q'")
        for target in self.targets:
            if not isinstance(target, str) or not target or target == REGEX_PREFIX:
                raise ValueError(f"FourierFTConfig.targets contains {target!r}; expected non-empty strings")
            if target.startswith(REGEX_PREFIX):
                try:
                    re.compile(target[len(REGEX_PREFIX) :])
                except re.error as error:
                    raise ValueError(f"FourierFTConfig.targets: bad regular expression {target!r}: {error}") from None
        duplicates = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if duplicates:
            raise ValueError(f"FourierFTConfig.targets repeats {duplicates}")
        if "qkv" in self.targets and any(t in QKV_BLOCKS for t in self.targets):
            raise ValueError(
                f"FourierFTConfig.targets={self.targets}: 'qkv' adapts the whole fused layer and cannot be combined "
                "with its row blocks 'q', 'k', 'v'"
            )
        if self.init not in get_args(Init):
            raise ValueError(f"FourierFTConfig.init={self.init!r}; expected one of {get_args(Init)}")
        if self.grad_mode not in get_args(GradMode):
            raise ValueError(f"FourierFTConfig.grad_mode={self.grad_mode!r}; expected one of {get_args(GradMode)}")


def fourierft_locations(d_out: int, d_in: int, n_frequency: int, seed: int) -> Tensor:
    """Spectral entry locations, drawn exactly as PEFT's FourierFT draws them.

    Args:
        d_out: Rows of the adapted matrix.
        d_in: Columns of the adapted matrix.
        n_frequency: Number of entries ``n``.
        seed: Seed of a fresh CPU ``torch.Generator``.

    Returns:
        ``(2, n)`` int64 on the CPU: rows ``u`` then columns ``v``.
    """
    if not 0 < n_frequency <= d_out * d_in:
        raise ValueError(f"n_frequency={n_frequency}; expected 1 <= n_frequency <= d_out * d_in = {d_out * d_in}")
    flat = torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(seed))[:n_frequency]
    return torch.stack([flat // d_in, flat % d_in])


# --------------------------------------------------------------------------------------------------------------------
# functional core


def _fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFTs run in float32, or float64 for float64 coefficients (never in half precision)."""
    return torch.promote_types(dtype, torch.float32)


def _block_deltas(
    coefficients: Tensor, rows: Tensor, cols: Tensor, block_rows: int, d_in: int, scaling: float
) -> Tensor:
    """``scaling * Re(ifft2(S))`` for each block, as PEFT computes it.

    Args:
        coefficients: ``(nb, n)`` coefficients of ``nb`` blocks sharing the locations.
        rows: ``(n,)`` spectrum rows ``u``.
        cols: ``(n,)`` spectrum columns ``v``.
        block_rows: Rows ``d`` of one block.
        d_in: Columns of one block.
        scaling: Output factor.

    Returns:
        ``(nb, d, d_in)`` deltas in the FFT dtype.
    """
    dtype = _fft_dtype(coefficients.dtype)
    spectrum = coefficients.new_zeros((coefficients.shape[0], block_rows, d_in), dtype=dtype)
    spectrum[:, rows, cols] = coefficients.to(dtype)
    return torch.fft.ifft2(spectrum).real * scaling


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


def _effective_weight(
    weight: Tensor,
    coefficients: Tensor,
    half_index: Tensor,
    block_ids: tuple[int, ...],
    block_rows: int,
    scaling: float,
    dtype: torch.dtype,
) -> Tensor:
    """``W + dW`` with the block deltas added to their row blocks, summed in the FFT dtype, returned in ``dtype``.

    Args:
        weight: ``(d_out, d_in)`` frozen weight.
        coefficients: ``(nb, n)``, one row per adapted block.
        half_index: ``(2, m)`` from :func:`_half_spectrum_index`.
        block_ids: Index of each adapted block among the ``d_out / block_rows`` row blocks.
        block_rows: Rows ``d`` of one block.
        scaling: Delta factor.
        dtype: Dtype of the result (the layer's compute dtype).

    Returns:
        ``(d_out, d_in)``.
    """
    d_in = weight.shape[1]
    with torch.autocast(weight.device.type, enabled=False):
        fft_dtype = _fft_dtype(coefficients.dtype)
        half = coefficients.new_zeros((coefficients.shape[0], block_rows * (d_in // 2 + 1)), dtype=fft_dtype)
        half.index_add_(1, half_index[0], coefficients.to(fft_dtype)[:, half_index[1]], alpha=0.5)
        unscaled = torch.fft.irfft2(half.view(-1, block_rows, d_in // 2 + 1), s=(block_rows, d_in))
        if block_rows == weight.shape[0]:
            merged = torch.add(weight.to(fft_dtype), unscaled[0], alpha=scaling)
        else:
            merged = weight.to(fft_dtype, copy=True)
            for index, block in enumerate(block_ids):
                merged[block * block_rows : (block + 1) * block_rows].add_(unscaled[index], alpha=scaling)
    return merged.to(dtype)


def _dense_gather_index(rows: Tensor, cols: Tensor, block_rows: int, d_in: int) -> Tensor:
    """Flat position of each entry in an ``rfft2`` half spectrum ``(d, d_in / 2 + 1)``; entries in the upper columns
    read their conjugate twin ``(-u, -v)`` (same real part)."""
    upper = cols > d_in // 2
    half_rows = torch.where(upper, (block_rows - rows) % block_rows, rows)
    half_cols = torch.where(upper, d_in - cols, cols)
    return half_rows * (d_in // 2 + 1) + half_cols


def _dense_coefficient_grad(weight_grad: Tensor, dense_index: Tensor, scaling: float, dtype: torch.dtype) -> Tensor:
    """Coefficient gradient from the dense gradient ``G`` of ``dW``: ``scaling * Re(ifft2(G))[u, v]``, which for real
    ``G`` is ``scaling / (d d_in) * Re(rfft2(G))`` at :func:`_dense_gather_index`.

    Args:
        weight_grad: ``(nb, d, d_in)`` gradient with respect to each block of ``dW``.
        dense_index: ``(n,)`` from :func:`_dense_gather_index`.
        scaling: Delta factor.
        dtype: Dtype of the result.

    Returns:
        ``(nb, n)``.
    """
    num_blocks, block_rows, d_in = weight_grad.shape
    spectrum = torch.fft.rfft2(weight_grad.to(_fft_dtype(weight_grad.dtype))).reshape(num_blocks, -1)
    return (spectrum[:, dense_index].real * (scaling / (block_rows * d_in))).to(dtype)


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


@torch.library.custom_op("fftprompt::fourierft_spectral_products", mutates_args=())
def _spectral_products(
    output_grad: Tensor, inputs: Tensor, crow: Tensor, col: Tensor, conjugate_inputs: bool, chunk_tokens: int
) -> Tensor:
    """``sum_t Re(L_t[r] conj(R_t[c]))`` over the CSR entries ``(r, c)`` of the half spectra (see
    :func:`_fft_sampling_index`): ``(T, nb, d), (T, d_in) -> (m,)``, in chunks of tokens that stay in cache."""
    tokens, num_blocks, _ = output_grad.shape
    fft_dtype = _fft_dtype(output_grad.dtype)
    left_rows = num_blocks * (output_grad.shape[2] // 2 + 1) * (1 if conjugate_inputs else 2)
    right_rows = (inputs.shape[1] // 2 + 1) * (2 if conjugate_inputs else 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            crow, col, inputs.new_zeros(col.shape[0], dtype=fft_dtype), (left_rows, right_rows), check_invariants=False
        )
    total = None
    for start in range(0, tokens, chunk_tokens):
        grads = output_grad[start : start + chunk_tokens].to(fft_dtype)
        length = grads.shape[0]
        # half spectra, transposed so that each frequency's token values are contiguous for the sampled product,
        # the smaller one followed by its conjugate
        grads_hat = torch.fft.rfft(grads, dim=-1).reshape(length, num_blocks, -1).permute(1, 2, 0)
        inputs_hat = torch.fft.rfft(inputs[start : start + chunk_tokens].to(fft_dtype), dim=-1).t()
        if conjugate_inputs:
            left = grads_hat.reshape(left_rows, length).contiguous()  # complex copy: far faster than a real one
            right = inputs_hat.new_empty((2,) + inputs_hat.shape)
            right[0] = inputs_hat
            right[1] = right[0].conj()
        else:
            left = grads_hat.new_empty((num_blocks, 2) + grads_hat.shape[1:])
            left[:, 0] = grads_hat
            left[:, 1] = left[:, 0].conj()
            right = inputs_hat.contiguous()
        left = torch.view_as_real(left.reshape(left_rows, length)).flatten(1)
        right = torch.view_as_real(right.reshape(right_rows, length)).flatten(1)
        values = torch.sparse.sampled_addmm(pattern, left, right.t(), beta=0.0).values()
        total = values.clone() if total is None else total.add_(values)
    return total


@_spectral_products.register_fake
def _(output_grad: Tensor, inputs: Tensor, crow: Tensor, col: Tensor, conjugate_inputs: bool, chunk_tokens: int):
    return inputs.new_empty(col.shape[0], dtype=_fft_dtype(output_grad.dtype))


def _fft_coefficient_grad(
    output_grad: Tensor,
    inputs: Tensor,
    crow: Tensor,
    col: Tensor,
    inverse: Tensor,
    scaling: float,
    dtype: torch.dtype,
) -> Tensor:
    """Coefficient gradient from FFTs: ``scaling * Re(sum_t ifft(g_t)[u] ifft(x_t)[v])``.

    Args:
        output_grad: ``(T, nb, d)`` output gradient of each adapted block.
        inputs: ``(T, d_in)`` layer inputs.
        crow: CSR row pointers from :func:`_fft_sampling_index`.
        col: CSR columns.
        inverse: ``(nb n,)`` product index of each coefficient.
        scaling: Delta factor.
        dtype: Dtype of the result.

    Returns:
        ``(nb, n)``.
    """
    _, num_blocks, block_rows = output_grad.shape
    d_in = inputs.shape[1]
    conjugate_inputs = _conjugated_side(num_blocks, block_rows, d_in) == "inputs"
    products = _spectral_products(output_grad, inputs, crow, col, conjugate_inputs, _FFT_CHUNK_TOKENS)
    return (products[inverse] * (scaling / (block_rows * d_in))).reshape(num_blocks, -1).to(dtype)


def _choose_grad_mode(
    grad_mode: GradMode,
    device: torch.device,
    dtype: torch.dtype,
    num_blocks: int,
    block_rows: int,
    d_in: int,
    n: int,
) -> Literal["dense", "fft"]:
    """``"dense"`` or ``"fft"``: the requested one, or for ``"auto"`` the cheaper one on this device and shape (both
    costs grow linearly with the number of tokens)."""
    if grad_mode != "auto":
        return grad_mode
    if device.type != "cpu":
        return "dense"
    dense = num_blocks * block_rows * d_in * (_BF16_MATMUL_COST if dtype == torch.bfloat16 else 1.0)
    fft = _FFT_FEATURE_COST * (num_blocks * block_rows + d_in) + _FFT_ENTRY_COST * num_blocks * n
    return "fft" if fft < dense else "dense"


@functools.lru_cache(maxsize=64)
def _layer_indices(block_rows: int, d_in: int, n_frequency: int, seed: int, num_blocks: int) -> dict[str, Tensor]:
    """The locations and the index tensors derived from them, built once per shape (tensors shared, never written)."""
    locations = fourierft_locations(block_rows, d_in, n_frequency, seed)
    rows, cols = locations
    crow, col, inverse = _fft_sampling_index(rows, cols, block_rows, d_in, num_blocks)
    return {
        "locations": locations,
        "_half_index": _half_spectrum_index(rows, cols, block_rows, d_in),
        "_dense_index": _dense_gather_index(rows, cols, block_rows, d_in),
        "_fft_crow": crow,
        "_fft_col": col,
        "_fft_inverse": inverse,
    }


class _FourierFTLinearFunction(torch.autograd.Function):
    """``y = x (W + dW(c))^T + b`` with an exact, cheap coefficient gradient (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        coefficients: Tensor,
        half_index: Tensor,
        dense_index: Tensor,
        crow: Tensor,
        col: Tensor,
        inverse: Tensor,
        block_ids: tuple[int, ...],
        block_rows: int,
        scaling: float,
        dtype: torch.dtype,
        grad_mode: GradMode,
    ) -> Tensor:
        merged = _effective_weight(weight, coefficients, half_index, block_ids, block_rows, scaling, dtype)
        x_cast = x.to(dtype)
        out = F.linear(x_cast, merged, None if bias is None else bias.to(dtype))
        ctx.mode = _choose_grad_mode(
            grad_mode, x.device, dtype, len(block_ids), block_rows, x.shape[-1], dense_index.shape[0]
        )
        ctx.block_ids, ctx.block_rows, ctx.scaling = block_ids, block_rows, scaling
        ctx.x_shape, ctx.x_dtype, ctx.weight_dtype, ctx.coefficient_dtype = (
            x.shape,
            x.dtype,
            weight.dtype,
            coefficients.dtype,
        )
        ctx.bias_dtype = None if bias is None else bias.dtype
        needs_x = ctx.needs_input_grad[1] or ctx.needs_input_grad[3]
        ctx.save_for_backward(x_cast if needs_x else None, merged, dense_index, crow, col, inverse)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, merged, dense_index, crow, col, inverse = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, needs_coefficients = ctx.needs_input_grad[:4]
        d_out, d_in = merged.shape
        grad = grad_out.reshape(-1, d_out).to(merged.dtype)
        grad_x = grad_weight = grad_bias = grad_coefficients = None
        if needs_x:
            grad_x = (grad @ merged).reshape(ctx.x_shape).to(ctx.x_dtype)
        if needs_bias:
            grad_bias = grad.sum(0).to(ctx.bias_dtype)
        if needs_weight or needs_coefficients:
            inputs = x.reshape(-1, d_in)
            block_ids, block_rows = ctx.block_ids, ctx.block_rows
            if needs_weight:
                grad_weight = (grad.t() @ inputs).to(ctx.weight_dtype)
            if needs_coefficients:
                num_row_blocks = d_out // block_rows
                if len(block_ids) == num_row_blocks:
                    block_grad = grad.reshape(-1, num_row_blocks, block_rows)
                else:
                    block_grad = grad.reshape(-1, num_row_blocks, block_rows)[:, list(block_ids)]
                if ctx.mode == "fft":
                    grad_coefficients = _fft_coefficient_grad(
                        block_grad, inputs, crow, col, inverse, ctx.scaling, ctx.coefficient_dtype
                    )
                else:
                    if grad_weight is not None:
                        dense = grad_weight.reshape(num_row_blocks, block_rows, d_in)[list(block_ids)]
                    else:
                        dense = (block_grad.reshape(block_grad.shape[0], -1).t() @ inputs).reshape(-1, block_rows, d_in)
                    grad_coefficients = _dense_coefficient_grad(dense, dense_index, ctx.scaling, ctx.coefficient_dtype)
        return (grad_x, grad_weight, grad_bias, grad_coefficients) + (None,) * 10


# --------------------------------------------------------------------------------------------------------------------
# module


def _stack(parameters: list[Tensor]) -> Tensor:
    """``(nb, n)`` coefficients; a view for a single block (no copy)."""
    return parameters[0].unsqueeze(0) if len(parameters) == 1 else torch.stack(parameters)


class FourierFTLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a FourierFT delta, whole or on row blocks (PEFT's layer contract in miniature).

    Args:
        base_layer: The linear layer to adapt; its parameters are frozen.
        n_frequency: Spectral entries per adapted matrix (per block).
        scaling: Delta factor.
        seed: Location seed.
        init: ``"normal"`` or ``"zeros"`` coefficients (normal draws use the global RNG, like PEFT).
        grad_mode: ``"auto"``, ``"dense"`` or ``"fft"`` coefficient gradient.
        blocks: ``None`` to adapt the whole weight, or a subset of ``("q", "k", "v")`` to adapt those row blocks of a
            fused ``qkv`` layer (``d_out`` divisible by 3).
        name: Module path, used in error messages.

    Attributes:
        fourierft_spectrum: The trainable coefficients, ``(n,)`` each, keyed ``"full"`` or by block name.
        merged: Whether the delta is currently added to ``base_layer.weight``.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        n_frequency: int = 1000,
        scaling: float = 150.0,
        seed: int = 777,
        init: Init = "normal",
        grad_mode: GradMode = "auto",
        blocks: Sequence[str] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        label = f"layer {name!r}" if name else "layer"
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"FourierFT {label} is a {type(base_layer).__name__}; expected an nn.Linear")
        if init not in get_args(Init):
            raise ValueError(f"FourierFT init={init!r}; expected one of {get_args(Init)}")
        if grad_mode not in get_args(GradMode):
            raise ValueError(f"FourierFT grad_mode={grad_mode!r}; expected one of {get_args(GradMode)}")
        d_out, d_in = base_layer.out_features, base_layer.in_features
        if blocks is None:
            block_names, block_ids, block_rows = (FULL_LAYER,), (0,), d_out
        else:
            unknown = [b for b in blocks if b not in QKV_BLOCKS]
            if unknown or not blocks or len(set(blocks)) != len(blocks):
                raise ValueError(f"FourierFT blocks={tuple(blocks)!r}; expected distinct names among {QKV_BLOCKS}")
            if d_out % 3:
                raise ValueError(f"FourierFT {label} has {d_out} outputs; q/k/v blocks need a multiple of 3")
            block_names = tuple(b for b in QKV_BLOCKS if b in blocks)
            block_ids = tuple(QKV_BLOCKS.index(b) for b in block_names)
            block_rows = d_out // 3
        if n_frequency > block_rows * d_in or n_frequency <= 0:
            shape = f"{block_rows}x{d_in}" + ("" if blocks is None else f" ({'/'.join(block_names)} blocks)")
            raise ValueError(
                f"FourierFT {label}: n_frequency={n_frequency} must be in [1, {block_rows * d_in}] "
                f"for its {shape} matrix"
            )
        base_layer.requires_grad_(False)
        self.base_layer = base_layer
        self.in_features, self.out_features = d_in, d_out
        self.n_frequency, self.scaling, self.seed, self.grad_mode = n_frequency, float(scaling), seed, grad_mode
        self.block_names, self.block_ids, self.block_rows = block_names, block_ids, block_rows
        self.merged = False
        device = base_layer.weight.device
        dtype = _fft_dtype(base_layer.weight.dtype)
        self.fourierft_spectrum = nn.ParameterDict(
            {
                key: nn.Parameter(
                    torch.randn(n_frequency, device=device, dtype=dtype)
                    if init == "normal"
                    else torch.zeros(n_frequency, device=device, dtype=dtype)
                )
                for key in block_names
            }
        )
        # derived from the seed, shared by the layers of equal shape: moved with the module, never saved
        for key, index in _layer_indices(block_rows, d_in, n_frequency, seed, len(block_ids)).items():
            self.register_buffer(key, index.to(device), persistent=False)
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None

    def _coefficients(self) -> Tensor:
        """``(nb, n)`` coefficients, blocks in q, k, v order."""
        return _stack([self.fourierft_spectrum[key] for key in self.block_names])

    def get_delta_weight(self) -> Tensor:
        """The weight change ``(d_out, d_in)``, zero outside the adapted row blocks, in float32 (float64 for float64
        coefficients)."""
        coefficients = self._coefficients()
        rows, cols = self.locations
        deltas = _block_deltas(coefficients, rows, cols, self.block_rows, self.in_features, self.scaling)
        if len(self.block_ids) == 1 and self.block_rows == self.out_features:
            return deltas[0]
        delta = deltas.new_zeros((self.out_features // self.block_rows, self.block_rows, self.in_features))
        delta[list(self.block_ids)] = deltas
        return delta.reshape(self.out_features, self.in_features)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the delta to ``base_layer.weight`` in place; the forward then is the plain linear layer."""
        if self.merged:
            warnings.warn("FourierFTLinear.merge: already merged; nothing to do", stacklevel=2)
            return
        weight = self.base_layer.weight
        weight.copy_((weight.to(_fft_dtype(weight.dtype)) + self.get_delta_weight()).to(weight.dtype))
        self.merged = True
        self._cache = None

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the delta from ``base_layer.weight`` again (restores it up to rounding)."""
        if not self.merged:
            warnings.warn("FourierFTLinear.unmerge: not merged; nothing to do", stacklevel=2)
            return
        weight = self.base_layer.weight
        weight.copy_((weight.to(_fft_dtype(weight.dtype)) - self.get_delta_weight()).to(weight.dtype))
        self.merged = False
        self._cache = None

    def forward(self, x: Tensor) -> Tensor:
        """``(..., d_in) -> (..., d_out)``: one matrix product with ``W + dW``, in the autocast dtype when enabled."""
        if self.merged:
            return self.base_layer(x)
        weight, bias = self.base_layer.weight, self.base_layer.bias
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        parameters = [self.fourierft_spectrum[key] for key in self.block_names]
        requires_grad = torch.is_grad_enabled() and (
            x.requires_grad
            or weight.requires_grad
            or (bias is not None and bias.requires_grad)
            or any(p.requires_grad for p in parameters)
        )
        if requires_grad:
            self._cache = None  # an evaluation cache would otherwise hold a weight copy through training
            return _FourierFTLinearFunction.apply(
                x,
                weight,
                bias,
                _stack(parameters),
                self._half_index,
                self._dense_index,
                self._fft_crow,
                self._fft_col,
                self._fft_inverse,
                self.block_ids,
                self.block_rows,
                self.scaling,
                dtype,
                self.grad_mode,
            )
        if torch.compiler.is_compiling():
            merged = self._effective_weight(parameters, dtype)
        else:
            key = (tuple((p._version, p.data_ptr()) for p in parameters), weight._version, weight.data_ptr(), dtype)
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, self._effective_weight(parameters, dtype))
            merged = self._cache[1]
        return F.linear(x.to(dtype), merged, None if bias is None else bias.to(dtype))

    def _effective_weight(self, parameters: list[Tensor], dtype: torch.dtype) -> Tensor:
        return _effective_weight(
            self.base_layer.weight,
            _stack(parameters),
            self._half_index,
            self.block_ids,
            self.block_rows,
            self.scaling,
            dtype,
        )

    def extra_repr(self) -> str:
        blocks = "" if self.block_names == (FULL_LAYER,) else f", blocks={self.block_names}"
        return (
            f"n_frequency={self.n_frequency}, scaling={self.scaling}, seed={self.seed}, "
            f"grad_mode={self.grad_mode!r}{blocks}, merged={self.merged}"
        )


# --------------------------------------------------------------------------------------------------------------------
# model-level helpers


def _adaptable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``nn.Linear`` modules by path, excluding those already wrapped by a FourierFT layer."""
    wrapped = {name for name, module in model.named_modules() if isinstance(module, FourierFTLinear)}
    if wrapped:
        raise ValueError(
            f"model already has FourierFT layers ({sorted(wrapped)[:3]}...); merge_fourierft it before adapting again"
        )
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def _available_targets(linears: Mapping[str, nn.Linear]) -> str:
    components = sorted({name.rsplit(".", 1)[-1] for name in linears})
    example = next(iter(linears), "blocks.0.mlp.fc1")
    blocks = ", 'q'/'k'/'v' (row blocks of fused 'qkv')" if "qkv" in components else ""
    return f"nn.Linear name components {components}{blocks}, or 're:<regex>' over paths such as {example!r}"


def inject_fourierft(model: nn.Module, config: FourierFTConfig) -> list[str]:
    """Replace the targeted linear layers of ``model`` in place by :class:`FourierFTLinear` wrappers.

    Base weights of the adapted layers are frozen; other parameters of ``model`` are left as they are. Layers (and
    ``q``/``k``/``v`` blocks) of equal shape share their entry locations.

    Args:
        model: Any module, e.g. a timm ``VisionTransformer``.
        config: Targets and FourierFT settings.

    Returns:
        Module paths of the adapted layers, in module order (a ``qkv`` adapted on blocks appears once).

    Raises:
        ValueError: A target matches no ``nn.Linear`` (the message lists what exists), a ``qkv`` targeted by blocks has
            a row count not divisible by 3, or ``n_frequency`` exceeds a matrix's size (naming the layer).
    """
    if not isinstance(config, FourierFTConfig):
        raise ValueError(f"inject_fourierft: config is a {type(config).__name__}; expected a FourierFTConfig")
    linears = _adaptable_linears(model)
    plan: dict[str, set[str]] = {}
    unmatched = []
    for target in config.targets:
        matched = False
        for name, module in linears.items():
            last = name.rsplit(".", 1)[-1]
            if target.startswith(REGEX_PREFIX):
                hit = re.fullmatch(target[len(REGEX_PREFIX) :], name) is not None
                kind = FULL_LAYER
            elif target in QKV_BLOCKS and last == "qkv":
                if module.out_features % 3:
                    raise ValueError(
                        f"target {target!r}: fused layer {name!r} has {module.out_features} outputs, "
                        "not a multiple of 3"
                    )
                hit, kind = True, target
            else:
                hit, kind = last == target, FULL_LAYER
            if hit:
                matched = True
                plan.setdefault(name, set()).add(kind)
        if not matched:
            unmatched.append(target)
    if unmatched:
        raise ValueError(
            f"FourierFT targets {unmatched} match no layer of {type(model).__name__}; available: "
            f"{_available_targets(linears)}"
        )
    for name, kinds in plan.items():
        if FULL_LAYER in kinds and len(kinds) > 1:
            raise ValueError(
                f"FourierFT targets adapt {name!r} both whole and as blocks {sorted(kinds - {FULL_LAYER})}; choose one"
            )
    adapted = []
    for name, module in linears.items():
        if name not in plan:
            continue
        blocks = None if plan[name] == {FULL_LAYER} else sorted(plan[name], key=QKV_BLOCKS.index)
        wrapper = FourierFTLinear(
            module,
            n_frequency=config.n_frequency,
            scaling=config.scaling,
            seed=config.seed,
            init=config.init,
            grad_mode=config.grad_mode,
            blocks=blocks,
            name=name,
        )
        _set_submodule(model, name, wrapper)
        adapted.append(name)
    return adapted


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def merge_fourierft(model: nn.Module) -> nn.Module:
    """Merge every FourierFT delta into its base weight and put the plain ``nn.Linear`` back, in place.

    Args:
        model: A model adapted by :func:`inject_fourierft` (or a single :class:`FourierFTLinear`).

    Returns:
        The same model without FourierFT modules (the base layer itself when ``model`` is a FourierFT layer).
    """
    if isinstance(model, FourierFTLinear):
        if not model.merged:
            model.merge()
        return model.base_layer
    for name, module in list(model.named_modules()):
        if isinstance(module, FourierFTLinear):
            if not module.merged:
                module.merge()
            _set_submodule(model, name, module.base_layer)
    return model


def fourierft_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The trainable FourierFT coefficients of ``model``, keyed by parameter path.

    Keys look like ``blocks.0.attn.qkv.fourierft_spectrum.q``; locations are not included (they are regenerated from
    the seed when the adapters are injected again).

    Args:
        model: A model containing :class:`FourierFTLinear` layers.

    Returns:
        Detached ``(n,)`` tensors sharing storage with the parameters.
    """
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, FourierFTLinear):
            prefix = f"{name}." if name else ""
            for key, parameter in module.fourierft_spectrum.items():
                state[f"{prefix}fourierft_spectrum.{key}"] = parameter.detach()
    return state


@torch.no_grad()
def load_fourierft_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Copy coefficients saved by :func:`fourierft_state_dict` into a model adapted with the same configuration.

    Args:
        model: A model with :class:`FourierFTLinear` layers (same targets, ``n_frequency`` and seed).
        state_dict: Coefficients keyed by parameter path.

    Raises:
        ValueError: Keys are missing or unexpected, or a shape differs.
    """
    current = fourierft_state_dict(model)
    missing = sorted(set(current) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"FourierFT state dict does not fit the model: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    for key, target in current.items():
        source = state_dict[key]
        if source.shape != target.shape:
            raise ValueError(
                f"FourierFT state dict: {key!r} has shape {tuple(source.shape)}; expected {tuple(target.shape)}"
            )
        target.copy_(source)
