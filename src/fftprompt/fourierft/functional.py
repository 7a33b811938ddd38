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

The deltas of several blocks (of one or several layers, see :class:`~fftprompt.fourierft.bank.FourierFTBank`) come
from one batched ``irfft2`` (:func:`_synthesise_deltas`); in the ``"dense"`` route :class:`_FourierFTDeltas` carries
the synthesis in autograd, so that the weight gradients of all those layers reach one batched ``rfft2`` and gather.
The merged weight is written in the compute dtype by the addition itself (:func:`_merge_weight`): no separate
conversion per layer.

Coefficients may be stored in half precision (``FourierFTConfig.dtype``): every FFT still runs in float32
(:func:`_fft_dtype`; CPUs have no half-precision FFT, and the sums of an FFT need the range), the deltas are cast to
the coefficients' dtype after the transform, as PEFT's ``get_delta_weight`` does, and the coefficient gradients are
formed in float32 and cast last.

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
# largest batched FFT of the deltas on CPUs (complex half spectra), about a core's L2 cache: ViT-S/B matrices one at
# a time (12 ViT-B qkv spectra, 7 MiB each, ran 2.3x slower in one call than one after another, docs/benchmarks.md),
# all layers of a small model together
_CPU_FFT_BATCH_BYTES = 2**20
# CPUs form the dense coefficient gradient in each layer's backward (see _batches_dense_gradient); tests and
# fftprompt-bench ops --accelerator-batching set this to run the accelerators' batched route on a CPU
_CPU_BATCHES_DENSE_GRADIENT = False


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _fft_dtype(dtype: torch.dtype) -> torch.dtype:
    """FFTs run in float32, or float64 for float64 coefficients (never in half precision)."""
    return torch.promote_types(dtype, torch.float32)


def _stack(parameters: list[Tensor]) -> Tensor:
    """``(nb, n)`` coefficients; a view for a single block (no copy). Outside autocast, whose CPU type promotion of
    ``stack`` refuses float16 tensors."""
    if len(parameters) == 1:
        return parameters[0].unsqueeze(0)
    with torch.autocast(parameters[0].device.type, enabled=False):
        return torch.stack(parameters)


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
        ``(nb, d, d_in)`` deltas in the coefficients' dtype (computed in the FFT dtype).
    """
    dtype = _fft_dtype(coefficients.dtype)
    spectrum = coefficients.new_zeros((coefficients.shape[0], block_rows, d_in), dtype=dtype)
    spectrum[:, rows, cols] = coefficients.to(dtype)
    return (torch.fft.ifft2(spectrum).real * scaling).to(coefficients.dtype)


def _batches_dense_gradient(device: torch.device) -> bool:
    """Whether the dense coefficient gradient is deferred to :class:`_FourierFTDeltas` (one batched ``rfft2`` for a
    bank group, fewer launches) rather than formed in each layer's backward while its weight gradient is in cache:
    on accelerators, not on CPUs (where the deferred gradients ran 1-3% slower, docs/benchmarks.md)."""
    return device.type != "cpu" or _CPU_BATCHES_DENSE_GRADIENT


def _fft_batch(count: int, item_bytes: int, device: torch.device) -> int:
    """How many of ``count`` transforms of ``item_bytes`` each go into one batched FFT call: all of them on
    accelerators (one launch), as many as fit :data:`_CPU_FFT_BATCH_BYTES` on CPUs (at least one), where a batch
    beyond the caches runs slower than its parts one after another."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return count
    return max(1, min(count, _CPU_FFT_BATCH_BYTES // max(item_bytes, 1)))


def _synthesise_deltas(coefficients: Tensor, half_index: Tensor, block_rows: int, d_in: int, scaling: float) -> Tensor:
    """``dW = scaling * Re(ifft2(S))`` of ``G`` blocks sharing their locations, in batched ``irfft2`` calls (one on
    accelerators; cache-sized batches on CPUs, see :func:`_fft_batch`).

    The factor ``scaling / 2`` is applied to the coefficients as they are placed in the Hermitian half spectrum (see
    :func:`~fftprompt.fourierft.indices._half_spectrum_index`), which is built complex so that ``irfft2`` reads it
    without a conversion.

    Args:
        coefficients: ``(G, n)`` coefficients, one row per block (of one or several layers).
        half_index: ``(2, m)`` from :func:`~fftprompt.fourierft.indices._half_spectrum_index`.
        block_rows: Rows ``d`` of one block.
        d_in: Columns of one block.
        scaling: Delta factor.

    Returns:
        ``(G, d, d_in)`` deltas in the coefficients' dtype (computed in the FFT dtype, cast after it).
    """
    width = d_in // 2 + 1
    with torch.autocast(coefficients.device.type, enabled=False):
        fft_dtype = _fft_dtype(coefficients.dtype)
        complex_dtype = _COMPLEX[fft_dtype]
        values = coefficients.to(fft_dtype)[:, half_index[1]]
        count = coefficients.shape[0]
        batch = _fft_batch(count, block_rows * width * complex_dtype.itemsize, coefficients.device)
        if batch == count:
            half = values.new_zeros((count, block_rows * width), dtype=complex_dtype)
            torch.view_as_real(half)[..., 0].index_add_(1, half_index[0], values, alpha=0.5 * scaling)
            return torch.fft.irfft2(half.view(-1, block_rows, width), s=(block_rows, d_in)).to(coefficients.dtype)
        deltas = values.new_empty((count, block_rows, d_in))
        for start in range(0, count, batch):
            part = values[start : start + batch]
            half = part.new_zeros((part.shape[0], block_rows * width), dtype=complex_dtype)
            torch.view_as_real(half)[..., 0].index_add_(1, half_index[0], part, alpha=0.5 * scaling)
            torch.fft.irfft2(half.view(-1, block_rows, width), s=(block_rows, d_in), out=deltas[start : start + batch])
        return deltas.to(coefficients.dtype)


def _merge_weight(
    weight: Tensor, deltas: Tensor, block_ids: tuple[int, ...], block_rows: int, dtype: torch.dtype
) -> Tensor:
    """``W + dW`` with each block delta added to its row block, summed in float32 (or wider) and stored in ``dtype``
    by the same operation (no separate conversion).

    Args:
        weight: ``(d_out, d_in)`` frozen weight.
        deltas: ``(nb, d, d_in)`` deltas of the adapted blocks (:func:`_synthesise_deltas`).
        block_ids: Index of each adapted block among the ``d_out / block_rows`` row blocks.
        block_rows: Rows ``d`` of one block.
        dtype: Dtype of the result (the layer's compute dtype).

    Returns:
        ``(d_out, d_in)``.
    """
    d_out, d_in = weight.shape
    with torch.autocast(weight.device.type, enabled=False):
        if torch.compiler.is_compiling():  # traced: the compiler fuses the sums and the conversion itself
            full = weight.to(_fft_dtype(torch.promote_types(weight.dtype, deltas.dtype))).reshape(-1, block_rows, d_in)
            blocks = [full[b] + deltas[block_ids.index(b)] if b in block_ids else full[b] for b in range(len(full))]
            return torch.cat(blocks).to(dtype) if len(blocks) > 1 else blocks[0].to(dtype)
        merged = weight.new_empty((d_out, d_in), dtype=dtype)
        for block in range(d_out // block_rows):
            rows = slice(block * block_rows, (block + 1) * block_rows)
            if block in block_ids:
                torch.add(weight[rows], deltas[block_ids.index(block)], out=merged[rows])
            else:
                merged[rows].copy_(weight[rows])
    return merged


def _dense_coefficient_grad(weight_grad: Tensor, dense_index: Tensor, scaling: float, dtype: torch.dtype) -> Tensor:
    """Coefficient gradient from the dense gradient ``G`` of ``dW``: ``scaling * Re(ifft2(G))[u, v]``, which for real
    ``G`` is ``scaling / (d d_in) * Re(rfft2(G))`` at :func:`~fftprompt.fourierft.indices._dense_gather_index`, in
    batched ``rfft2`` calls (:func:`_fft_batch`).

    Args:
        weight_grad: ``(nb, d, d_in)`` gradient with respect to each block of ``dW``.
        dense_index: ``(n,)`` from :func:`~fftprompt.fourierft.indices._dense_gather_index`.
        scaling: Delta factor.
        dtype: Dtype of the result.

    Returns:
        ``(nb, n)``.
    """
    num_blocks, block_rows, d_in = weight_grad.shape
    fft_dtype = _fft_dtype(weight_grad.dtype)
    item_bytes = block_rows * (d_in // 2 + 1) * _COMPLEX[fft_dtype].itemsize
    batch = _fft_batch(num_blocks, item_bytes, weight_grad.device)
    parts = []
    for start in range(0, num_blocks, batch):
        spectrum = torch.fft.rfft2(weight_grad[start : start + batch].to(fft_dtype))
        parts.append(spectrum.reshape(spectrum.shape[0], -1)[:, dense_index].real)
    gathered = parts[0] if len(parts) == 1 else torch.cat(parts)
    return (gathered * (scaling / (block_rows * d_in))).to(dtype)


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


class _FourierFTDeltas(torch.autograd.Function):
    """``(G, n)`` coefficients ``-> (G, d, d_in)`` deltas (:func:`_synthesise_deltas`), with the dense coefficient
    gradient of all ``G`` blocks in one batched ``rfft2`` and one gather (:func:`_dense_coefficient_grad`).

    Nothing is saved for the backward (the synthesis is linear), so the deltas of one forward may feed several layers
    (a :class:`~fftprompt.fourierft.bank.FourierFTBank` group) whose weight gradients autograd gathers into one
    ``(G, d, d_in)`` tensor.
    """

    @staticmethod
    def forward(
        ctx: Any,
        coefficients: Tensor,
        half_index: Tensor,
        dense_index: Tensor,
        block_rows: int,
        d_in: int,
        scaling: float,
    ) -> Tensor:
        ctx.dense_index, ctx.scaling, ctx.coefficient_dtype = dense_index, scaling, coefficients.dtype
        return _synthesise_deltas(coefficients, half_index, block_rows, d_in, scaling)

    @staticmethod
    def backward(ctx: Any, grad_deltas: Tensor) -> tuple[Tensor | None, ...]:
        grad = _dense_coefficient_grad(grad_deltas, ctx.dense_index, ctx.scaling, ctx.coefficient_dtype)
        return (grad,) + (None,) * 5


class _FourierFTLinearFunction(torch.autograd.Function):
    """``y = x (W + dW)^T + b`` with the block deltas ``dW`` added to the frozen weight before the one product.

    The coefficient gradient takes one of three routes (see the module docstring):

    - batched dense (accelerators): ``deltas`` come from :class:`_FourierFTDeltas` and require a gradient; the
      backward returns the weight gradient of the adapted blocks ``g^T x`` as their gradient (the FFT and gather
      follow, batched over the bank's group, in :class:`_FourierFTDeltas`), and ``coefficients`` is None;
    - ``mode="dense"`` (CPUs): ``deltas`` carry no gradient; the backward forms ``g^T x`` and its FFT at once, while
      it is in cache, and returns the gradient of ``coefficients``;
    - ``mode="fft"``: likewise, from FFTs of the inputs and output gradients.

    No gradient of the frozen weight is formed unless the weight requires one.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        deltas: Tensor,
        coefficients: Tensor | None,
        dense_index: Tensor,
        crow: Tensor,
        col: Tensor,
        inverse: Tensor,
        block_ids: tuple[int, ...],
        block_rows: int,
        scaling: float,
        dtype: torch.dtype,
        mode: Literal["dense", "fft"],
    ) -> Tensor:
        merged = _merge_weight(weight, deltas, block_ids, block_rows, dtype)
        x_cast = x.to(dtype)
        out = F.linear(x_cast, merged, None if bias is None else bias.to(dtype))
        ctx.block_ids, ctx.block_rows, ctx.scaling, ctx.mode = block_ids, block_rows, scaling, mode
        ctx.x_shape, ctx.x_dtype, ctx.weight_dtype, ctx.bias_dtype = (
            x.shape,
            x.dtype,
            weight.dtype,
            None if bias is None else bias.dtype,
        )
        ctx.deltas_dtype = deltas.dtype
        ctx.coefficient_dtype = None if coefficients is None else coefficients.dtype
        keep_inputs = any(ctx.needs_input_grad[i] for i in (1, 3, 4))
        # W + dW only serves the input gradient: the first adapted layer often needs none
        ctx.save_for_backward(
            x_cast if keep_inputs else None,
            merged if ctx.needs_input_grad[0] else None,
            dense_index,
            crow,
            col,
            inverse,
        )
        ctx.d_out = merged.shape[0]
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, merged, dense_index, crow, col, inverse = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, needs_deltas, needs_coefficients = ctx.needs_input_grad[:5]
        d_out = ctx.d_out
        grad = grad_out.reshape(-1, d_out)
        grad_x = grad_weight = grad_bias = grad_deltas = grad_coefficients = None
        if needs_x:
            grad_x = (grad.to(merged.dtype) @ merged).reshape(ctx.x_shape).to(ctx.x_dtype)
        if needs_bias:
            grad_bias = grad.sum(0).to(ctx.bias_dtype)
        if needs_weight or needs_deltas or needs_coefficients:
            inputs = x.reshape(-1, x.shape[-1])
            grad = grad.to(inputs.dtype)
            block_ids, block_rows = ctx.block_ids, ctx.block_rows
            num_row_blocks = d_out // block_rows
            if needs_weight:
                grad_weight = (grad.t() @ inputs).to(ctx.weight_dtype)
            dense = None
            if needs_deltas or (needs_coefficients and ctx.mode == "dense"):
                if grad_weight is not None:
                    dense = grad_weight.reshape(num_row_blocks, block_rows, -1)[list(block_ids)]
                elif len(block_ids) == num_row_blocks:
                    dense = (grad.t() @ inputs).reshape(num_row_blocks, block_rows, -1)
                elif torch.compiler.is_compiling():
                    dense = torch.stack(
                        [grad[:, b * block_rows : (b + 1) * block_rows].t() @ inputs for b in block_ids]
                    )
                else:  # one product per adapted block, straight from strided views of the output gradient
                    dense = inputs.new_empty((len(block_ids), block_rows, inputs.shape[1]))
                    for index, b in enumerate(block_ids):
                        torch.mm(grad[:, b * block_rows : (b + 1) * block_rows].t(), inputs, out=dense[index])
            if needs_deltas:
                grad_deltas = dense.to(ctx.deltas_dtype)
            if needs_coefficients and ctx.mode == "dense":
                grad_coefficients = _dense_coefficient_grad(dense, dense_index, ctx.scaling, ctx.coefficient_dtype)
            elif needs_coefficients:
                block_grad = grad.reshape(-1, num_row_blocks, block_rows)
                if len(block_ids) != num_row_blocks:
                    block_grad = block_grad[:, list(block_ids)]
                grad_coefficients = _fft_coefficient_grad(
                    block_grad, inputs, crow, col, inverse, ctx.scaling, ctx.coefficient_dtype
                )
        return (grad_x, grad_weight, grad_bias, grad_deltas, grad_coefficients) + (None,) * 9
