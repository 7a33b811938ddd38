"""Weighted k-nearest-neighbour classifier on L2-normalised features (DINO ``eval_knn``).

Each of the ``k`` most cosine-similar training images votes for its class with weight ``exp(similarity / T)``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["knn_predict", "knn_votes"]


def knn_votes(
    train_features: Tensor,
    train_labels: Tensor,
    features: Tensor,
    num_classes: int,
    k: int,
    temperature: float = 0.07,
) -> Tensor:
    """Temperature-weighted votes of the ``k`` nearest training images (cosine similarity).

    Args:
        train_features: ``(N, F)``.
        train_labels: ``(N,)`` class indices.
        features: ``(M, F)`` queries.
        num_classes: ``K``.
        k: Neighbours per query, ``1 <= k <= N``.
        temperature: ``T`` of the vote weights ``exp(s / T)``.

    Returns:
        ``(M, K)`` summed vote weights per class.
    """
    if not 1 <= k <= train_features.shape[0]:
        raise ValueError(f"k={k}; expected 1 <= k <= {train_features.shape[0]} (the training images)")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; expected a positive value")
    similarity = F.normalize(features.double(), dim=1) @ F.normalize(train_features.double(), dim=1).T  # (M, N)
    top_similarity, top_index = similarity.topk(k, dim=1)
    weights = (top_similarity / temperature).exp()
    votes = torch.zeros(features.shape[0], num_classes, dtype=torch.float64)
    return votes.scatter_add_(1, train_labels.long()[top_index], weights)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    features: Tensor,
    num_classes: int,
    k: int,
    temperature: float = 0.07,
) -> Tensor:
    """``(M, F) -> (M,)`` class indices with the most vote weight (:func:`knn_votes`)."""
    return knn_votes(train_features, train_labels, features, num_classes, k, temperature).argmax(dim=1)
