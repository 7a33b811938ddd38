"""The probe's protocol: which images train, select and test, the grid search on the selection split, and the scores.

``select_on="val"`` (the default) chooses the weight decay / ``k`` on the validation split and reads the test split
once; ``select_on="test"`` chooses on the test split itself, an upper bound (the protocol of issue 21's table), never
a result to claim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_f1_score

from fftprompt.linear_probe import Standardizer, select_linear_probe
from fftprompt.probe.knn import knn_predict
from fftprompt.utils import check_choice

__all__ = ["CLASSIFIERS", "Classifier", "SelectOn", "evaluate_probes", "random_splits", "score"]

Classifier = Literal["linear", "knn"]
CLASSIFIERS: tuple[str, ...] = ("linear", "knn")
SelectOn = Literal["val", "test"]
_SPLITS = ("train", "val", "test")


def random_splits(
    labels: Tensor | np.ndarray, per_class: Sequence[int], repeats: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """``repeats`` stratified random splits: ``per_class = (train, val, test)`` disjoint images of every class each.

    Args:
        labels: ``(N,)`` class index of every image (all splits pooled).
        per_class: Images per class for training, validation and test (validation may be 0).
        repeats: Number of splits, drawn from ``numpy.random.default_rng([seed, repeat])``.
        seed: Seed of the draws.

    Returns:
        Per repeat ``{"train", "val", "test"}`` -> sorted ``int64`` indices into ``labels``.
    """
    if len(per_class) != 3 or min(per_class) < 0 or per_class[0] < 1 or per_class[2] < 1:
        raise ValueError(
            f"per_class={list(per_class)}; expected [train, val, test] images per class, train and test >= 1"
        )
    if repeats < 1:
        raise ValueError(f"repeats={repeats}; expected at least 1")
    labels = np.asarray(labels, dtype=np.int64)
    needed = int(sum(per_class))
    counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    short = {c: n for c, n in counts.items() if n < needed}
    if short:
        raise ValueError(
            f"per_class={list(per_class)} needs {needed} images of every class; classes {short} have fewer"
        )
    splits = []
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        chosen: dict[str, list[np.ndarray]] = {split: [] for split in _SPLITS}
        for c in sorted(counts):
            order = rng.permutation(np.flatnonzero(labels == c))
            bounds = np.cumsum([0, *per_class])
            for split, start, stop in zip(_SPLITS, bounds[:-1], bounds[1:], strict=True):
                chosen[split].append(order[start:stop])
        splits.append({split: np.sort(np.concatenate(parts)) for split, parts in chosen.items()})
    return splits


def score(predictions: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro F1 of ``(N,)`` predictions."""
    predictions, labels = predictions.long(), labels.long()
    f1 = multiclass_f1_score(predictions, labels, num_classes=num_classes, average="macro")
    return {"acc": float((predictions == labels).double().mean()), "f1_macro": float(f1)}


def evaluate_probes(
    features: Mapping[str, Tensor],
    labels: Tensor,
    splits: Sequence[Mapping[str, np.ndarray]],
    num_classes: int,
    *,
    classifiers: Sequence[str] = CLASSIFIERS,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    select_on: SelectOn = "val",
    progress: Any = None,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every classifier on every feature set and split: grid on the ``select_on`` split, the chosen value on test.

    Features are standardised with the training images' statistics (k-NN then L2-normalises them). ``k`` values
    above the number of training images are left out of the grid (and reported as such by the caller).

    Args:
        features: ``{feature set: (N, F)}``.
        labels: ``(N,)``.
        splits: Per repeat ``{"train", "val", "test"}`` -> indices into the rows of ``features``.
        num_classes: ``K``.
        classifiers: Subset of :data:`CLASSIFIERS`.
        weight_decays: Grid of the linear probe.
        ks: Grid of the k-NN classifier.
        temperature: k-NN vote temperature.
        select_on: ``"val"`` or ``"test"`` (an upper bound).
        progress: Called with a line of text after each fit (None: silent).

    Returns:
        ``{feature set: {classifier: [per repeat {"chosen", "grid", "test", "test_correct", ...}]}}``; ``grid`` maps
        each grid value (as a string) to its ``select_on`` accuracy; ``test_correct`` is 1 or 0 per test image, in
        the split's order.
    """
    check_choice("select_on", select_on, SelectOn)
    for name in classifiers:
        check_choice("classifiers", name, CLASSIFIERS)
    if not weight_decays or not ks:
        raise ValueError("weight_decays and ks must not be empty")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, matrix in features.items():
        results[name] = {classifier: [] for classifier in classifiers}
        for repeat, split in enumerate(splits):
            if len(split[select_on]) == 0:
                raise ValueError(f"select_on={select_on!r} but the {select_on} split is empty; choose on the other one")
            index = {key: torch.as_tensor(np.asarray(value), dtype=torch.long) for key, value in split.items()}
            x = {key: matrix[value] for key, value in index.items()}
            y = {key: labels[value] for key, value in index.items()}
            for classifier in classifiers:
                if classifier == "linear":
                    entry = _linear(x, y, num_classes, weight_decays, select_on)
                else:
                    entry = _knn(x, y, num_classes, ks, temperature, select_on)
                results[name][classifier].append(entry)
                if progress is not None:
                    chosen = ", ".join(f"{k}={v}" for k, v in entry["chosen"].items())
                    accuracy = entry["test"]["acc"]
                    progress(f"  {name:8s} {classifier:6s} split {repeat}: test accuracy {accuracy:.3f} ({chosen})")
    return results


def _linear(
    x: Mapping[str, Tensor], y: Mapping[str, Tensor], num_classes: int, grid: Sequence[float], select_on: str
) -> dict[str, Any]:
    probe, scores = select_linear_probe((x["train"], y["train"]), (x[select_on], y[select_on]), num_classes, grid)
    predictions = probe.predict(x["test"])
    return {
        "chosen": {"weight_decay": probe.weight_decay},
        "grid": {str(float(value)): s for value, s in zip(grid, scores, strict=True)},
        "iterations": probe.iterations,
        "test": score(predictions, y["test"], num_classes),
        "test_correct": (predictions == y["test"]).int().tolist(),
    }


def _knn(
    x: Mapping[str, Tensor],
    y: Mapping[str, Tensor],
    num_classes: int,
    grid: Sequence[int],
    temperature: float,
    select_on: str,
) -> dict[str, Any]:
    usable = [int(k) for k in grid if int(k) <= len(y["train"])]
    if not usable:
        raise ValueError(f"ks={list(grid)}: every k exceeds the {len(y['train'])} training images; give smaller ones")
    standardize = Standardizer.fit(x["train"])
    train = standardize(x["train"])

    def predict(split: str, k: int) -> Tensor:
        return knn_predict(train, y["train"], standardize(x[split]), num_classes, k, temperature)

    scores = [score(predict(select_on, k), y[select_on], num_classes)["acc"] for k in usable]
    best = int(np.argmax(scores))
    predictions = predict("test", usable[best])
    return {
        "chosen": {"k": usable[best]},
        "grid": {str(k): s for k, s in zip(usable, scores, strict=True)},
        "test": score(predictions, y["test"], num_classes),
        "test_correct": (predictions == y["test"]).int().tolist(),
    }
