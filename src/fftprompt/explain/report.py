"""``explain.md`` and its figures for a model in memory: :func:`explain_model`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fftprompt.data.transforms import denormalize
from fftprompt.explain._common import evaluating
from fftprompt.explain.attribution import Attribution, Baseline, integrated_gradients
from fftprompt.explain.figures import (
    plot_attribution_maps,
    plot_attribution_shares,
    plot_class_profiles,
    plot_prompt_attention,
    plot_rollout,
    save_figure,
    to_hwc,
)
from fftprompt.explain.profiles import ClassProfiles
from fftprompt.explain.rollout import attention_rollout, prompt_attention
from fftprompt.model import PromptedViT
from fftprompt.prompts import FrequencyPrompt
from fftprompt.runfiles import EXPLAIN_REPORT
from fftprompt.spectral import SYMMETRY_NAMES

__all__ = ["explain_model"]


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
    with evaluating(model), torch.no_grad():
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
    shown = to_hwc(denormalize(images.detach().cpu(), mean, std))
    written: dict[str, Path] = {}
    rollout = attention_rollout(model, images)
    written["rollout"] = save_figure(plot_rollout(shown, rollout, captions), out_dir / "rollout.png", dpi)

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
        written["prompt_attention"] = save_figure(figure, out_dir / "prompt_attention.png", dpi)
        attribution = integrated_gradients(model, images, target=predicted, steps=ig_steps, baseline=baseline)
        written["attribution_maps"] = save_figure(
            plot_attribution_maps(shown, attribution, captions), out_dir / "attribution_maps.png", dpi
        )
        written["attribution_groups"] = save_figure(
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
        written["class_profiles"] = save_figure(plot_class_profiles(profiles), out_dir / "class_profiles.png", dpi)
        lines += _profiles_section(profiles, written["class_profiles"])
    markdown = out_dir / EXPLAIN_REPORT
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
