"""A run's input pipeline: what turns an image file into the model's input, built once for training and reloading.

The pipeline is the test-split transform of the run's data module (resize, crop, conversion, normalisation with the
backbone's mean and std) followed by the run's preprocessing filter, when it has one (``augment=band
augment.preprocess=true``: every image of every split is filtered, at test time too). ``fftprompt-train`` and
``fftprompt-eval`` (:func:`fftprompt.run.build`) and a reloaded run (:func:`fftprompt.rundir.load_run`, used by
predict, explain and export) build the data module and the filter with the same two functions here, from the run's
config as plain values, so a model is never fed differently prepared images than it was tested on.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torchvision.transforms import v2

from fftprompt.augment import SpectralAugment
from fftprompt.data.base import ImageDataModule

__all__ = ["InputPipeline", "build_augment", "build_datamodule"]


@dataclass(frozen=True)
class InputPipeline:
    """How a run's model input is made from an image.

    Attributes:
        image_size: Side ``S`` of the square model input.
        crop_mode: ``"center"`` (the shorter side resized to ``S``, then the centre ``S x S`` crop) or ``"squash"``
            (resized to ``S x S``), timm's names.
        interpolation: The resize's interpolation (``"bilinear"``, ...), antialiased.
        mean: Per-channel normalisation mean (the backbone's).
        std: Per-channel normalisation standard deviation.
        preprocess: The filter applied to every normalised image (``augment.preprocess=true``), or None.
    """

    image_size: int
    crop_mode: str
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: SpectralAugment | None = None

    @classmethod
    def of(cls, datamodule: ImageDataModule, augment: Any | None) -> InputPipeline:
        """The pipeline of ``datamodule``'s test transform and the batch augmentation ``augment`` (a filter only when
        it preprocesses every split)."""
        resize = [t for t in datamodule.transform("test").transforms if isinstance(t, v2.Resize)]
        if len(resize) != 1:
            raise ValueError(f"{type(datamodule).__name__}: its test transform has {len(resize)} resizes; expected 1")
        crop_mode = "squash" if isinstance(resize[0].size, Sequence) and len(resize[0].size) == 2 else "center"
        preprocess = augment if getattr(augment, "preprocess", False) else None
        return cls(
            image_size=int(datamodule.image_size),
            crop_mode=crop_mode,
            interpolation=str(getattr(resize[0].interpolation, "value", resize[0].interpolation)),
            mean=tuple(float(v) for v in datamodule.mean),
            std=tuple(float(v) for v in datamodule.std),
            preprocess=preprocess,
        )

    def prepare(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S)`` normalised images -> the model's input: the preprocessing filter applied (if any)."""
        return images if self.preprocess is None else self.preprocess.evaluation(images)

    def describe(self) -> dict[str, Any]:
        """Plain values for ``export.json`` and reports."""
        return {
            "image_size": self.image_size,
            "crop_mode": self.crop_mode,
            "resize": (
                f"shorter side to {self.image_size}, then the centre {self.image_size} x {self.image_size} crop"
                if self.crop_mode == "center"
                else f"to {self.image_size} x {self.image_size}"
            ),
            "interpolation": self.interpolation,
            "antialias": True,
            "mean": list(self.mean),
            "std": list(self.std),
            "preprocess": None if self.preprocess is None else repr(self.preprocess),
        }

    def timm_data_config(self, in_chans: int = 3) -> dict[str, Any]:
        """The ``pretrained_cfg`` entries timm's ``resolve_data_config``/``create_transform`` read, as the run
        prepared its images (timm's eval transform then resizes and crops the same way)."""
        return {
            "input_size": [in_chans, self.image_size, self.image_size],
            "interpolation": self.interpolation,
            "crop_pct": 1.0,
            "crop_mode": self.crop_mode,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def exportable_filter(self, format: str) -> SpectralAugment | None:  # noqa: A002 -- the export's key
        """The preprocessing filter, to be included in an export of ``format`` that holds the whole model.

        Raises:
            ValueError: when the filter is not a function of each image alone (it mixes images of the batch or
                draws at random), so no exported model can compute it.
        """
        if self.preprocess is not None and not type(self.preprocess).per_image:
            raise ValueError(
                f"format={format} cannot include the run's preprocessing {self.preprocess!r}: it is not a function "
                "of each image alone (it mixes images of a batch or draws at random)"
            )
        return self.preprocess

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` with the preprocessing filter in front: normalised images -> outputs (for tracing)."""
        return _Preprocessed(self.preprocess, model) if self.preprocess is not None else model


class _Preprocessed(nn.Module):
    """``model(filter.evaluation(images))`` as one module."""

    def __init__(self, preprocess: SpectralAugment, model: nn.Module) -> None:
        super().__init__()
        self.preprocess, self.model = preprocess, model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.preprocess.evaluation(images))


def build_datamodule(
    data: Mapping[str, Any], *, mean: Sequence[float], std: Sequence[float], root: str | None = None, **overrides: Any
) -> ImageDataModule:
    """The data module that a run's ``data`` entry (plain values with ``_target_``) describes, normalising with the
    backbone's ``mean``/``std``; ``root`` replaces a recorded root (``overrides`` other keys). Not set up."""
    arguments = dict(data)
    if root is not None and "root" in arguments:
        arguments["root"] = str(root)
    arguments.update(overrides, mean=list(mean), std=list(std))
    return _instantiate(arguments, "data", ImageDataModule)


def build_augment(augment: Mapping[str, Any] | None, *, mean: Sequence[float], std: Sequence[float]) -> Any:
    """The batch augmentation that a run's ``augment`` entry (plain values with ``_target_``) describes, on data
    normalised with ``mean``/``std``; None for none (``augment=none``)."""
    if not augment:
        return None
    return _instantiate({**augment, "mean": list(mean), "std": list(std)}, "augment", object)


def _instantiate(arguments: dict[str, Any], entry: str, kind: type) -> Any:
    """``_target_(**arguments)`` for a flat entry of a run config (what Hydra would build from it)."""
    target = str(arguments.pop("_target_", ""))
    module_name, _, name = target.rpartition(".")
    special = sorted(key for key in arguments if key.startswith("_"))
    try:
        factory = getattr(importlib.import_module(module_name), name) if module_name else None
    except ImportError:
        factory = None
    if factory is None or special or (kind is not object and not _builds(factory, kind)):
        raise ValueError(
            f"{entry}._target_={target!r}{f' with {special}' if special else ''} is not a {kind.__name__} this "
            f"run can be rebuilt with; expected a class such as fftprompt.{entry}.<name> and its arguments"
        )
    try:
        return factory(**arguments)
    except (TypeError, ValueError) as error:  # a bad value or key: say which config entry holds it
        raise ValueError(f"{error} (config entry {entry}, {target})") from error


def _builds(factory: Any, kind: type) -> bool:
    return isinstance(factory, type) and issubclass(factory, kind)
