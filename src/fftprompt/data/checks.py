"""Checks of a dataset's splits that no single file shows: classes missing from a split, images in two splits."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

# Files of equal size are compared by a hash of their first bytes, and only where those agree by the whole file.
_HEAD_BYTES = 1 << 16
_T = TypeVar("_T")

Duplicate = tuple[str, Path, str, Path]
"""``(earlier split, its file, later split, the file there that is the same image)``."""


def class_coverage(
    labels_by_split: Mapping[str, Sequence[int] | np.ndarray], class_names: Sequence[str], where: str
) -> str | None:
    """Check that every class has items in every split.

    Args:
        labels_by_split: ``{split: (N_split,) class indices}``, splits in order (training first).
        class_names: names in label order.
        where: the dataset, as error messages name it.

    Returns:
        None when every class is in every split, else a one-paragraph warning naming each class missing from a
        split other than the first, with its per-split counts and the fix.

    Raises:
        ValueError: when a class has no items in the first (training) split, or in none at all: naming the classes
            and their counts.
    """
    splits = list(labels_by_split)
    counts = {
        split: np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))[: len(class_names)]
        for split, labels in labels_by_split.items()
    }

    def describe(c: int) -> str:
        total = sum(int(counts[s][c]) for s in splits)
        per_split = ", ".join(f"{s} {int(counts[s][c])}" for s in splits)
        return f"{class_names[c]!r} ({total} image{'s' if total != 1 else ''}: {per_split})"

    absent = [c for c in range(len(class_names)) if not any(counts[s][c] for s in splits)]
    if absent:
        raise ValueError(
            f"{where}: {len(absent)} of {len(class_names)} classes have no images in any split: "
            + ", ".join(f"{class_names[c]!r} (label {c})" for c in absent)
            + "; each would still count in num_classes: remove them (an empty class folder, or a name too many in "
            "class_names) or add their images"
        )
    untrained = [c for c in range(len(class_names)) if not counts[splits[0]][c]]
    if untrained:
        raise ValueError(
            f"{where}: {len(untrained)} class(es) have no {splits[0]} images, so the model cannot learn them: "
            + ", ".join(describe(c) for c in untrained)
            + f"; add {splits[0]} images of these classes or remove them"
        )
    missing = [c for c in range(len(class_names)) if not all(counts[s][c] for s in splits)]
    if not missing:
        return None
    return (
        f"{where}: {len(missing)} class(es) missing from a split: "
        + ", ".join(describe(c) for c in missing)
        + "; the metrics of those splits (accuracy, macro F1, AUROC) then cover classes without images there. Add "
        "images (a split by seed needs at least 3 per class: one each for train, val and test) or remove the class"
    )


def _groups(items: Iterable[_T], key: Callable[[_T], Hashable | None]) -> list[list[_T]]:
    """Items with equal ``key`` (None: left out), groups of two or more only."""
    grouped: dict[Hashable, list[_T]] = defaultdict(list)
    for item in items:
        value = key(item)
        if value is not None:
            grouped[value].append(item)
    return [group for group in grouped.values() if len(group) > 1]


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:  # an unreadable file is reported when it is loaded
        return None


def _digest(path: Path, limit: int | None = None) -> str | None:
    digest = hashlib.blake2b(digest_size=16)
    try:
        with path.open("rb") as file:
            if limit is not None:
                digest.update(file.read(limit))
            else:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def find_cross_split_duplicates(files_by_split: Mapping[str, Sequence[Path]]) -> list[Duplicate]:
    """Files of a split that are the same image as a file of an earlier split (in the mapping's order).

    The same image: one file reached twice (a symbolic link, a path listed twice), or two files with identical
    bytes. Only files of equal size are read: first their first 64 KiB, then, where those agree, the whole file.
    Duplicates within one split are not reported. Files that cannot be read are left out (loading reports them).

    Returns:
        One :data:`Duplicate` per file that repeats an earlier split's image, in split order.
    """
    rank = {split: k for k, split in enumerate(files_by_split)}
    first: dict[Path, tuple[str, Path]] = {}  # resolved file -> its first (split, path)
    duplicates: list[Duplicate] = []
    for split, files in files_by_split.items():
        for path in files:
            real = path.resolve()
            if real not in first:
                first[real] = (split, path)
            elif first[real][0] != split:
                duplicates.append((*first[real], split, path))

    def spans_splits(group: list[Path]) -> bool:
        return len({first[real][0] for real in group}) > 1

    for same_size in _groups(first, _size):
        if not spans_splits(same_size):
            continue
        for same_head in _groups(same_size, lambda real: _digest(real, _HEAD_BYTES)):
            if not spans_splits(same_head):
                continue
            full = _size(same_head[0]) or 0
            identical = _groups(same_head, _digest) if full > _HEAD_BYTES else [same_head]
            for group in identical:
                ordered = sorted(group, key=lambda real: rank[first[real][0]])
                origin = first[ordered[0]]
                duplicates += [(*origin, *first[real]) for real in ordered[1:] if first[real][0] != origin[0]]
    return sorted(duplicates, key=lambda d: (rank[d[2]], str(d[3])))
