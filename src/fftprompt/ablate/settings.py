"""What a comparison trains on: datasets x backbones (x few-shot sizes), each a :class:`Setting` of Hydra overrides.

Pure: names and overrides only, no config, no data. The datasets are the demo's generated symmetry benchmark, two
real classification datasets read from a sample-data folder (``dtd_300/``: 5 DTD classes x 120 images;
``medmnist/breastmnist.npz``) and two real segmentation ones (``isbi2012_em_membrane/``: the 30 ISBI 2012 EM slices,
membranes made class 1 by ``data.invert_masks=true``, split 18/6/6; ``kvasir_seg/``: the sample's 5 Kvasir-SEG
pairs, split 3/1/1); every setting uses the demo ViT at 64 px, the shipped weights' resolution. ``pretrained`` is
the default backbone (the shipped formula-pretrained weights), ``random`` the same ViT randomly initialised from the
run's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fftprompt.methods import sample_data_overrides

__all__ = [
    "BACKBONES",
    "DATASETS",
    "FEW_SHOT_DATASETS",
    "QUICK_MODEL",
    "SEGMENTATION_DATASETS",
    "Setting",
    "plan_settings",
    "segmentation_overrides",
]

DATASETS = ("generated", "dtd", "breastmnist", "isbi", "kvasir")
# the segmentation datasets: the sample-data folder each lives in
SEGMENTATION_DATASETS = {"isbi": "isbi2012_em_membrane", "kvasir": "kvasir_seg"}
BACKBONES = ("pretrained", "random")
FEW_SHOT_DATASETS = ("dtd",)  # --shots applies to these (few-shot is where prompt methods are compared)
# --quick: the randomly initialised 2-block ViT of width 32 of configs/backbone/vit_micro.yaml
QUICK_MODEL = ("backbone=vit_micro",)

_BACKBONE_OVERRIDES = {"pretrained": (), "random": ("backbone.checkpoint_path=null",)}
# (overrides, epochs): the generated benchmark as in the classic ablation (1000 training images, 10 epochs); the
# real datasets' 200 (dtd_300) and 546 (BreastMNIST) training images for about as many optimiser steps
_FULL = {
    "generated": (("data.num_train=1000", "data.num_val=64"), 10),
    "dtd": ((), 30),
    "breastmnist": ((), 15),
    # 18 (ISBI) and 3 (Kvasir sample) training images: many epochs of few steps
    "isbi": ((), 40),
    "kvasir": ((), 40),
}
# ISBI 2012 (membrane/train/{image,label}/<n>.png, white = cell interior): membranes as class 1, 30 slices -> 18/6/6
# by data.seed; the Kvasir sample (5 pairs) -> 3/1/1. Fractions of 0.2 give exactly these counts (data.splits rounds)
_SEGMENTATION = {
    "isbi": (
        "data=seg_folder",
        "data.images_dir=image",
        "data.masks_dir=label",
        "data.invert_masks=true",
        "data.class_names=[background,membrane]",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
    ),
    "kvasir": ("data=kvasir_seg", "data.val_fraction=0.2", "data.test_fraction=0.2"),
}
_SEGMENTATION_ROOTS = {"isbi": "membrane/train", "kvasir": ""}
_QUICK_GENERATED = ("data.image_size=32", "data.num_train=32", "data.num_val=8", "data.num_test=24")


@dataclass(frozen=True)
class Setting:
    """One dataset x backbone (x few-shot size) of a comparison.

    Attributes:
        dataset: a name of :data:`DATASETS`.
        backbone: a name of :data:`BACKBONES`.
        shots: training images per class (None: all).
        overrides: the Hydra overrides that make the setting from the train config.
        epochs: training epochs (a few-shot setting's are scaled by the runner to the full setting's images seen).
    """

    dataset: str
    backbone: str
    shots: int | None
    overrides: tuple[str, ...]
    epochs: int

    @property
    def subdir(self) -> str:
        """Where its runs go below the output folder: ``""`` for the classic ablation (generated data, the default
        backbone, all images), so that both commands share those runs; else ``<dataset>-<backbone>[-<k>shot]``."""
        if (self.dataset, self.backbone, self.shots) == ("generated", "pretrained", None):
            return ""
        return f"{self.dataset}-{self.backbone}" + (f"-{self.shots}shot" if self.shots else "")


def segmentation_overrides(dataset: str, data_root: Path | None, image_size: int, batch_size: int) -> tuple[str, ...]:
    """Hydra overrides that train on the segmentation sample ``dataset`` (a key of :data:`SEGMENTATION_DATASETS`)
    from a sample-data root, images resized to ``image_size`` and loaded in the main process."""
    if dataset not in SEGMENTATION_DATASETS:
        raise ValueError(f"dataset {dataset!r} is not one of the segmentation samples {list(SEGMENTATION_DATASETS)}")
    if data_root is None:
        raise ValueError(
            f"dataset {dataset!r} needs the sample data: pass --data-root or set FFTPROMPT_SAMPLE_DATA (the folder "
            f"holding {SEGMENTATION_DATASETS[dataset]}/)"
        )
    root = Path(data_root) / SEGMENTATION_DATASETS[dataset] / _SEGMENTATION_ROOTS[dataset]
    size = (f"data.image_size={image_size}", f"data.batch_size={batch_size}", "data.num_workers=0")
    # chosen on the foreground's Dice (as experiment=kvasir_seg): mIoU counts the background, which an all-background
    # prediction of the early epochs already scores well on
    return (*_SEGMENTATION[dataset], f"data.root={root}", *size, "task.monitor=val/dice")


def _data_overrides(dataset: str, data_root: Path | None, quick: bool) -> tuple[str, ...]:
    if dataset == "generated":
        return (*_QUICK_GENERATED, "data.batch_size=16") if quick else _FULL["generated"][0]
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is not one of {list(DATASETS)}")
    if dataset in SEGMENTATION_DATASETS:
        return segmentation_overrides(dataset, data_root, *((32, 6) if quick else (64, 6)))
    return sample_data_overrides(dataset, data_root, *((32, 16) if quick else (64, 32)))


def plan_settings(
    datasets: Sequence[str],
    backbones: Sequence[str],
    shots: Sequence[int] = (),
    data_root: Path | None = None,
    quick: bool = False,
) -> list[Setting]:
    """Every dataset x backbone, then the few-shot settings (``shots`` x backbones on :data:`FEW_SHOT_DATASETS`).

    Args:
        datasets: names from :data:`DATASETS`.
        backbones: names from :data:`BACKBONES` (``--quick`` allows only ``random``: its ViT is smaller).
        shots: few-shot training images per class.
        data_root: the sample-data folder (``dtd_300/``, ``medmnist/``); needed by the real datasets.
        quick: tiny model, 32 px, one epoch (tests).
    """
    for name, values, allowed in (("dataset", datasets, DATASETS), ("backbone", backbones, BACKBONES)):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"{name}s {bad}: expected names from {list(allowed)}")
    if quick and "pretrained" in backbones:
        raise ValueError("--quick trains a smaller ViT than the shipped weights: use --backbones random with it")
    if shots and not set(datasets) & set(FEW_SHOT_DATASETS):
        raise ValueError(f"--shots needs one of {list(FEW_SHOT_DATASETS)} in --datasets (the few-shot datasets)")
    model = QUICK_MODEL if quick else ()
    settings = []
    for shot in (None, *shots):
        for dataset in datasets:
            if shot is not None and dataset not in FEW_SHOT_DATASETS:
                continue
            data = _data_overrides(dataset, data_root, quick)
            few = () if shot is None else (f"data.train_per_class={shot}",)
            epochs = 1 if quick else _FULL[dataset][1]
            for backbone in backbones:
                overrides = (*data, *few, *model, *_BACKBONE_OVERRIDES[backbone])
                settings.append(Setting(dataset, backbone, shot, overrides, epochs))
    return settings
