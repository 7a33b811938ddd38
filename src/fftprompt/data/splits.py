"""Deterministic train/val/test splits for datasets that ship without official ones."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# an images= value that names a run's own split: "test" (every item) or "test:8" (8 items, evenly spaced)
_SPLIT_SELECTION = re.compile(r"^(train|val|test)(?::(\d+))?$")


def check_fractions(val_fraction: float, test_fraction: float) -> tuple[float, float]:
    """``(val_fraction, test_fraction)`` as floats, after checking that each is in ``(0, 1)`` and that together they
    leave training data (a ``ValueError`` otherwise)."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}={value} must be in (0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} must be < 1 to leave training data"
        )
    return float(val_fraction), float(test_fraction)


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Items per held-out split for a group of ``n``: rounded, at least one each while one item stays for training."""
    counts = [int(round(n * f)) for f in fractions]
    for k in range(len(counts)):
        if counts[k] == 0 and n - sum(counts) > 1:
            counts[k] = 1
    while sum(counts) >= n and max(counts) > 0:  # keep at least one training item
        counts[int(np.argmax(counts))] -= 1
    return counts


def stratified_split(labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split item indices into a training part and one held-out part per fraction, class by class.

    Each class contributes ``round(n_c * fraction)`` items to each held-out part (at least one while the class keeps
    one training item), chosen by a permutation seeded with ``seed``; the result depends only on the labels' order,
    so callers sort their file lists first.

    Args:
        labels: ``(N,)`` class index per item.
        fractions: held-out fractions, e.g. ``(val_fraction, test_fraction)``.
        seed: permutation seed.

    Returns:
        ``[train, held_out_1, ...]``: sorted ``int64`` index arrays that partition ``range(N)``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        start = 0
        for k, count in enumerate(_counts(len(members), fractions)):
            parts[k + 1].append(members[start : start + count])
            start += count
        parts[0].append(members[start:])
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]


def random_split(num_items: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """:func:`stratified_split` with a single class: ``[train, held_out_1, ...]`` index arrays."""
    return stratified_split(np.zeros(num_items, dtype=np.int64), fractions, seed)


def per_class_subset(labels: Sequence[int] | np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` item indices of every class, drawn by a permutation seeded with ``seed`` (few-shot training).

    Args:
        labels: ``(N,)`` class index per item.
        per_class: items kept per class (a class with fewer raises a ``ValueError`` naming it).
        seed: permutation seed; each class's draw is a prefix of the same permutation for every ``per_class``, so
            the 5-shot items are among the 10-shot ones.

    Returns:
        Sorted ``int64`` indices, ``per_class`` per class present in ``labels``.
    """
    if per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept = []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        if len(members) < per_class:
            raise ValueError(f"class {int(value)} has {len(members)} items, fewer than per_class={per_class}")
        kept.append(members[:per_class])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def split_selection(value: object) -> tuple[str, int | None] | None:
    """``(split, count)`` when an ``images=`` value names items of a run's split, else ``None`` (paths, globs, lists).

    ``"test"`` gives ``("test", None)`` (every item), ``"test:8"`` gives ``("test", 8)``; likewise ``train`` and
    ``val``. A bare split name that is also a file or folder in the working directory is ambiguous: a ``ValueError``
    that says how to write either.
    """
    match = _SPLIT_SELECTION.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    split, count = match.group(1), match.group(2)
    if count is None and Path(split).exists():
        raise ValueError(
            f"images={value!r} names both the run's {split} split and the path ./{split}; write images=./{split} for "
            f"the files or images={split}:N for N items of the split"
        )
    if count is not None and int(count) < 1:
        raise ValueError(f"images={value!r}: expected at least 1 image ({split}:N with N >= 1, or {split} for all)")
    return split, None if count is None else int(count)


def evenly_spaced(length: int, count: int | None) -> list[int]:
    """Ascending indices of ``min(count, length)`` items spread evenly over ``range(length)`` (all for ``None``)."""
    if count is None or count >= length:
        return list(range(length))
    return sorted({int(i) for i in np.linspace(0, length - 1, count).round()})
