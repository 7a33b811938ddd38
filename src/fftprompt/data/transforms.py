"""Image and joint image/mask transforms (torchvision.transforms.v2).

Inputs are ``tv_tensors.Image`` (``uint8`` or ``float32`` in ``[0, 1]``) and, for segmentation, ``tv_tensors.Mask``
``(H, W)`` ``uint8``; v2 applies the same geometry to both and resizes masks with nearest-neighbour interpolation.
Outputs are normalised ``float32`` images ``(3, S, S)`` and ``int64`` masks ``(S, S)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

Policy = Literal["texture", "symmetry", "segmentation"]
POLICIES = ("texture", "symmetry", "segmentation")


def _geometry(policy: Policy, image_size: int, train: bool, augment: bool) -> list[v2.Transform]:
    if policy == "texture":
        # Textures keep their class under crops, rescaling and mirroring.
        if train and augment:
            return [v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        return [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if policy == "segmentation":
        # Lesions and polyps have no canonical orientation; evaluation sees the whole (squashed) image.
        if train and augment:
            return [
                v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
            ]
        return [v2.Resize((image_size, image_size), antialias=True)]
    if policy == "symmetry":
        # Flips and rotations turn mirror_diag into mirror_antidiag (and so on); square crops with isotropic scaling
        # are the only geometry that keeps every symmetry class.
        if train and augment:
            return [v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(1.0, 1.0), antialias=True)]
        return [v2.Resize((image_size, image_size), antialias=True)]
    raise ValueError(f"transform policy {policy!r} is not one of {POLICIES}")


def build_transform(
    policy: Policy,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    augment: bool,
) -> v2.Compose:
    """Geometry (augmentation when ``train and augment``), then conversion to ``float32`` and normalisation.

    Args:
        policy: ``"texture"`` (classification of textures and medical images), ``"symmetry"`` (the generated
            benchmark: label-preserving geometry only) or ``"segmentation"`` (joint image/mask geometry).
        image_size: output side ``S``.
        mean: per-channel mean subtracted after scaling to ``[0, 1]``.
        std: per-channel standard deviation divided by.
        train: whether this is the training split's transform.
        augment: whether to use random augmentation on the training split.

    Returns:
        A transform mapping ``Image`` -> ``(3, S, S)`` float, or ``(Image, Mask)`` -> ``((3, S, S) float,
        (S, S) int64)``.
    """
    return v2.Compose(
        [
            *_geometry(policy, image_size, train, augment),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the normalisation for display.

    Args:
        images: ``(3, H, W)`` or ``(B, 3, H, W)`` normalised images.
        mean: the mean used for normalisation.
        std: the standard deviation used for normalisation.

    Returns:
        Same shape, ``float32`` in ``[0, 1]``.
    """
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return (images.float() * std_t + mean_t).clamp(0.0, 1.0)
