"""The LightningDataModule base shared by every dataset: splits, transforms, loaders, validation."""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from fftprompt.data.checks import class_coverage, find_cross_split_duplicates
from fftprompt.data.datasets import LabelledSubset
from fftprompt.data.io import OnBadFile, find_bad_images, image_size
from fftprompt.data.splits import per_class_subset
from fftprompt.data.transforms import Policy, build_transform, denormalize
from fftprompt.utils import IMAGENET_MEAN, IMAGENET_STD, Task, check_choice

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)


class DataWarning(UserWarning):
    """Something about the data on disk that a run can live with but the user should know (skips, fallbacks)."""


def _as_floats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    floats = tuple(float(v) for v in values)
    if len(floats) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {list(values)}")
    return floats  # type: ignore[return-value]


class EpochShuffleSampler(Sampler[int]):
    """A shuffled order of ``range(num_items)`` that depends only on ``(seed, epoch)``.

    ``torch``'s ``RandomSampler`` draws each epoch's order from a generator that advances with every epoch, so a run
    resumed from a checkpoint (a fresh generator) would see other orders than the uninterrupted run. Here Lightning's
    ``set_epoch`` (called before every training epoch) selects the order, and :attr:`start` lets an epoch begin
    part-way through (a resumed run skips the indices it had already trained on, without loading them).

    Args:
        num_items: dataset length.
        seed: shuffling seed.
    """

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the order of ``epoch`` (called by Lightning before each training epoch)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        start, self.start = self.start, 0  # only the first pass after a resume starts part-way
        return iter(order[start:].tolist())

    def __len__(self) -> int:
        return self.num_items


class LoaderPosition:
    """Where a training loader stands in its epoch: batches handed out, and batches to skip after a resume."""

    def __init__(self) -> None:
        self.batches_taken = 0
        self.resume_batches = 0

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches_taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_batches = self.batches_taken = int(state.get("batches", 0))


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` that can continue an epoch after the batches a checkpointed run had trained on.

    Its :class:`LoaderPosition` travels in the checkpoint (through the data module's ``state_dict``, which Lightning
    restores before it asks for the loader; Lightning's own checkpointing of stateful loaders is restored too late
    when ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``). The first pass after a restore
    skips the taken batches: by index with an :class:`EpochShuffleSampler` (nothing is loaded), otherwise (e.g.
    Lightning's distributed sampler under DDP) by loading and dropping them. A restored position at the end of an
    epoch skips nothing: the next epoch starts afresh. Iteration is lazy: the underlying iterator (and its worker
    processes) starts at the first batch, after Lightning has set the sampler's epoch.

    Args:
        dataset: the training dataset.
        *args: positional arguments of ``DataLoader``.
        position: shared position record (the data module's); a new one when None.
        **kwargs: keyword arguments of ``DataLoader``.
    """

    def __init__(self, dataset: Dataset, *args: Any, position: LoaderPosition | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.position = position if position is not None else LoaderPosition()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        position = self.position
        skip, position.resume_batches = position.resume_batches, 0
        if skip >= len(self):
            skip = 0
        position.batches_taken = skip
        if skip and isinstance(self.sampler, EpochShuffleSampler) and self.batch_sampler is not None:
            self.sampler.start = skip * int(self.batch_size or 1)
            skip = 0
        for index, batch in enumerate(super().__iter__()):
            if index < skip:
                continue
            position.batches_taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The loader's :class:`LoaderPosition` (Lightning checkpoints loaders that have ``state_dict``)."""
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Makes the next pass skip the batches ``state`` had taken."""
        self.position.load_state_dict(state)


class ImageDataModule(L.LightningDataModule, ABC):
    """Base of every fftprompt data module.

    Subclasses implement :meth:`_build`, which scans the data (cheaply: no image is decoded) and returns the three
    split datasets with the class names. :meth:`setup` runs it once, validates the result and makes ``num_classes``,
    ``class_names`` and the loaders available. Batches are ``(images (B, 3, S, S) float32 normalised with mean/std,
    targets)`` with targets ``(B,)`` int64 for classification and ``(B, S, S)`` int64 for segmentation.

    The arguments below are shared by every data module and declared only here: subclasses take their own arguments
    and pass the rest on as ``**common`` (a subclass names one of them only to give it another default).

    Args:
        image_size: side ``S`` of the square images fed to the model.
        batch_size: batch size of every loader.
        num_workers: loader worker processes.
        seed: seed of the split (where the dataset has none), of the generated data and of the shuffling order.
        mean: per-channel mean used for normalisation (the backbone's; runs pass it).
        std: per-channel standard deviation used for normalisation (the backbone's; runs pass it).
        augment: random augmentation of the training split.
        pin_memory: pin loader memory (for GPU training).
        train_per_class: few-shot training: keep this many training images of every class (drawn by ``seed``; the
            5-shot images are among the 10-shot ones); None keeps them all. Classification data that list their
            labels only; val and test stay whole.
    """

    task: Task = "classification"
    policy: ClassVar[Policy] = "texture"

    def __init__(
        self,
        *,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = True,
        pin_memory: bool = False,
        train_per_class: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, lowest in (("image_size", image_size, 1), ("batch_size", batch_size, 1)):
            if value < lowest:
                raise ValueError(f"{name}={value} must be positive")
        if train_per_class is not None and train_per_class < 1:
            raise ValueError(f"train_per_class={train_per_class} must be >= 1 (or null: every training image)")
        self.train_per_class = None if train_per_class is None else int(train_per_class)
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.mean = _as_floats("mean", mean)
        self.std = _as_floats("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std={list(self.std)} must be positive")
        self.augment = bool(augment)
        self.pin_memory = bool(pin_memory)
        self._datasets: dict[str, Dataset] | None = None
        self._class_names: list[str] | None = None
        self._train_position = LoaderPosition()

    @abstractmethod
    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        """Scan the data and return ``({"train": ..., "val": ..., "test": ...}, class_names)``."""

    def _describe(self) -> str:
        return type(self).__name__

    def setup(self, stage: str | None = None) -> None:
        """Scan and split the data (once; later calls return at once) and validate what was found.

        Classification datasets that list their ``labels`` must have every class in the training split (else a
        ``ValueError`` naming the classes and their counts); a class missing from val or test gives a
        :class:`DataWarning` with its per-split counts.
        """
        if self._datasets is not None:
            return
        datasets, class_names = self._build()
        for split in SPLITS:
            if split not in datasets or len(datasets[split]) == 0:  # type: ignore[arg-type]
                raise ValueError(f"{self._describe()}: the {split} split is empty")
        if len(class_names) < 2:
            raise ValueError(
                f"{self._describe()}: found {len(class_names)} class(es) {class_names}; at least 2 are needed"
            )
        if self.train_per_class is not None:
            datasets["train"] = self._few_shot(datasets["train"], class_names)
        labels = {split: getattr(datasets[split], "labels", None) for split in SPLITS}
        if all(value is not None for value in labels.values()):  # classification datasets that list their labels
            problem = class_coverage(labels, class_names, self._describe())  # type: ignore[arg-type]
            if problem is not None:
                warnings.warn(problem, DataWarning, stacklevel=2)
        self._datasets, self._class_names = datasets, list(class_names)

    def _few_shot(self, train: Dataset, class_names: Sequence[str]) -> Dataset:
        """``train_per_class`` items of every class of ``train`` (a ``ValueError`` naming the short classes)."""
        labels = getattr(train, "labels", None)
        if self.task != "classification" or labels is None:
            raise ValueError(
                f"{self._describe()}: train_per_class={self.train_per_class} applies to classification data that list "
                "their labels; remove data.train_per_class"
            )
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
        short = {class_names[c]: int(n) for c, n in enumerate(counts) if n < self.train_per_class}
        if short:
            raise ValueError(
                f"{self._describe()}: train_per_class={self.train_per_class} but the training split holds fewer "
                f"images of {short}; lower data.train_per_class"
            )
        return LabelledSubset(train, per_class_subset(labels, self.train_per_class, self.seed))

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (runs :meth:`setup` if it has not run)."""
        self.setup()
        assert self._class_names is not None
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        """Number of classes (for segmentation including the background; runs :meth:`setup` if needed)."""
        return len(self.class_names)

    def transform(self, split: Split) -> v2.Compose:
        """The transform applied to ``split``'s items."""
        check_choice("split", split, Split)
        return build_transform(
            self.policy, self.image_size, self.mean, self.std, train=split == "train", augment=self.augment
        )

    def dataset(self, split: Split) -> Dataset:
        """The dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``), after :meth:`setup`."""
        check_choice("split", split, Split)
        self.setup()
        assert self._datasets is not None
        return self._datasets[split]

    def evaluation_dataset(self, split: Split) -> Dataset:
        """``split``'s items under the evaluation transform: the training split without its random augmentation (the
        images a probe is fitted on); the other splits are :meth:`dataset` itself."""
        dataset = self.dataset(split)
        if split != "train" or not self.augment:
            return dataset
        return _with_transform(dataset, self.transform("val"))

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of ``(3, H, W)`` or ``(B, 3, H, W)`` images, giving ``[0, 1]`` floats for figures."""
        return denormalize(images, self.mean, self.std)

    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        common = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **common)
        # the shuffled order is a function of (seed, epoch) and the position is checkpointed: resumable runs
        sampler = EpochShuffleSampler(len(dataset), self.seed)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(self.seed)  # draws the worker processes' base seed
        return ResumableDataLoader(
            dataset, sampler=sampler, generator=generator, position=self._train_position, **common
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by ``(seed, epoch)``; a :class:`ResumableDataLoader`, so mid-epoch checkpoints resume exactly."""
        return self._loader("train", shuffle=True)

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position in its epoch (saved in Lightning checkpoints)."""
        return {"train_position": self._train_position.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the training loader's position, so that a resumed run continues mid-epoch exactly."""
        self._train_position.load_state_dict(state_dict.get("train_position", {}))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class FileDataModule(ImageDataModule):
    """Base of the modules that read files under a data root, with the layout they expect.

    Args:
        root: data root.
        on_bad_file: ``"error"``: an unreadable image raises a ``ValueError`` naming it when it is loaded;
            ``"skip"``: every image is checked cheaply in :meth:`setup` and unreadable ones (and unpaired or
            mismatched image/mask files) are left out with one :class:`DataWarning` giving their count.
        **common: see :class:`ImageDataModule`.
    """

    layout: ClassVar[str] = ""

    def __init__(self, root: str | Path, *, on_bad_file: OnBadFile = "error", **common: Any) -> None:
        super().__init__(**common)
        if on_bad_file not in get_args(OnBadFile):
            raise ValueError(
                f"on_bad_file={on_bad_file!r} is not one of {get_args(OnBadFile)} ('error' stops at an unreadable "
                "file, 'skip' leaves such files out with a warning)"
            )
        self.root = Path(root)
        self.on_bad_file: OnBadFile = on_bad_file

    def _describe(self) -> str:
        return f"{type(self).__name__}(root={self.root})"

    def layout_error(self, problem: str) -> ValueError:
        """A ``ValueError`` stating ``problem`` followed by the expected layout."""
        return ValueError(f"{problem}\nexpected layout under the data root {self.root}:\n{self.layout}")

    def setup(self, stage: str | None = None) -> None:
        """As :meth:`ImageDataModule.setup`, then a :class:`DataWarning` (with a count and an example) when an image
        of one split is also in another (a link to the same file, or a copy with identical bytes)."""
        if self._datasets is not None:
            return
        if not self.root.is_dir():
            raise self.layout_error(f"data root {self.root} ({self.root.absolute()}) does not exist")
        super().setup(stage)
        files = {split: getattr(self.dataset(split), "image_files", []) for split in SPLITS}
        duplicates = find_cross_split_duplicates(files)
        if duplicates:
            earlier, original, later, copy = duplicates[0]
            warnings.warn(
                f"{self._describe()}: {len(duplicates)} image file(s) of the val or test split are the same image as "
                f"a file of an earlier split (a link to the same file or identical bytes), e.g. {later} {copy} and "
                f"{earlier} {original}; the metrics on them measure memory, not generalisation: remove the copies "
                "or links",
                DataWarning,
                stacklevel=2,
            )

    def _warn_skipped(self, what: str, problems: Sequence[str], total: int) -> None:
        shown = "\n  ".join(problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        warnings.warn(
            f"{self._describe()}: skipped {len(problems)} of {total} {what}:\n  {shown}{more}",
            DataWarning,
            stacklevel=3,
        )

    def _drop_bad_images(self, files: Sequence[Path]) -> list[Path]:
        """With ``on_bad_file="skip"``, ``files`` without those that fail a cheap decode check (with a warning)."""
        if self.on_bad_file == "error":
            return list(files)
        bad = find_bad_images(files)
        if bad:
            self._warn_skipped("image files that do not decode", [f"{p}: {why}" for p, why in bad.items()], len(files))
        return [f for f in files if f not in bad]

    def _check_pairs(self, pairs: Sequence[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
        """Check image/mask pairs from their headers: both readable, same size.

        With ``on_bad_file="error"`` the first problem raises a ``ValueError`` naming the file(s); with ``"skip"``
        the files are also decoded cheaply and failing pairs are left out with a warning.
        """
        bad = find_bad_images([p for pair in pairs for p in pair]) if self.on_bad_file == "skip" else {}
        kept, problems = [], []
        for image_path, mask_path in pairs:
            try:
                for path in (image_path, mask_path):
                    if path in bad:
                        raise ValueError(f"cannot decode image file {path}: {bad[path]}")
                image_wh, mask_wh = image_size(image_path), image_size(mask_path)
                if image_wh != mask_wh:
                    raise ValueError(
                        f"image {image_path} is {image_wh[0]}x{image_wh[1]} but its mask {mask_path} is "
                        f"{mask_wh[0]}x{mask_wh[1]} (width x height); they must match"
                    )
            except ValueError as err:
                if self.on_bad_file == "error":
                    raise
                problems.append(str(err))
                continue
            kept.append((image_path, mask_path))
        if problems:
            self._warn_skipped("image/mask pairs", problems, len(pairs))
        return kept


def _with_transform(dataset: Dataset, transform: v2.Compose) -> Dataset:
    """A shallow copy of ``dataset`` (through :class:`LabelledSubset` wrappers) whose items go through ``transform``."""
    if isinstance(dataset, LabelledSubset):
        subset = copy.copy(dataset)
        subset.dataset = _with_transform(dataset.dataset, transform)
        return subset
    if not hasattr(dataset, "transform"):
        raise TypeError(f"{type(dataset).__name__} has no transform to replace by the evaluation one")
    copied = copy.copy(dataset)
    copied.transform = transform  # type: ignore[attr-defined]
    return copied
