"""The deltas of all FourierFT layers of one shape, synthesised together: one batched inverse FFT per forward.

:func:`~fftprompt.fourierft.model.inject_fourierft` gathers the layers it creates in one :class:`FourierFTBank`.
Layers (and ``q``/``k``/``v`` blocks) of equal shape share their entry locations, so the deltas of all of them come
from one ``irfft2`` of their stacked half spectra (:func:`~fftprompt.fourierft.functional._synthesise_deltas`)
instead of one per layer: the twelve ``qkv`` layers of a ViT-B cost one transform, not twelve, and the stacking, the
scatter of the coefficients and the complex conversion are paid once per shape too. With ``grad_mode`` ``"dense"``
the backward mirrors it: autograd gathers the weight gradients of the group's layers into one tensor, and one
batched ``rfft2`` and one gather give every coefficient gradient (:class:`~fftprompt.fourierft.functional.
_FourierFTDeltas`).

The bank owns no parameters and no state-dict entries: the coefficients stay each layer's own parameters (keys
``<layer>.fourierft_spectrum.<block>``), stacked when the deltas are synthesised.

When a group is synthesised: at the first request of one of its layers, then again when a layer asks a second time
(a new forward began) or when the layer's coefficients changed since (their version counters or storage; tensors
changed through ``.data`` are not seen, as for every autograd cache). A group's deltas are released once each of its
layers took its own, so between forwards the bank holds nothing. Without gradients, a layer keeps its merged weight
(:class:`~fftprompt.fourierft.layer.FourierFTLinear`) and asks only when that is stale: only such layers join the
group then. Under ``torch.compile`` layers synthesise their own deltas inside the traced graph and skip the bank.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fftprompt.fourierft.functional import _FourierFTDeltas, _synthesise_deltas

if TYPE_CHECKING:
    from fftprompt.fourierft.layer import FourierFTLinear

__all__ = ["FourierFTBank"]


@dataclass
class _Synthesis:
    """The deltas of one group for one forward."""

    deltas: dict[int, Tensor]  # id(layer) -> (nb, d, d_in)
    versions: dict[int, Hashable]  # id(layer) -> its coefficients' version key at synthesis
    pending: set[int]  # layers that have not taken their deltas yet


class FourierFTBank:
    """Synthesises the deltas of FourierFT layers of equal shape together (see the module docstring).

    Args:
        layers: The FourierFT layers of one model; each is attached to this bank (``layer._bank``).
    """

    def __init__(self, layers: Sequence[FourierFTLinear]) -> None:
        self.layers = list(layers)
        self._shape_groups: dict[Hashable, list[FourierFTLinear]] = {}
        for layer in self.layers:
            self._shape_groups.setdefault(layer._shape_key(), []).append(layer)
            layer._bank = self
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
        coefficients = layer._coefficient_list()
        key = (layer._shape_key(), coefficients[0].device, coefficients[0].dtype, differentiable)
        version = _version_key(coefficients)
        synthesis = self._synthesis.get(key)
        lid = id(layer)
        if synthesis is None or lid not in synthesis.pending or synthesis.versions[lid] != version:
            synthesis = self._synthesise(layer, key, dtype, differentiable)
            self._synthesis[key] = synthesis
        synthesis.pending.discard(lid)
        delta = synthesis.deltas[lid]
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
                coefficients = member._coefficient_list()
                if (coefficients[0].device, coefficients[0].dtype) != key[1:3]:
                    continue
                if member._dense_route(dtype) != differentiable:
                    continue
                if not differentiable and not torch.is_grad_enabled() and member._has_merged_weight(dtype):
                    continue
            members.append(member)
        return members

    def _synthesise(
        self, layer: FourierFTLinear, key: Hashable, dtype: torch.dtype, differentiable: bool
    ) -> _Synthesis:
        members = self._members(layer, key, dtype, differentiable)
        first = members[0]
        lists = [member._coefficient_list() for member in members]
        parameters = [p for coefficients in lists for p in coefficients]
        settings = (first.block_rows, first.in_features, first.config.scaling)
        if differentiable:
            stacked = torch.stack(parameters)
            deltas = _FourierFTDeltas.apply(stacked, first._half_index, first._dense_index, *settings)
        else:
            with torch.no_grad():
                deltas = _synthesise_deltas(torch.stack(parameters), first._half_index, *settings)
        pieces = deltas.split([len(coefficients) for coefficients in lists])
        return _Synthesis(
            deltas={id(m): piece for m, piece in zip(members, pieces, strict=True)},
            versions={id(m): _version_key(c) for m, c in zip(members, lists, strict=True)},
            pending={id(m) for m in members},
        )


def _version_key(tensors: Sequence[Tensor]) -> Hashable:
    """Changes whenever one of ``tensors`` is modified in place or replaced."""
    return tuple((t._version, t.data_ptr()) for t in tensors)
