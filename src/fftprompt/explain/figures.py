"""Figures of the explanations, drawn on ``matplotlib.figure.Figure`` objects (no pyplot, no global backend state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from fftprompt.explain.attribution import Attribution
from fftprompt.explain.profiles import ClassProfiles
from fftprompt.explain.rollout import AttentionRollout
from fftprompt.spectral import SYMMETRY_NAMES

__all__ = [
    "plot_attribution_maps",
    "plot_attribution_shares",
    "plot_class_profiles",
    "plot_prompt_attention",
    "plot_rollout",
    "save_figure",
    "to_hwc",
]

_GROUP_COLOURS = {
    "symmetry": "tab:red",
    "orientation": "tab:blue",
    "radial": "tab:green",
    "cross_patch": "tab:purple",
    "spectrum": "tab:gray",
}


def to_hwc(images: Tensor) -> np.ndarray:
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


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    """Writes ``fig`` to ``path`` (creating its folder) and returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
