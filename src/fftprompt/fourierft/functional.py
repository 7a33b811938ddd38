"""FourierFT's functional core: weight deltas, the merged weight and an exact, cheap coefficient gradient.

The delta of ``n`` coefficients ``c`` at the entries ``(u_k, v_k)`` (see :mod:`fftprompt.fourierft.indices`) is
``dW = scaling * Re(ifft2(S))`` with ``S[u_k, v_k] = c_k``, numerically identical to PEFT's.

PEFT computes ``x @ W^T + x @ dW^T``: a second full matrix product per token and, in the backward, a dense
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
the two costs on CPUs. No gradient of the frozen weight is ever formed unless that weight requires one.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fftprompt.fourierft.config import GradMode
from fftprompt.fourierft.indices import _conjugated_side

# CPU cost model of grad_mode="auto", in multiply-adds of a large float32 matrix product, per token: the dense path
# costs d_out * d_in, the FFT path FEATURE_COST per feature (rfft, transposes and conjugate copies of both spectra)
# plus ENTRY_COST per spectral entry (sampled products). Fitted to CPU layer timings (docs/benchmarks.md) and rounded
# towards the dense path, which needs fewer, larger operations and suffers less when the cores are shared: ViT-S
# layers (d = 384) stay dense, ViT-B/L layers (d >= 768) take the FFT path.
_FFT_FEATURE_COST = 300.0
_FFT_ENTRY_COST = 26.0
# bfloat16 products (autocast) run on the CPU's matrix units about 4x faster; the FFT path stays in float32
_BF16_MATMUL_COST = 0.25
# tokens per chunk of the FFT-path gradient: the chunk's transposed spectra stay in the CPU caches
_FFT_CHUNK_TOKENS = 512


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
        half_index: ``(2, m)`` from :func:`~fftprompt.fourierft.indices._half_spectrum_index`.
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


def _dense_coefficient_grad(weight_grad: Tensor, dense_index: Tensor, scaling: float, dtype: torch.dtype) -> Tensor:
    """Coefficient gradient from the dense gradient ``G`` of ``dW``: ``scaling * Re(ifft2(G))[u, v]``, which for real
    ``G`` is ``scaling / (d d_in) * Re(rfft2(G))`` at :func:`~fftprompt.fourierft.indices._dense_gather_index`.

    Args:
        weight_grad: ``(nb, d, d_in)`` gradient with respect to each block of ``dW``.
        dense_index: ``(n,)`` from :func:`~fftprompt.fourierft.indices._dense_gather_index`.
        scaling: Delta factor.
        dtype: Dtype of the result.

    Returns:
        ``(nb, n)``.
    """
    num_blocks, block_rows, d_in = weight_grad.shape
    spectrum = torch.fft.rfft2(weight_grad.to(_fft_dtype(weight_grad.dtype))).reshape(num_blocks, -1)
    return (spectrum[:, dense_index].real * (scaling / (block_rows * d_in))).to(dtype)


@torch.library.custom_op("fftprompt::fourierft_spectral_products", mutates_args=())
def _spectral_products(
    output_grad: Tensor, inputs: Tensor, crow: Tensor, col: Tensor, conjugate_inputs: bool, chunk_tokens: int
) -> Tensor:
    """``sum_t Re(L_t[r] conj(R_t[c]))`` over the CSR entries ``(r, c)`` of the half spectra (see
    :func:`~fftprompt.fourierft.indices._fft_sampling_index`): ``(T, nb, d), (T, d_in) -> (m,)``, in chunks of tokens
    that stay in cache."""
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
        crow: CSR row pointers from :func:`~fftprompt.fourierft.indices._fft_sampling_index`.
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
