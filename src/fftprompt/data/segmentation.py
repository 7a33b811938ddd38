"""Segmentation datasets read in their genuine layouts: Kvasir-SEG, ISIC 2018 task 1, generic image/mask folders."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from fftprompt.data.base import SPLITS, DataWarning, FileDataModule
from fftprompt.data.datasets import FileSegmentationDataset
from fftprompt.data.io import MaskMode, is_image_file
from fftprompt.data.splits import check_fractions, random_split
from fftprompt.utils import Task, check_choice

_Pairs = list[tuple[Path, Path]]


def match_files(folder: Path, pattern: re.Pattern[str], exclude: re.Pattern[str] | None = None) -> dict[str, Path]:
    """Files of ``folder`` whose name fully matches ``pattern``, keyed by the pattern's ``id`` group.

    Raises:
        ValueError: when two files give the same id.
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if not path.is_file() or match is None or (exclude is not None and exclude.fullmatch(path.name)):
            continue
        key = match.group("id")
        if key in found:
            raise ValueError(f"files {found[key]} and {path} both match {pattern.pattern!r} with id {key!r}")
        found[key] = path
    return found


class _FileSegmentationModule(FileDataModule):
    """Shared arguments and steps of the image/mask modules: pairing, checking, splitting, dataset creation.

    Args:
        root: data root.
        val_fraction: validation fraction of the pairs (where the dataset has no validation split).
        test_fraction: test fraction of the pairs (where the dataset has no test split).
        mask_threshold: binary masks are foreground where their luminance is at least this (8-bit scale; robust to
            JPEG noise in 0/255 masks; 1 reads JPEGs of 0/1 masks).
        invert_masks: swap foreground and background of binary masks (for masks that mark the background, e.g.
            electron-microscopy membranes drawn black on white cell interiors).
        batch_size: batch size of every loader.
        **common: ``on_bad_file`` and the shared arguments, see :class:`~fftprompt.data.base.FileDataModule`.
    """

    task: Task = "segmentation"
    policy = "segmentation"
    mask_mode: MaskMode = "binary"
    # Added to pairing errors: what to do when the files are named otherwise.
    other_names_hint: ClassVar[str] = ""
    # Masks decoded in setup (evenly spread over the dataset), so that a wrong coding stops before training.
    masks_checked: ClassVar[int] = 8

    def __init__(
        self,
        root: str | Path,
        *,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        mask_threshold: int = 128,
        invert_masks: bool = False,
        batch_size: int = 16,
        **common: Any,
    ) -> None:
        super().__init__(root, batch_size=batch_size, **common)
        self.val_fraction, self.test_fraction = check_fractions(val_fraction, test_fraction)
        if not 0 < mask_threshold <= 255:
            raise ValueError(f"mask_threshold={mask_threshold} must be in [1, 255] (8-bit scale)")
        self.mask_threshold = int(mask_threshold)
        self.invert_masks = bool(invert_masks)

    def _pair(self, images: dict[str, Path], masks: dict[str, Path], where: str) -> _Pairs:
        """Pairs with the same id; unpaired files raise (``on_bad_file="error"``) or are skipped with a warning."""
        unpaired = [f"image {images[k]} has no mask" for k in sorted(images.keys() - masks.keys())]
        unpaired += [f"mask {masks[k]} has no image" for k in sorted(masks.keys() - images.keys())]
        paired = sorted(images.keys() & masks.keys())
        if unpaired:
            if self.on_bad_file == "error" or not paired:
                more = f" (and {len(unpaired) - 1} more)" if len(unpaired) > 1 else ""
                hint = f"; {self.other_names_hint}" if self.other_names_hint else ""
                raise ValueError(f"{where}: {unpaired[0]}{more}{hint}")
            self._warn_skipped("unpaired files", unpaired, len(images) + len(masks))
        return [(images[k], masks[k]) for k in paired]

    def _split_pairs(self, pairs: _Pairs, val_fraction: float, test_fraction: float) -> dict[str, _Pairs]:
        parts = random_split(len(pairs), (val_fraction, test_fraction), self.seed)
        return {split: [pairs[i] for i in part] for split, part in zip(SPLITS, parts, strict=True)}

    def _make_datasets(self, pairs: dict[str, _Pairs], num_classes: int = 2) -> dict[str, Dataset]:
        datasets = {
            split: FileSegmentationDataset(
                items,
                self.transform(split),
                self.mask_mode,
                self.mask_threshold,
                num_classes=num_classes,
                invert_masks=self.invert_masks,
            )
            for split, items in pairs.items()
        }
        self._check_masks(datasets)
        return datasets

    def _check_masks(self, datasets: dict[str, FileSegmentationDataset]) -> None:
        """Decode a few masks spread over the dataset as training will (a wrong coding raises its ``ValueError``
        now, not mid-epoch) and warn when none of them has a foreground pixel."""
        masks = [mask for dataset in datasets.values() for _, mask in dataset.pairs]
        if not masks:
            return
        reader = next(iter(datasets.values()))
        step = max(1, len(masks) // self.masks_checked)
        checked = masks[::step][: self.masks_checked]
        foreground = [bool(reader.read_target(mask).any()) for mask in checked]
        if self.mask_mode == "binary" and not any(foreground):
            inverted = " (after invert_masks)" if self.invert_masks else ""
            warnings.warn(
                f"{self._describe()}: none of the {len(checked)} masks checked (of {len(masks)}, e.g. {checked[0]}) "
                f"has a foreground pixel at mask_threshold={self.mask_threshold}{inverted}; training would learn "
                "all background. Check the mask coding: 0/255 and lossless 0/1 masks are read as such, JPEGs of "
                "0/1 masks need data.mask_threshold=1 (very lossy ones lose the foreground entirely)",
                DataWarning,
                stacklevel=4,
            )


class KvasirSegDataModule(_FileSegmentationModule):
    """Kvasir-SEG polyp segmentation (1000 image/mask pairs), split deterministically by ``seed``.

    Masks are 3-channel JPEGs with compression noise, binarised at ``mask_threshold``. Images and masks are paired
    by file stem.

    Args:
        root: folder holding ``images/`` and ``masks/`` (or a ``Kvasir-SEG/`` folder that does).
        test_fraction: test fraction.
        **common: ``val_fraction``, ``mask_threshold`` and the rest, see :class:`_FileSegmentationModule`.
    """

    layout = (
        "  images/<id>.jpg and masks/<id>.jpg   (same file names)\n"
        "(the root may also be the folder that contains Kvasir-SEG/)"
    )
    other_names_hint = (
        "Kvasir-SEG pairs images/<id>.jpg with masks/<id>.jpg; for other file names use data=seg_folder with "
        "data.image_pattern and data.mask_pattern (e.g. '*.jpg' and '*_mask.png')"
    )

    def __init__(self, root: str | Path, *, test_fraction: float = 0.1, **common: Any) -> None:
        super().__init__(root, test_fraction=test_fraction, **common)

    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        base = self.root
        if not ((base / "images").is_dir() and (base / "masks").is_dir()):
            base = self.root / "Kvasir-SEG"
            if not ((base / "images").is_dir() and (base / "masks").is_dir()):
                raise self.layout_error(f"no images/ and masks/ folders in {self.root} (nor in {base})")

        def by_stem(folder: Path) -> dict[str, Path]:
            files: dict[str, Path] = {}
            for path in sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p)):
                if path.stem in files:
                    raise ValueError(f"files {files[path.stem]} and {path} have the same stem")
                files[path.stem] = path
            return files

        images, masks = by_stem(base / "images"), by_stem(base / "masks")
        if not images:
            raise self.layout_error(f"no image files in {base / 'images'}")
        pairs = self._check_pairs(self._pair(images, masks, str(base)))
        return self._make_datasets(self._split_pairs(pairs, self.val_fraction, self.test_fraction)), [
            "background",
            "polyp",
        ]


ISIC2018_FOLDERS = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
_ISIC_IMAGE = re.compile(r"(?P<id>ISIC_\d+)\.jpg", re.IGNORECASE)
_ISIC_MASK = re.compile(r"(?P<id>ISIC_\d+)_segmentation\.png", re.IGNORECASE)


def _template_regex(name: str, template: str) -> str:
    """The regular expression of a file-name template: ``{id}`` (or, without it, the single ``*``) becomes the group
    ``id``, other ``*`` match any characters, the rest is literal."""
    if "\\" in template:
        raise ValueError(
            f"{name}={template!r} holds a backslash: a regular expression needs a named group (?P<id>...), and a "
            "template is a plain file name with {id} or * for the id"
        )
    if "{id}" in template:
        if template.count("{id}") > 1:
            raise ValueError(f"{name}={template!r} holds {{id}} more than once; the id appears once in a file name")
        parts = template.split("{id}")
    else:
        if template.count("*") > 1:
            raise ValueError(
                f"{name}={template!r} holds several '*' and no {{id}}: mark the id with {{id}}, e.g. "
                f"{template.replace('*', '{id}', 1)!r}"
            )
        parts = template.split("*")
    return "(?P<id>.+)".join(re.escape(part).replace(r"\*", ".*") for part in parts)


class ISIC2018DataModule(_FileSegmentationModule):
    """ISIC 2018 task 1 (skin lesion boundary segmentation).

    Official layout: the unpacked archives ``ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_<id>.jpg`` and
    ``ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_<id>_segmentation.png`` side by side in ``root``.
    Training is required; the validation and test pairs are used where both folders exist, otherwise that split
    is carved from training by ``val_fraction`` / ``test_fraction`` (with a warning). Flat layout: ``ISIC_<id>.jpg``
    and ``ISIC_<id>_segmentation.png`` together in ``root``, split by seed.

    The masks are 0/255 PNGs. Arguments: see :class:`_FileSegmentationModule` (``root``: the folder holding the
    official folders, or the flat folder).
    """

    layout = (
        "  ISIC2018_Task1-2_Training_Input/ISIC_<id>.jpg\n"
        "  ISIC2018_Task1_Training_GroundTruth/ISIC_<id>_segmentation.png\n"
        "  ISIC2018_Task1-2_Validation_Input/ + ISIC2018_Task1_Validation_GroundTruth/   (optional)\n"
        "  ISIC2018_Task1-2_Test_Input/ + ISIC2018_Task1_Test_GroundTruth/               (optional)\n"
        "or flat: ISIC_<id>.jpg and ISIC_<id>_segmentation.png in one folder\n"
        "(other file names: data=seg_folder with data.image_pattern and data.mask_pattern)"
    )
    other_names_hint = (
        "ISIC 2018 masks are named ISIC_<id>_segmentation.png; for other file names use data=seg_folder with "
        "data.images_dir, data.masks_dir, data.image_pattern and data.mask_pattern (e.g. '*.jpg' and '*_mask.png')"
    )

    def _folder_pairs(self, image_dir: Path, mask_dir: Path) -> _Pairs:
        images, masks = match_files(image_dir, _ISIC_IMAGE), match_files(mask_dir, _ISIC_MASK)
        if not images:
            raise self.layout_error(f"no ISIC_<id>.jpg files in {image_dir}")
        return self._check_pairs(self._pair(images, masks, f"{image_dir} + {mask_dir}"))

    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        names = ["background", "lesion"]
        train_image_dir, train_mask_dir = (self.root / name for name in ISIC2018_FOLDERS["train"])
        if not train_image_dir.is_dir():
            if not any(_ISIC_IMAGE.fullmatch(p.name) for p in self.root.iterdir()):
                raise self.layout_error(f"neither {train_image_dir.name}/ nor ISIC_<id>.jpg files in {self.root}")
            pairs = self._folder_pairs(self.root, self.root)
            return self._make_datasets(self._split_pairs(pairs, self.val_fraction, self.test_fraction)), names
        if not train_mask_dir.is_dir():
            raise self.layout_error(f"found {train_image_dir} but not its ground truth folder {train_mask_dir}")
        pairs = {"train": self._folder_pairs(train_image_dir, train_mask_dir)}
        carved = []
        for split in ("val", "test"):
            image_dir, mask_dir = (self.root / name for name in ISIC2018_FOLDERS[split])
            if image_dir.is_dir() and mask_dir.is_dir():
                pairs[split] = self._folder_pairs(image_dir, mask_dir)
            else:
                carved.append(split)
                if image_dir.is_dir():
                    warnings.warn(
                        f"{self._describe()}: ignoring {image_dir} because its ground truth folder "
                        f"{mask_dir} is missing",
                        DataWarning,
                        stacklevel=3,
                    )
        if carved:
            fractions = {"val": self.val_fraction, "test": self.test_fraction}
            warnings.warn(
                f"{self._describe()}: no official {' and '.join(carved)} pairs; carving "
                + ", ".join(f"{s} ({fractions[s]:.2f})" for s in carved)
                + f" out of the training pairs by seed={self.seed}",
                DataWarning,
                stacklevel=3,
            )
            parts = random_split(len(pairs["train"]), [fractions[s] for s in carved], self.seed)
            train = pairs["train"]
            pairs.update({s: [train[i] for i in part] for s, part in zip(carved, parts[1:], strict=True)})
            pairs["train"] = [train[i] for i in parts[0]]
        return self._make_datasets(pairs), names


class SegFolderDataModule(_FileSegmentationModule):
    """Any segmentation dataset with images and masks in two folders, paired by file-name patterns.

    Each side has a pattern that must match the whole file name and picks out an id; images and masks with equal
    ids form a pair, files matching neither pattern are ignored. A pattern is a file-name template, in which
    ``{id}`` (or, without ``{id}``, a single ``*``) stands for the id, any other ``*`` for any characters and the
    rest is literal (case-sensitive), or a regular expression with a named group ``id``. E.g. DRIVE
    (``training/images/21_training.tif`` with ``training/1st_manual/21_manual1.gif``): ``images_dir="images"``,
    ``masks_dir="1st_manual"``, ``image_pattern="*_training.tif"``, ``mask_pattern="*_manual1.gif"`` (or the
    regular expressions ``r"(?P<id>\\d+)_training\\.tif"`` and ``r"(?P<id>\\d+)_manual1\\.gif"``). Split
    deterministically by ``seed``.

    Args:
        root: dataset folder.
        images_dir: image folder, relative to ``root`` (``"."`` for the root itself).
        masks_dir: mask folder, relative to ``root`` (may equal ``images_dir`` when the patterns differ).
        image_pattern: template or regular expression (with group ``id``) for image file names.
        mask_pattern: template or regular expression (with group ``id``) for mask file names.
        mask_mode: ``"binary"`` (thresholded at ``mask_threshold``) or ``"index"`` (stored values are class indices;
            then ``class_names`` is required; masks must be lossless, not JPEG).
        class_names: class names, background first; default ``["background", "foreground"]`` for binary masks.
        **common: ``val_fraction``, ``mask_threshold`` and the rest, see :class:`_FileSegmentationModule`.
    """

    layout = (
        "  <images_dir>/<file matching image_pattern>\n"
        "  <masks_dir>/<file matching mask_pattern>\n"
        "(a pattern is a file-name template with {id} or * for the id, e.g. '*_training.tif', or a regular "
        "expression with a named group (?P<id>...); equal ids pair an image with its mask)"
    )

    def __init__(
        self,
        root: str | Path,
        *,
        images_dir: str = "images",
        masks_dir: str = "masks",
        image_pattern: str = r"(?P<id>.+)\.(?i:jpe?g|png|bmp|tiff?|gif|webp)",
        mask_pattern: str = r"(?P<id>.+)\.(?i:jpe?g|png|bmp|tiff?|gif|webp)",
        mask_mode: MaskMode = "binary",
        class_names: Sequence[str] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(root, **common)
        check_choice("mask_mode", mask_mode, MaskMode)
        self.images_dir, self.masks_dir = str(images_dir), str(masks_dir)
        self.image_pattern = self._compile("image_pattern", image_pattern)
        self.mask_pattern = self._compile("mask_pattern", mask_pattern)
        self.given_patterns = {"image_pattern": str(image_pattern), "mask_pattern": str(mask_pattern)}
        self.mask_mode = mask_mode
        if mask_mode == "index" and self.invert_masks:
            raise ValueError("invert_masks=True applies to binary masks, not to mask_mode='index'")
        if class_names is None:
            if mask_mode == "index":
                raise ValueError("mask_mode='index' needs class_names (background first)")
            class_names = ["background", "foreground"]
        self.seg_class_names = [str(n) for n in class_names]
        if mask_mode == "binary" and len(self.seg_class_names) != 2:
            raise ValueError(f"binary masks have 2 classes, got class_names={self.seg_class_names}")

    @staticmethod
    def _compile(name: str, pattern: str) -> re.Pattern[str]:
        """``pattern`` as a regular expression: a template (with ``{id}`` or ``*``, without ``(?P<id>``) is
        translated, anything else compiled as given."""
        pattern = str(pattern)
        if "(?P<id>" not in pattern and ("{id}" in pattern or "*" in pattern):
            return re.compile(_template_regex(name, pattern))
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{name}={pattern!r} is not a valid regular expression: {err}") from err
        if "id" not in compiled.groupindex:
            raise ValueError(
                f"{name}={pattern!r} has no named group 'id', e.g. (?P<id>\\d+), and is no file-name template "
                "(e.g. '*_training.tif' or '{id}_training.tif', where {id} or * stands for the id)"
            )
        return compiled

    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        image_dir, mask_dir = self.root / self.images_dir, self.root / self.masks_dir
        for folder, name in ((image_dir, "images_dir"), (mask_dir, "masks_dir")):
            if not folder.is_dir():
                raise self.layout_error(f"{name} folder {folder} does not exist")
        # With one shared folder, a mask may also match a loose image pattern: masks are never images.
        exclude = self.mask_pattern if image_dir.resolve() == mask_dir.resolve() else None
        images = match_files(image_dir, self.image_pattern, exclude)
        masks = match_files(mask_dir, self.mask_pattern)
        if not images:
            shown = sorted(p.name for p in image_dir.iterdir())[:5]
            given = self.given_patterns["image_pattern"]
            meaning = (
                f" (as a regular expression {self.image_pattern.pattern!r})"
                if given != self.image_pattern.pattern
                else ""
            )
            raise self.layout_error(
                f"no file in {image_dir} matches image_pattern {given!r}{meaning}; files there: {shown}"
            )
        pairs = self._check_pairs(self._pair(images, masks, f"{image_dir} + {mask_dir}"))
        split_pairs = self._split_pairs(pairs, self.val_fraction, self.test_fraction)
        return self._make_datasets(split_pairs, num_classes=len(self.seg_class_names)), list(self.seg_class_names)
