"""Linear probe: multinomial logistic regression fitted by full-batch L-BFGS on standardised features (the maths of
``fftprompt-probe`` and of the pretraining's checkpoint selection, :class:`fftprompt.pretrain.ProbeSelection`).

The DINO ``eval_linear`` convention: the weight decay is chosen on a validation split from a small grid, the test
split is read once with the chosen value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["LinearProbe", "Standardizer", "fit_linear_probe", "logistic_objective"]


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
    standardizer = Standardizer.fit(features.double())
    x, y = standardizer(features.double()), labels.long()
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
