"""Paired differences on the test images: every method and reference row of a tuned classification comparison
against one anchor, the frequency-prompt method that the validation split ranks first.

All rows are tested on the same images, so the difference of two accuracies has a much smaller standard error than
either accuracy: per image ``i``, ``d_i`` = (share of the row's seeds right on ``i``) - (the anchor's), and the
difference ``mean(d)`` has the paired standard error ``std(d) / sqrt(n)`` (the paired t-test's; it measures how the
ranking would move with other test images, the seeds held fixed). The per-image outcomes of a run are recomputed from
its run directory (:func:`fftprompt.rundir.load_run`), checked against its ``test/acc`` and kept in
``test_outcomes.json`` beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from fftprompt.ablate.plan import LABELS
from fftprompt.rundir import load_run, read_metrics
from fftprompt.runfiles import ADAPTER_WEIGHTS
from fftprompt.utils import write_json_atomic
from fftprompt.weights import file_sha256

__all__ = [
    "FREQUENCY_METHODS",
    "OUTCOMES_FILE",
    "add_outcomes",
    "paired_difference",
    "paired_rows",
    "per_image_outcomes",
]

OUTCOMES_FILE = "test_outcomes.json"
# the frequency-prompt methods, one of which anchors the paired table
FREQUENCY_METHODS = ("fft_shallow", "fft_deep", "fft_fourierft")


def paired_difference(scores: np.ndarray, anchor: np.ndarray) -> tuple[float, float]:
    """Mean difference and its paired standard error over test images.

    Args:
        scores: ``(S, N)`` per seed and test image, 1 right and 0 wrong (a row without seeds: ``(1, N)``).
        anchor: ``(S', N)`` the same for the anchor, on the same images in the same order.

    Returns:
        ``(mean(d), std(d, ddof=1) / sqrt(N))`` with ``d = scores.mean(0) - anchor.mean(0)``.
    """
    scores, anchor = np.atleast_2d(scores), np.atleast_2d(anchor)
    if scores.shape[1] != anchor.shape[1]:
        raise ValueError(f"scores of {scores.shape[1]} test images against an anchor of {anchor.shape[1]}")
    difference = scores.mean(axis=0) - anchor.mean(axis=0)
    return float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(difference.size))


def per_image_outcomes(run_dir: str | Path, batch_size: int = 64) -> dict[str, Any]:
    """``{"labels", "correct"}`` (per test image, in the split's order) of a finished classification run.

    Recomputed through the run's reload road unless ``test_outcomes.json`` holds them for the run's current adapter
    weights (by SHA256); the recomputed accuracy must equal the run's recorded ``test/acc``.

    Raises:
        RuntimeError: when the reloaded run does not reproduce its own test accuracy.
    """
    run_dir = Path(run_dir)
    path, weights = run_dir / OUTCOMES_FILE, file_sha256(run_dir / ADAPTER_WEIGHTS)
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("adapter_sha256") == weights:
            return cached
    run = load_run(run_dir)
    run.datamodule.setup("test")
    labels, correct = [], []
    with torch.inference_mode():
        for images, targets in DataLoader(run.datamodule.dataset("test"), batch_size=batch_size, shuffle=False):
            predictions = run.logits(images).argmax(dim=1)
            labels += targets.tolist()
            correct += (predictions == targets).int().tolist()
    recorded = (read_metrics(run_dir) or {}).get("test/acc")
    if recorded is None or abs(float(np.mean(correct)) - float(recorded)) > 1e-6:
        raise RuntimeError(
            f"{run_dir}: the reloaded run scores {np.mean(correct):.6f} on its test split but recorded "
            f"test/acc={recorded}; its adapter or data changed since it ran (rerun it: fftprompt-ablate --rerun)"
        )
    outcomes = {"adapter_sha256": weights, "labels": labels, "correct": correct}
    write_json_atomic(path, outcomes)
    return outcomes


def add_outcomes(reports: Sequence[dict[str, Any]]) -> None:
    """Adds ``test_correct`` to every run of each tuned classification report with all its training images, and
    checks that its runs and reference rows saw the same test images (by their labels, in order)."""
    for report in reports:
        settings = report["settings"]
        if settings["task"] != "classification" or settings["shots"] is not None or "tuning" not in report:
            continue
        first = None
        for run in report["runs"]:
            outcomes = per_image_outcomes(run["run_dir"])
            first = outcomes["labels"] if first is None else first
            if outcomes["labels"] != first:
                raise RuntimeError(f"{run['run_dir']}: its test split differs from the other runs' of its setting")
            run["test_correct"] = outcomes["correct"]
        for row in report.get("reference", []):
            if first is not None and len(row.get("test_correct", ())) != len(first):
                raise RuntimeError(f"reference row {row['name']}: not scored on the runs' {len(first)} test images")


def paired_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method and reference row against the anchor (the frequency method with the best mean validation score
    of its final runs): ``{"name", "label", "reference", "acc", "difference", "se", "anchor"}``; empty without
    outcomes."""
    runs = [r for r in report["runs"] if "test_correct" in r]
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    candidates = [n for n in FREQUENCY_METHODS if n in by_variant and _has_val(by_variant[n])]
    if not candidates:
        return []
    anchor_name = max(candidates, key=lambda n: float(np.mean([r["val_score"] for r in by_variant[n]])))
    anchor = np.array([r["test_correct"] for r in by_variant[anchor_name]], dtype=float)
    rows = [
        (name, LABELS[name], False, np.array([r["test_correct"] for r in variant_runs], dtype=float))
        for name, variant_runs in by_variant.items()
    ]
    rows += [
        (row["name"], row["label"], True, np.array([row["test_correct"]], dtype=float))
        for row in report.get("reference", [])
        if "test_correct" in row
    ]
    table = []
    for name, label, reference, scores in rows:
        difference, se = paired_difference(scores, anchor)
        table.append(
            {
                "name": name,
                "label": label,
                "reference": reference,
                "acc": float(scores.mean()),
                "difference": difference,
                "se": se,
                "anchor": name == anchor_name,
            }
        )
    return table


def _has_val(runs: list[dict[str, Any]]) -> bool:
    return all(r.get("val_score") is not None for r in runs)
