"""Pictures of the frequency features: a one-page panel per image, and the ``fftprompt-features`` command.

``fftprompt-features IMAGE [--patch-size 16] [--image-size N] [--out PNG]`` reads an image, computes
:class:`fftprompt.spectral.FrequencyFeatures` on it (after the ImageNet normalisation a timm ViT sees) and writes a
PNG panel. Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state, any backend), so
:func:`plot_frequency_panel` can be reused by reports. The command takes argparse options rather than Hydra overrides:
it looks at one image file, not at a run config.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from fftprompt.spectral import CROSS_PATCH_NAMES, SYMMETRY_NAMES, FrequencyFeatures, FrequencyMaps
from fftprompt.utils import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["load_image", "main", "plot_frequency_panel"]

_SYMMETRY_TITLES = {
    "mirror_lr": "mirror left-right",
    "mirror_ud": "mirror up-down",
    "mirror_diag": "mirror diagonal",
    "mirror_antidiag": "mirror anti-diagonal",
    "rot180": "rotation 180°",
    "rot90": "rotation 90°",
}
_CROSS_TITLES = {
    "cross_lr": "cross-patch: mirror left-right\n(vs partner across the vertical axis)",
    "cross_ud": "cross-patch: mirror up-down\n(vs partner across the horizontal axis)",
    "cross_rot180": "cross-patch: rotation 180°\n(vs partner across the centre)",
}


def load_image(path: str | Path, patch_size: int = 16, image_size: int | None = None) -> Tensor:
    """Read an image as RGB in ``[0, 1]``, cut to a multiple of the patch size.

    Args:
        path: image file (anything PIL reads).
        patch_size: the result's sides are multiples of it.
        image_size: when given, resize the shorter side to it and centre-crop ``image_size x image_size`` (must be a
            multiple of ``patch_size``); otherwise centre-crop each side down to a multiple of ``patch_size``.

    Returns:
        ``(1, 3, H, W)`` float32.
    """
    path = Path(path)
    try:
        with Image.open(path) as file:
            image = file.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image file {str(path)!r}: {error}") from error
    if image_size is not None:
        if image_size < patch_size or image_size % patch_size:
            raise ValueError(f"--image-size {image_size} must be a positive multiple of the patch size {patch_size}")
        scale = image_size / min(image.size)
        resized = (max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale)))
        image = image.resize(resized, Image.Resampling.BICUBIC)
        target = (image_size, image_size)
    else:
        target = (image.width // patch_size * patch_size, image.height // patch_size * patch_size)
        if 0 in target:
            raise ValueError(
                f"image file {str(path)!r} is {image.width}x{image.height} px, smaller than one {patch_size} px patch"
            )
    left, top = (image.width - target[0]) // 2, (image.height - target[1]) // 2
    image = image.crop((left, top, left + target[0], top + target[1]))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return pixels.permute(2, 0, 1).unsqueeze(0).contiguous()


def normalise(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """``(B, 3, H, W)`` in ``[0, 1]`` -> normalised with per-channel ``mean`` and ``std``."""
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
    return (image - mean_t) / std_t


# ----------------------------------------------------------------------------------------------------- panel


def _select(tensor: Tensor, index: int, leading: int) -> np.ndarray:
    """``tensor[index]`` when it carries a batch axis (``ndim > leading``), as float numpy."""
    if tensor.ndim > leading:
        tensor = tensor[index]
    return tensor.detach().float().cpu().numpy()


def _mosaic(patches: np.ndarray) -> np.ndarray:
    """``(h, w, p, p) -> (h p, w p)``: tiles in place."""
    h, w, p, q = patches.shape
    return patches.transpose(0, 2, 1, 3).reshape(h * p, w * q)


def _patch_grid(ax: Axes, height: int, width: int, patch_size: int, linewidth: float = 0.3) -> None:
    """Faint lines between patches (only drawn when there are few enough to stay readable)."""
    if height // patch_size > 32 or width // patch_size > 32:
        return
    for y in range(patch_size, height, patch_size):
        ax.axhline(y - 0.5, color="white", linewidth=linewidth, alpha=0.6)
    for x in range(patch_size, width, patch_size):
        ax.axvline(x - 0.5, color="white", linewidth=linewidth, alpha=0.6)


def _image_axes(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _colorbar(fig: Figure, shown: Any, ax: Axes, label: str) -> None:
    colorbar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    colorbar.set_label(label, fontsize=8)
    colorbar.ax.tick_params(labelsize=7)


def _show_map(
    fig: Figure,
    ax: Axes,
    values: np.ndarray,
    extent: tuple[float, float, float, float],
    title: str,
    label: str,
    cmap: str = "viridis",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> None:
    colours = matplotlib.colormaps[cmap].with_extremes(bad="black")
    shown = ax.imshow(values, cmap=colours, vmin=vmin, vmax=vmax, interpolation="nearest", extent=extent)
    _image_axes(ax, title)
    _colorbar(fig, shown, ax, label)
    if np.isfinite(values).any():
        ax.text(
            0.02,
            0.02,
            f"mean {np.nanmean(values):.2f}",
            transform=ax.transAxes,
            fontsize=8,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1.5, "linewidth": 0},
        )


def _bars(
    ax: Axes,
    values: np.ndarray,
    labels: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    colour: str,
    ymax: float = 1.0,
) -> None:
    positions = np.arange(len(values))
    ax.bar(positions, values, color=colour)
    crowded = max(map(len, labels)) * len(labels) > 40
    ax.set_xticks(positions, labels, fontsize=8, rotation=35 if crowded else 0, ha="right" if crowded else "center")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, ymax)
    ax.tick_params(axis="y", labelsize=8)


def plot_frequency_panel(
    image: Tensor,
    maps: FrequencyMaps,
    *,
    index: int = 0,
    title: str | None = None,
    phase_channel: int = 0,
    zoom_patches: int = 4,
) -> Figure:
    """One page showing every frequency map of one image.

    Layout (4 x 5 panels): the image, the centred log-magnitude spectra of all patches tiled in place (channel
    mean), their phase (one channel, shown only where ``|F|`` is at least 10% of the patch's peak), the dominant
    orientation as a line field over the image (line length and colour = coherence) and the mean log-magnitude
    spectrum over patches; the six symmetry maps and the three cross-patch maps; the mean radial frequency per patch;
    a zoom on the central ``zoom_patches x zoom_patches`` patches (image and spectra), the radial band and orientation
    histograms averaged over patches and the whole-image symmetry when ``maps`` has it.

    Args:
        image: the image for display, RGB or grey in ``[0, 1]``: ``(C, H, W)`` or a batch ``(B, C, H, W)``.
        maps: :class:`FrequencyMaps` of that image (or batch).
        index: which image of a batch to show.
        title: figure title.
        phase_channel: channel whose phase is shown.
        zoom_patches: side, in patches, of the central zoom.

    Returns:
        the figure, 20 inches wide; save it with ``fig.savefig(path)``.
    """
    pixels = _select(image, index, 3)
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) or (B, C, H, W) with C in (1, 3), got {tuple(image.shape)}")
    pixels = np.clip(pixels.transpose(1, 2, 0), 0.0, 1.0)
    grey = pixels.mean(axis=-1)
    shown_image = pixels if pixels.shape[-1] == 3 else grey
    height, width = grey.shape
    h, w = maps.symmetry.shape[-2:]
    patch_size = maps.log_magnitude.shape[-1]
    if (h * patch_size, w * patch_size) != (height, width):
        raise ValueError(
            f"maps cover {h * patch_size}x{w * patch_size} px ({h}x{w} patches of {patch_size}) "
            f"but the image is {height}x{width} px"
        )
    channels = maps.phase.shape[1]
    if not 0 <= phase_channel < channels:
        raise ValueError(f"phase_channel {phase_channel} out of range for {channels} channel(s)")
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)

    column_width = 4.0
    row_height = 0.85 * column_width * min(max(height / width, 0.5), 2.0) + 0.8
    fig = Figure(figsize=(5 * column_width, 4 * row_height + (0.6 if title else 0.0)), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.12, h_pad=0.1)
    axes = iter(fig.subplots(4, 5).flat)

    # row 0: image and spectra
    ax = next(axes)
    ax.imshow(shown_image, cmap="gray", vmin=0.0, vmax=1.0)
    _image_axes(ax, f"image ({width}x{height} px, {w}x{h} patches of {patch_size})")

    log_magnitude = _select(maps.log_magnitude, index, 5).mean(axis=0)  # (h, w, p, p)
    log_mosaic = _mosaic(log_magnitude)
    log_max = float(np.percentile(log_mosaic, 99.5)) or 1.0
    ax = next(axes)
    _show_map(
        fig,
        ax,
        log_mosaic,
        extent,
        "log(1 + |F|) per patch, centred\n(channel mean, zero frequency mid-tile)",
        "log(1 + |F|)",
        cmap="inferno",
        vmax=log_max,
    )
    _patch_grid(ax, height, width, patch_size)

    phase = _select(maps.phase, index, 5)[phase_channel]
    # phase is noise where there is no energy: show it only where |F| reaches 10% of its patch's peak
    magnitude = np.expm1(_select(maps.log_magnitude, index, 5)[phase_channel])
    strong = magnitude >= 0.1 * magnitude.max(axis=(-2, -1), keepdims=True)
    channel_name = "RGB"[phase_channel] if channels == 3 else "grey"
    ax = next(axes)
    _show_map(
        fig,
        ax,
        _mosaic(np.where(strong, phase, np.nan)),
        extent,
        f"phase per patch, centred (channel {channel_name})\nwhere |F| >= 10% of the patch peak",
        "angle(F) (rad)",
        cmap="twilight",
        vmin=-math.pi,
        vmax=math.pi,
    )
    _patch_grid(ax, height, width, patch_size)

    _plot_orientation_field(fig, next(axes), grey, _select(maps.dominant_orientation, index, 3), patch_size)

    mean_spectrum = log_magnitude.mean(axis=(0, 1))
    low, high = (-(patch_size // 2) - 0.5) / patch_size, (patch_size - 1 - patch_size // 2 + 0.5) / patch_size
    ax = next(axes)
    shown = ax.imshow(mean_spectrum, cmap="inferno", extent=(low, high, -high, -low), interpolation="nearest")
    ax.set_title("mean log(1 + |F|) over patches\n(stripes at angle a put energy along a - 90°)", fontsize=10)
    ax.set_xlabel("f_x (cycles/px)", fontsize=8)
    ax.set_ylabel("f_y (cycles/px, up)", fontsize=8)
    ax.tick_params(labelsize=7)
    _colorbar(fig, shown, ax, "log(1 + |F|)")

    # rows 1-2: symmetry, cross-patch symmetry, radial centroid
    symmetry = _select(maps.symmetry, index, 3)
    for channel, name in enumerate(SYMMETRY_NAMES):
        _show_map(
            fig,
            next(axes),
            symmetry[channel],
            extent,
            f"symmetry: {_SYMMETRY_TITLES[name]}\n(within patch)",
            "peak normalised self-correlation",
        )
    cross_patch = _select(maps.cross_patch, index, 3)
    for channel, name in enumerate(CROSS_PATCH_NAMES):
        _show_map(fig, next(axes), cross_patch[channel], extent, _CROSS_TITLES[name], "normalised correlation")

    radial = _select(maps.radial, index, 3)
    bands = radial.shape[0]
    centres = (np.arange(bands) + 0.5) / bands
    weight = radial.sum(axis=0)
    centroid = np.where(weight > 0, np.tensordot(centres, radial, axes=1) / np.maximum(weight, 1e-12), np.nan)
    _show_map(
        fig,
        next(axes),
        centroid,
        extent,
        "mean radial frequency per patch\n(energy-weighted band centre)",
        "|k| / Nyquist",
    )

    # row 3: zoom, histograms, whole-image symmetry
    zoom = min(zoom_patches, h, w)
    top, left = (h - zoom) // 2, (w - zoom) // 2
    rows = slice(top * patch_size, (top + zoom) * patch_size)
    cols = slice(left * patch_size, (left + zoom) * patch_size)
    zoom_extent = (-0.5, zoom * patch_size - 0.5, zoom * patch_size - 0.5, -0.5)
    ax = next(axes)
    ax.imshow(shown_image[rows, cols], cmap="gray", vmin=0.0, vmax=1.0, extent=zoom_extent)
    _image_axes(ax, f"zoom: central {zoom}x{zoom} patches")
    _patch_grid(ax, zoom * patch_size, zoom * patch_size, patch_size, linewidth=0.8)
    ax = next(axes)
    _show_map(
        fig,
        ax,
        log_mosaic[rows, cols],
        zoom_extent,
        "zoom: their log(1 + |F|)",
        "log(1 + |F|)",
        cmap="inferno",
        vmax=log_max,
    )
    _patch_grid(ax, zoom * patch_size, zoom * patch_size, patch_size, linewidth=0.8)

    _bars(
        next(axes),
        radial.mean(axis=(1, 2)),
        [f"{i / bands:.2f}-{(i + 1) / bands:.2f}" for i in range(bands)],
        "radial energy profile (mean over patches)",
        "|k| / Nyquist band (the last includes the corners)",
        "mean energy fraction",
        "tab:orange",
    )
    orientation = _select(maps.orientation, index, 3).mean(axis=(1, 2))
    bins = len(orientation)
    _bars(
        next(axes),
        orientation,
        [f"{a * 180 / bins:g}°" for a in range(bins)],
        "orientation histogram (mean over patches)",
        "structure orientation (0° horizontal, counterclockwise)",
        "mean energy fraction",
        "tab:cyan",
        ymax=max(0.5, float(orientation.max()) * 1.15),
    )

    ax = next(axes)
    if maps.global_symmetry is not None:
        _bars(
            ax,
            _select(maps.global_symmetry, index, 1),
            [n.replace("mirror_", "") for n in SYMMETRY_NAMES],
            "whole-image symmetry",
            "transform",
            "peak normalised self-correlation",
            "tab:green",
        )
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "whole-image symmetry\nnot computed", ha="center", va="center", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def _plot_orientation_field(fig: Figure, ax: Axes, grey: np.ndarray, dominant: np.ndarray, patch_size: int) -> None:
    """Headless line per patch along the dominant structure orientation, length and colour = coherence."""
    ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, alpha=0.6)
    u, v = dominant
    coherence = np.hypot(u, v)
    theta = np.arctan2(v, u) / 2
    h, w = coherence.shape
    grid_x, grid_y = np.meshgrid((np.arange(w) + 0.5) * patch_size - 0.5, (np.arange(h) + 0.5) * patch_size - 0.5)
    # angles="uv" draws (U, V) in screen directions, so V > 0 points up as in the module's y-up angle convention
    lines = ax.quiver(
        grid_x,
        grid_y,
        coherence * np.cos(theta),
        coherence * np.sin(theta),
        coherence,
        cmap="autumn",
        clim=(0.0, 1.0),
        angles="uv",
        pivot="middle",
        scale_units="xy",
        scale=1.0 / (0.9 * patch_size),
        headwidth=0,
        headlength=0,
        headaxislength=0,
        width=0.008,
    )
    _image_axes(ax, "dominant structure orientation\n(line length and colour = coherence)")
    ax.set_xlim(-0.5, grey.shape[1] - 0.5)
    ax.set_ylim(grey.shape[0] - 0.5, -0.5)
    _colorbar(fig, lines, ax, "coherence")


# ------------------------------------------------------------------------------------------------------ CLI


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fftprompt-features", description="Write a PNG panel of the frequency features of an image."
    )
    parser.add_argument("image", help="image file (any format PIL reads)")
    parser.add_argument("--patch-size", type=int, default=16, help="patch side in pixels (the ViT's)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize the shorter side to N and centre-crop N x N "
        "(default: no resize, centre-crop to a multiple of the patch size)",
    )
    parser.add_argument("--out", default=None, help="output PNG (default: <image name>_features.png here)")
    parser.add_argument("--window", choices=("hann", "none"), default="hann")
    parser.add_argument("--orientation-bins", type=int, default=8)
    parser.add_argument("--radial-bins", type=int, default=4)
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args(list(argv))
    for name in ("patch_size", "orientation_bins", "radial_bins", "dpi"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``fftprompt-features`` console command; returns the exit status (2 for a bad image or option)."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        image = load_image(args.image, args.patch_size, args.image_size)
        height, width = image.shape[-2:]
        features = FrequencyFeatures(
            patch_size=args.patch_size,
            window=args.window,
            orientation_bins=args.orientation_bins,
            radial_bins=args.radial_bins,
            global_symmetry=height == width,
        )
    except ValueError as error:
        print(f"fftprompt-features: error: {error}", file=sys.stderr)
        return 2
    with torch.no_grad():
        maps = features(normalise(image))
    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_features.png")
    title = f"{Path(args.image).name}: frequency features (patch {args.patch_size}, window {args.window!r})"
    figure = plot_frequency_panel(image, maps, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
