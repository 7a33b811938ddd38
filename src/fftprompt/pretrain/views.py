"""Random views of a rendered batch, drawn per image from a seeded generator on the batch's device.

SimCLR's augmentations (Chen et al., ICML 2020) and OFDB's instance augmentation (Nakamura et al., ICCV 2023):
random resized crop, flips, colour jitter (brightness, contrast, saturation) and random grayscale. torchvision's v2
transforms draw one parameter set per call and from the global generator; here every image gets its own parameters
from the module's per-step generator, in a handful of batched tensor operations, so that a resumed run renders
the same views.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["ViewAugment", "colour_jitter", "random_flip", "random_grayscale", "random_resized_crop"]

# ITU-R 601 luma weights as torchvision's rgb_to_grayscale writes them
_LUMA = (0.2989, 0.587, 0.114)


def _uniform(shape: tuple[int, ...], low: float, high: float, like: Tensor, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def random_resized_crop(
    images: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """A crop of random area fraction in ``scale`` and aspect ratio in ``ratio`` (log-uniform) per image, resized
    back to the input size bilinearly (as torchvision's ``RandomResizedCrop``, without its retry loop: the sides are
    clipped to the image and the centre drawn where the crop fits).

    ``(B, C, H, W) -> (B, C, H, W)``.
    """
    batch = images.shape[0]
    area = _uniform((batch,), *scale, images, generator)
    log_ratio = _uniform((batch,), math.log(ratio[0]), math.log(ratio[1]), images, generator)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre = torch.rand(batch, 2, generator=generator, device=images.device, dtype=images.dtype)
    centre_x = (2 * centre[:, 0] - 1) * (1 - width)  # in [-1, 1] grid units, the crop inside the image
    centre_y = (2 * centre[:, 1] - 1) * (1 - height)
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = width, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(images: Tensor, generator: torch.Generator, probability: float = 0.5) -> Tensor:
    """Left-right flip of each image with ``probability``: ``(B, C, H, W) -> (B, C, H, W)``."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < probability
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _grey(images: Tensor) -> Tensor:
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def colour_jitter(
    images: Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    probability: float,
    generator: torch.Generator,
) -> Tensor:
    """Brightness, contrast and saturation factors uniform in ``[1 - s, 1 + s]`` per image, applied in that order
    to a ``probability`` share of the images (torchvision's ``ColorJitter`` formulas, fixed order, no hue).

    ``(B, 3, H, W)`` in ``[0, 1]`` -> the same, clamped to ``[0, 1]``.
    """
    batch = images.shape[0]
    factors = [_uniform((batch, 1, 1, 1), 1 - s, 1 + s, images, generator) for s in (brightness, contrast, saturation)]
    jittered = (images * factors[0]).clamp(0, 1)
    mean_grey = _grey(jittered).mean(dim=(1, 2, 3), keepdim=True)
    jittered = (factors[1] * jittered + (1 - factors[1]) * mean_grey).clamp(0, 1)
    jittered = (factors[2] * jittered + (1 - factors[2]) * _grey(jittered)).clamp(0, 1)
    apply = torch.rand(batch, generator=generator, device=images.device) < probability
    return torch.where(apply[:, None, None, None], jittered, images)


def random_grayscale(images: Tensor, generator: torch.Generator, probability: float) -> Tensor:
    """Each image replaced by its luma in all three channels with ``probability``: ``(B, 3, H, W) -> (B, 3, H, W)``."""
    apply = torch.rand(images.shape[0], generator=generator, device=images.device) < probability
    return torch.where(apply[:, None, None, None], _grey(images).expand_as(images), images)


class ViewAugment:
    """One random view per image: crop, flip, colour jitter, grayscale (SimCLR's list without blur).

    Args:
        crop_scale: ``(low, high)`` area fraction of the crop (SimCLR: (0.08, 1); small images keep more).
        crop_ratio: ``(low, high)`` aspect ratio of the crop.
        flip: Left-right flips with probability 0.5.
        brightness: Brightness jitter strength ``s`` (factors in ``[1 - s, 1 + s]``).
        contrast: Contrast jitter strength.
        saturation: Saturation jitter strength.
        jitter_probability: Share of the images that are colour-jittered.
        grayscale_probability: Share of the images turned grey.
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        jitter_probability: float = 0.8,
        grayscale_probability: float = 0.2,
    ) -> None:
        low, high = (float(v) for v in crop_scale)
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {tuple(crop_ratio)}")
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {value}")
        for name, value in (
            ("jitter_probability", jitter_probability),
            ("grayscale_probability", grayscale_probability),
        ):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        self.crop_scale = (low, high)
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.flip = flip
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.jitter_probability = jitter_probability
        self.grayscale_probability = grayscale_probability

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> one view of each, ``(B, 3, H, W)`` in ``[0, 1]``."""
        views = random_resized_crop(images, self.crop_scale, self.crop_ratio, generator)
        if self.flip:
            views = random_flip(views, generator)
        views = colour_jitter(
            views, self.brightness, self.contrast, self.saturation, self.jitter_probability, generator
        )
        return random_grayscale(views, generator, self.grayscale_probability)

    def describe(self) -> dict[str, object]:
        """The settings, for model cards."""
        return {
            "crop_scale": list(self.crop_scale),
            "crop_ratio": list(self.crop_ratio),
            "flip": self.flip,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "jitter_probability": self.jitter_probability,
            "grayscale_probability": self.grayscale_probability,
        }
