"""Run outputs: ``metrics.json`` (atomic), ``report.md`` and its PNG figures, and a console summary.

Everything here takes plain values (dicts, tensors, paths), never a config object or a trainer, so a report can be
rebuilt from a finished run's files. Figures are drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures are only written to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from fftprompt.runfiles import FIGURE_DIR, METRICS_FILE, REPORT_FILE  # noqa: E402
from fftprompt.utils import atomic_write, write_json_atomic  # noqa: E402

__all__ = [
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_segmentation_samples",
    "print_summary",
    "read_metrics_csv",
    "save_figure",
    "write_json_atomic",
    "write_report",
]

_EXPLANATION_CAPTIONS = {  # figures of fftprompt.explain.explain_model shown in report.md
    "rollout": "Explanations: attention rollout",
    "prompt_attention": "Explanations: prompt-generator cross-attention",
    "attribution_maps": "Explanations: attribution to the frequency maps (integrated gradients)",
    "attribution_groups": "Explanations: attribution per feature group",
}
_METRIC_LABELS = {
    "acc": "accuracy",
    "f1_macro": "macro F1",
    "auroc": "macro AUROC",
    "miou": "mean IoU",
    "dice": "foreground Dice",
    "loss": "loss",
}


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[int, int, float]]]:
    """Reads a Lightning ``CSVLogger`` ``metrics.csv`` as ``{name: [(step, epoch, value), ...]}``, blanks dropped."""
    series: dict[str, list[tuple[int, int, float]]] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            step = int(float(row.get("step") or 0))
            epoch = int(float(row.get("epoch") or 0))
            for name, cell in row.items():
                if name in ("step", "epoch") or cell in (None, ""):
                    continue
                series.setdefault(name, []).append((step, epoch, float(cell)))
    return series


def plot_learning_curves(csv_paths: Sequence[str | Path], out_path: str | Path) -> Path | None:
    """Loss, validation metrics and learning rates over training, from ``CSVLogger`` files.

    Args:
        csv_paths: ``metrics.csv`` files in order (a resumed run logs each fit to a new version).
        out_path: PNG to write.

    Returns:
        The PNG path, or None when the files logged no training step.
    """
    series: dict[str, list[tuple[int, int, float]]] = {}
    for csv_path in csv_paths:
        for name, points in read_metrics_csv(csv_path).items():
            series.setdefault(name, []).extend(points)
    if "train/loss_step" not in series and "train/loss_epoch" not in series:
        return None
    lr_names = sorted(name for name in series if name.startswith("lr/"))
    metric_names = [
        name
        for name in series
        if name.split("/", 1)[0] in ("train", "val") and not name.split("/", 1)[1].startswith("loss")
    ]
    panels = 1 + bool(metric_names) + bool(lr_names)
    figure, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8), squeeze=False)
    axes = list(axes[0])

    loss_axis = axes.pop(0)
    for name, label, style in (
        ("train/loss_step", "train (step)", {"alpha": 0.35, "lw": 0.8}),
        ("train/loss_epoch", "train (epoch mean)", {"marker": "o", "lw": 1.6}),
        ("val/loss", "val", {"marker": "s", "lw": 1.6}),
    ):
        if name in series:
            steps, _, values = zip(*series[name], strict=True)
            loss_axis.plot(steps, values, label=label, **style)
    loss_axis.set(title="loss", xlabel="optimiser step", ylabel="loss")
    loss_axis.grid(alpha=0.3)
    loss_axis.legend(fontsize=8)

    if metric_names:
        metric_axis = axes.pop(0)
        colours = {}
        for name in sorted(metric_names, key=lambda n: (n.split("/", 1)[1], n)):
            _, epochs, values = zip(*series[name], strict=True)
            split, metric = name.split("/", 1)
            colour = colours.setdefault(metric, f"C{len(colours)}")  # one colour per metric, line style per split
            metric_axis.plot(
                epochs,
                values,
                color=colour,
                marker="o" if split == "val" else ".",
                ls="-" if split == "val" else "--",
                label=f"{split} {_label(metric)}",
            )
        metric_axis.set(title="metrics per epoch", xlabel="epoch", ylabel="score", ylim=(-0.02, 1.02))
        metric_axis.grid(alpha=0.3)
        metric_axis.legend(fontsize=8)

    if lr_names:
        lr_axis = axes.pop(0)
        for index, name in enumerate(lr_names):
            steps, _, values = zip(*series[name], strict=True)
            # groups often share a rate: distinct line styles keep overlapping curves visible
            lr_axis.plot(steps, values, ls=("-", "--", ":")[index % 3], lw=1.8, label=name.split("/", 1)[1])
        lr_axis.set(title="learning rate per parameter group", xlabel="optimiser step", ylabel="lr", yscale="log")
        lr_axis.grid(alpha=0.3, which="both")
        lr_axis.legend(fontsize=8)
    return _save(figure, out_path)


def plot_confusion_matrix(
    confusion: Tensor | np.ndarray, class_names: Sequence[str] | None, out_path: str | Path
) -> Path:
    """Row-normalised confusion matrix (rows: true class, cells: fraction of that class), counts annotated when small.

    Args:
        confusion: (K, K) counts, ``confusion[true, predicted]``.
        class_names: K names (indices when None).
        out_path: PNG to write.
    """
    counts = np.asarray(confusion.cpu() if isinstance(confusion, Tensor) else confusion, dtype=np.float64)
    num_classes = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}x{num_classes} confusion matrix")
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.35 * num_classes + 2.5), 18.0)
    figure, axis = plt.subplots(figsize=(side + 1.0, side))
    image = axis.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(num_classes)
    font = 9 if num_classes <= 12 else 6
    axis.set_xticks(ticks, names, rotation=60 if num_classes > 4 else 0, ha="right" if num_classes > 4 else "center")
    axis.set_yticks(ticks, names)
    axis.tick_params(labelsize=font)
    if num_classes <= 20:
        for true in range(num_classes):
            for predicted in range(num_classes):
                axis.text(
                    predicted,
                    true,
                    f"{int(counts[true, predicted])}",
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if rates[true, predicted] > 0.5 else "black",
                )
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axis.set(title=f"test confusion matrix (accuracy {accuracy:.3f})", xlabel="predicted", ylabel="true")
    return _save(figure, out_path)


def plot_segmentation_samples(
    images: Tensor,
    targets: Tensor,
    predictions: Tensor,
    out_path: str | Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> Path:
    """Image / ground truth / prediction rows for a few test images, with per-image foreground Dice.

    Args:
        images: (N, C, H, W) normalised images.
        targets: (N, H, W) class indices.
        predictions: (N, H, W) predicted class indices.
        out_path: PNG to write.
        mean: per-channel mean used to normalise (to undo it for display).
        std: per-channel std used to normalise.
        num_classes: K, for a fixed colour scale (default: the largest index seen + 1).
    """
    shown = _displayable(images, mean, std)
    targets, predictions = targets.detach().cpu().numpy(), predictions.detach().cpu().numpy()
    count = shown.shape[0]
    classes = num_classes or int(max(targets.max(), predictions.max())) + 1
    figure, axes = plt.subplots(3, count, figsize=(2.3 * count, 7.0), squeeze=False)
    colour = {"cmap": "viridis" if classes > 2 else "gray", "vmin": 0, "vmax": max(classes - 1, 1)}
    for index in range(count):
        foreground_t, foreground_p = targets[index] > 0, predictions[index] > 0
        overlap = int((foreground_t & foreground_p).sum())
        total = int(foreground_t.sum()) + int(foreground_p.sum())
        dice = 2 * overlap / total if total else 1.0
        axes[0, index].imshow(shown[index])
        axes[1, index].imshow(targets[index], interpolation="nearest", **colour)
        axes[2, index].imshow(predictions[index], interpolation="nearest", **colour)
        axes[2, index].set_title(f"Dice {dice:.2f}", fontsize=9)
        for row in range(3):
            axes[row, index].set_xticks([])
            axes[row, index].set_yticks([])
    for row, label in enumerate(("image", "ground truth", "prediction")):
        axes[row, 0].set_ylabel(label)
    figure.suptitle("test predictions (foreground = class > 0)")
    return _save(figure, out_path)


def _displayable(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """(N, C, H, W) normalised -> (N, H, W, 3) in [0, 1] for imshow."""
    images = images.detach().cpu().float()
    if mean is not None and std is not None:
        channels = images.shape[1]
        images = images * torch.tensor(std[:channels]).view(1, -1, 1, 1) + torch.tensor(mean[:channels]).view(
            1, -1, 1, 1
        )
    else:  # unknown normalisation: stretch each image to [0, 1]
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _save(figure: plt.Figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return out_path


def save_figure(figure: plt.Figure, out_path: str | Path, dpi: int = 100) -> Path:
    """Lays ``figure`` out, writes it as a PNG atomically (temporary file, then rename) and closes it."""
    figure.tight_layout()

    def save(temporary: Path) -> None:
        figure.savefig(temporary, dpi=dpi, format="png")

    try:
        return atomic_write(out_path, save)
    finally:
        plt.close(figure)


def _label(metric: str) -> str:
    return _METRIC_LABELS.get(metric, metric)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(
    output_dir: str | Path,
    metrics: Mapping[str, Any],
    *,
    title: str = "fftprompt run",
    summary: Mapping[str, Any] | None = None,
    history_csv: Sequence[str | Path] = (),
    confusion: Tensor | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    segmentation_samples: Mapping[str, Any] | None = None,
    figures: Mapping[str, str | Path] | None = None,
    explanations: Mapping[str, str | Path] | None = None,
    sections: Mapping[str, str] | None = None,
) -> Path:
    """Writes ``metrics.json`` (atomically), the figures and ``report.md`` into ``output_dir``.

    Args:
        output_dir: run directory; figures go to ``output_dir/figures``.
        metrics: flat metric dict (``test/...`` keys, parameter counts, timings); written to ``metrics.json`` with
            ``summary`` under the key ``"config"``.
        title: report heading.
        summary: short description of the run (dataset, backbone, method, ...) shown as a table.
        history_csv: ``CSVLogger`` ``metrics.csv`` files (in order) for the learning curves.
        confusion: (K, K) test confusion counts (classification).
        class_names: K class names for the confusion matrix.
        segmentation_samples: keyword arguments of :func:`plot_segmentation_samples` except ``out_path``.
        figures: further figures ``{caption: PNG path}`` already written (e.g. frequency maps).
        explanations: the files an explanation wrote (``{"rollout": path, ..., "markdown": explain.md}``, as
            returned by :func:`fftprompt.explain.explain_model`); the known figures are linked, then the markdown.
        sections: further markdown sections ``{heading: body}`` shown after the metrics (e.g. a robustness table).

    Returns:
        Path of ``report.md``.
    """
    output_dir = Path(output_dir)
    figure_dir = output_dir / FIGURE_DIR
    record = dict(metrics)
    if summary is not None:
        record["config"] = dict(summary)
    write_json_atomic(output_dir / METRICS_FILE, record)

    made: dict[str, Path] = {}
    histories = [Path(p) for p in history_csv if Path(p).is_file()]
    if histories:
        curves = plot_learning_curves(histories, figure_dir / "learning_curves.png")
        if curves is not None:
            made["Learning curves"] = curves
    if confusion is not None:
        made["Test confusion matrix"] = plot_confusion_matrix(confusion, class_names, figure_dir / "confusion.png")
    if segmentation_samples is not None:
        made["Test predictions"] = plot_segmentation_samples(
            **segmentation_samples, out_path=figure_dir / "predictions.png"
        )
    for caption, path in (figures or {}).items():
        made[caption] = Path(path)
    if explanations is not None:
        made.update({text: Path(explanations[n]) for n, text in _EXPLANATION_CAPTIONS.items() if n in explanations})

    lines = [f"# {title}", ""]
    if summary:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {key} | {_format_value(value)} |" for key, value in summary.items()]
        lines.append("")
    lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{key}` | {_format_value(value)} |" for key, value in metrics.items() if not isinstance(value, dict)]
    lines += [
        "",
        "Metrics are computed over the whole split. `acc`: micro accuracy; `f1_macro`: unweighted mean of per-class "
        "F1; `auroc`: macro one-vs-rest AUROC; `miou`: mean over classes (background included) of the dataset-level "
        "IoU; `dice`: dataset-level Dice of the foreground classes (for binary masks, the foreground Dice).",
        "",
    ]
    for heading, body in (sections or {}).items():
        lines += [f"## {heading}", "", body.rstrip(), ""]
    for caption, path in made.items():
        relative = os.path.relpath(path, output_dir)
        lines += [f"## {caption}", "", f"![{caption}]({Path(relative).as_posix()})", ""]
    if explanations is not None and "markdown" in explanations:
        details = Path(os.path.relpath(explanations["markdown"], output_dir)).as_posix()
        lines += [f"Explanation details (tables, completeness of the attributions): [explain.md]({details})", ""]
    report = output_dir / REPORT_FILE
    report.write_text("\n".join(lines))
    return report


def print_summary(metrics: Mapping[str, Any], report_path: str | Path | None = None, title: str = "metrics") -> None:
    """Prints ``metrics`` (scalars only) as a rich table, then where the report is."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric", style="cyan")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, (int, float, str)):
            table.add_row(key, _format_value(value))
    console = Console()
    console.print(table)
    if report_path is not None:
        console.print(f"report: [bold]{report_path}[/bold]")
