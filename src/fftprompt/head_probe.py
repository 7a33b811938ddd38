"""LP-FT: the classification head fitted as an L-BFGS linear probe on a model's pooled features before training.

Linear probing, then fine-tuning (Kumar et al., ICLR 2022): the head starts at the fitted probe of the starting
features instead of at random, so training begins where a probe ends. The features are the head's inputs
(:meth:`fftprompt.heads.ClassificationHead.probe_inputs`) of the model's pooled tokens, computed in eval mode without
gradients; the fit is :func:`fftprompt.linear_probe.select_linear_probe`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fftprompt.linear_probe import fit_linear_probe, select_linear_probe
from fftprompt.model import PromptedViT

__all__ = ["fit_head_probe", "head_inputs"]


@torch.no_grad()
def head_inputs(
    model: PromptedViT,
    dataset: Dataset,
    batch_size: int,
    device: torch.device | str = "cpu",
    preprocess: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(N, D)`` float64 head inputs and ``(N,)`` labels of ``dataset``'s images, the model in eval mode (restored).

    Args:
        model: A classification model whose head has ``probe_inputs``.
        dataset: ``(image (C, H, W), label)`` items.
        batch_size: Images per forward pass.
        device: Where the model runs.
        preprocess: Applied to each ``(B, C, H, W)`` batch on the device first (a batch augmentation's evaluation).
    """
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            images = images.to(device)
            if preprocess is not None:
                images = preprocess(images)
            features.append(model.head.probe_inputs(model.forward_pooled(images)).double().cpu())
            labels.append(torch.as_tensor(targets).long().cpu())
    finally:
        model.train(was_training)
    return torch.cat(features), torch.cat(labels)


def fit_head_probe(
    model: PromptedViT,
    train: Dataset,
    val: Dataset | None,
    num_classes: int,
    weight_decays: Sequence[float],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    preprocess: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Fits ``model``'s head as a linear probe on ``train`` (weight decay chosen on ``val``) and loads it.

    Args:
        model: A classification model whose head has ``probe_inputs`` and ``load_probe``.
        train: The training images (without random augmentation).
        val: The validation images; needed when ``weight_decays`` holds more than one value.
        num_classes: ``K``.
        weight_decays: The L2 grid.
        batch_size: Images per forward pass.
        device: Where the model runs.
        preprocess: See :func:`head_inputs`.

    Returns:
        ``{"weight_decay", "val_accuracy" (per grid entry; ``[None]`` for a grid of one), "train_images"}``.
    """
    head = model.head
    if not hasattr(head, "load_probe"):
        raise ValueError(f"task.module.head_init='probe' needs a linear head; {type(head).__name__} has none")
    features = {"batch_size": batch_size, "device": device, "preprocess": preprocess}
    x_train = head_inputs(model, train, **features)
    if len(weight_decays) > 1:
        if val is None or len(val) == 0:  # type: ignore[arg-type]
            raise ValueError(
                f"task.module.head_init_weight_decays={list(weight_decays)} are chosen on the validation split, "
                "which is empty; give one value"
            )
        probe, scores = select_linear_probe(x_train, head_inputs(model, val, **features), num_classes, weight_decays)
    else:
        probe, scores = fit_linear_probe(*x_train, num_classes, float(weight_decays[0])), [None]
    head.load_probe(probe)
    return {"weight_decay": probe.weight_decay, "val_accuracy": scores, "train_images": len(x_train[1])}
