"""The FourierFT layer: a frozen ``nn.Linear`` plus a spectral weight delta, in PEFT's layer contract.

The forward is one matrix product with ``W + dW`` (see :mod:`fftprompt.fourierft.functional`); the deltas come from
the layer's :class:`~fftprompt.fourierft.bank.FourierFTBank`, which synthesises those of all layers of one shape
together. Without gradients (evaluation, ``torch.no_grad``) ``W + dW`` is computed once and cached until a coefficient
or the weight changes (tracked by the tensors' version counters); a frozen bias is converted to the compute dtype
once, likewise.

The coefficients are stored in ``FourierFTConfig.dtype`` when it is set, and kept in it when the model is converted
(``model.to(torch.bfloat16)``, Lightning's ``bf16-true``): :meth:`FourierFTLinear._apply` moves them to the new
device but converts them from their original values to the configured dtype, never through the other one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fftprompt.fourierft.bank import FourierFTBank, version_key
from fftprompt.fourierft.config import QKV_BLOCKS, FourierFTConfig
from fftprompt.fourierft.functional import (
    _batches_dense_gradient,
    _block_deltas,
    _choose_grad_mode,
    _fft_dtype,
    _FourierFTDeltas,
    _FourierFTLinearFunction,
    _merge_weight,
    _stack,
    _synthesise_deltas,
)
from fftprompt.fourierft.indices import _layer_indices

__all__ = ["ADAPTER_DTYPES", "FULL_LAYER", "FourierFTLinear"]

FULL_LAYER = "full"  # coefficient key of a layer adapted whole

ADAPTER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``FourierFTConfig.dtype`` names -> torch dtypes."""


class FourierFTLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a FourierFT delta, whole or on row blocks (PEFT's layer contract in miniature).

    Args:
        base_layer: The linear layer to adapt; its parameters are frozen.
        config: ``n_frequency`` (per adapted matrix or block), ``scaling``, ``seed``, ``init`` (normal draws use the
            global RNG, like PEFT, in float32 and are then rounded to ``dtype``), ``grad_mode`` and ``dtype`` (of the
            coefficients; default float32, float64 on float64 weights); ``targets`` only matter to
            :func:`~fftprompt.fourierft.model.inject_fourierft`.
        blocks: ``None`` to adapt the whole weight, or a subset of ``("q", "k", "v")`` to adapt those row blocks of a
            fused ``qkv`` layer (``d_out`` divisible by 3).
        name: Module path, used in error messages.

    Attributes:
        fourierft_spectrum: The trainable coefficients, ``(n,)`` each, keyed ``"full"`` or by block name.
        merged: Whether the delta is currently added to ``base_layer.weight``.
        bank: The :class:`~fftprompt.fourierft.bank.FourierFTBank` that synthesises this layer's deltas (its own until
            :func:`~fftprompt.fourierft.model.inject_fourierft` gathers the model's layers in one).
        half_index, dense_index: Where the coefficients sit in the half spectrum and in the dense matrix (buffers
            derived from the seed, never saved), read by the bank's batched synthesis.

    Raises:
        ValueError: ``base_layer`` is not an ``nn.Linear``, ``blocks`` are not distinct q/k/v names or do not divide
            the rows, or ``n_frequency`` exceeds the size of the adapted matrix.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        config: FourierFTConfig,
        *,
        blocks: Sequence[str] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        label = f"layer {name!r}" if name else "layer"
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"FourierFT {label} is a {type(base_layer).__name__}; expected an nn.Linear")
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
        n_frequency = config.n_frequency
        try:
            indices = _layer_indices(block_rows, d_in, n_frequency, config.seed, len(block_ids))
        except ValueError as error:  # n_frequency larger than the matrix: say which layer
            shape = f"{block_rows}x{d_in}" + ("" if blocks is None else f" ({'/'.join(block_names)} blocks)")
            raise ValueError(f"FourierFT {label}: {error} for its {shape} matrix") from None
        base_layer.requires_grad_(False)
        self.base_layer = base_layer
        self.config = config
        self.in_features, self.out_features = d_in, d_out
        self.block_names, self.block_ids, self.block_rows = block_names, block_ids, block_rows
        self.merged = False
        device = base_layer.weight.device
        draw_dtype = _fft_dtype(base_layer.weight.dtype)
        dtype = draw_dtype if config.dtype is None else ADAPTER_DTYPES[config.dtype]
        self.fourierft_spectrum = nn.ParameterDict(
            {
                key: nn.Parameter(
                    (
                        torch.randn(n_frequency, device=device, dtype=draw_dtype)
                        if config.init == "normal"
                        else torch.zeros(n_frequency, device=device, dtype=draw_dtype)
                    ).to(dtype)
                )
                for key in block_names
            }
        )
        # derived from the seed, shared by the layers of equal shape: moved with the module, never saved
        for key, index in indices.items():
            self.register_buffer(key, index.to(device), persistent=False)
        self._cache: tuple[tuple[Any, ...], Tensor] | None = None  # merged weight without gradients
        self._bias_cache: tuple[tuple[Any, ...], Tensor] | None = None  # frozen bias in the compute dtype
        self.bank = FourierFTBank([self])  # inject_fourierft moves the layer into its model's bank

    def coefficient_list(self) -> list[Tensor]:
        """The ``nb`` coefficient vectors ``(n,)``, blocks in q, k, v order."""
        return [self.fourierft_spectrum[key] for key in self.block_names]

    def _coefficients(self) -> Tensor:
        """``(nb, n)`` coefficients, blocks in q, k, v order."""
        return _stack(self.coefficient_list())

    def shape_key(self) -> tuple[Any, ...]:
        """Layers with equal keys share their entry locations (and a :class:`FourierFTBank` group)."""
        config = self.config
        return (self.block_rows, self.in_features, config.n_frequency, config.seed, config.scaling)

    def _grad_mode(self, dtype: torch.dtype) -> str:
        return _choose_grad_mode(
            self.config.grad_mode,
            self.base_layer.weight.device,
            dtype,
            len(self.block_ids),
            self.block_rows,
            self.in_features,
            self.config.n_frequency,
        )

    def batched_dense(self, dtype: torch.dtype) -> bool:
        """Whether a forward now takes the dense coefficient gradient through differentiable deltas, batched over the
        bank's group (:func:`~fftprompt.fourierft.functional._batches_dense_gradient`)."""
        return (
            torch.is_grad_enabled()
            and any(p.requires_grad for p in self.coefficient_list())
            and self._grad_mode(dtype) == "dense"
            and _batches_dense_gradient(self.base_layer.weight.device)
        )

    def _merged_key(self, dtype: torch.dtype) -> tuple[Any, ...]:
        weight = self.base_layer.weight
        return (version_key(self.coefficient_list()), weight._version, weight.data_ptr(), dtype)

    def has_merged_weight(self, dtype: torch.dtype) -> bool:
        """Whether the cached ``W + dW`` (kept without gradients) is current for ``dtype``."""
        return self._cache is not None and self._cache[0] == self._merged_key(dtype)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> FourierFTLinear:
        """``nn.Module._apply`` (``.to``, ``.cuda``, ``.half``, ...), keeping coefficients in ``config.dtype``: each is
        converted from its original values to the new device and the configured dtype, never rounded through the
        dtype ``fn`` asked for."""
        if self.config.dtype is None or not recurse:
            return super()._apply(fn, recurse)
        dtype = ADAPTER_DTYPES[self.config.dtype]

        def keep_dtype(tensor: Tensor) -> Tensor:
            converted = fn(tensor)
            return converted if converted.dtype == dtype else tensor.to(device=converted.device, dtype=dtype)

        for child in self.children():
            child._apply(keep_dtype if child is self.fourierft_spectrum else fn)
        return super()._apply(fn, recurse=False)

    def get_delta_weight(self) -> Tensor:
        """The weight change ``(d_out, d_in)``, zero outside the adapted row blocks, in the coefficients' dtype
        (computed in float32, float64 for float64 coefficients)."""
        coefficients = self._coefficients()
        rows, cols = self.locations
        deltas = _block_deltas(coefficients, rows, cols, self.block_rows, self.in_features, self.config.scaling)
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
        self._add_delta(1.0)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the delta from ``base_layer.weight`` again (restores it up to rounding)."""
        if not self.merged:
            warnings.warn("FourierFTLinear.unmerge: not merged; nothing to do", stacklevel=2)
            return
        self._add_delta(-1.0)
        self.merged = False

    def _add_delta(self, sign: float) -> None:
        """``W <- W + sign * dW``, summed in float32 (or wider)."""
        weight = self.base_layer.weight
        delta = self.get_delta_weight()
        summed = torch.add(weight.to(_fft_dtype(torch.promote_types(weight.dtype, delta.dtype))), delta, alpha=sign)
        weight.copy_(summed.to(weight.dtype))
        self._cache = None

    def forward(self, x: Tensor) -> Tensor:
        """``(..., d_in) -> (..., d_out)``: one matrix product with ``W + dW``, in the autocast dtype when enabled."""
        if self.merged:
            return self.base_layer(x)
        weight, bias = self.base_layer.weight, self.base_layer.bias
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        coefficients = self.coefficient_list()
        trains_coefficients = any(p.requires_grad for p in coefficients)
        compiling = torch.compiler.is_compiling()
        requires_grad = torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad) or trains_coefficients
        )
        if not requires_grad:
            return F.linear(x.to(dtype), self._merged_weight(dtype, compiling), self._bias(dtype, compiling))
        self._cache = None  # an evaluation cache would otherwise hold a weight copy through training
        mode = self._grad_mode(dtype)
        batched = self.batched_dense(dtype)
        settings = (self.block_rows, self.in_features, self.config.scaling)
        if compiling:  # traced: every layer synthesises its own deltas inside the graph
            stacked = _stack(coefficients)
            if batched:
                deltas = _FourierFTDeltas.apply(stacked, self.half_index, self.dense_index, *settings)
            else:
                deltas = _synthesise_deltas(stacked.detach(), self.half_index, *settings)
        else:
            deltas = self.bank.deltas(self, dtype, differentiable=batched)
        return _FourierFTLinearFunction.apply(
            x,
            weight,
            self._bias(dtype, compiling),
            deltas,
            _stack(coefficients) if trains_coefficients and not batched else None,
            self.dense_index,
            self._fft_crow,
            self._fft_col,
            self._fft_inverse,
            self.block_ids,
            self.block_rows,
            self.config.scaling,
            dtype,
            mode,
        )

    def _merged_weight(self, dtype: torch.dtype, compiling: bool) -> Tensor:
        """``W + dW`` in ``dtype`` without gradients, cached until a coefficient or the weight changes."""
        if compiling:
            deltas = _synthesise_deltas(
                self._coefficients(), self.half_index, self.block_rows, self.in_features, self.config.scaling
            )
            return _merge_weight(self.base_layer.weight, deltas, self.block_ids, self.block_rows, dtype)
        key = self._merged_key(dtype)
        if self._cache is None or self._cache[0] != key:
            self._cache = None  # release the stale copy before building the new one
            deltas = self.bank.deltas(self, dtype, differentiable=False)
            self._cache = (key, _merge_weight(self.base_layer.weight, deltas, self.block_ids, self.block_rows, dtype))
        return self._cache[1]

    def _bias(self, dtype: torch.dtype, compiling: bool) -> Tensor | None:
        """The bias in ``dtype``: a frozen one is converted once and cached, a trainable one is passed as it is."""
        bias = self.base_layer.bias
        if bias is None or bias.dtype == dtype:
            return bias
        if bias.requires_grad or compiling:
            return bias.to(dtype)
        key = (bias._version, bias.data_ptr(), dtype)
        if self._bias_cache is None or self._bias_cache[0] != key:
            self._bias_cache = (key, bias.detach().to(dtype))
        return self._bias_cache[1]

    def extra_repr(self) -> str:
        blocks = "" if self.block_names == (FULL_LAYER,) else f", blocks={self.block_names}"
        dtype = "" if self.config.dtype is None else f", dtype={self.config.dtype}"
        return (
            f"n_frequency={self.config.n_frequency}, scaling={self.config.scaling}, seed={self.config.seed}, "
            f"grad_mode={self.config.grad_mode!r}{dtype}{blocks}, merged={self.merged}"
        )
