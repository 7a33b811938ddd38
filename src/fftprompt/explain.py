"""Explanations of a tuned model: which patches, frequencies and symmetries it relies on.

``fftprompt-explain run_dir=RUN images=test:8`` (or :func:`explain`) reloads a finished run and writes PNG figures and
``explain.md`` (under ``RUN/explain`` unless told otherwise):

* **Attention rollout** (Abnar & Zuidema, 2020) of the frozen ViT with the tuned prompts: per block the head-averaged
  attention plus the identity (the residual path), row-normalised; the product over the blocks says how much each
  output token draws on each input token. The pooled token's row (the class token, or the mean of the patch rows for
  mean pooling) restricted to the patch tokens is drawn over the image; its share on prompt tokens is reported apart.
  Deep prompts are fresh inputs at every block, so each block's prompt slots get source columns of their own instead
  of inheriting what flowed into the earlier slots.
* **Prompt-generator cross-attention** (``FrequencyPrompt``): where each prompt token's query looks among the patches.
* **Integrated gradients** (Sundararajan et al., 2017) of the explained class score with respect to the frequency
  inputs of the prompt generator, the compact maps ``(B, C_f, h, w)`` and (optionally) the patch spectra, from a zero
  or per-image-mean baseline, summed per channel group (symmetry, orientation, radial, cross-patch, spectrum). The
  attributions add up to ``f(x) - f(baseline)`` up to the quadrature error (Gauss-Legendre), reported alongside.
* **Class profiles**: mean symmetry scores and orientation energy of the patches of each class over the test set.

Attention weights are read without forking timm: each block's ``attn.fused_attn`` is switched off for the call (timm
then computes the softmax explicitly) and a forward hook on ``attn.attn_drop`` records its input.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from matplotlib.figure import Figure
from torch import Tensor
from torchvision import tv_tensors

import fftprompt.data
from fftprompt.backbone import Backbone, create_backbone
from fftprompt.data.base import ImageDataModule
from fftprompt.data.io import list_images, read_image
from fftprompt.data.transforms import denormalize
from fftprompt.lit import _FINGERPRINT_KEY, _frozen_fingerprint
from fftprompt.model import ADAPTER_CONFIG, PromptedViT, load_model
from fftprompt.prompts import FrequencyPrompt
from fftprompt.spectral import SYMMETRY_NAMES, FrequencyFeatures, FrequencyMaps

__all__ = [
    "ATTRIBUTION_GROUPS",
    "AttentionRollout",
    "Attribution",
    "ClassProfiles",
    "LoadedRun",
    "attention_rollout",
    "capture_attention",
    "class_profiles",
    "explain",
    "explain_model",
    "integrated_gradients",
    "load_run",
    "prompt_attention",
    "rollout_matrix",
]

ATTRIBUTION_GROUPS = ("symmetry", "orientation", "radial", "cross_patch", "spectrum")
Baseline = Literal["zero", "mean"]
ShareKind = Literal["mass", "total"]
_SPLIT_SPEC = re.compile(r"^(train|val|test):(\d+)$")
_GROUP_COLOURS = {
    "symmetry": "tab:red",
    "orientation": "tab:blue",
    "radial": "tab:green",
    "cross_patch": "tab:purple",
    "spectrum": "tab:gray",
}


# --------------------------------------------------------------------------------------------- attention rollout


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

    The pooled token is the class token (with the distillation token, averaged, for distilled DeiT) for ``cls``
    pooling, else the mean of the patch-token rows. ``maps`` optionally replaces the model's own frequency maps.
    """
    backbone, prefix, num_prompts = model.backbone, model.backbone.num_prefix_tokens, model.prompt.num_tokens
    with _evaluating(model), torch.no_grad(), capture_attention(backbone) as attentions:
        model(images) if maps is None else model(images, maps=maps)
    h, w = images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size
    n = prefix + num_prompts + h * w
    if len(attentions) != backbone.num_blocks or attentions[0].shape[-1] != n:
        raise ValueError(
            f"captured {len(attentions)} attention maps over {attentions[0].shape[-1] if attentions else 0} tokens; "
            f"expected {backbone.num_blocks} over {n} (prefix {prefix} + prompts {num_prompts} + patches {h * w})"
        )
    deep = (prefix, num_prompts) if model.prompt.deep and num_prompts else None
    matrix = rollout_matrix(attentions, deep_prompts=deep)
    if model.task == "classification" and model.pooling == "cls":
        pooled = matrix[:, : 2 if backbone.is_distilled else 1].mean(dim=1)
    else:
        pooled = matrix[:, prefix + num_prompts : n].mean(dim=1)
    patches = pooled[:, prefix + num_prompts : n]
    return AttentionRollout(
        matrix=matrix,
        patches=(patches / patches.sum(dim=-1, keepdim=True)).reshape(-1, h, w),
        patch_share=patches.sum(dim=-1),
        prompt_share=pooled[:, prefix : prefix + num_prompts].sum(dim=-1) + pooled[:, n:].sum(dim=-1),
        prefix_share=pooled[:, :prefix].sum(dim=-1),
    )


def prompt_attention(model: PromptedViT, images: Tensor, maps: FrequencyMaps | None = None) -> Tensor:
    """Cross-attention of the frequency-prompt generator: ``(B, C, H, W) -> (B, P, h, w)`` (head-averaged, each
    prompt's map sums to 1)."""
    if not isinstance(model.prompt, FrequencyPrompt):
        raise ValueError(f"prompt attention needs a FrequencyPrompt; the model has {type(model.prompt).__name__}")
    with _evaluating(model), torch.no_grad():
        model(images) if maps is None else model(images, maps=maps)
    attention = model.prompt.last_attention
    assert attention is not None  # set by every FrequencyPrompt call
    h, w = images.shape[-2] // model.backbone.patch_size, images.shape[-1] // model.backbone.patch_size
    return attention.reshape(images.shape[0], model.prompt.num_tokens, h, w)


# ----------------------------------------------------------------------------------------- integrated gradients


@dataclass
class Attribution:
    """Integrated-gradients attribution of one class score per image to the prompt generator's frequency inputs.

    Attributes:
        compact: ``(B, C_f, h, w)`` attribution of every entry of ``FrequencyMaps.compact()``.
        spectrum: ``(B, 2, C, h, w, p, p)`` attribution of every log-magnitude (index 0) and phase (index 1) entry of
            the centred patch spectra, or None when the spectra were not attributed (entries outside the generator's
            ``spectrum_crop`` get 0).
        channel_names: The ``C_f`` compact channel names.
        channel_groups: Feature group -> indices of its channels in ``compact``.
        target: ``(B,)`` explained class.
        score: ``(B,)`` explained score ``f(x)`` (the class logit; its spatial mean for segmentation).
        baseline_score: ``(B,)`` the score at the baseline ``f(x')``.
        steps: Quadrature nodes used.
        baseline: ``"zero"`` or ``"mean"``.
    """

    compact: Tensor
    spectrum: Tensor | None
    channel_names: tuple[str, ...]
    channel_groups: dict[str, list[int]]
    target: Tensor
    score: Tensor
    baseline_score: Tensor
    steps: int
    baseline: Baseline

    def group_maps(self, absolute: bool = False) -> dict[str, Tensor]:
        """Group -> ``(B, h, w)`` attribution summed over the group's entries at each patch (``"spectrum"`` last when
        present); with ``absolute``, the sum of the entries' absolute values."""
        compact = self.compact.abs() if absolute else self.compact
        maps = {group: compact[:, index].sum(dim=1) for group, index in self.channel_groups.items()}
        if self.spectrum is not None:
            maps["spectrum"] = (self.spectrum.abs() if absolute else self.spectrum).sum(dim=(1, 2, 5, 6))
        return maps

    def group_totals(self) -> dict[str, Tensor]:
        """Group -> ``(B,)`` signed attribution of the group; they add up to :attr:`total`."""
        return {group: values.sum(dim=(-2, -1)) for group, values in self.group_maps().items()}

    def group_shares(self, kind: ShareKind = "mass") -> dict[str, Tensor]:
        """Group -> ``(B,)`` share of each group, summing to 1 over the groups.

        Args:
            kind: ``"mass"``: the group's sum of absolute entry attributions over that of all entries (how much of the
                attribution lands on the group, whatever its sign); ``"total"``: ``|group total|`` over the sum of
                the groups' ``|group total|`` (entries of opposite sign cancel).
        """
        if kind not in get_args(ShareKind):
            raise ValueError(f"kind={kind!r}; expected one of {list(get_args(ShareKind))}")
        if kind == "mass":
            values = {g: v.sum(dim=(-2, -1)) for g, v in self.group_maps(absolute=True).items()}
        else:
            values = {g: v.abs() for g, v in self.group_totals().items()}
        norm = torch.stack(list(values.values())).sum(dim=0).clamp_min(1e-12)
        return {group: value / norm for group, value in values.items()}

    @property
    def total(self) -> Tensor:
        """``(B,)`` sum of all attributions."""
        total = self.compact.sum(dim=(1, 2, 3))
        return total if self.spectrum is None else total + self.spectrum.flatten(1).sum(dim=1)

    @property
    def delta(self) -> Tensor:
        """``(B,)`` ``f(x) - f(baseline)``, which :attr:`total` approximates (completeness)."""
        return self.score - self.baseline_score

    def completeness_error(self) -> Tensor:
        """``(B,)`` ``|total - delta| / max(|delta|, 1e-6)``."""
        return (self.total - self.delta).abs() / self.delta.abs().clamp_min(1e-6)


def integrated_gradients(
    model: PromptedViT,
    images: Tensor,
    *,
    target: Tensor | None = None,
    steps: int = 64,
    baseline: Baseline = "zero",
    spectrum: bool = True,
    chunk_size: int = 64,
) -> Attribution:
    """Integrated gradients of a class score with respect to the frequency maps the prompt generator reads.

    The path runs from the baseline ``x'`` to the model's own inputs ``x`` (compact maps and, with ``spectrum``, the
    log-magnitude and phase spectra), everything else fixed: ``A = (x - x') * int_0^1 grad f(x' + a (x - x')) da``,
    the integral by ``steps``-point Gauss-Legendre quadrature.

    Args:
        model: A model with ``FrequencyFeatures`` and a ``FrequencyPrompt``.
        images: ``(B, C, H, W)`` normalised images.
        target: ``(B,)`` classes to explain; default: the predicted ones.
        steps: Quadrature nodes (more: smaller completeness error).
        baseline: ``"zero"`` (all inputs 0: no symmetry, no energy, a flat spectrum) or ``"mean"`` (each channel of
            each image at its mean over the patches: only the spatial structure is attributed).
        spectrum: Also attribute the spectrum inputs (when the prompt uses them).
        chunk_size: Images per forward pass (quadrature nodes are batched together).

    Returns:
        The attribution; ``total`` matches ``delta`` up to the quadrature error.
    """
    prompt = model.prompt
    if not isinstance(prompt, FrequencyPrompt) or model.features is None:
        raise ValueError(
            f"integrated gradients over frequency maps need a FrequencyPrompt with features; the model has "
            f"{type(prompt).__name__} and features={type(model.features).__name__}"
        )
    if baseline not in get_args(Baseline):
        raise ValueError(f"baseline={baseline!r}; expected one of {list(get_args(Baseline))}")
    if steps < 1:
        raise ValueError(f"steps={steps}; expected at least 1")
    maps = model.compute_maps(images)
    assert maps is not None
    inputs = {"compact": maps.compact()}
    if spectrum and prompt.use_spectrum:
        inputs.update(log_magnitude=maps.log_magnitude, phase=maps.phase)
    if not torch.equal(_maps_with(maps, model.features, inputs).compact(), inputs["compact"]):
        raise ValueError("FrequencyMaps.compact() does not follow FrequencyFeatures.channel_groups")
    bases = {name: _baseline(value, baseline) for name, value in inputs.items()}
    batch = images.shape[0]
    with _evaluating(model), torch.no_grad():
        logits = model(images, maps=_maps_with(maps, model.features, inputs))
        target = _predicted(logits) if target is None else target.to(logits.device)
        score = _scores(logits, target)
        baseline_score = _scores(model(images, maps=_maps_with(maps, model.features, bases)), target)

    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2
    integrals = {name: torch.zeros_like(value) for name, value in inputs.items()}
    per_chunk = max(1, chunk_size // batch)
    for start in range(0, steps, per_chunk):
        alpha = torch.as_tensor(alphas[start : start + per_chunk], dtype=torch.float32, device=images.device)
        count = alpha.shape[0]
        point = {}
        for name, value in inputs.items():
            shape = (count, 1, *[1] * (value.ndim - 1))
            mixed = bases[name] + alpha.view(shape) * (value - bases[name])  # (count, B, ...)
            point[name] = mixed.reshape(count * batch, *value.shape[1:]).requires_grad_(True)
        repeated = _repeat_maps(maps, count)
        with _evaluating(model), torch.enable_grad():
            output = model(
                images.repeat(count, *[1] * (images.ndim - 1)), maps=_maps_with(repeated, model.features, point)
            )
            gradients = torch.autograd.grad(_scores(output, target.repeat(count)).sum(), list(point.values()))
        weight = torch.as_tensor(weights[start : start + per_chunk], dtype=torch.float32, device=images.device)
        for (name, value), gradient in zip(inputs.items(), gradients, strict=True):
            shaped = gradient.reshape(count, *value.shape)
            integrals[name] += (shaped * weight.view(count, *[1] * value.ndim)).sum(dim=0)
    attributions = {name: (inputs[name] - bases[name]) * integrals[name] for name in inputs}
    spectrum_map = None
    if "log_magnitude" in attributions:
        spectrum_map = torch.stack([attributions["log_magnitude"], attributions["phase"]], dim=1)
    return Attribution(
        compact=attributions["compact"],
        spectrum=spectrum_map,
        channel_names=tuple(model.features.channel_names),
        channel_groups={g: list(i) for g, i in model.features.channel_groups.items()},
        target=target,
        score=score,
        baseline_score=baseline_score,
        steps=steps,
        baseline=baseline,
    )


def _baseline(value: Tensor, kind: Baseline) -> Tensor:
    if kind == "zero":
        return torch.zeros_like(value)
    return value.mean(dim=(2, 3), keepdim=True).expand_as(value)  # (B, C, h, w[, p, p]): mean over the patch grid


def _maps_with(maps: FrequencyMaps, features: FrequencyFeatures, inputs: dict[str, Tensor]) -> FrequencyMaps:
    """``maps`` with its compact groups taken from ``inputs["compact"]`` (and its spectra from ``inputs``)."""
    fields = {name: value for name, value in inputs.items() if name != "compact"}
    compact = inputs["compact"]
    for group, index in features.channel_groups.items():
        part = compact[:, index[0] : index[-1] + 1]
        if group == "orientation":  # dominant (cos 2t, sin 2t) first, then the bins, as FrequencyMaps.compact
            fields.update(dominant_orientation=part[:, :2], orientation=part[:, 2:])
        else:
            fields[group] = part
    return replace(maps, **fields)


def _repeat_maps(maps: FrequencyMaps, count: int) -> FrequencyMaps:
    fields = {}
    for name in ("log_magnitude", "phase", "symmetry", "orientation", "dominant_orientation", "radial", "cross_patch"):
        value = getattr(maps, name)
        fields[name] = value.repeat(count, *[1] * (value.ndim - 1))
    if maps.global_symmetry is not None:
        fields["global_symmetry"] = maps.global_symmetry.repeat(count, 1)
    return replace(maps, **fields)


def _scores(output: Tensor, target: Tensor) -> Tensor:
    """``(B, K)`` logits or ``(B, K, H, W)`` mask logits -> ``(B,)`` score of ``target`` (spatial mean for masks)."""
    if output.ndim == 4:
        output = output.mean(dim=(2, 3))
    return output.gather(1, target.view(-1, 1)).squeeze(1)


def _predicted(output: Tensor) -> Tensor:
    return (output.mean(dim=(2, 3)) if output.ndim == 4 else output).argmax(dim=1)


@contextmanager
def _evaluating(model: PromptedViT) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------------- class profiles


@dataclass
class ClassProfiles:
    """Mean frequency features of the patches of each class.

    Attributes:
        class_names: ``K`` names.
        symmetry: ``(K, 6)`` mean symmetry scores (:data:`~fftprompt.spectral.SYMMETRY_NAMES` order).
        orientation: ``(K, A)`` mean energy fraction per orientation bin (bin ``a`` centred on ``a * 180 / A`` deg).
        coherence: ``(K,)`` mean orientation coherence (length of the dominant-orientation vector).
        patches: ``(K,)`` number of patches averaged (for classification, every patch of an image has its label;
            for segmentation, a patch has the label most of its pixels have).
    """

    class_names: list[str]
    symmetry: Tensor
    orientation: Tensor
    coherence: Tensor
    patches: Tensor


def class_profiles(
    features: FrequencyFeatures,
    batches: Iterable[tuple[Tensor, Tensor]],
    class_names: Sequence[str],
    max_images: int | None = None,
) -> ClassProfiles:
    """Per-class means of the symmetry and orientation maps over ``(images (B, C, H, W), targets)`` batches.

    Targets are ``(B,)`` class indices or ``(B, H, W)`` masks. ``max_images`` stops after that many images.
    """
    num_classes = len(class_names)
    sums = {"symmetry": 0.0, "orientation": 0.0, "coherence": 0.0}
    counts = torch.zeros(num_classes, dtype=torch.float64)
    seen = 0
    for images, targets in batches:
        if max_images is not None and seen >= max_images:
            break
        if max_images is not None:
            images, targets = images[: max_images - seen], targets[: max_images - seen]
        seen += images.shape[0]
        with torch.no_grad():
            maps = features(images.float())
        h, w = maps.symmetry.shape[-2:]
        if targets.ndim == 1:
            labels = targets.view(-1, 1, 1).expand(-1, h, w)
        else:  # majority label of each patch's pixels
            labels = F.adaptive_avg_pool2d(F.one_hot(targets.long(), num_classes).permute(0, 3, 1, 2).float(), (h, w))
            labels = labels.argmax(dim=1)
        one_hot = F.one_hot(labels.long(), num_classes).double()  # (B, h, w, K)
        coherence = maps.dominant_orientation.norm(dim=1, keepdim=True)
        for name, values in (("symmetry", maps.symmetry), ("orientation", maps.orientation), ("coherence", coherence)):
            sums[name] = sums[name] + torch.einsum("bchw,bhwk->kc", values.double(), one_hot)
        counts += one_hot.sum(dim=(0, 1, 2))
    if seen == 0:
        raise ValueError("class_profiles got no images")
    means = {name: (value / counts.clamp_min(1).unsqueeze(1)).float() for name, value in sums.items()}
    return ClassProfiles(
        class_names=list(class_names),
        symmetry=means["symmetry"],
        orientation=means["orientation"],
        coherence=means["coherence"].squeeze(1),
        patches=counts.long(),
    )


# ------------------------------------------------------------------------------------------------------ figures


def _hwc(images: Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, H, W, 3)`` numpy for imshow."""
    return images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _plain_axes(ax: Any, title: str | None = None, fontsize: int = 8) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


def _overlay(ax: Any, image: np.ndarray, heat: np.ndarray, vmin: float, vmax: float, cmap: str = "inferno") -> Any:
    """Image with a patch-grid heatmap ``(h, w)`` on top (nearest: one cell per patch)."""
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))
    return ax.imshow(
        heat, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.6, interpolation="nearest", extent=(0, width, height, 0)
    )


def _colorbar(fig: Figure, shown: Any, axes: Any, label: str) -> None:
    bar = fig.colorbar(shown, ax=axes, fraction=0.046, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def plot_rollout(shown: np.ndarray, rollout: AttentionRollout, captions: Sequence[str]) -> Figure:
    """Images (top row) and their attention rollout over the patches (bottom row)."""
    count = shown.shape[0]
    fig = Figure(figsize=(2.6 * count + 0.6, 5.6), layout="constrained")
    axes = fig.subplots(2, count, squeeze=False)
    for i in range(count):
        _plain_axes(axes[0, i], captions[i])
        axes[0, i].imshow(shown[i])
        heat = rollout.patches[i].cpu().numpy()
        cells = _overlay(axes[1, i], shown[i], heat, float(heat.min()), float(heat.max()))
        share = (
            f"to patches {rollout.patch_share[i]:.0%}, prompts {rollout.prompt_share[i]:.0%}\n"
            f"peak patch {heat.max() * heat.size:.2f} x uniform"
        )
        _plain_axes(axes[1, i], share)
        _colorbar(fig, cells, axes[1, i], f"share of patch rollout (uniform {1 / heat.size:.4f})")
    fig.suptitle(
        "Attention rollout from the pooled token to the patches (frozen ViT with the tuned prompts; colours span "
        "each image's min to max)"
    )
    return fig


def plot_prompt_attention(shown: np.ndarray, attention: Tensor, captions: Sequence[str]) -> Figure:
    """One row per image: the image, then each prompt token's cross-attention over the patches."""
    count, prompts = attention.shape[:2]
    fig = Figure(figsize=(1.9 * (prompts + 1) + 0.8, 2.0 * count + 0.6), layout="constrained")
    axes = fig.subplots(count, prompts + 1, squeeze=False)
    for i in range(count):
        _plain_axes(axes[i, 0], captions[i])
        axes[i, 0].imshow(shown[i])
        vmin, vmax = float(attention[i].min()), float(attention[i].max())
        for p in range(prompts):
            heat = attention[i, p].cpu().numpy()
            cells = _overlay(axes[i, p + 1], shown[i], heat, vmin, vmax, cmap="viridis")
            _plain_axes(axes[i, p + 1], f"prompt {p}" if i == 0 else None)
        _colorbar(fig, cells, axes[i, 1:].tolist(), f"attention weight (uniform {1 / heat.size:.4f})")
    fig.suptitle(
        "Prompt generator: each prompt query's cross-attention over the patches (head average; colours span each "
        "image's min to max)"
    )
    return fig


def plot_attribution_maps(shown: np.ndarray, attribution: Attribution, captions: Sequence[str]) -> Figure:
    """One row per image: the image, then the integrated-gradients map of each channel group (each on its own
    symmetric scale; the titles give the group totals for comparison)."""
    group_maps = attribution.group_maps()
    groups = list(group_maps)
    count = shown.shape[0]
    fig = Figure(figsize=(2.5 * (len(groups) + 1), 2.1 * count + 0.7), layout="constrained")
    axes = fig.subplots(count, len(groups) + 1, squeeze=False)
    for i in range(count):
        _plain_axes(axes[i, 0], captions[i])
        axes[i, 0].imshow(shown[i])
        for j, group in enumerate(groups):
            values = group_maps[group][i].cpu().numpy()
            limit = float(np.abs(values).max()) or 1.0
            cells = axes[i, j + 1].imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            _plain_axes(axes[i, j + 1], f"{group}  sum {values.sum():+.3g}")
            bar = fig.colorbar(cells, ax=axes[i, j + 1], fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=5)
            bar.ax.yaxis.get_offset_text().set_fontsize(5)
    fig.suptitle(
        f"Integrated gradients per feature group and patch ({attribution.baseline} baseline, "
        f"{attribution.steps} steps; red raises the explained logit; each map on its own scale)"
    )
    return fig


def plot_attribution_shares(attribution: Attribution) -> Figure:
    """Group shares of the attribution mass, mean mass per channel and, when the spectra were attributed, the mean
    mass per centred frequency of the log-magnitude and phase inputs."""
    shares = {g: v.cpu().numpy() for g, v in attribution.group_shares("mass").items()}
    totals = {g: v.cpu().numpy() for g, v in attribution.group_shares("total").items()}
    spectrum = attribution.spectrum
    fig = Figure(figsize=(17.0 if spectrum is not None else 13.0, 4.4), layout="constrained")
    ratios = [1.2, 2.6] + ([0.9, 0.9] if spectrum is not None else [])
    axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    positions = np.arange(len(shares))
    colours = [_GROUP_COLOURS[g] for g in shares]
    axes[0].bar(positions - 0.2, [v.mean() for v in shares.values()], 0.4, color=colours, label="mass share")
    axes[0].bar(
        positions + 0.2,
        [v.mean() for v in totals.values()],
        0.4,
        color=colours,
        alpha=0.45,
        hatch="//",
        label="total share",
    )
    for k, values in enumerate(shares.values()):
        axes[0].scatter(np.full(values.shape, k - 0.2), values, color="black", s=8, zorder=3)
    axes[0].set_xticks(positions, list(shares), fontsize=8, rotation=20)
    axes[0].set(ylim=(0, 1), ylabel="share", title="Share per group (mean; dots: images)")
    axes[0].legend(fontsize=7)
    channel = attribution.compact.abs().sum(dim=(2, 3)).mean(dim=0).cpu().numpy()
    names = list(attribution.channel_names)
    group_of = {index: group for group, indices in attribution.channel_groups.items() for index in indices}
    colours = [_GROUP_COLOURS[group_of[index]] for index in range(len(names))]
    if spectrum is not None:
        channel = np.append(channel, spectrum.abs().flatten(1).sum(dim=1).mean().item())
        names.append("spectrum")
        colours.append(_GROUP_COLOURS["spectrum"])
    axes[1].bar(np.arange(len(names)), channel, color=colours)
    axes[1].set_xticks(np.arange(len(names)), names, fontsize=7, rotation=60, ha="right")
    axes[1].set(ylabel="mean over images of sum |attribution|", title="Attribution mass per input channel")
    if spectrum is not None:
        frequency = spectrum.abs().sum(dim=(2, 3, 4)).mean(dim=0).cpu().numpy()  # (2, p, p), centred
        p = frequency.shape[-1]
        for k, name in enumerate(("log-magnitude", "phase")):
            ax = axes[2 + k]
            # centred spectrum: column c is k_x = c - p // 2, row r is k_y = p // 2 - r (y up, as in spectral.py)
            extent = (-(p // 2) - 0.5, p - p // 2 - 0.5, p // 2 - p + 0.5, p // 2 + 0.5)
            shown = ax.imshow(frequency[k], cmap="magma", extent=extent)
            ax.set(title=f"{name} inputs per frequency", xlabel="k_x (cycles per patch)", ylabel="k_y")
            _colorbar(fig, shown, ax, "mean |attribution|")
    error = attribution.completeness_error()
    fig.suptitle(
        f"Integrated gradients over the frequency inputs ({attribution.baseline} baseline): completeness error "
        f"|sum - (f(x) - f(x'))| / |f(x) - f(x')| mean {error.mean():.2%}, max {error.max():.2%}"
    )
    return fig


def plot_class_profiles(profiles: ClassProfiles) -> Figure:
    """Heatmaps class x symmetry channel, class x orientation bin and class x coherence; values annotated, colours
    give the difference from the mean over the classes (what sets a class apart)."""
    bins = profiles.orientation.shape[1]
    rows = len(profiles.class_names)
    fig = Figure(figsize=(4.5 + 0.8 * (6 + bins + 1), 2.0 + 0.42 * rows), layout="constrained")
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [6, bins, 1.4]})
    labels = [f"{name} ({int(n)})" for name, n in zip(profiles.class_names, profiles.patches, strict=True)]
    panels = (
        (profiles.symmetry, list(SYMMETRY_NAMES), "symmetry score (per patch)"),
        (profiles.orientation, [f"{a * 180 / bins:.0f}°" for a in range(bins)], "orientation energy fraction"),
        (profiles.coherence.unsqueeze(1), ["coherence"], "coherence"),
    )
    for k, (values, columns, title) in enumerate(panels):
        data = values.cpu().numpy()
        deviation = data - data.mean(axis=0, keepdims=True)
        limit = max(float(np.abs(deviation).max()), 1e-6)
        shown = axes[k].imshow(deviation, cmap="PuOr_r", aspect="auto", vmin=-limit, vmax=limit)
        axes[k].set_xticks(np.arange(len(columns)), columns, fontsize=7, rotation=45, ha="right")
        axes[k].set_yticks(np.arange(rows), labels if k == 0 else [""] * rows, fontsize=7)
        for r in range(rows):
            for c in range(len(columns)):
                colour = "white" if abs(deviation[r, c]) > 0.6 * limit else "black"
                axes[k].text(c, r, f"{data[r, c]:.2f}", ha="center", va="center", fontsize=6, color=colour)
        axes[k].set_title(title, fontsize=9)
        _colorbar(fig, shown, axes[k], "class mean - mean over classes")
    fig.suptitle("Per-class mean frequency features of the test patches (numbers: class means; class (patches))")
    return fig


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


# -------------------------------------------------------------------------------------------------- the report


def explain_model(
    model: PromptedViT,
    images: Tensor,
    out_dir: str | Path,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    labels: Tensor | None = None,
    captions: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    ig_steps: int = 64,
    baseline: Baseline = "zero",
    profiles: ClassProfiles | None = None,
    title: str = "Explanations",
    notes: Sequence[str] = (),
    dpi: int = 80,
) -> dict[str, Path]:
    """Writes the explanation figures of ``images`` and ``explain.md`` into ``out_dir``.

    Args:
        model: The tuned model (any prompt; the generator attention and the attribution need a ``FrequencyPrompt``).
        images: ``(B, C, H, W)`` normalised images.
        out_dir: Output folder (created).
        mean: Normalisation mean (to show the images).
        std: Normalisation std.
        labels: ``(B,)`` true classes, shown when given.
        captions: One short caption per image (e.g. its file name).
        class_names: Names of the model's classes.
        ig_steps: Integrated-gradients quadrature nodes.
        baseline: Integrated-gradients baseline, ``"zero"`` or ``"mean"``.
        profiles: Per-class feature profiles to draw, or None.
        title: Heading of ``explain.md``.
        notes: Extra lines for ``explain.md`` (e.g. where the images came from).
        dpi: Resolution of the PNGs.

    Returns:
        ``{"rollout", "prompt_attention", "attribution_maps", "attribution_groups", "class_profiles", "markdown"}``
        -> written file (only the figures that apply).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = images.to(next(model.parameters()).device)
    with _evaluating(model), torch.no_grad():
        logits = model(images).float()
    probabilities = torch.softmax(logits.mean(dim=(2, 3)) if logits.ndim == 4 else logits, dim=1)
    confidence, predicted = probabilities.max(dim=1)
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(logits.shape[1])]
    if len(names) != logits.shape[1]:
        raise ValueError(f"{len(names)} class names for a model with {logits.shape[1]} classes")
    base = list(captions) if captions is not None else [f"image {i}" for i in range(images.shape[0])]
    label_of = [names[int(labels[i])] if labels is not None and labels.ndim == 1 else None for i in range(len(base))]
    captions = [
        f"{base[i]}\n" + (f"label {label_of[i]}\n" if label_of[i] else "") + f"pred {names[predicted[i]]}"
        for i in range(len(base))
    ]
    shown = _hwc(denormalize(images.detach().cpu(), mean, std))
    written: dict[str, Path] = {}
    rollout = attention_rollout(model, images)
    written["rollout"] = _save(plot_rollout(shown, rollout, captions), out_dir / "rollout.png", dpi)

    lines = [f"# {title}", "", *notes, ""] if notes else [f"# {title}", ""]
    lines += [
        "| # | image | label | predicted (probability) | rollout: patches / prompts / prefix |",
        "|---|---|---|---|---|",
    ]
    for i in range(len(base)):
        lines.append(
            f"| {i} | {base[i]} | {label_of[i] or '-'} | {names[predicted[i]]} ({confidence[i]:.2f}) | "
            f"{rollout.patch_share[i]:.2f} / {rollout.prompt_share[i]:.2f} / {rollout.prefix_share[i]:.2f} |"
        )
    lines += [
        "",
        "## Attention rollout",
        "",
        "Abnar & Zuidema (2020): per block the head-averaged attention plus the identity, row-normalised, multiplied "
        "over the blocks. Shown: the pooled token's rollout over the patch tokens (renormalised to sum to 1); the "
        "table gives how the pooled token's rollout splits between patches, prompt tokens and prefix tokens.",
        "",
        f"![attention rollout]({written['rollout'].name})",
        "",
    ]
    if isinstance(model.prompt, FrequencyPrompt):
        attention = prompt_attention(model, images)
        figure = plot_prompt_attention(shown, attention, captions)
        written["prompt_attention"] = _save(figure, out_dir / "prompt_attention.png", dpi)
        attribution = integrated_gradients(model, images, target=predicted, steps=ig_steps, baseline=baseline)
        written["attribution_maps"] = _save(
            plot_attribution_maps(shown, attribution, captions), out_dir / "attribution_maps.png", dpi
        )
        written["attribution_groups"] = _save(
            plot_attribution_shares(attribution), out_dir / "attribution_groups.png", dpi
        )
        lines += _attribution_section(attention, attribution, written, crop=model.prompt.crop)
    else:
        lines += [
            f"The run's prompt ({type(model.prompt).__name__}) does not read frequency maps: there is no generator "
            "attention or frequency attribution to show.",
            "",
        ]
    if profiles is not None:
        written["class_profiles"] = _save(plot_class_profiles(profiles), out_dir / "class_profiles.png", dpi)
        lines += _profiles_section(profiles, written["class_profiles"])
    markdown = out_dir / "explain.md"
    markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written["markdown"] = markdown
    return written


def _attribution_section(attention: Tensor, attribution: Attribution, written: dict[str, Path], crop: int) -> list[str]:
    shares, total_shares = attribution.group_shares("mass"), attribution.group_shares("total")
    totals = attribution.group_totals()
    error = attribution.completeness_error()
    entropy = -(attention.flatten(2) * attention.flatten(2).clamp_min(1e-12).log()).sum(-1)
    uniform = float(np.log(attention.shape[-2] * attention.shape[-1]))
    lines = [
        "## Prompt generator cross-attention",
        "",
        "Where each prompt token's query looks among the patch descriptors (head average; each map sums to 1). Mean "
        f"attention entropy {entropy.mean():.2f} nats (uniform: {uniform:.2f}); lower means more selective queries.",
        "",
        f"![prompt attention]({written['prompt_attention'].name})",
        "",
        "## Attribution to the frequency maps (integrated gradients)",
        "",
        "Integrated gradients of the predicted class's logit with respect to the generator's frequency inputs, from "
        f"a {attribution.baseline} baseline, {attribution.steps} Gauss-Legendre nodes. Mass share: the group's sum "
        "of |attribution| over that of all inputs (mean over images); total share: |group total| over the sum of "
        "|group totals|. Completeness (sum of attributions vs. f(x) - f(baseline)): mean relative error "
        f"{error.mean():.2%}, max {error.max():.2%}.",
        "",
        "| group | inputs per patch | mass share | total share | mean signed total |",
        "|---|---|---|---|---|",
    ]
    inputs = {g: len(i) for g, i in attribution.channel_groups.items()}
    if attribution.spectrum is not None:
        inputs["spectrum"] = int(np.prod(attribution.spectrum.shape[1:3])) * crop**2  # log-magnitude and phase
    lines += [
        f"| {g} | {inputs[g]} | {shares[g].mean():.3f} | {total_shares[g].mean():.3f} | {totals[g].mean():+.4f} |"
        for g in shares
    ]
    lines += [
        f"| all | | 1 | 1 | {attribution.total.mean():+.4f} (f(x) - f(x') = {attribution.delta.mean():+.4f}) |",
        "",
        "The mass share grows with the number of inputs of a group when their attributions have mixed signs; the "
        "total share lets them cancel.",
        "",
        f"![attribution maps]({written['attribution_maps'].name})",
        "",
        f"![attribution shares]({written['attribution_groups'].name})",
        "",
    ]
    return lines


def _profiles_section(profiles: ClassProfiles, figure: Path) -> list[str]:
    bins = profiles.orientation.shape[1]
    lines = [
        "## Class profiles",
        "",
        "Mean symmetry scores and orientation-energy fractions of the test patches of each class (frequency features "
        "only, no model).",
        "",
        "| class | patches | strongest symmetry | dominant orientation | coherence |",
        "|---|---|---|---|---|",
    ]
    for k, name in enumerate(profiles.class_names):
        best = int(profiles.symmetry[k].argmax())
        angle = int(profiles.orientation[k].argmax()) * 180 / bins
        lines.append(
            f"| {name} | {int(profiles.patches[k])} | {SYMMETRY_NAMES[best]} ({profiles.symmetry[k, best]:.2f}) | "
            f"{angle:.0f}° ({profiles.orientation[k].max():.2f}) | {profiles.coherence[k]:.2f} |"
        )
    return [*lines, "", f"![class profiles]({figure.name})", ""]


# ------------------------------------------------------------------------------------------ finished runs (CLI)

RUN_CONFIG = "config.yaml"
METRICS_FILE = "metrics.json"


@dataclass
class LoadedRun:
    """A finished training run, reloaded.

    Attributes:
        run_dir: The run directory.
        model: The model with the run's trained tensors, in ``eval()``.
        config: The run's resolved ``config.yaml`` as plain Python values.
        datamodule: The run's data module (with the backbone's normalisation, in-process loading), not set up.
    """

    run_dir: Path
    model: PromptedViT
    config: dict[str, Any]
    datamodule: ImageDataModule


def load_run(run_dir: str | Path, *, data_root: str | Path | None = None, device: str = "cpu") -> LoadedRun:
    """Rebuilds a finished run's model (and data module) from ``adapter.json``, ``adapter.safetensors`` and
    ``config.yaml``.

    A randomly initialised backbone is drawn again from the run's seed, as training drew it; when the run has a
    Lightning checkpoint, its fingerprint of the frozen weights must match the rebuilt model's.

    Args:
        run_dir: Directory written by ``fftprompt-train``.
        data_root: Data root to use instead of the recorded one (for ``images=test:N`` and class profiles).
        device: Device to put the model on.
    """
    run_dir = Path(run_dir)
    for required in (ADAPTER_CONFIG, RUN_CONFIG):
        if not (run_dir / required).is_file():
            raise ValueError(f"{run_dir / required} not found; expected a finished fftprompt-train run directory")
    config = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8"))
    description = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    backbone_config = dict(description.get("backbone", {}).get("config") or {})
    if backbone_config.get("pretrained") or backbone_config.get("checkpoint_path"):
        model = load_model(run_dir)
    else:
        if "name" not in backbone_config or "seed" not in config:
            raise ValueError(f"{run_dir}: cannot redraw the random backbone (no recorded timm arguments or seed)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config["seed"]))  # train() seeds, then builds the backbone first
            backbone = create_backbone(**backbone_config)
        model = load_model(run_dir, backbone=backbone)
    _check_frozen_weights(model, run_dir)
    model.to(device).eval()
    return LoadedRun(run_dir, model, config, _datamodule(config, run_dir, model.backbone, data_root))


def _check_frozen_weights(model: PromptedViT, run_dir: Path) -> None:
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if not checkpoints:
        return
    try:
        stored = torch.load(checkpoints[-1], map_location="cpu", weights_only=True).get(_FINGERPRINT_KEY)
    except Exception as error:  # UnpicklingError, RuntimeError (bad zip), EOFError, ... depending on the damage
        raise ValueError(f"{checkpoints[-1]} cannot be read as a Lightning checkpoint: {error}") from error
    current = _frozen_fingerprint(model)
    if stored is not None and not np.isclose(stored, current, rtol=1e-9, atol=1e-6):
        raise ValueError(
            f"{run_dir}: the rebuilt backbone's frozen weights (fingerprint {current!r}) differ from the trained ones "
            f"({stored!r} in {checkpoints[-1].name})"
        )


def _datamodule(config: dict[str, Any], run_dir: Path, backbone: Backbone, data_root: str | Path | None) -> Any:
    data = dict(config.get("data") or {})
    target = str(data.pop("_target_", ""))
    cls = getattr(fftprompt.data, target.rsplit(".", 1)[-1], None)
    if not target.startswith("fftprompt.data.") or not (isinstance(cls, type) and issubclass(cls, ImageDataModule)):
        raise ValueError(f"{run_dir / RUN_CONFIG}: data._target_={target!r} is not a data module of fftprompt.data")
    if "root" in data:
        recorded = None
        if (run_dir / METRICS_FILE).is_file():
            recorded = (
                json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8")).get("config", {}).get("data_root")
            )
        data["root"] = str(data_root or recorded or data["root"])  # training resolved the root to an absolute path
    data.update(mean=list(backbone.mean), std=list(backbone.std), num_workers=0)
    return cls(**data)


def _image_paths(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    entries = [spec] if isinstance(spec, (str, Path)) else list(spec)
    paths: list[Path] = []
    for entry in entries:
        text = str(entry)
        if any(c in text for c in "*?["):
            found = [p for p in map(Path, sorted(glob.glob(text, recursive=True))) if p.is_file()]
        elif Path(text).is_dir():
            found = list_images(Path(text))
        elif Path(text).is_file():
            found = [Path(text)]
        else:
            found = []
        if not found:
            raise ValueError(
                f"images entry {text!r} names no image file, folder of images or matching glob; expected paths, a "
                "glob, a folder or '<split>:<count>' (e.g. test:8)"
            )
        paths += found
    return paths


def _load_images(spec: Any, run: LoadedRun) -> tuple[Tensor, Tensor | None, list[str], str]:
    """``(images (B, C, H, W), targets or None, captions, description)`` for an ``images=`` value."""
    match = _SPLIT_SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if match:
        split, count = match.group(1), int(match.group(2))
        dataset = run.datamodule.dataset(split)  # type: ignore[arg-type]
        if count < 1:
            raise ValueError(f"images={spec!r}: expected at least 1 image")
        indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round()})
        items = [dataset[i] for i in indices]
        images, targets = torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
        description = f"{len(indices)} {split} images of {type(run.datamodule).__name__}, evenly spaced in the split."
        return images, targets, [f"{split} #{i}" for i in indices], description
    paths = _image_paths(spec)
    transform = run.datamodule.transform("test")
    images = torch.stack([transform(tv_tensors.Image(read_image(p))).as_subclass(Tensor) for p in paths])
    return images, None, [p.name for p in paths], f"{len(paths)} image files, preprocessed as the run's test split."


def explain(
    run_dir: str | Path,
    images: str | Path | Sequence[str | Path] = "test:8",
    out_dir: str | Path | None = None,
    *,
    ig_steps: int = 64,
    baseline: Baseline = "zero",
    profiles: bool = True,
    profile_images: int | None = None,
    data_root: str | Path | None = None,
    device: str = "cpu",
    dpi: int = 80,
) -> dict[str, Path]:
    """Explains a finished run on a few images: figures and ``explain.md`` (see the module docstring).

    Args:
        run_dir: Directory written by ``fftprompt-train``.
        images: Image paths, a glob, a folder, a list of these, or ``"<split>:<count>"`` (e.g. ``"test:8"``:
            that many images evenly spaced over the run's test split, with their labels).
        out_dir: Output folder; default ``run_dir/explain``.
        ig_steps: Integrated-gradients quadrature nodes.
        baseline: Integrated-gradients baseline, ``"zero"`` or ``"mean"``.
        profiles: Draw per-class symmetry/orientation profiles over the run's test split (needs its data).
        profile_images: At most this many test images for the profiles (None: all).
        data_root: Data root instead of the one recorded in the run.
        device: Device to run on.
        dpi: Resolution of the PNGs.

    Returns:
        Name -> written file, as :func:`explain_model`.
    """
    run = load_run(run_dir, data_root=data_root, device=device)
    batch, targets, captions, description = _load_images(images, run)
    notes = [f"Run: `{run.run_dir}`. Images: {description}"]
    try:  # file datasets scan their root for the class names
        class_names: list[str] | None = run.datamodule.class_names
    except ValueError as error:
        if profiles:
            raise ValueError(
                f"{error}\n(class profiles need the run's data: pass data_root= or profiles=false)"
            ) from error
        class_names = None
        notes.append(f"Class names unavailable (the run's data could not be read: {str(error).splitlines()[0]}).")
    profile = None
    if profiles:
        model = run.model
        features = model.features or FrequencyFeatures(patch_size=model.backbone.patch_size).to(device)
        loader = ((x.to(device), y) for x, y in run.datamodule.test_dataloader())
        profile = class_profiles(features, loader, run.datamodule.class_names, max_images=profile_images)
    return explain_model(
        run.model,
        batch,
        Path(out_dir) if out_dir is not None else run.run_dir / "explain",
        mean=run.datamodule.mean,
        std=run.datamodule.std,
        labels=targets,
        captions=captions,
        class_names=class_names,
        ig_steps=ig_steps,
        baseline=baseline,
        profiles=profile,
        title=f"Explanations of {run.run_dir.name}",
        notes=notes,
        dpi=dpi,
    )
