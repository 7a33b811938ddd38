"""Attention rollout (Abnar & Zuidema, 2020) of the frozen ViT with the tuned prompts, and the prompt generator's
cross-attention.

Per block the head-averaged attention plus the identity (the residual path), row-normalised; the product over the
blocks says how much each output token draws on each input token. The pooled token's row (the model's pooling applied
to the rows: the class token, the mean of the patch rows or of the prompt rows) restricted to the patch tokens is what
gets drawn over the image; its share on prompt tokens is reported apart. Deep prompts are fresh inputs at every
block, so each block's prompt slots get source columns of their own instead of inheriting what flowed into the earlier
slots.

Attention weights are read without forking timm: each block's ``attn.fused_attn`` is switched off for the call (timm
then computes the softmax explicitly) and a forward hook on ``attn.attn_drop`` records its input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from fftprompt.backbone import Backbone
from fftprompt.explain._common import evaluating
from fftprompt.model import PromptedViT
from fftprompt.prompts import FrequencyPrompt
from fftprompt.spectral import FrequencyMaps
from fftprompt.tokens import pool, pooled_width

__all__ = ["AttentionRollout", "attention_rollout", "capture_attention", "prompt_attention", "rollout_matrix"]


@contextmanager
def capture_attention(backbone: Backbone) -> Iterator[list[Tensor]]:
    """Records the attention weights of every block during the calls made inside the ``with`` block.

    Sets ``fused_attn = False`` on each block's timm ``Attention`` (so that the softmax is computed explicitly) and
    hooks ``attn.attn_drop``; both are undone on exit.

    Args:
        backbone: The backbone whose blocks to watch.

    Yields:
        A list filled with one ``(B, heads, N, N)`` tensor per block and call, in execution order (detached).
    """
    captured: list[Tensor] = []
    handles, switched = [], []
    try:
        for index, block in enumerate(backbone.blocks):
            attn = getattr(block, "attn", None)
            if attn is None or not hasattr(attn, "fused_attn") or not hasattr(attn, "attn_drop"):
                raise ValueError(
                    f"block {index} ({type(block).__name__}) has no timm Attention with fused_attn and attn_drop; "
                    "attention rollout needs timm's standard ViT attention"
                )
            switched.append((attn, attn.fused_attn))
            attn.fused_attn = False
            handles.append(
                attn.attn_drop.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
            )
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        for attn, fused in switched:
            attn.fused_attn = fused


def rollout_matrix(attentions: Sequence[Tensor], deep_prompts: tuple[int, int] | None = None) -> Tensor:
    """Attention rollout: the product over blocks of ``rownorm(mean_heads(A_l) + I)``.

    Args:
        attentions: Per block ``(B, heads, N, N)`` attention weights (rows sum to 1), first block first.
        deep_prompts: ``(start, P)`` of the prompt slots when deep prompts replace them at the input of every block
            after the first; None for shallow or no prompts.

    Returns:
        ``(B, N, S)``; row ``i`` says how much output token ``i`` draws on each source: the ``N`` input tokens of the
        first block, then (deep prompts only) the ``P`` fresh prompts of blocks ``1 .. L-1``, so
        ``S = N + (L - 1) P``. Rows sum to 1.
    """
    batch, _, n, _ = attentions[0].shape
    extra = (len(attentions) - 1) * deep_prompts[1] if deep_prompts else 0
    identity = torch.eye(n, device=attentions[0].device)
    rollout = torch.eye(n, n + extra, device=attentions[0].device).expand(batch, -1, -1).clone()
    for layer, attention in enumerate(attentions):
        if deep_prompts and layer > 0:
            start, count = deep_prompts
            column = n + (layer - 1) * count
            rollout[:, start : start + count] = 0.0
            rollout[:, start : start + count, column : column + count] = torch.eye(count, device=rollout.device)
        mixed = attention.float().mean(dim=1) + identity
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return rollout


@dataclass
class AttentionRollout:
    """Attention rollout of a batch through a :class:`PromptedViT`.

    Attributes:
        matrix: ``(B, N, S)`` rollout (see :func:`rollout_matrix`), tokens in the model's order
            ``[prefix] [prompts] [patches]``.
        patches: ``(B, h, w)`` the pooled token's rollout over the patch tokens, renormalised to sum to 1.
        patch_share: ``(B,)`` fraction of the pooled token's rollout on the patch tokens.
        prompt_share: ``(B,)`` fraction on prompt tokens (every block's, for deep prompts).
        prefix_share: ``(B,)`` fraction on the class and other prefix tokens (the three shares sum to 1).
    """

    matrix: Tensor
    patches: Tensor
    patch_share: Tensor
    prompt_share: Tensor
    prefix_share: Tensor


def attention_rollout(model: PromptedViT, images: Tensor, maps: FrequencyMaps | None = None) -> AttentionRollout:
    """Rolls out the attention of ``model`` on ``images`` ``(B, C, H, W)`` from its pooled token to the patches.

    The pooled token's row is pooled from the rollout rows as :func:`fftprompt.tokens.pool` pools the tokens (class
    token, averaged with the distillation token for distilled DeiT; the mean of the patch rows; the mean of the prompt
    rows), with the two readouts of ``cls+prompt`` averaged; segmentation reads the patch rows' mean.
    ``maps`` optionally replaces the model's own frequency maps.
    """
    backbone = model.backbone
    with evaluating(model), torch.no_grad(), capture_attention(backbone) as attentions:
        model(images) if maps is None else model(images, maps=maps)
    h, w = images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size
    layout = model.token_layout((h, w))
    n, num_prompts = layout.length, layout.num_prompt_tokens
    if len(attentions) != backbone.num_blocks or attentions[0].shape[-1] != n:
        raise ValueError(
            f"captured {len(attentions)} attention maps over {attentions[0].shape[-1] if attentions else 0} tokens; "
            f"expected {backbone.num_blocks} over {n} (prefix {layout.num_prefix_tokens} + prompts {num_prompts} + "
            f"patches {h * w})"
        )
    deep = (layout.prompts.start, num_prompts) if model.prompt.deep and num_prompts else None
    matrix = rollout_matrix(attentions, deep_prompts=deep)
    pooling = model.pooling if model.task == "classification" else "mean"
    # pool() concatenates the readouts (cls+prompt: two): the pooled token's rollout is their mean
    readouts = pooled_width(pooling, 1)
    pooled = pool(matrix, layout, pooling).unflatten(-1, (readouts, matrix.shape[-1])).mean(dim=1)
    patches = pooled[:, layout.patches]
    return AttentionRollout(
        matrix=matrix,
        patches=(patches / patches.sum(dim=-1, keepdim=True)).reshape(-1, h, w),
        patch_share=patches.sum(dim=-1),
        prompt_share=pooled[:, layout.prompts].sum(dim=-1) + pooled[:, n:].sum(dim=-1),
        prefix_share=pooled[:, layout.prefix].sum(dim=-1),
    )


def prompt_attention(model: PromptedViT, images: Tensor, maps: FrequencyMaps | None = None) -> Tensor:
    """Cross-attention of the frequency-prompt generator: ``(B, C, H, W) -> (B, P, h, w)`` (head-averaged, each
    prompt's map sums to 1)."""
    if not isinstance(model.prompt, FrequencyPrompt):
        raise ValueError(f"prompt attention needs a FrequencyPrompt; the model has {type(model.prompt).__name__}")
    with evaluating(model), torch.no_grad():
        model(images) if maps is None else model(images, maps=maps)
    attention = model.prompt.last_attention
    assert attention is not None  # set by every FrequencyPrompt call
    h, w = images.shape[-2] // model.backbone.patch_size, images.shape[-1] // model.backbone.patch_size
    return attention.reshape(images.shape[0], model.prompt.num_tokens, h, w)
