"""Classification datasets read in their genuine layouts: DTD, KTH-TIPS2-b, MedMNIST, generic image folders."""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from fftprompt.data.base import SPLITS, DataWarning, FileDataModule, ImageDataModule
from fftprompt.data.datasets import ArrayClassificationDataset, FileClassificationDataset
from fftprompt.data.io import list_images
from fftprompt.data.splits import check_fractions, stratified_split

_Samples = list[tuple[Path, int]]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


class _FileClassificationModule(FileDataModule):
    """Shared steps of the file-based classification modules: bad-file filtering, splitting, dataset creation."""

    def _refuse_empty_class_folders(self, images_per_folder: dict[Path, int]) -> None:
        """A ``ValueError`` naming the class folders without image files (callers report a tree without any first).

        An empty folder would still be a class (``num_classes``, the head, the metrics) that no image has; it is
        refused rather than dropped because dropping it would silently renumber the classes after it.
        """
        empty = [folder for folder, count in images_per_folder.items() if count == 0]
        if empty:
            shown = ", ".join(str(folder) for folder in empty[:5]) + (
                f" and {len(empty) - 5} more" if len(empty) > 5 else ""
            )
            raise ValueError(
                f"{self._describe()}: {len(empty)} of {len(images_per_folder)} class folders hold no image files: "
                f"{shown}; an empty folder would still count as a class (num_classes) that no image has: remove it "
                "or add its images"
            )

    def _make_datasets(self, samples: dict[str, _Samples]) -> dict[str, Dataset]:
        # JPEG photos far larger than the model input are decoded at a reduced scale; twice the input side keeps
        # random crops sharp.
        draft = 2 * self.image_size
        return {
            split: FileClassificationDataset(
                [p for p, _ in items], [c for _, c in items], self.transform(split), draft_size=draft
            )
            for split, items in samples.items()
        }

    def _filter(self, items: _Samples) -> _Samples:
        kept = set(self._drop_bad_images([p for p, _ in items]))
        return [(p, c) for p, c in items if p in kept]

    def _split(self, items: _Samples, val_fraction: float, test_fraction: float) -> dict[str, _Samples]:
        """Deterministic stratified split of sorted ``items`` into train/val/test by ``self.seed``."""
        items = sorted(items)
        parts = stratified_split([c for _, c in items], (val_fraction, test_fraction), self.seed)
        return {split: [items[i] for i in part] for split, part in zip(SPLITS, parts, strict=True)}


class DTDDataModule(_FileClassificationModule):
    """Describable Textures Dataset (47 texture classes).

    Uses the official split files ``labels/{train,val,test}<split_index>.txt`` when the ``labels`` folder exists;
    without it (e.g. a partial copy) it warns and makes a deterministic stratified split by ``seed`` with
    ``val_fraction`` / ``test_fraction`` (the official splits hold a third each).

    Args:
        root: folder holding ``images/`` (or a ``dtd/`` folder that does, as the archive unpacks).
        split_index: which of the ten official splits (1..10).
        val_fraction: validation fraction of each class for the fallback split.
        test_fraction: test fraction of each class for the fallback split.
        **common: ``on_bad_file`` and the shared arguments, see :class:`~fftprompt.data.base.FileDataModule`.
    """

    layout = (
        "  images/<class>/<class>_<NNNN>.jpg      one folder per class (banded, blotchy, ...)\n"
        "  labels/train<N>.txt, val<N>.txt, test<N>.txt   optional official splits, lines '<class>/<file>.jpg'\n"
        "(the root may also be the folder that contains dtd/)"
    )

    def __init__(
        self,
        root: str | Path,
        *,
        split_index: int = 1,
        val_fraction: float = 1 / 3,
        test_fraction: float = 1 / 3,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.split_index = int(split_index)
        self.val_fraction, self.test_fraction = check_fractions(val_fraction, test_fraction)

    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        base = self.root if (self.root / "images").is_dir() else self.root / "dtd"
        if not (base / "images").is_dir():
            raise self.layout_error(f"no images/ folder in {self.root} (nor in {self.root / 'dtd'})")
        class_names = [d.name for d in _class_dirs(base / "images")]
        if not class_names:
            raise self.layout_error(f"no class folders in {base / 'images'}")
        found = {base / "images" / name: list_images(base / "images" / name) for name in class_names}
        if not any(found.values()):
            raise self.layout_error(f"no image files in the class folders of {base / 'images'}")
        self._refuse_empty_class_folders({folder: len(files) for folder, files in found.items()})
        labels_dir = base / "labels"
        if labels_dir.is_dir():
            samples = self._official(base, labels_dir, class_names)
        else:
            warnings.warn(
                f"{self._describe()}: no {labels_dir} folder with the official split files; using a stratified "
                f"split by seed={self.seed} (val_fraction={self.val_fraction:.3f}, "
                f"test_fraction={self.test_fraction:.3f})",
                DataWarning,
                stacklevel=3,
            )
            items = [(p, c) for c, files in enumerate(found.values()) for p in files]
            samples = self._split(self._filter(items), self.val_fraction, self.test_fraction)
        return self._make_datasets(samples), class_names

    def _official(self, base: Path, labels_dir: Path, class_names: list[str]) -> dict[str, _Samples]:
        index = {name: c for c, name in enumerate(class_names)}
        samples: dict[str, _Samples] = {}
        missing_files: list[str] = []
        for split in SPLITS:
            split_file = labels_dir / f"{split}{self.split_index}.txt"
            if not split_file.is_file():
                found = sorted(p.name for p in labels_dir.glob("*.txt"))
                raise self.layout_error(
                    f"split file {split_file} does not exist (split_index={self.split_index}); "
                    f"files in {labels_dir}: {found}"
                )
            items: _Samples = []
            for line_number, line in enumerate(split_file.read_text().splitlines(), start=1):
                entry = line.strip()
                if not entry:
                    continue
                class_name = entry.split("/")[0]
                if "/" not in entry or class_name not in index:
                    raise ValueError(
                        f"{split_file}:{line_number}: {entry!r} is not '<class>/<file>' with a class "
                        f"folder of {base / 'images'}"
                    )
                path = base / "images" / entry
                if not path.is_file():
                    missing_files.append(f"{path} (listed in {split_file.name})")
                    continue
                items.append((path, index[class_name]))
            samples[split] = items
        if missing_files:
            if self.on_bad_file == "error":
                raise ValueError(
                    f"{len(missing_files)} file(s) listed in the split files do not exist, e.g. {missing_files[0]}"
                )
            listed = sum(map(len, samples.values())) + len(missing_files)
            self._warn_skipped("listed files that do not exist", missing_files, listed)
        return {split: self._filter(items) for split, items in samples.items()}


class KTHTips2DataModule(_FileClassificationModule):
    """KTH-TIPS2-b (11 materials, 4 physical samples each) with the held-out-sample protocol.

    The images of one sample per material (``test_sample``) form the test split, so that test images come from a
    physical sample never seen in training. Validation is another held-out sample (``val_sample``) or, when None, a
    stratified ``val_fraction`` of the remaining images.

    Args:
        root: folder holding the material folders (or a ``KTH-TIPS2-b/`` folder that does).
        test_sample: held-out sample letter (``"a"``..``"d"``) or folder name (``"sample_d"``).
        val_sample: validation sample letter or folder name, or None for a random fraction.
        val_fraction: validation fraction of the training samples when ``val_sample`` is None.
        **common: ``on_bad_file`` and the shared arguments, see :class:`~fftprompt.data.base.FileDataModule`.
    """

    layout = (
        "  <material>/sample_<x>/<image>.png   e.g. aluminium_foil/sample_a/22a-scale_10_im_10_col.png\n"
        "(11 materials x sample_a..sample_d; the root may also be the folder that contains KTH-TIPS2-b/)"
    )

    def __init__(
        self,
        root: str | Path,
        *,
        test_sample: str = "d",
        val_sample: str | None = None,
        val_fraction: float = 0.15,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        self.test_sample = self._sample_folder(test_sample)
        self.val_sample = None if val_sample is None else self._sample_folder(val_sample)
        if self.val_sample == self.test_sample:
            raise ValueError(f"val_sample and test_sample are both {self.test_sample!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
        self.val_fraction = float(val_fraction)

    @staticmethod
    def _sample_folder(name: str) -> str:
        name = str(name)
        return name if name.startswith("sample_") else f"sample_{name}"

    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        def has_samples(folder: Path) -> bool:
            return any(s.name.startswith("sample_") for m in _class_dirs(folder) for s in _class_dirs(m))

        base = self.root if has_samples(self.root) else self.root / "KTH-TIPS2-b"
        if not base.is_dir() or not has_samples(base):
            raise self.layout_error(f"no <material>/sample_<x>/ folders in {self.root}")
        materials = [m for m in _class_dirs(base) if any(s.name.startswith("sample_") for s in _class_dirs(m))]
        held_out: dict[str, _Samples] = {"val": [], "test": []}
        pool: _Samples = []
        per_material = {m: 0 for m in materials}
        for c, material in enumerate(materials):
            samples = {s.name: s for s in _class_dirs(material) if s.name.startswith("sample_")}
            for split, wanted in (("test", self.test_sample), ("val", self.val_sample)):
                if wanted is not None and wanted not in samples:
                    raise self.layout_error(
                        f"material folder {material} has no {wanted}/ ({split} sample); it has {sorted(samples)}"
                    )
            for name, folder in sorted(samples.items()):
                items = [(p, c) for p in list_images(folder)]
                per_material[material] += len(items)
                if name == self.test_sample:
                    held_out["test"] += items
                elif name == self.val_sample:
                    held_out["val"] += items
                else:
                    pool += items
        self._refuse_empty_class_folders(per_material)
        pool, held_out = self._filter(pool), {k: self._filter(v) for k, v in held_out.items()}
        if self.val_sample is None:
            pool = sorted(pool)
            train_idx, val_idx = stratified_split([c for _, c in pool], (self.val_fraction,), self.seed)
            split_items = {"train": [pool[i] for i in train_idx], "val": [pool[i] for i in val_idx]}
        else:
            split_items = {"train": pool, "val": held_out["val"]}
        split_items["test"] = held_out["test"]
        return self._make_datasets(split_items), [m.name for m in materials]


class ImageFolderDataModule(_FileClassificationModule):
    """Any classification dataset stored as one folder per class.

    Two layouts: ``root/<class>/...`` (split deterministically by ``seed``) or ``root/{train,val,test}/<class>/...``
    (the split layout is recognised when ``root`` holds a ``train`` folder and no folders other than ``train``,
    ``val`` and ``test``; a missing ``val`` or ``test`` is carved out of ``train``). Images are found recursively
    inside each class folder. Class names come from the (training) class folders, sorted.

    Args:
        root: dataset folder.
        val_fraction: validation fraction of each class where no ``val`` folder exists.
        test_fraction: test fraction of each class where no ``test`` folder exists.
        **common: ``on_bad_file`` and the shared arguments, see :class:`~fftprompt.data.base.FileDataModule`.
    """

    layout = (
        "  <class>/<any subfolders>/<image>          (split by seed), or\n"
        "  train/<class>/<image>, val/<class>/<image>, test/<class>/<image>   (val and test optional)"
    )

    def __init__(
        self, root: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, **common: Any
    ) -> None:
        super().__init__(root, **common)
        self.val_fraction, self.test_fraction = check_fractions(val_fraction, test_fraction)

    def _scan(self, folder: Path, class_names: list[str]) -> _Samples:
        items = []
        per_folder = {}
        for class_dir in _class_dirs(folder):
            if class_dir.name not in class_names:
                raise self.layout_error(f"class folder {class_dir} is not among the training classes {class_names}")
            files = list_images(class_dir, recursive=True)
            per_folder[class_dir] = len(files)
            items += [(p, class_names.index(class_dir.name)) for p in files]
        if not items:
            raise self.layout_error(f"no images in class folders under {folder}")
        self._refuse_empty_class_folders(per_folder)
        return self._filter(items)

    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        subfolders = {d.name for d in _class_dirs(self.root)}
        if not subfolders:
            raise self.layout_error(f"no class folders in {self.root}")
        if "train" in subfolders and subfolders <= set(SPLITS):
            class_names = [d.name for d in _class_dirs(self.root / "train")]
            train = self._scan(self.root / "train", class_names)
            given = {s: self._scan(self.root / s, class_names) for s in ("val", "test") if s in subfolders}
            missing = [s for s in ("val", "test") if s not in given]
            if missing:
                fractions = {"val": self.val_fraction, "test": self.test_fraction}
                train = sorted(train)
                parts = stratified_split([c for _, c in train], [fractions[s] for s in missing], self.seed)
                given.update({s: [train[i] for i in part] for s, part in zip(missing, parts[1:], strict=True)})
                train = [train[i] for i in parts[0]]
            return self._make_datasets({"train": train, **given}), class_names
        class_names = sorted(subfolders)
        return self._make_datasets(
            self._split(self._scan(self.root, class_names), self.val_fraction, self.test_fraction)
        ), (class_names)


class MedMNISTDataModule(ImageDataModule):
    """A single-label 2-D MedMNIST (v2 or MedMNIST+) subset from its official ``.npz`` file.

    The file is ``<root>/<subset>.npz`` (the 28-pixel release) or ``<root>/<subset>_<size>.npz`` (MedMNIST+ sizes
    64, 128, 224) with keys ``{train,val,test}_{images,labels}``; images ``(N, H, W)`` (grayscale, expanded to RGB)
    or ``(N, H, W, 3)`` ``uint8``, labels ``(N,)`` or ``(N, 1)``. The official splits are used. Multi-label
    (chestmnist) and 3-D subsets are rejected. The arrays are loaded into memory in :meth:`setup`.

    Args:
        root: folder holding the ``.npz`` files, or the ``.npz`` file itself (its name must then be the one that
            ``subset`` and ``size`` select, so that the run's config says what was read).
        subset: MedMNIST subset, e.g. ``"breastmnist"``, ``"pathmnist"``, ``"dermamnist"``.
        size: image size of the file to read (``None`` or 28: ``<subset>.npz``; else ``<subset>_<size>.npz``).
        class_names: names in label order; default ``"0"``, ``"1"``, ... up to the largest label.
        **common: the shared arguments (:class:`~fftprompt.data.base.ImageDataModule`).
    """

    layout = (
        "  <subset>.npz or <subset>_<size>.npz   e.g. breastmnist.npz, pathmnist_64.npz\n"
        "  keys train_images, train_labels, val_images, val_labels, test_images, test_labels"
    )

    def __init__(
        self,
        root: str | Path,
        *,
        subset: str = "breastmnist",
        size: int | None = None,
        class_names: Sequence[str] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.root = Path(root)
        self.subset = str(subset)
        self.size = None if size is None else int(size)
        self.given_class_names = None if class_names is None else [str(n) for n in class_names]

    def _describe(self) -> str:
        return f"MedMNISTDataModule(root={self.root}, subset={self.subset})"

    def _file(self) -> Path:
        names = [f"{self.subset}.npz"] if self.size in (None, 28) else []
        if self.size is not None:
            names.append(f"{self.subset}_{self.size}.npz")
        if self.root.is_file():
            if self.root.name in names:
                return self.root
            subset, _, size = self.root.stem.rpartition("_")
            fits = f"data.subset={subset} data.size={size}" if size.isdigit() else f"data.subset={self.root.stem}"
            raise ValueError(
                f"data root {self.root} is a file, but subset={self.subset!r} and size={self.size} read "
                f"{' or '.join(names)}: set {fits} to read this file, or pass the folder holding {names[0]} as "
                "data.root"
            )
        for name in names:
            if (self.root / name).is_file():
                return self.root / name
        found = sorted(p.name for p in self.root.glob("*.npz")) if self.root.is_dir() else []
        where = f"data root {self.root}" if self.root.is_dir() else f"data root {self.root} (which does not exist)"
        raise ValueError(
            f"no {' or '.join(names)} in {where}; .npz files found there: {found}\nexpected layout:\n{self.layout}"
        )

    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        path = self._file()
        expected = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read {path} as a .npz archive: {err}") from err
        with archive:
            missing = [k for k in expected if k not in archive.files]
            if missing:
                raise ValueError(
                    f"{path} lacks the keys {missing}; keys found: {sorted(archive.files)}; expected: {expected}"
                )
            arrays = {key: archive[key] for key in expected}
        splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split in SPLITS:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if labels.ndim == 2 and labels.shape[1] > 1:
                raise ValueError(
                    f"{path}: {split}_labels has shape {labels.shape}, i.e. {labels.shape[1]} labels per image; only "
                    f"single-label MedMNIST subsets are supported (not multi-label ones such as chestmnist)"
                )
            if labels.ndim > 2 or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"{path}: {split}_labels must be integer (N,) or (N, 1), got {labels.shape} {labels.dtype}"
                )
            if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
                raise ValueError(
                    f"{path}: {split}_images has shape {images.shape}; expected 2-D images (N, H, W) or (N, H, W, 3) "
                    "(3-D MedMNIST volumes are not supported)"
                )
            if images.dtype != np.uint8:
                raise ValueError(f"{path}: {split}_images has dtype {images.dtype}; expected uint8")
            labels = labels.reshape(-1).astype(np.int64)
            if len(labels) != len(images):
                raise ValueError(f"{path}: {len(images)} {split}_images but {len(labels)} {split}_labels")
            if labels.size and labels.min() < 0:
                raise ValueError(f"{path}: {split}_labels holds negative label {labels.min()}")
            splits[split] = (images, labels)
        largest = max((int(labels.max()) for _, labels in splits.values() if labels.size), default=-1)
        if self.given_class_names is None:
            class_names = [str(i) for i in range(largest + 1)]
        elif len(self.given_class_names) <= largest:
            raise ValueError(
                f"{path} holds label {largest} but class_names has only {len(self.given_class_names)} names"
            )
        else:
            class_names = self.given_class_names
        datasets: dict[str, Dataset] = {
            split: ArrayClassificationDataset(images, labels, self.transform(split))
            for split, (images, labels) in splits.items()
        }
        return datasets, class_names
