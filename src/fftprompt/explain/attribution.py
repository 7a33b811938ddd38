"""Integrated gradients (Sundararajan et al., 2017) of a class score with respect to the frequency inputs of the
prompt generator.

The inputs are the compact maps ``(B, C_f, h, w)`` and (optionally) the patch spectra; the path starts at a zero or
per-image-mean baseline. Attributions are summed per channel group (symmetry, orientation, radial, cross-patch,
spectrum) and add up to ``f(x) - f(baseline)`` up to the error of the Gauss-Legendre quadrature, which
:meth:`Attribution.completeness_error` reports.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fftprompt.explain._common import evaluating
from fftprompt.model import PromptedViT
from fftprompt.prompts import FrequencyPrompt
from fftprompt.spectral import FrequencyFeatures, FrequencyMaps
from fftprompt.utils import check_choice

__all__ = ["ATTRIBUTION_GROUPS", "Attribution", "Baseline", "ShareKind", "integrated_gradients"]

ATTRIBUTION_GROUPS = ("symmetry", "orientation", "radial", "cross_patch", "spectrum")
Baseline = Literal["zero", "mean"]
ShareKind = Literal["mass", "total"]


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
        check_choice("kind", kind, ShareKind)
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
    check_choice("baseline", baseline, Baseline)
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
    with evaluating(model), torch.no_grad():
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
        with evaluating(model), torch.enable_grad():
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
    for name in ("global_symmetry", "scale_statistics"):  # (B, F) or None
        value = getattr(maps, name)
        if value is not None:
            fields[name] = value.repeat(count, 1)
    return replace(maps, **fields)


def _scores(output: Tensor, target: Tensor) -> Tensor:
    """``(B, K)`` logits or ``(B, K, H, W)`` mask logits -> ``(B,)`` score of ``target`` (spatial mean for masks)."""
    if output.ndim == 4:
        output = output.mean(dim=(2, 3))
    return output.gather(1, target.view(-1, 1)).squeeze(1)


def _predicted(output: Tensor) -> Tensor:
    return (output.mean(dim=(2, 3)) if output.ndim == 4 else output).argmax(dim=1)
