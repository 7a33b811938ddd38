"""Batch augmentations in the frequency domain: thin classes that hold settings and call :mod:`.functional`.

They transform whole batches on the training device (the GPU when there is one) after Lightning has moved the batch
there (``on_after_batch_transfer`` of :mod:`fftprompt.lit`), so they cost no data-loader time. Each image is
transformed with probability ``p``; the random draws come from a generator seeded with ``(seed, *draw)``, where the
Lightning module passes ``draw = (global step, batch within the step, process rank)``, so a run is reproducible and
a resumed run draws what the uninterrupted one would. They are photometric: segmentation masks are never touched.

Images arrive normalised with the data's ``mean``/``std`` (the runs pass the data module's). FDA and the amplitude
mix work on the de-normalised ``[0, 1]`` image (the zero-frequency amplitude is the mean intensity, which is only
non-negative there) and clip the result to ``[0, 1]``; the band filters keep the zero frequency and so act on the
normalised image directly, without clipping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from fftprompt.augment.functional import (
    BandKind,
    amplitude,
    apply_response,
    band_response,
    fda_radius,
    low_frequency_window,
    mix_amplitude,
    seeded_generator,
    swap_low_amplitude,
)
from fftprompt.data.io import list_images, read_image
from fftprompt.utils import IMAGENET_MEAN, IMAGENET_STD, check_choice

__all__ = ["AmplitudeMix", "BandFilter", "FourierDomainAdaptation", "SpectralAugment"]


class SpectralAugment:
    """Base of the batch augmentations: probability, seeding, normalisation, training vs preprocessing use.

    Args:
        p: probability that a training image is transformed.
        seed: seed of the random draws (configs pass the run's ``seed``).
        preprocess: also transform every image of every split (validation, test, prediction) deterministically: a
            preprocessing step of the model's input rather than an augmentation (requires ``p=1``).
        mean: per-channel mean of the batches' normalisation.
        std: per-channel standard deviation of the batches' normalisation.
    """

    pixel_space: ClassVar[bool] = True  # work on de-normalised [0, 1] images (clipped) instead of normalised ones
    per_image: ClassVar[bool] = False  # evaluation() is a function of each image alone (an export can include it)

    def __init__(
        self,
        *,
        p: float = 0.5,
        seed: int = 0,
        preprocess: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        name = type(self).__name__
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: p={p} must lie in [0, 1] (probability that a training image is transformed)")
        if preprocess and p != 1.0:
            raise ValueError(f"{name}: preprocess=true transforms every image of every split; set p=1.0 (got p={p})")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"{name}: mean={list(mean)} and std={list(std)} need 3 values each, std > 0")
        self.p = float(p)
        self.seed = int(seed)
        self.preprocess = bool(preprocess)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, images: Tensor, draw: Sequence[int] = ()) -> Tensor:
        """Training use: each of the ``(B, C, H, W)`` normalised images is transformed with probability ``p``."""
        generator = seeded_generator((self.seed, *draw), images.device)
        chosen = torch.rand(images.shape[0], generator=generator, device=images.device) < self.p
        if not bool(chosen.any()):
            return images
        transformed = self._apply(images, generator)
        return torch.where(chosen.view(-1, 1, 1, 1), transformed, images)

    def evaluation(self, images: Tensor) -> Tensor:
        """Validation/test use: every image transformed when ``preprocess``, else the images unchanged."""
        if not self.preprocess:
            return images
        return self._apply(images, seeded_generator((self.seed, -1), images.device))

    def _apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if not self.pixel_space:
            return self._transform(images.float(), generator).to(images.dtype)
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=images.device).view(shape)
        std = torch.tensor(self.std, device=images.device).view(shape)
        pixels = images.float() * std + mean
        out = self._transform(pixels, generator).clamp(0.0, 1.0)
        return ((out - mean) / std).to(images.dtype)

    def _transform(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)`` float32, every image transformed."""
        raise TypeError(f"{type(self).__name__} must define _transform")

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({settings})"

    def _settings(self) -> dict[str, object]:
        return {"p": self.p, "preprocess": self.preprocess}


def _partners(images: Tensor, generator: torch.Generator) -> Tensor:
    """``(B,)`` indices of other images of the batch: the batch rolled by a random offset in ``[1, B)``."""
    batch = images.shape[0]
    offset = torch.randint(1, batch, (1,), generator=generator, device=images.device)
    return (torch.arange(batch, device=images.device) + offset) % batch


class FourierDomainAdaptation(SpectralAugment):
    """FDA (Yang and Soatto, CVPR 2020): the low-frequency amplitude of an image replaced by another image's.

    The other image is another image of the batch, or, with ``style_dir``, an image of that folder (e.g. unlabelled
    images of the target domain; read once, resized to the batch's size on first use and kept on the device).
    In a batch of one image without ``style_dir`` there is no other image and the batch is left unchanged.

    Args:
        beta: window size as a fraction of the image side, in ``(0, 0.5]``: frequencies with
            ``|k_y|, |k_x| < floor(beta * min(H, W))`` take the other image's amplitude (FDA used 0.01-0.09 on
            1024 x 512 images; at 32-64 px the window needs ``beta >= 1 / min(H, W)`` to hold any frequency).
        style_dir: folder of style images (searched recursively), or None for in-batch styles.
        **common: ``p``, ``seed``, ``preprocess``, ``mean``, ``std`` of :class:`SpectralAugment`.
    """

    def __init__(self, beta: float = 0.1, style_dir: str | Path | None = None, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        if not 0.0 < beta <= 0.5:
            raise ValueError(f"FourierDomainAdaptation: beta={beta} must lie in (0, 0.5] (fraction of the image side)")
        self.beta = float(beta)
        self.style_dir = None if style_dir is None else Path(style_dir)
        self._style_images: list[Tensor] = []
        self._style_bank: dict[tuple[int, int, str], Tensor] = {}
        self._windows: dict[tuple[int, int, str], Tensor] = {}
        if self.style_dir is not None:
            if not self.style_dir.is_dir():
                raise ValueError(f"FourierDomainAdaptation: style_dir={str(self.style_dir)!r} is not a folder")
            files = list_images(self.style_dir, recursive=True)
            if not files:
                raise ValueError(
                    f"FourierDomainAdaptation: style_dir={str(self.style_dir)!r} holds no image files (.jpg, .png, "
                    "...); expected at least one style image"
                )
            self._style_images = [read_image(path) for path in files]

    def _settings(self) -> dict[str, object]:
        style = None if self.style_dir is None else str(self.style_dir)
        return {"beta": self.beta, "style_dir": style, **super()._settings()}

    def _styles(self, height: int, width: int, device: torch.device) -> Tensor:
        """Amplitudes of the style images at ``H x W`` on ``device``, ``(N, 3, H, W // 2 + 1)`` (cached)."""
        key = (height, width, str(device))
        if key not in self._style_bank:
            resized = [
                TF.to_dtype(TF.resize(image, [height, width], antialias=True), torch.float32, scale=True)
                for image in self._style_images
            ]
            self._style_bank[key] = amplitude(torch.stack(resized).to(device))
        return self._style_bank[key]

    def _window(self, height: int, width: int, device: torch.device) -> Tensor:
        key = (height, width, str(device))
        if key not in self._windows:
            radius = fda_radius(self.beta, height, width)
            if radius == 0:
                raise ValueError(
                    f"FourierDomainAdaptation: beta={self.beta} selects no frequency on {height}x{width} images "
                    f"(floor(beta * {min(height, width)}) = 0); use beta >= {1 / min(height, width):.3g}"
                )
            self._windows[key] = low_frequency_window(height, width, radius, device)
        return self._windows[key]

    def _transform(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, _, height, width = images.shape
        window = self._window(height, width, images.device)
        if self.style_dir is not None:
            bank = self._styles(height, width, images.device)
            index = torch.randint(0, bank.shape[0], (batch,), generator=generator, device=images.device)
            return swap_low_amplitude(images, window, style_amplitude=bank[index])
        if batch < 2:
            return images
        return swap_low_amplitude(images, window, partner=_partners(images, generator))


class AmplitudeMix(SpectralAugment):
    """FACT's amplitude mix (Xu et al., CVPR 2021): amplitudes interpolated with another image of the batch.

    Each image takes ``(1 - w) |F(x)| + w |F(x')|`` with ``w ~ U(0, alpha)`` and its own phase, ``x'`` another image
    of the batch. A batch of one image is left unchanged.

    Args:
        alpha: largest mixing weight, in ``(0, 1]`` (FACT: 1.0).
        ratio: fraction of the spectrum's area that is mixed, a centred low-frequency square, in ``(0, 1]``
            (FACT: 1.0, the whole spectrum).
        **common: ``p``, ``seed``, ``preprocess``, ``mean``, ``std`` of :class:`SpectralAugment`.
    """

    def __init__(self, alpha: float = 1.0, ratio: float = 1.0, **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        for key, value in (("alpha", alpha), ("ratio", ratio)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"AmplitudeMix: {key}={value} must lie in (0, 1]")
        self.alpha = float(alpha)
        self.ratio = float(ratio)

    def _settings(self) -> dict[str, object]:
        return {"alpha": self.alpha, "ratio": self.ratio, **super()._settings()}

    def _transform(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, _, height, width = images.shape
        if batch < 2:
            return images
        weight = torch.rand(batch, generator=generator, device=images.device) * self.alpha
        partner = _partners(images, generator)
        window = None
        if self.ratio < 1.0:  # FACT's centred crop of side int(sqrt(ratio) * H), made symmetric
            radius = int(math.sqrt(self.ratio) * min(height, width)) // 2 + 1
            window = low_frequency_window(height, width, radius, images.device)
        return mix_amplitude(images, weight, partner, window)


class BandFilter(SpectralAugment):
    """Ideal radial filters (:func:`~fftprompt.augment.functional.band_response`) for noise filtering and detail
    enhancement: as a training augmentation, or with ``preprocess=True`` (and ``p=1``) as a preprocessing step of
    every split, also at test time.

    Args:
        kind: ``lowpass`` (keeps ``r <= high``), ``bandpass`` (``low <= r <= high``), ``highpass`` (``r >= low``),
            ``notch`` (removes ``low <= r <= high``) or ``emphasis`` (multiplies ``r >= low`` by ``1 + gain``);
            ``r`` is the radial frequency with 1 at the Nyquist frequency of an axis. The mean colour is kept.
        low: lower cut-off (``bandpass``, ``highpass``, ``notch``, ``emphasis``).
        high: upper cut-off (``lowpass``, ``bandpass``, ``notch``).
        gain: extra gain of the emphasised band (``emphasis``), > 0.
        **common: ``p``, ``seed``, ``preprocess``, ``mean``, ``std`` of :class:`SpectralAugment`.
    """

    pixel_space = False
    per_image = True

    def __init__(
        self, kind: BandKind = "lowpass", low: float = 0.0, high: float = 0.5, gain: float = 1.0, **common: object
    ) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        check_choice("BandFilter kind", kind, BandKind)
        needs = {
            "lowpass": high > 0.0,
            "bandpass": 0.0 <= low < high,
            "highpass": low > 0.0,
            "notch": 0.0 < low < high,
            "emphasis": low > 0.0 and gain > 0.0,
        }
        if not needs[kind]:
            rule = {
                "lowpass": "high > 0",
                "bandpass": "0 <= low < high",
                "highpass": "low > 0",
                "notch": "0 < low < high",
                "emphasis": "low > 0 and gain > 0",
            }[kind]
            raise ValueError(f"BandFilter: kind={kind!r} needs {rule}; got low={low}, high={high}, gain={gain}")
        self.kind: BandKind = kind
        self.low, self.high, self.gain = float(low), float(high), float(gain)
        self._responses: dict[tuple[int, int, str], Tensor] = {}

    def _settings(self) -> dict[str, object]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "gain": self.gain, **super()._settings()}

    def _transform(self, images: Tensor, generator: torch.Generator) -> Tensor:
        height, width = images.shape[-2:]
        key = (height, width, str(images.device))
        if key not in self._responses:
            self._responses[key] = band_response(
                height, width, self.kind, self.low, self.high, self.gain, device=images.device
            )
        return apply_response(images, self._responses[key])
