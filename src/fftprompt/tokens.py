"""The token layout of a prompted ViT and the one function that pools it.

A :class:`fftprompt.model.PromptedViT` runs the frozen blocks on ``[prefix] [P prompts] [h * w patches]``: timm's
prefix tokens (class token, distillation token, registers: timm's ``num_prefix_tokens``) first, then the prompt
tokens, then the patch tokens in row-major grid order. :class:`TokenLayout` is the single place where these positions
are computed; pooling (:func:`pool`), the patch grid of segmentation heads, attention rollout and export read it.

Pooling modes (:data:`Pooling`):

- ``cls``: the class token; averaged with the distillation token for distilled DeiT (timm's ``forward_head``).
- ``mean``: the mean of the patch tokens (never the prompts), timm's ``global_pool="avg"``.
- ``prompt``: the mean of the prompt tokens' outputs (VPT's "prompt pool" readout).
- ``cls+prompt``: the class readout and the prompt mean, **concatenated** into ``(B, 2D)``. Concatenation (not a
  sum or average) keeps the two readouts apart, so a linear head weighs them independently: ``cls`` and ``prompt``
  are the special cases whose other half has zero weights. The head is built for the wider input
  (:func:`pooled_width`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = ["POOLING_MODES", "Pooling", "TokenLayout", "check_pooling", "pool", "pooled_width"]

Pooling = Literal["cls", "mean", "prompt", "cls+prompt"]
POOLING_MODES: tuple[str, ...] = get_args(Pooling)
# the D-wide readouts each mode concatenates, in order: the class readout or a TokenLayout slice to average
_READOUTS: dict[str, tuple[str, ...]] = {
    "cls": ("cls",),
    "mean": ("patches",),
    "prompt": ("prompts",),
    "cls+prompt": ("cls", "prompts"),
}


@dataclass(frozen=True)
class TokenLayout:
    """Positions of the prefix, prompt and patch tokens in a ``(B, N, D)`` token sequence.

    Args:
        num_prefix_tokens: Tokens timm puts before the patches (class, distillation, registers).
        num_prompt_tokens: ``P``, the prompt tokens between the prefix and the patches.
        grid: ``(h, w)`` of the patch tokens.
        class_tokens: Positions (inside the prefix) of the tokens ``cls`` pooling averages: ``(0,)`` for a class
            token, ``(0, 1)`` for DeiT's class and distillation tokens, ``()`` without a class token. The other
            prefix tokens are registers.
    """

    num_prefix_tokens: int
    num_prompt_tokens: int
    grid: tuple[int, int]
    class_tokens: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.num_prefix_tokens < 0 or self.num_prompt_tokens < 0 or min(self.grid) < 1:
            raise ValueError(
                f"token layout with {self.num_prefix_tokens} prefix, {self.num_prompt_tokens} prompt tokens and grid "
                f"{self.grid}; expected counts >= 0 and a grid of at least 1 x 1"
            )
        if any(not 0 <= index < self.num_prefix_tokens for index in self.class_tokens):
            raise ValueError(f"class_tokens={self.class_tokens} lie outside the {self.num_prefix_tokens} prefix tokens")

    @property
    def num_patches(self) -> int:
        """``h * w``."""
        return self.grid[0] * self.grid[1]

    @property
    def length(self) -> int:
        """``N = prefix + P + h * w``."""
        return self.num_prefix_tokens + self.num_prompt_tokens + self.num_patches

    @property
    def prefix(self) -> slice:
        """The prefix tokens (class, distillation, registers)."""
        return slice(0, self.num_prefix_tokens)

    @property
    def prompts(self) -> slice:
        """The prompt tokens (empty without prompts)."""
        return slice(self.num_prefix_tokens, self.num_prefix_tokens + self.num_prompt_tokens)

    @property
    def patches(self) -> slice:
        """The patch tokens, row-major over the grid."""
        return slice(self.num_prefix_tokens + self.num_prompt_tokens, self.length)

    def patch_grid(self, tokens: Tensor) -> Tensor:
        """``(B, N, D) -> (B, D, h, w)``: the patch tokens as a grid (prefix and prompts dropped)."""
        self._check_length(tokens)
        patches = tokens[:, self.patches]
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, *self.grid)

    def _check_length(self, tokens: Tensor) -> None:
        if tokens.shape[1] != self.length:
            raise ValueError(
                f"{tokens.shape[1]} tokens; the layout has {self.length} (prefix {self.num_prefix_tokens} + prompts "
                f"{self.num_prompt_tokens} + patches {self.grid[0]}x{self.grid[1]})"
            )


def check_pooling(layout: TokenLayout, pooling: str) -> None:
    """Raises a one-line ``ValueError`` unless ``pooling`` is a known mode that ``layout``'s tokens can give."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling={pooling!r}; expected one of {list(POOLING_MODES)}")
    readouts = _READOUTS[pooling]
    if "cls" in readouts and not layout.class_tokens:
        raise ValueError(f"pooling={pooling!r} needs a class token; the backbone has none: use 'mean' or 'prompt'")
    if "prompts" in readouts and layout.num_prompt_tokens == 0:
        raise ValueError(
            f"pooling={pooling!r} reads the prompt tokens' outputs but the model has no prompt tokens: "
            "add a prompt (e.g. prompt=vpt) or use 'cls' or 'mean'"
        )


def pooled_width(pooling: str, embed_dim: int) -> int:
    """Width of :func:`pool`'s output for tokens of width ``embed_dim``: ``D``, or ``2D`` for ``cls+prompt``."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling={pooling!r}; expected one of {list(POOLING_MODES)}")
    return len(_READOUTS[pooling]) * embed_dim


def pool(tokens: Tensor, layout: TokenLayout, pooling: str, norm: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Pools a token sequence laid out as ``layout``.

    For ``cls`` and ``mean`` without prompts this is timm's ``forward_head(pre_logits=True)`` (``norm`` being timm's
    ``fc_norm``); the distilled average is computed as timm does, ``(t_0 + t_1) / 2``.

    Args:
        tokens: ``(B, N, ...)`` tokens (or rows of a ``(B, N, S)`` matrix, as attention rollout pools them).
        layout: Where the prefix, prompt and patch tokens sit; ``N == layout.length``.
        pooling: One of :data:`POOLING_MODES`.
        norm: Applied to each ``D``-wide readout before concatenation (timm's ``fc_norm``); None: none.

    Returns:
        ``(B, k * D)`` with ``k`` readouts (2 for ``cls+prompt``, else 1), see :func:`pooled_width`.
    """
    check_pooling(layout, pooling)
    layout._check_length(tokens)
    parts = []
    for readout in _READOUTS[pooling]:
        if readout == "cls":
            first, *others = layout.class_tokens
            pooled = tokens[:, first]
            for index in others:
                pooled = pooled + tokens[:, index]
            pooled = pooled / len(layout.class_tokens) if others else pooled
        else:
            pooled = tokens[:, getattr(layout, readout)].mean(dim=1)
        parts.append(pooled if norm is None else norm(pooled))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
