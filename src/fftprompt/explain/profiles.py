"""Class profiles: mean symmetry scores and orientation energy of the patches of each class (features only, no
model)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fftprompt.spectral import FrequencyFeatures

__all__ = ["ClassProfiles", "class_profiles"]


@dataclass
class ClassProfiles:
    """Mean frequency features of the patches of each class.

    Attributes:
        class_names: ``K`` names.
        symmetry: ``(K, 6)`` mean symmetry scores (:data:`~fftprompt.spectral.SYMMETRY_NAMES` order).
        orientation: ``(K, A)`` mean energy fraction per orientation bin (bin ``a`` centred on ``a * 180 / A`` deg).
        coherence: ``(K,)`` mean orientation coherence (length of the dominant-orientation vector).
        patches: ``(K,)`` number of patches averaged (for classification, every patch of an image has its label;
            for segmentation, a patch has the label most of its pixels have).
    """

    class_names: list[str]
    symmetry: Tensor
    orientation: Tensor
    coherence: Tensor
    patches: Tensor


def class_profiles(
    features: FrequencyFeatures,
    batches: Iterable[tuple[Tensor, Tensor]],
    class_names: Sequence[str],
    max_images: int | None = None,
) -> ClassProfiles:
    """Per-class means of the symmetry and orientation maps over ``(images (B, C, H, W), targets)`` batches.

    Targets are ``(B,)`` class indices or ``(B, H, W)`` masks. ``max_images`` stops after that many images.
    """
    num_classes = len(class_names)
    sums = {"symmetry": 0.0, "orientation": 0.0, "coherence": 0.0}
    counts = torch.zeros(num_classes, dtype=torch.float64)
    seen = 0
    for images, targets in batches:
        if max_images is not None and seen >= max_images:
            break
        if max_images is not None:
            images, targets = images[: max_images - seen], targets[: max_images - seen]
        seen += images.shape[0]
        with torch.no_grad():
            maps = features(images.float())
        h, w = maps.symmetry.shape[-2:]
        if targets.ndim == 1:
            labels = targets.view(-1, 1, 1).expand(-1, h, w)
        else:  # majority label of each patch's pixels
            labels = F.adaptive_avg_pool2d(F.one_hot(targets.long(), num_classes).permute(0, 3, 1, 2).float(), (h, w))
            labels = labels.argmax(dim=1)
        one_hot = F.one_hot(labels.long(), num_classes).double()  # (B, h, w, K)
        coherence = maps.dominant_orientation.norm(dim=1, keepdim=True)
        for name, values in (("symmetry", maps.symmetry), ("orientation", maps.orientation), ("coherence", coherence)):
            sums[name] = sums[name] + torch.einsum("bchw,bhwk->kc", values.double(), one_hot)
        counts += one_hot.sum(dim=(0, 1, 2))
    if seen == 0:
        raise ValueError("class_profiles got no images")
    means = {name: (value / counts.clamp_min(1).unsqueeze(1)).float() for name, value in sums.items()}
    return ClassProfiles(
        class_names=list(class_names),
        symmetry=means["symmetry"],
        orientation=means["orientation"],
        coherence=means["coherence"].squeeze(1),
        patches=counts.long(),
    )
