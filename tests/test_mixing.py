"""MixUp / CutMix of the pretraining batches: equal to torchvision's v2.MixUp and v2.CutMix for the same draws,
Beta-distributed, seeded by the step's generator, and the soft-target loss that of the two labels weighted."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from fftprompt.pretrain import BatchMix, Supervised, ViewAugment
from fftprompt.pretrain.mixing import cutmix, cutmix_box, mixup


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(6, 3, 16, 20, generator=generator), torch.tensor([0, 1, 2, 3, 1, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_and_cutmix_equal_torchvisions_for_the_same_draws(seed: int):
    images, labels = _batch(seed)
    targets = F.one_hot(labels, 4).float()
    # torchvision draws lam (and CutMix's centre) from the global generator: replay its draws, then compare
    torch.manual_seed(seed)
    expected_images, expected_targets = v2.MixUp(alpha=0.8, num_classes=4)(images, labels)
    torch.manual_seed(seed)
    lam = float(torch.distributions.Beta(torch.tensor([0.8]), torch.tensor([0.8])).sample(()))
    mixed, soft = mixup(images, targets, lam)
    torch.testing.assert_close(mixed, expected_images)
    torch.testing.assert_close(soft, expected_targets)

    torch.manual_seed(seed)
    expected_images, expected_targets = v2.CutMix(alpha=1.0, num_classes=4)(images, labels)
    torch.manual_seed(seed)
    lam = float(torch.distributions.Beta(torch.tensor([1.0]), torch.tensor([1.0])).sample(()))
    centre_x, centre_y = int(torch.randint(20, size=(1,))), int(torch.randint(16, size=(1,)))
    mixed, soft = cutmix(images, targets, cutmix_box(lam, 16, 20, (centre_y, centre_x)))
    torch.testing.assert_close(mixed, expected_images)
    torch.testing.assert_close(soft, expected_targets)


def test_batch_mix_is_seeded_and_its_mixup_weights_are_beta_distributed():
    images, labels = _batch()
    mix = BatchMix(mixup_alpha=0.4, cutmix_alpha=0.0)
    first = mix(images, labels, 4, torch.Generator().manual_seed(7))
    again = mix(images, labels, 4, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # image 0 (class 0) is blended with image 5 (class 0 too) and image 1 (class 1) with image 0: lam = targets[1, 1]
    draws = [float(mix(images, labels, 4, torch.Generator().manual_seed(s))[1][1, 1]) for s in range(400)]
    assert scipy.stats.kstest(draws, scipy.stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    # CutMix alone: every image keeps the share of its pixels its target says
    mixed, targets = BatchMix(mixup_alpha=0.0, cutmix_alpha=1.0)(images, labels, 4, torch.Generator().manual_seed(3))
    kept = (mixed == images).all(dim=1).float().mean(dim=(1, 2))
    torch.testing.assert_close(targets[1, 1], kept[1])
    assert torch.allclose(targets.sum(dim=1), torch.ones(6))


def test_cutmix_box_is_clipped_to_the_image():
    assert cutmix_box(0.0, 16, 20, (0, 0)) == (0, 8, 0, 10)  # half-sides 8 and 10 around the corner
    assert cutmix_box(1.0, 16, 20, (5, 7)) == (5, 5, 7, 7)  # lam = 1: an empty box
    with pytest.raises(ValueError, match="at least one positive"):
        BatchMix(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="switch_probability"):
        BatchMix(switch_probability=1.5)


def test_supervised_with_mixing_weights_the_two_labels_losses():
    images, labels = _batch()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 20, 8))
    objective = Supervised(num_features=8, num_classes=4, label_smoothing=0.0, mix=BatchMix(0.8, 0.0))
    views, targets = objective.views(images, labels, torch.Generator().manual_seed(1))
    assert targets.shape == (6, 4) and objective.describe()["mix"]["mixup_alpha"] == 0.8
    assert objective.name == "supervised_mix" and Supervised(8, 4, augment=ViewAugment()).name == "ofdb"
    lam = float(targets[1, 1])
    loss, accuracy = objective.loss(model, views, targets)
    logits = objective.classifier(model(views[0]))
    expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels.roll(1, 0))
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5) and 0 <= float(accuracy) <= 1
