"""The report of a training or evaluation run: gathers test images, predictions, frequency maps and explanations from
the built objects, then hands plain values to :func:`fftprompt.report.write_report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import Tensor

from fftprompt.explain import explain_model
from fftprompt.lit import ClassificationModule
from fftprompt.model import PromptedViT
from fftprompt.report import write_report
from fftprompt.runfiles import EXPLAIN_DIR, FIGURE_DIR
from fftprompt.visualize import plot_frequency_panel

__all__ = ["ReportSettings", "write_run_report"]


@dataclass(frozen=True)
class ReportSettings:
    """What the report shows beyond the metrics (``report.*`` of the train config).

    Attributes:
        num_samples: Test images read for the figures (and shown in the segmentation prediction figure).
        frequency_panels: Test images with a page of frequency maps each (0: none).
        explain_images: Test images explained in ``report.md`` (rollout, prompt attention, attributions; 0: none).
    """

    num_samples: int = 6
    frequency_panels: int = 2
    explain_images: int = 2

    def __post_init__(self) -> None:
        for name in ("num_samples", "frequency_panels", "explain_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"report.{name}={getattr(self, name)}; expected a count >= 0")


def write_run_report(
    output_dir: Path,
    metrics: dict[str, Any],
    parts: Mapping[str, Any],
    *,
    summary: Mapping[str, Any],
    settings: ReportSettings,
    loggers: Sequence[Logger] = (),
    title: str,
    confusion: Tensor | None = None,
    sections: Mapping[str, str] | None = None,
) -> Path:
    """Writes ``metrics.json``, the figures and ``report.md`` of a run whose objects are ``parts``.

    Args:
        output_dir: The run directory.
        metrics: Test metrics and run facts.
        parts: The built objects: ``module``, ``model``, ``datamodule``, ``num_classes``.
        summary: Short description of the run (shown as a table, stored under ``config`` in ``metrics.json``).
        settings: What to show.
        loggers: The run's loggers; a ``CSVLogger``'s history gives the learning curves.
        title: Heading of the report.
        confusion: Test confusion matrix of a classification run (already synchronised across processes).
        sections: Further markdown sections ``{heading: body}`` for the report (e.g. the robustness table).

    Returns:
        Path of ``report.md``.
    """
    module, model, datamodule = parts["module"], parts["model"], parts["datamodule"]
    images, targets = _first_test_images(datamodule, settings.num_samples)
    kwargs: dict[str, Any] = {"history_csv": _csv_histories(loggers)}
    if isinstance(module, ClassificationModule):
        kwargs["confusion"] = confusion if confusion is not None else module.test_confusion.compute().cpu()
        kwargs["class_names"] = list(datamodule.class_names)
    else:
        kwargs["segmentation_samples"] = {
            "images": images,
            "targets": targets,
            "predictions": _predict(model, images).argmax(dim=1),
            "mean": list(datamodule.mean),
            "std": list(datamodule.std),
            "num_classes": parts["num_classes"],
        }
    figure_dir = output_dir / FIGURE_DIR
    figures = _frequency_figures(model, images, targets, datamodule, figure_dir, settings.frequency_panels)
    if settings.explain_images > 0:
        # small versions of fftprompt-explain's figures: few images, few integration steps, low resolution
        count = settings.explain_images
        kwargs["explanations"] = explain_model(
            model,
            images[:count],
            figure_dir / EXPLAIN_DIR,
            mean=list(datamodule.mean),
            std=list(datamodule.std),
            labels=targets[:count],
            class_names=list(datamodule.class_names),
            ig_steps=32,
            dpi=60,
            title="Explanations of the first test images",
        )
    return write_report(output_dir, metrics, title=title, summary=summary, figures=figures, sections=sections, **kwargs)


def _csv_histories(loggers: Sequence[Logger]) -> list[Path]:
    """``metrics.csv`` of every version of the run's CSV logger (resumed fits log into a new version)."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            root = Path(logger.root_dir)
            versions = sorted(root.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
            return [p for p in versions if p.is_file()]
    return []


def _first_test_images(datamodule: L.LightningDataModule, count: int) -> tuple[Tensor, Tensor]:
    images, targets = [], []
    seen = 0
    for batch_images, batch_targets in datamodule.test_dataloader():
        images.append(batch_images)
        targets.append(batch_targets)
        seen += batch_images.shape[0]
        if seen >= count:
            break
    return torch.cat(images)[:count], torch.cat(targets)[:count]


@torch.no_grad()
def _predict(model: PromptedViT, images: Tensor) -> Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = model(images.to(device)).float().cpu()
    model.train(was_training)
    if logits.ndim == 4 and logits.shape[-2:] != images.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def _frequency_figures(
    model: PromptedViT,
    images: Tensor,
    targets: Tensor,
    datamodule: L.LightningDataModule,
    figure_dir: Path,
    count: int,
) -> dict[str, Path]:
    """Frequency-map panels (:func:`fftprompt.visualize.plot_frequency_panel`) of the first ``count`` test images.

    The maps are computed from the normalised images, as the model sees them; the panel shows the image
    de-normalised. Nothing is drawn when the model has no frequency features.
    """
    if model.features is None or count == 0:
        return {}
    figures: dict[str, Path] = {}
    device = next(model.parameters()).device
    maps = model.compute_maps(images[:count].to(device))
    shown = datamodule.denormalize(images[:count])
    names = list(datamodule.class_names)
    for index in range(min(count, images.shape[0])):
        label = f"class {names[int(targets[index])]}" if targets.ndim == 1 else "segmentation sample"
        figure = plot_frequency_panel(shown, maps, index=index, title=f"test image {index} ({label})")
        path = figure_dir / f"frequency_maps_{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=60)
        plt.close(figure)
        figures[f"Frequency maps of test image {index}"] = path
    return figures
