"""Robustness evaluation: a tuned model's test metric under ImageNet-C-style corruptions at several severities.

:func:`evaluate_corruptions` tests the module once per (corruption, severity) on the data module's test split, every
image corrupted after the data's own transform (so at the model's input size, as ImageNet-C corrupts 224 px crops):
de-normalised to ``[0, 1]``, corrupted by :func:`fftprompt.augment.corrupt`, normalised again. A module with a
preprocessing filter (``augment=band augment.preprocess=true``) filters the corrupted images, as it would any test
image. Each image's corruption is drawn from a generator seeded with ``(seed, corruption, severity, index)``: the
same on every run, whatever the batch size or number of processes.

Metrics (``test/corruption/...``, the primary metric ``m`` being ``acc`` for classification and ``dice`` for
segmentation): ``<name>/<severity>/<m>``, ``<name>/mean/<m>`` (over the severities), ``<name>/relative_drop``
(``(clean - mean) / clean``), and over all corruptions ``mean/<m>`` and ``relative_drop``.

A corruption that changes no pixel of the test images by half an 8-bit level or more at the run's image size (the
blurs' kernels shrink with the size: ``defocus_blur`` 1 at 64 px, 1-3 at 32 px, ``gaussian_blur`` 1 at 32 px) is not
tested: it is a no-op, marked ``<name>/<severity>/no_op`` (1.0) instead of a metric, shown as such in the table and
left out of the means and drops.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fftprompt.augment import CORRUPTIONS, check_corruptions, corrupt
from fftprompt.augment.functional import seeded_generator

__all__ = ["CorruptedDataset", "CorruptionResults", "evaluate_corruptions"]

PREFIX = "test/corruption"
# a corruption that moves no pixel by this much (half an 8-bit level, in [0, 1]) leaves the images as they were
NO_OP_TOLERANCE = 0.5 / 255
_NO_OP_PROBE = 8  # test images compared with their corrupted copies


class CorruptedDataset(Dataset):
    """A test dataset whose images are corrupted (targets unchanged).

    Args:
        dataset: items ``(image (3, H, W) normalised float, target)``.
        corruption: a name of :data:`fftprompt.augment.CORRUPTIONS`.
        severity: 1 to 5.
        mean: per-channel mean of the images' normalisation.
        std: per-channel standard deviation of the images' normalisation.
        seed: seed of the corruptions' random draws.
    """

    def __init__(
        self,
        dataset: Dataset,
        corruption: str,
        severity: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
    ) -> None:
        check_corruptions([corruption], [severity])
        self.dataset, self.corruption, self.severity, self.seed = dataset, corruption, int(severity), int(seed)
        self._mean = torch.tensor([float(v) for v in mean]).view(3, 1, 1)
        self._std = torch.tensor([float(v) for v in std]).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, target = self.dataset[index]
        generator = seeded_generator((self.seed, CORRUPTIONS.index(self.corruption), self.severity, index))
        pixels = (image.float() * self._std + self._mean).clamp(0.0, 1.0)
        corrupted = corrupt(pixels[None], self.corruption, self.severity, generator)[0]
        return (corrupted - self._mean) / self._std, target


@dataclass
class CorruptionResults:
    """The primary test metric per corruption and severity, with the clean value.

    Attributes:
        metric: ``"acc"`` or ``"dice"``.
        clean: the metric on the uncorrupted test split.
        table: ``{corruption: {severity: metric}}`` of the tested (not no-op) corruptions.
        no_ops: ``{corruption: [severities]}`` that left the images unchanged at their size, not tested.
    """

    metric: str
    clean: float
    table: dict[str, dict[int, float]] = field(default_factory=dict)
    no_ops: dict[str, list[int]] = field(default_factory=dict)

    def corruption_mean(self, name: str) -> float:
        """Mean over the tested severities (NaN when every severity was a no-op)."""
        return statistics.fmean(self.table[name].values()) if self.table.get(name) else float("nan")

    def mean(self) -> float:
        """Mean over the corruptions with a tested severity (NaN when none has one)."""
        tested = [self.corruption_mean(name) for name in self.table if self.table[name]]
        return statistics.fmean(tested) if tested else float("nan")

    def relative_drop(self, value: float) -> float:
        """``(clean - value) / clean`` (NaN when the clean metric is 0)."""
        return (self.clean - value) / self.clean if self.clean else float("nan")

    def metrics(self) -> dict[str, float]:
        """The ``test/corruption/...`` entries of ``metrics.json``."""
        out: dict[str, float] = {}
        for name, row in self.table.items():
            for severity, value in row.items():
                out[f"{PREFIX}/{name}/{severity}/{self.metric}"] = value
            for severity in self.no_ops.get(name, []):
                out[f"{PREFIX}/{name}/{severity}/no_op"] = 1.0
            if row:
                out[f"{PREFIX}/{name}/mean/{self.metric}"] = self.corruption_mean(name)
                out[f"{PREFIX}/{name}/relative_drop"] = self.relative_drop(self.corruption_mean(name))
        out[f"{PREFIX}/mean/{self.metric}"] = self.mean()
        out[f"{PREFIX}/relative_drop"] = self.relative_drop(self.mean())
        return out

    def markdown(self) -> str:
        """The table for ``report.md``: one row per corruption, one column per severity, mean and relative drop."""
        severities = sorted(
            {s for row in self.table.values() for s in row} | {s for v in self.no_ops.values() for s in v}
        )
        label = {"acc": "accuracy", "dice": "foreground Dice"}.get(self.metric, self.metric)
        lines = [
            f"Test {label} under ImageNet-C-style corruptions (Hendrycks and Dietterich, ICLR 2019) by severity; "
            f"clean: {self.clean:.4f}. Relative drop: (clean - mean) / clean. Spatial parameters are scaled from "
            "224 px to the image size (`fftprompt.augment.corruptions`).",
            "",
            "| corruption | " + " | ".join(str(s) for s in severities) + " | mean | relative drop |",
            "|---|" + "---:|" * (len(severities) + 2),
        ]
        for name, row in self.table.items():
            skipped = self.no_ops.get(name, [])
            cells = " | ".join(f"{row[s]:.4f}" if s in row else "no-op" if s in skipped else "" for s in severities)
            mean = self.corruption_mean(name)
            shown = f"{mean:.4f} | {self.relative_drop(mean):+.1%}" if row else "— | —"
            lines.append(f"| {name} | {cells} | {shown} |")
        blank = " | ".join("" for _ in severities)
        lines.append(f"| **all** | {blank} | **{self.mean():.4f}** | **{self.relative_drop(self.mean()):+.1%}** |")
        if any(self.no_ops.values()):
            listed = ", ".join(f"{name} {','.join(map(str, levels))}" for name, levels in self.no_ops.items() if levels)
            lines += [
                "",
                f"no-op ({listed}): the corruption changes no pixel by half an 8-bit level at this image size, so it "
                "was not tested and is left out of the means and relative drops.",
            ]
        return "\n".join(lines)


def _is_no_op(clean: Dataset, corrupted: CorruptedDataset) -> bool:
    """Whether ``corrupted`` leaves the first test images unchanged (within :data:`NO_OP_TOLERANCE`, in pixels)."""
    for index in range(min(len(clean), _NO_OP_PROBE)):  # type: ignore[arg-type]
        before = (clean[index][0].float() * corrupted._std + corrupted._mean).clamp(0.0, 1.0)
        after = (corrupted[index][0] * corrupted._std + corrupted._mean).clamp(0.0, 1.0)
        if (after - before).abs().max() >= NO_OP_TOLERANCE:
            return False
    return True


def evaluate_corruptions(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: Any,
    corruptions: Sequence[str],
    severities: Sequence[int],
    *,
    clean_metrics: Mapping[str, float],
    seed: int = 0,
) -> CorruptionResults:
    """Tests ``module`` on the corrupted test split of ``datamodule`` for every corruption and severity.

    Args:
        trainer: the trainer that tested the clean split (its callbacks and devices are reused).
        module: the Lightning module holding the tuned weights.
        datamodule: a set-up :class:`~fftprompt.data.ImageDataModule` (``dataset("test")``, ``mean``, ``std``,
            ``batch_size``, ``num_workers``).
        corruptions: names from :data:`fftprompt.augment.CORRUPTIONS`.
        severities: levels from 1 to 5.
        clean_metrics: the clean test metrics (``test/acc`` or ``test/dice``).
        seed: seed of the corruptions' random draws.

    Raises:
        ValueError: for an unknown corruption, a severity outside 1-5, or clean metrics without acc/dice.
    """
    names, levels = check_corruptions(corruptions, severities)
    metric = next((m for m in ("acc", "dice") if f"test/{m}" in clean_metrics), None)
    if metric is None:
        raise ValueError(f"the clean test metrics {sorted(clean_metrics)} hold neither test/acc nor test/dice")
    results = CorruptionResults(metric, float(clean_metrics[f"test/{metric}"]))
    dataset = datamodule.dataset("test")
    for name in names:
        results.table[name] = {}
        for level in levels:
            corrupted = CorruptedDataset(dataset, name, level, datamodule.mean, datamodule.std, seed)
            if _is_no_op(dataset, corrupted):
                results.no_ops.setdefault(name, []).append(level)
                continue
            loader = DataLoader(
                corrupted,
                batch_size=datamodule.batch_size,
                num_workers=datamodule.num_workers,
                shuffle=False,
            )
            tested = trainer.test(module, dataloaders=loader, verbose=False)
            results.table[name][level] = float(tested[0][f"test/{metric}"])
    return results
