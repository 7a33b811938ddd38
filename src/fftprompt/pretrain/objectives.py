"""Pretraining objectives: what the ViT learns from a rendered batch.

An objective owns the head on the ViT's pooled features (dropped when the backbone is written), makes the views of
a batch (in ``[0, 1]``, before normalisation) and turns the model's outputs on them into a loss and an accuracy for
the learning curve. Both take ``num_features`` (the ViT's width) and ``num_classes`` (the source's, 0 without
classes), which ``fftprompt-pretrain`` passes:

- :class:`Supervised`: a linear classifier and cross-entropy on the source's classes (FractalDB, VisualAtom),
  optionally on one augmented view per image (OFDB's instance augmentation) and with MixUp/CutMix
  (:class:`~fftprompt.pretrain.mixing.BatchMix`, soft targets).
- :class:`SimCLR`: the NT-Xent contrastive loss between two augmented views of every image (Chen et al., ICML 2020),
  through a projection MLP; needs no classes, so it trains on any source. Optionally the pooled features also
  regress the views' orderless FFT statistics (:func:`fftprompt.spectral.map_statistics` of the frequency maps),
  so that the backbone learns to carry the frequency descriptor the project's probes measure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fftprompt.pretrain.mixing import BatchMix
from fftprompt.pretrain.views import ViewAugment
from fftprompt.spectral import FrequencyFeatures

__all__ = ["SimCLR", "Supervised", "nt_xent"]


def nt_xent(first: Tensor, second: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """SimCLR's normalised-temperature cross-entropy over ``2B`` embeddings, each image's other view its positive.

    Args:
        first: ``(B, E)`` embeddings of the first views.
        second: ``(B, E)`` embeddings of the second views.
        temperature: Softmax temperature of the cosine similarities.

    Returns:
        ``(loss, accuracy)``: the mean loss over the ``2B`` anchors and the share whose most similar other
        embedding is their positive.
    """
    embeddings = F.normalize(torch.cat([first, second]).float(), dim=1)
    similarity = embeddings @ embeddings.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    count = first.shape[0]
    index = torch.arange(count, device=first.device)
    targets = torch.cat([index + count, index])
    loss = F.cross_entropy(similarity, targets)
    return loss, (similarity.argmax(dim=1) == targets).float().mean()


class Supervised(nn.Module):
    """Cross-entropy on the source's classes through a linear classifier ``(B, D) -> (B, K)``.

    Args:
        num_features: ``D``, the model's pooled feature width.
        num_classes: ``K >= 2``, the source's classes (a source without classes is refused).
        label_smoothing: Cross-entropy label smoothing.
        augment: Random view of each image before the step (null: the rendered images as they are).
        mix: MixUp/CutMix of the (augmented) batch, with soft targets (null: none).
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        label_smoothing: float = 0.1,
        augment: ViewAugment | None = None,
        mix: BatchMix | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                "objective=supervised needs a source with classes (fractaldb, contours); this source has "
                f"num_classes={num_classes}: use objective=simclr"
            )
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.classifier = nn.Linear(num_features, num_classes)
        self.label_smoothing = label_smoothing
        self.augment = augment
        self.mix = mix

    @property
    def name(self) -> str:
        """``supervised``, ``ofdb`` with random views, ``_mix`` appended with mixing (the default weights' name)."""
        return ("supervised" if self.augment is None else "ofdb") + ("" if self.mix is None else "_mix")

    def views(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
        """``(B, 3, H, W)`` in ``[0, 1]``, labels ``(B,)`` -> ``([(B, 3, H, W)], targets)``: the labels, or soft
        targets ``(B, K)`` with mixing."""
        view = images if self.augment is None else self.augment(images, generator)
        if self.mix is None:
            return [view], labels
        mixed, targets = self.mix(view, labels, self.classifier.out_features, generator)
        return [mixed], targets

    def loss(self, model: nn.Module, views: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, accuracy)`` of the classifier's logits on the single view, against class indices ``(B,)`` or
        soft targets ``(B, K)`` (accuracy against their largest class)."""
        logits = self.classifier(model(views[0]))
        soft = targets.ndim == 2
        loss = F.cross_entropy(
            logits.float(), targets.float() if soft else targets, label_smoothing=self.label_smoothing
        )
        labels = targets.argmax(dim=1) if soft else targets
        return loss, (logits.argmax(dim=1) == labels).float().mean()

    def describe(self) -> dict[str, object]:
        """The settings, for model cards."""
        augment = None if self.augment is None else self.augment.describe()
        mix = None if self.mix is None else self.mix.describe()
        return {"objective": self.name, "label_smoothing": self.label_smoothing, "augment": augment, "mix": mix}


class SimCLR(nn.Module):
    """Contrastive learning between two views of every image (NT-Xent), through a projection MLP.

    ``Linear(D, hidden) - GELU - Linear(hidden, projection_dim)`` maps the ViT's pooled features ``(B, D)`` to the
    embeddings.

    Args:
        num_features: ``D``, the model's pooled feature width.
        num_classes: The source's classes (unused: any source will do).
        temperature: NT-Xent temperature.
        hidden_dim: Width of the projection MLP.
        projection_dim: Width of the embeddings.
        augment: The views (default :class:`ViewAugment`'s settings).
        statistics_weight: Weight of the auxiliary loss: the mean squared error of a linear regression from the
            pooled features to the views' FFT statistics (``2 C_f`` numbers of ``FrequencyFeatures(patch_size)``,
            standardised over the batch); 0 turns it off.
        statistics_patch_size: Patch size of those frequency maps (the ViT's, for the probe's descriptor).
        statistics_scales: Other patch sizes, as multiples of ``statistics_patch_size``, whose statistics are
            regressed too (``FrequencyFeatures(statistics_scales=...)``: ``2 C_f`` more numbers per scale).
    """

    name = "simclr"

    def __init__(
        self,
        num_features: int,
        num_classes: int = 0,
        temperature: float = 0.2,
        hidden_dim: int = 512,
        projection_dim: int = 128,
        augment: ViewAugment | None = None,
        statistics_weight: float = 0.0,
        statistics_patch_size: int = 8,
        statistics_scales: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if statistics_weight < 0:
            raise ValueError(f"statistics_weight must be >= 0, got {statistics_weight}")
        if statistics_scales and statistics_weight == 0:
            raise ValueError(
                f"statistics_scales={list(statistics_scales)} has no effect without statistics_weight > 0: set "
                "objective.statistics_weight or leave statistics_scales empty"
            )
        if temperature <= 0 or min(num_features, hidden_dim, projection_dim) < 1:
            raise ValueError(
                "expected temperature > 0 and num_features, hidden_dim, projection_dim >= 1; got "
                f"{temperature}, {num_features}, {hidden_dim}, {projection_dim}"
            )
        self.temperature = temperature
        self.augment = augment if augment is not None else ViewAugment()
        self.projector = nn.Sequential(
            nn.Linear(num_features, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, projection_dim)
        )
        self.statistics_weight = statistics_weight
        self.frequency = (
            FrequencyFeatures(patch_size=statistics_patch_size, statistics_scales=statistics_scales)
            if statistics_weight > 0
            else None
        )
        self.regressor = nn.Linear(num_features, self.frequency.num_statistics) if self.frequency is not None else None

    def views(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> two independent views of each image, and the labels (unused)."""
        return [self.augment(images, generator), self.augment(images, generator)], labels

    def loss(self, model: nn.Module, views: list[Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, accuracy)`` of NT-Xent on the projected features of both views, in one forward pass (plus the
        weighted statistics regression, when on)."""
        images = torch.cat(views)
        features = model(images)
        first, second = self.projector(features).chunk(2)
        loss, accuracy = nt_xent(first, second, self.temperature)
        if self.frequency is not None:
            loss = loss + self.statistics_weight * self.statistics_loss(features, images)
        return loss, accuracy

    def statistics_loss(self, features: Tensor, images: Tensor) -> Tensor:
        """Mean squared error of ``regressor(features) (N, 2 C_f S)`` against the images' FFT statistics at ``S``
        patch sizes, each standardised over the batch (no gradient flows into the targets)."""
        with torch.no_grad():
            targets = self.frequency(images.float()).statistics()
            targets = (targets - targets.mean(dim=0)) / targets.std(dim=0).clamp_min(1e-6)
        return F.mse_loss(self.regressor(features).float(), targets)

    def describe(self) -> dict[str, object]:
        """The settings, for model cards."""
        return {
            "objective": self.name,
            "temperature": self.temperature,
            "hidden_dim": self.projector[0].out_features,
            "projection_dim": self.projector[2].out_features,
            "augment": self.augment.describe(),
            "statistics_weight": self.statistics_weight,
            "statistics_patch_size": None if self.frequency is None else self.frequency.patch_size,
            "statistics_scales": None if self.frequency is None else list(self.frequency.statistics_scales),
        }
