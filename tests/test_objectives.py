"""Pretraining objectives and their views: NT-Xent against a numpy loop, the views against torchvision's formulas,
seeded determinism, and a classless source refused by the supervised objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from fftprompt.pretrain import SimCLR, Supervised, ViewAugment, nt_xent
from fftprompt.pretrain.views import colour_jitter, random_flip, random_grayscale, random_resized_crop


def nt_xent_reference(first: np.ndarray, second: np.ndarray, temperature: float) -> float:
    """SimCLR's loss written as in the paper's algorithm 1: l(i, j) summed over both orders of every pair."""
    z = np.concatenate([first, second]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(first)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        logits = np.array([z[i] @ z[k] / temperature for k in range(2 * n) if k != i])
        positive = z[i] @ z[j] / temperature
        total += -positive + np.log(np.exp(logits).sum())
    return total / (2 * n)


def test_nt_xent_matches_the_papers_loss_and_finds_identical_views():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    loss, accuracy = nt_xent(first, second, 0.3)
    assert loss.item() == pytest.approx(nt_xent_reference(first.numpy(), second.numpy(), 0.3), rel=1e-5)
    # identical views of well-separated embeddings: every anchor's nearest other embedding is its positive
    separated = torch.eye(6) * 5
    loss_same, accuracy_same = nt_xent(separated, separated, 0.1)
    assert accuracy_same.item() == 1.0 and loss_same.item() < loss.item()
    assert 0.0 <= accuracy.item() <= 1.0


def test_resized_crop_of_the_whole_image_is_the_identity_and_a_half_crop_magnifies():
    images = torch.rand(3, 3, 16, 16)
    generator = torch.Generator().manual_seed(0)
    whole = random_resized_crop(images, (1.0, 1.0), (1.0, 1.0), generator)
    assert torch.allclose(whole, images, atol=1e-5)
    # a quarter of the area with aspect 1: a 8x8 window resized to 16x16 (a 2x magnification of a constant ramp)
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 3, 16, 16).contiguous()
    crop = random_resized_crop(ramp, (0.25, 0.25), (1.0, 1.0), generator)
    steps = crop[0, 0, 8, 1:-1].diff()
    assert torch.allclose(steps, torch.full_like(steps, 0.5), atol=1e-4)


def test_colour_jitter_and_grayscale_follow_torchvisions_formulas():
    images = torch.rand(4, 3, 8, 8)
    generator = torch.Generator().manual_seed(1)
    draws = torch.Generator().manual_seed(1)
    factors = [1 + (2 * torch.rand((4, 1, 1, 1), generator=draws) - 1) * 0.4 for _ in range(3)]
    jittered = colour_jitter(images, 0.4, 0.4, 0.4, 1.0, generator)
    for index in range(4):
        expected = TF.adjust_brightness(images[index], float(factors[0][index]))
        expected = TF.adjust_contrast(expected, float(factors[1][index]))
        expected = TF.adjust_saturation(expected, float(factors[2][index]))
        assert torch.allclose(jittered[index], expected, atol=1e-5)
    grey = random_grayscale(images, torch.Generator().manual_seed(0), 1.0)
    assert torch.allclose(grey, TF.rgb_to_grayscale(images, num_output_channels=3), atol=1e-6)
    assert torch.equal(random_grayscale(images, torch.Generator().manual_seed(0), 0.0), images)
    flipped = random_flip(images, torch.Generator().manual_seed(0), 1.0)
    assert torch.equal(flipped, images.flip(-1))


def test_views_are_seeded_per_image_and_stay_in_range():
    augment = ViewAugment()
    images = torch.rand(8, 3, 16, 16)
    first = augment(images, torch.Generator().manual_seed(5))
    again = augment(images, torch.Generator().manual_seed(5))
    other = augment(images, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    # every image of the batch gets its own crop: the views' differences from the originals are not all alike
    errors = (first - images).abs().mean(dim=(1, 2, 3))
    assert errors.std() > 0
    with pytest.raises(ValueError, match="crop_scale"):
        ViewAugment(crop_scale=(0.5, 0.2))


def test_objectives_train_their_heads_and_refuse_what_they_cannot_use():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16))
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    generator = torch.Generator().manual_seed(0)
    supervised = Supervised(num_features=16, num_classes=3)
    views, targets = supervised.views(images, labels, generator)
    assert len(views) == 1 and torch.equal(views[0], images) and targets is labels
    loss, accuracy = supervised.loss(model, views, labels)
    loss.backward()
    assert supervised.classifier.weight.grad is not None and 0 <= accuracy <= 1
    with pytest.raises(ValueError, match="objective=simclr"):
        Supervised(num_features=16, num_classes=0)
    simclr = SimCLR(num_features=16, num_classes=0)
    views, _ = simclr.views(images, labels, generator)
    assert len(views) == 2 and not torch.equal(views[0], views[1])
    loss, _ = simclr.loss(model, views, labels)
    loss.backward()
    assert simclr.projector[0].weight.grad is not None and simclr.describe()["objective"] == "simclr"


@pytest.mark.parametrize(("scales", "width"), [((), 46), ((0.5, 2.0), 138)])
def test_statistics_regression_is_zero_for_features_that_are_the_standardised_fft_statistics(scales, width):
    from fftprompt.spectral import FrequencyFeatures, map_statistics

    images = torch.rand(6, 3, 32, 32)
    # the statistics at each patch size from its own extractor, independently of statistics_scales
    statistics = np.concatenate(
        [
            map_statistics(FrequencyFeatures(patch_size=size)(images).compact()).double().numpy()
            for size in [8] + [int(8 * scale) for scale in scales]
        ],
        axis=1,
    )
    spread = np.maximum(statistics.std(axis=0, ddof=1), 1e-6)  # some maps are constant over a batch
    standardised = (statistics - statistics.mean(axis=0)) / spread
    simclr = SimCLR(num_features=width, statistics_weight=0.5, statistics_patch_size=8, statistics_scales=scales)
    assert simclr.regressor.out_features == statistics.shape[1] == width
    assert simclr.describe()["statistics_scales"] == list(scales)
    with torch.no_grad():
        simclr.regressor.weight.copy_(torch.eye(width))
        simclr.regressor.bias.zero_()
    exact = simclr.statistics_loss(torch.from_numpy(standardised).float(), images)
    assert exact.item() < 1e-6
    shifted = simclr.statistics_loss(torch.from_numpy(standardised + 1.0).float(), images)
    assert shifted.item() == pytest.approx(1.0, rel=1e-4)
    # the contrastive loss alone without the weight; the weighted sum with it
    model = torch.nn.Identity()
    views = [torch.rand(4, width), torch.rand(4, width)]
    plain = SimCLR(num_features=width)
    assert plain.regressor is None and plain.describe()["statistics_weight"] == 0.0
    with pytest.raises(ValueError, match="statistics_weight"):
        SimCLR(num_features=width, statistics_weight=-1.0)
    with pytest.raises(ValueError, match="statistics_scales"):
        SimCLR(num_features=width, statistics_scales=(2.0,))
    assert plain.loss(model, views, None)[0].item() > 0
