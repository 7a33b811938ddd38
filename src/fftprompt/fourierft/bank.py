"""The deltas of all FourierFT layers of one shape, synthesised together: one batched inverse FFT per forward.

:func:`~fftprompt.fourierft.model.inject_fourierft` gathers the layers it creates in one :class:`FourierFTBank`.
Layers (and ``q``/``k``/``v`` blocks) of equal shape share their entry locations, so the deltas of all of them come
from one ``irfft2`` of their stacked half spectra (:func:`~fftprompt.fourierft.functional._synthesise_deltas`)
instead of one per layer (on accelerators the twelve ``qkv`` layers of a ViT-B cost one transform, not twelve), and
the stacking, the scatter of the coefficients and the complex conversion are paid once per batch too. With
``grad_mode`` ``"dense"`` on accelerators the backward mirrors it: autograd gathers the weight gradients of the
group's layers into one tensor, and one batched ``rfft2`` and one gather give every coefficient gradient
(:class:`~fftprompt.fourierft.functional._FourierFTDeltas`); CPUs form each layer's gradient at once instead.

The bank owns no parameters and no state-dict entries: the coefficients stay each layer's own parameters (keys
``<layer>.fourierft_spectrum.<block>``), stacked when the deltas are synthesised.

When a group is synthesised: at the first request of one of its layers, then again when a layer asks a second time
(a new forward began) or when the layer's coefficients changed since (their version counters or storage; tensors
changed through ``.data`` are not seen, as for every autograd cache). On accelerators the whole group is one batched
FFT, launched at the first request; on CPUs a batch beyond the caches runs slower than its parts (docs/benchmarks.md),
so the group is cut into cache-sized chunks (one ViT-S/B matrix each; many small ones), each synthesised when its first
layer asks. Each layer's deltas are released once it took them, so between forwards the bank holds nothing. Without
gradients, a layer keeps its merged weight (:class:`~fftprompt.fourierft.layer.FourierFTLinear`) and asks only when
that is stale: only such layers join the group then. Under ``torch.compile`` layers synthesise their own deltas
inside the traced graph and skip the bank.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fftprompt.fourierft.functional import _fft_batch, _fft_dtype, _FourierFTDeltas, _stack, _synthesise_deltas

if TYPE_CHECKING:
    from fftprompt.fourierft.layer import FourierFTLinear

__all__ = ["FourierFTBank", "version_key"]


@dataclass
class _Synthesis:
    """The deltas of one group for one forward, synthesised chunk by chunk as its layers ask."""

    chunks: list[list[Any]]  # the group's layers, in batches of one FFT call each
    chunk_of: dict[int, int]  # id(layer) -> its chunk
    versions: dict[int, Hashable]  # id(layer) -> its coefficients' version key when the forward began
    pending: set[int]  # layers that have not taken their deltas yet
    deltas: dict[int, Tensor]  # id(layer) -> (nb, d, d_in), for the chunks synthesised so far, until taken


class FourierFTBank:
    """Synthesises the deltas of FourierFT layers of equal shape together (see the module docstring).

    Args:
        layers: The FourierFT layers of one model; each is attached to this bank (``layer.bank``).
    """

    def __init__(self, layers: Sequence[FourierFTLinear]) -> None:
        self.layers = list(layers)
        self._shape_groups: dict[Hashable, list[FourierFTLinear]] = {}
        for layer in self.layers:
            self._shape_groups.setdefault(layer.shape_key(), []).append(layer)
            layer.bank = self
        self._synthesis: dict[Hashable, _Synthesis] = {}

    def __getstate__(self) -> dict[str, Any]:
        # deltas of a forward in progress are autograd values: never copied or pickled
        return {k: v for k, v in self.__dict__.items() if k != "_synthesis"} | {"_synthesis": {}}

    def deltas(self, layer: FourierFTLinear, dtype: torch.dtype, differentiable: bool) -> Tensor:
        """The deltas ``(nb, d, d_in)`` of ``layer``'s adapted blocks, in the FFT dtype, for this forward.

        Args:
            layer: A layer of this bank.
            dtype: The layer's compute dtype now (decides the other layers' gradient route).
            differentiable: Whether the deltas carry the dense coefficient gradient (``grad_mode`` ``"dense"`` with
                gradients enabled); the layers of a group share this.
        """
        coefficients = layer.coefficient_list()
        key = (layer.shape_key(), coefficients[0].device, coefficients[0].dtype, differentiable)
        synthesis = self._synthesis.get(key)
        lid = id(layer)
        if synthesis is None or lid not in synthesis.pending or synthesis.versions[lid] != version_key(coefficients):
            synthesis = self._begin(layer, key, dtype, differentiable)
            self._synthesis[key] = synthesis
        if lid not in synthesis.deltas:
            self._synthesise(synthesis.chunks[synthesis.chunk_of[lid]], synthesis, differentiable)
        synthesis.pending.discard(lid)
        delta = synthesis.deltas.pop(lid)
        if not synthesis.pending:
            del self._synthesis[key]
        return delta

    def _members(self, layer: FourierFTLinear, key: Hashable, dtype: torch.dtype, differentiable: bool) -> list[Any]:
        """The layers whose deltas are synthesised with ``layer``'s: same shape, device, dtype and gradient route,
        not merged, and (without gradients) without a valid merged weight of their own."""
        members = []
        for member in self._shape_groups[key[0]]:
            if member is not layer:
                if member.merged:
                    continue
                coefficients = member.coefficient_list()
                if (coefficients[0].device, coefficients[0].dtype) != key[1:3]:
                    continue
                if member.batched_dense(dtype) != differentiable:
                    continue
                if not differentiable and not torch.is_grad_enabled() and member.has_merged_weight(dtype):
                    continue
            members.append(member)
        return members

    def _begin(self, layer: FourierFTLinear, key: Hashable, dtype: torch.dtype, differentiable: bool) -> _Synthesis:
        """A new forward of ``layer``'s group: its members, in chunks of one batched FFT each (the whole group on
        accelerators; cache-sized on CPUs, see :func:`~fftprompt.fourierft.functional._fft_batch`)."""
        members = self._members(layer, key, dtype, differentiable)
        first = members[0]
        width = first.in_features // 2 + 1
        item_bytes = first.block_rows * width * 2 * torch.finfo(_fft_dtype(key[2])).bits // 8
        blocks = [len(member.block_ids) for member in members]
        budget = _fft_batch(sum(blocks), item_bytes, key[1])
        chunks: list[list[Any]] = [[]]
        used = 0
        for member, count in zip(members, blocks, strict=True):
            if chunks[-1] and used + count > budget:
                chunks.append([])
                used = 0
            chunks[-1].append(member)
            used += count
        return _Synthesis(
            chunks=chunks,
            chunk_of={id(m): index for index, chunk in enumerate(chunks) for m in chunk},
            versions={id(m): version_key(m.coefficient_list()) for m in members},
            pending={id(m) for m in members},
            deltas={},
        )

    def _synthesise(self, chunk: list[Any], synthesis: _Synthesis, differentiable: bool) -> None:
        """One batched synthesis of the deltas of ``chunk``'s layers."""
        first = chunk[0]
        lists = [member.coefficient_list() for member in chunk]
        parameters = [p for coefficients in lists for p in coefficients]
        settings = (first.block_rows, first.in_features, first.config.scaling)
        if differentiable:
            stacked = _stack(parameters)
            deltas = _FourierFTDeltas.apply(stacked, first.half_index, first.dense_index, *settings)
        else:
            with torch.no_grad():
                deltas = _synthesise_deltas(_stack(parameters), first.half_index, *settings)
        # one layer: no split (its backward would copy the gradient once more)
        pieces = (deltas,) if len(chunk) == 1 else deltas.split([len(coefficients) for coefficients in lists])
        synthesis.deltas.update({id(m): piece for m, piece in zip(chunk, pieces, strict=True)})


def version_key(tensors: Sequence[Tensor]) -> Hashable:
    """Changes whenever one of ``tensors`` is modified in place or replaced."""
    return tuple((t._version, t.data_ptr()) for t in tensors)
