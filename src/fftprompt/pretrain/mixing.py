"""MixUp and CutMix of a rendered batch with soft targets, drawn from the step's seeded generator.

MixUp (Zhang et al., ICLR 2018) blends every image with its batch neighbour, ``lam x_i + (1 - lam) x_{i-1}``;
CutMix (Yun et al., ICCV 2019) pastes a box of the neighbour, ``lam`` then being the share of the image kept. The
targets mix the one-hot labels alike. The formulas (neighbour by ``roll(1)``, the box of side ``sqrt(1 - lam)``
centred on a uniform pixel and clipped) are torchvision's ``v2.MixUp`` and ``v2.CutMix``; torchvision draws from
the global generator, here every draw comes from the step's generator so that a resumed run mixes the same way.
Shapes: images ``(B, C, H, W)``, labels ``(B,)``, targets ``(B, K)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["BatchMix", "cutmix", "cutmix_box", "mixup"]


def mixup(images: Tensor, targets: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """``lam`` of each image and target plus ``1 - lam`` of its neighbour's (``roll(1)`` over the batch)."""
    return lam * images + (1 - lam) * images.roll(1, 0), lam * targets + (1 - lam) * targets.roll(1, 0)


def cutmix_box(lam: float, height: int, width: int, centre: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the box of half-sides ``int(0.5 sqrt(1 - lam) H)`` and ``... W`` around ``centre``
    ``(cy, cx)``, clipped to the image."""
    half = 0.5 * float(np.sqrt(1.0 - lam))
    half_h, half_w = int(half * height), int(half * width)
    cy, cx = centre
    return max(cy - half_h, 0), min(cy + half_h, height), max(cx - half_w, 0), min(cx + half_w, width)


def cutmix(images: Tensor, targets: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
    """Each image with the neighbour's pixels inside ``box``; targets weighted by the area each keeps."""
    y0, y1, x0, x1 = box
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images.roll(1, 0)[..., y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (images.shape[-2] * images.shape[-1])
    return mixed, kept * targets + (1 - kept) * targets.roll(1, 0)


class BatchMix:
    """MixUp or CutMix on every batch, ``lam ~ Beta(alpha, alpha)``; with both on, CutMix with probability
    ``switch_probability`` (timm's ``Mixup`` convention).

    Args:
        mixup_alpha: MixUp's Beta parameter (0: off).
        cutmix_alpha: CutMix's Beta parameter (0: off).
        switch_probability: Chance of CutMix when both are on.
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_probability: float = 0.5) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha + cutmix_alpha == 0:
            raise ValueError(
                f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}: expected values >= 0, at least one positive "
                "(objective.mix=null turns mixing off)"
            )
        if not 0 <= switch_probability <= 1:
            raise ValueError(f"switch_probability must lie in [0, 1], got {switch_probability}")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_probability = switch_probability

    def __call__(
        self, images: Tensor, labels: Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W), (B,) -> mixed (B, C, H, W), soft targets (B, K)``."""
        # numpy's Beta from a seed of the step's generator: torch's Beta has no generator argument
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_probability)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        targets = F.one_hot(labels, num_classes).to(images.dtype)
        if not use_cutmix:
            return mixup(images, targets, lam)
        height, width = images.shape[-2:]
        centre = (int(rng.integers(height)), int(rng.integers(width)))
        return cutmix(images, targets, cutmix_box(lam, height, width, centre))

    def describe(self) -> dict[str, float]:
        """The settings, for model cards."""
        return {
            "mixup_alpha": self.mixup_alpha,
            "cutmix_alpha": self.cutmix_alpha,
            "switch_probability": self.switch_probability,
        }
