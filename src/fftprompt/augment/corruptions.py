"""ImageNet-C-style corruptions (Hendrycks and Dietterich, ICLR 2019) as batched tensor functions.

:func:`corrupt` takes ``(B, 3, H, W)`` float images in ``[0, 1]`` and returns them corrupted at a severity from 1 to
5, clipped to ``[0, 1]``. The severity parameters are ImageNet-C's (``make_imagenet_c.py``). ImageNet-C corrupts
224 px images; here spatial parameters (blur sigma, defocus radius) are scaled by ``min(H, W) / 224`` so that a
corruption covers the same fraction of the image at any size. Deviations from the reference code: the pixelation
resamples with adaptive average pooling (PIL's box filter there) and nearest-exact upsampling; the Gaussian blur
pads by edge replication (scikit-image's ``nearest``), truncated at 4 sigma as there; ``jpeg`` is
``jpeg_compression`` (PIL, as there) of the image rounded to 8 bits, on the CPU. Noise draws use the given
generator, so a seeded generator gives the same corrupted image on every run.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["CORRUPTIONS", "REFERENCE_SIZE", "SEVERITIES", "Corruption", "check_corruptions", "corrupt"]

Corruption = Literal[
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "gaussian_blur",
    "defocus_blur",
    "contrast",
    "brightness",
    "jpeg",
    "pixelate",
]
CORRUPTIONS: tuple[str, ...] = get_args(Corruption)
SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIZE = 224  # ImageNet-C's image side: spatial parameters are given at this size
_PARAMETERS: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise standard deviation
    "shot_noise": (60, 25, 12, 5, 3),  # photons per unit intensity
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # fraction of values set to 0 or 1
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),  # multiplicative noise standard deviation
    "gaussian_blur": (1, 2, 3, 4, 6),  # sigma at 224 px
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # disk radius, anti-alias sigma at 224 px
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor on the deviation from the channel mean
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to the HSV value
    "jpeg": (25, 18, 15, 10, 7),  # JPEG quality
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # down-sampling factor
}


def check_corruptions(corruptions: Sequence[str], severities: Sequence[int]) -> tuple[list[str], list[int]]:
    """Validated ``(corruptions, severities)`` lists.

    Raises:
        ValueError: for an unknown corruption, a severity outside 1-5, an empty list or a repeated entry.
    """
    names = [str(c) for c in corruptions]
    unknown = [c for c in names if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"corruptions={names}: unknown {unknown}; expected names from {list(CORRUPTIONS)}")
    levels = []
    for value in severities:
        if isinstance(value, bool) or not float(value).is_integer() or not 1 <= int(value) <= 5:
            raise ValueError(f"severities={list(severities)}: {value!r} is not an integer from 1 to 5")
        levels.append(int(value))
    for what, values in (("corruptions", names), ("severities", levels)):
        if not values:
            raise ValueError(f"{what} is empty; expected at least one entry")
        if len(set(values)) != len(values):
            raise ValueError(f"{what}={values} repeats an entry")
    return names, levels


def _gaussian_kernel(sigma: float, device: torch.device) -> Tensor:
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _separable_blur(images: Tensor, kernel: Tensor) -> Tensor:
    """Convolves every channel with ``kernel`` along rows and columns, edges replicated."""
    radius = kernel.numel() // 2
    if radius == 0:
        return images
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _defocus(images: Tensor, radius: float, alias_sigma: float) -> Tensor:
    """A disk of ``radius`` pixels (anti-aliased by a Gaussian of ``alias_sigma``), edges replicated."""
    half = max(1, math.ceil(radius)) + math.ceil(3 * alias_sigma)
    offsets = torch.arange(-half, half + 1, device=images.device, dtype=torch.float32)
    disk = ((offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2) <= radius**2).float()
    if alias_sigma > 0.05:
        smooth = _gaussian_kernel(alias_sigma, images.device)
        disk = _separable_blur(disk[None, None], smooth)[0, 0]
    disk = disk / disk.sum()
    channels = images.shape[1]
    padded = F.pad(images, (half, half, half, half), mode="replicate")
    return F.conv2d(padded, disk.expand(channels, 1, -1, -1), groups=channels)


def _jpeg(images: Tensor, quality: int) -> Tensor:
    pixels = (images * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        with Image.open(buffer) as compressed:
            decoded.append(torch.from_numpy(np.asarray(compressed.convert("RGB"), dtype=np.uint8).copy()))
    return torch.stack(decoded).permute(0, 3, 1, 2).to(images.device, torch.float32) / 255.0


def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """``images`` under corruption ``name`` at ``severity``.

    Args:
        images: ``(B, 3, H, W)`` float in ``[0, 1]``.
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (strong).
        generator: random source of the noise corruptions (on the images' device).

    Returns:
        ``(B, 3, H, W)`` float32 in ``[0, 1]``.
    """
    check_corruptions([name], [severity])
    x = images.float()
    c = _PARAMETERS[name][severity - 1]
    scale = min(x.shape[-2:]) / REFERENCE_SIZE
    if name == "gaussian_noise":
        x = x + c * torch.randn(x.shape, generator=generator, device=x.device)
    elif name == "shot_noise":
        x = torch.poisson(x.clamp(0.0, 1.0) * c, generator=generator) / c
    elif name == "impulse_noise":
        hit = torch.rand(x.shape, generator=generator, device=x.device) < c
        salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
        x = torch.where(hit, salt.float(), x)
    elif name == "speckle_noise":
        x = x + x * c * torch.randn(x.shape, generator=generator, device=x.device)
    elif name == "gaussian_blur":
        x = _separable_blur(x, _gaussian_kernel(c * scale, x.device))
    elif name == "defocus_blur":
        x = _defocus(x, c[0] * scale, c[1] * scale)
    elif name == "contrast":
        means = x.mean(dim=(-2, -1), keepdim=True)
        x = (x - means) * c + means
    elif name == "brightness":
        # in HSV with hue and saturation fixed, RGB scales with the value V = max(R, G, B)
        value = x.amax(dim=1, keepdim=True)
        brighter = (value + c).clamp(0.0, 1.0)
        x = torch.where(value > 0, x * brighter / value.clamp_min(1e-12), brighter.expand_as(x))
    elif name == "jpeg":
        x = _jpeg(x.clamp(0.0, 1.0), int(c))
    else:  # pixelate
        height, width = x.shape[-2:]
        small = F.adaptive_avg_pool2d(x, (max(1, int(height * c)), max(1, int(width * c))))
        x = F.interpolate(small, size=(height, width), mode="nearest-exact")
    return x.clamp(0.0, 1.0)
