"""Linear probe: multinomial logistic regression fitted by full-batch L-BFGS on standardised features (the maths of
``fftprompt-probe`` and of the pretraining's checkpoint selection, :class:`fftprompt.pretrain.ProbeSelection`).

The DINO ``eval_linear`` convention: the weight decay is chosen on a validation split from a small grid, the test
split is read once with the chosen value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["LinearProbe", "Standardizer", "fit_linear_probe", "logistic_objective", "select_linear_probe"]


@dataclass
class Standardizer:
    """Per-feature mean and std of the training features; ``(N, F) -> (N, F)`` zero mean, unit variance.

    Constant features (std 0) are centred and left unscaled, so they stay 0 instead of becoming NaN.
    """

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, features: Tensor) -> Standardizer:
        """Statistics of ``(N, F)`` training features."""
        std = features.std(dim=0, correction=0)
        return cls(features.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std)))

    def __call__(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std


def logistic_objective(weight: Tensor, bias: Tensor, features: Tensor, labels: Tensor, weight_decay: float) -> Tensor:
    """Mean cross-entropy of ``features @ weight.T + bias`` plus ``weight_decay / 2 * ||weight||^2`` (bias free).

    Args:
        weight: ``(K, F)``.
        bias: ``(K,)``.
        features: ``(N, F)``.
        labels: ``(N,)`` class indices.
        weight_decay: L2 coefficient (the gradient of the penalty is ``weight_decay * weight``, as SGD's decay).
    """
    logits = features @ weight.T + bias
    return F.cross_entropy(logits, labels) + 0.5 * weight_decay * weight.square().sum()


@dataclass
class LinearProbe:
    """A fitted probe: the training features' standardisation and the linear classifier on top.

    Attributes:
        standardizer: Fitted on the training features.
        weight: ``(K, F)``.
        bias: ``(K,)``.
        weight_decay: The L2 coefficient it was fitted with.
        iterations: L-BFGS iterations used.
    """

    standardizer: Standardizer
    weight: Tensor
    bias: Tensor
    weight_decay: float
    iterations: int

    def logits(self, features: Tensor) -> Tensor:
        """``(N, F) -> (N, K)``."""
        return self.standardizer(features.to(self.weight.dtype)) @ self.weight.T + self.bias

    def predict(self, features: Tensor) -> Tensor:
        """``(N, F) -> (N,)`` class indices."""
        return self.logits(features).argmax(dim=1)

    def folded(self) -> tuple[Tensor, Tensor]:
        """The standardisation folded into the classifier: ``(K, F)`` weight and ``(K,)`` bias with
        ``features @ weight.T + bias == logits(features)`` on raw features."""
        weight = self.weight / self.standardizer.std
        return weight, self.bias - weight @ self.standardizer.mean


def fit_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decay: float,
    *,
    max_iter: int = 1000,
    tolerance: float = 1e-9,
) -> LinearProbe:
    """Fits multinomial logistic regression on standardised ``features`` by full-batch L-BFGS (float64, from zero).

    The objective is strictly convex for ``weight_decay > 0``, so the result depends on neither a seed nor the
    starting point.

    Args:
        features: ``(N, F)`` training features.
        labels: ``(N,)`` class indices in ``[0, num_classes)``.
        num_classes: ``K``.
        weight_decay: L2 coefficient (:func:`logistic_objective`); must be positive.
        max_iter: L-BFGS iteration limit.
        tolerance: Stop when the gradient's largest entry is below this.
    """
    if weight_decay <= 0:
        raise ValueError(f"weight_decay={weight_decay}; expected a positive value (the grid's entries)")
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"expected features (N, F) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    features = features.detach().double()  # the probe never backpropagates into what made the features
    standardizer = Standardizer.fit(features)
    x, y = standardizer(features), labels.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = logistic_objective(weight, bias, x, y, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    return LinearProbe(standardizer, weight.detach(), bias.detach(), float(weight_decay), iterations)


def select_linear_probe(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    num_classes: int,
    weight_decays: Sequence[float],
) -> tuple[LinearProbe, list[float]]:
    """Fits a probe for every weight decay on ``train`` and keeps the one with the best accuracy on ``val``.

    Args:
        train: Training ``(features (N, F), labels (N,))``.
        val: Validation ``(features (M, F), labels (M,))``, the split that chooses.
        num_classes: ``K``.
        weight_decays: The grid; of equal validation scores the earlier entry wins.

    Returns:
        The chosen probe and every grid entry's validation accuracy, in the grid's order.
    """
    if not weight_decays:
        raise ValueError("weight_decays is empty; give at least one positive value")
    probes = [fit_linear_probe(*train, num_classes, float(value)) for value in weight_decays]
    features, labels = val
    scores = [float((probe.predict(features) == labels).double().mean()) for probe in probes]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return probes[best], scores
