"""Procedural pretraining sources: the maths against independent references (numpy FFT spectra, the analytic radius
CDF, hand-built occlusions), seeded rendering, class structure, mixtures and the ``configs/source`` options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fftprompt
from fftprompt.pretrain import ColouredNoise, DeadLeaves, Mixture, SinusoidalContours
from fftprompt.pretrain.procedural import (
    DISC,
    RECTANGLE,
    contour_radius,
    power_law_noise,
    power_law_radii,
    shape_masks,
    top_shape,
    top_shape_windowed,
)

SOURCE_DIR = Path(fftprompt.__file__).parent / "configs" / "source"
# a FractalDB small enough to search in a test
TINY_FRACTALDB = {"num_classes": 4, "search_size": 32, "num_chains": 32, "num_steps": 16}


def radial_power_slope(images: np.ndarray, low: int = 2, high: int = 24) -> float:
    """Log-log slope of the batch-averaged power spectrum against the integer radial frequency (cycles/image)."""
    size = images.shape[-1]
    power = (np.abs(np.fft.fft2(images - images.mean(axis=(-2, -1), keepdims=True))) ** 2).reshape(-1, size, size)
    power = power.mean(axis=0)
    k = np.fft.fftfreq(size) * size
    radius = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    bins = np.arange(low, high + 1)
    averaged = np.array([power[radius == r].mean() for r in bins])
    return float(np.polyfit(np.log(bins), np.log(averaged), 1)[0])


@pytest.mark.parametrize("exponent", [0.75, 1.5, 2.25])
def test_noise_power_spectrum_falls_as_f_to_minus_2a(exponent: float):
    generator = torch.Generator().manual_seed(0)
    ones = torch.ones(32)
    fields = power_law_noise(ones * exponent, ones, ones * 0, 64, 1, generator)
    assert fields.shape == (32, 1, 64, 64)
    assert abs(radial_power_slope(fields.double().numpy()) + 2 * exponent) < 0.15
    # the source: grey, isotropic, no grating; its per-image min-max normalisation is affine (keeps the slope)
    noise = ColouredNoise(exponent_range=(exponent, exponent), anisotropy_range=(1, 1), colour=False, grating_prob=0)
    images, _ = noise.sample(32, seed=1)
    assert torch.equal(images[:, 0], images[:, 2])
    assert abs(radial_power_slope(images[:, 0].double().numpy()) + 2 * exponent) < 0.15


def test_noise_anisotropy_elongates_across_the_stretched_axis():
    generator = torch.Generator().manual_seed(0)
    ones = torch.ones(16)
    fields = power_law_noise(ones * 1.5, ones * 4, ones * 0, 32, 1, generator)[:, 0].numpy()
    # stretched along x: power falls faster along x, so the texture varies slowly along x (streaks along x)
    along_x = np.abs(np.diff(fields, axis=2)).mean()
    along_y = np.abs(np.diff(fields, axis=1)).mean()
    assert along_x < 0.6 * along_y


SMALL_SOURCES = {
    "noise": lambda: ColouredNoise(image_size=32),
    "dead_leaves": lambda: DeadLeaves(image_size=32, num_shapes=16),
    "contours": lambda: SinusoidalContours(num_classes=7, image_size=32),
    "mixture": lambda: Mixture(
        [SinusoidalContours(num_classes=3, image_size=32), SinusoidalContours(num_classes=4, seed=1, image_size=32)]
    ),
}


@pytest.mark.parametrize("name", list(SMALL_SOURCES))
def test_sampling_is_seeded_and_in_range(name: str):
    source = SMALL_SOURCES[name]()
    images, labels = source.sample(12, seed=5)
    again, again_labels = source.sample(12, seed=5)
    other, _ = source.sample(12, seed=6)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (12,) and labels.dtype == torch.int64
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other)
    assert images.min() >= 0 and images.max() <= 1 and images.amax(dim=(1, 2, 3)).min() > 0.2
    if source.num_classes == 0:
        assert (labels == 0).all()
    else:
        assert labels.min() >= 0 and labels.max() < source.num_classes
    description = source.describe()
    json.dumps(description)
    assert "generator" in description and len(source.fingerprint()) == 64


def test_radii_follow_the_power_law():
    from scipy.stats import kstest

    alpha, low, high = 3.0, 0.02, 0.5
    radii = power_law_radii(torch.rand(20000, generator=torch.Generator().manual_seed(0)), alpha, low, high).numpy()

    def cdf(r: np.ndarray, a: float = alpha) -> np.ndarray:
        return (r ** (1 - a) - low ** (1 - a)) / (high ** (1 - a) - low ** (1 - a))

    assert radii.min() >= low and radii.max() <= high
    assert kstest(radii, cdf).statistic < 0.012
    assert kstest(radii, lambda r: cdf(r, 2.0)).statistic > 0.05  # the test tells exponents apart
    log_uniform = power_law_radii(torch.rand(20000, generator=torch.Generator().manual_seed(1)), 1.0, low, high)
    assert kstest(log_uniform.numpy(), lambda r: np.log(r / low) / np.log(high / low)).statistic < 0.012


def test_a_shape_painted_later_covers_the_earlier_one():
    # two overlapping discs in a 16 px image: disc 0 at (5, 8) radius 4, disc 1 at (10, 8) radius 4
    centres = torch.tensor([[[5.0, 8.0], [10.0, 8.0]]])
    radii, kinds = torch.tensor([[4.0, 4.0]]), torch.full((1, 2), DISC)
    zeros, ones = torch.zeros(1, 2), torch.ones(1, 2)
    masks = shape_masks(centres, radii, kinds, zeros, ones, 16)
    top = top_shape(masks)[0]
    y, x = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    in0 = (x - 5) ** 2 + (y - 8) ** 2 <= 16
    in1 = (x - 10) ** 2 + (y - 8) ** 2 <= 16
    assert (in0 & in1).any() and (in0 & ~in1).any()
    assert (top[in1] == 1).all() and (top[in0 & ~in1] == 0).all() and (top[~in0 & ~in1] == -1).all()
    # painted the other way round, the overlap belongs to the other disc
    swapped = top_shape(shape_masks(centres.flip(1), radii, kinds, zeros, ones, 16))[0]
    assert (swapped[in0 & in1] == 1).all() and (swapped[in1 & ~in0] == 0).all()
    assert torch.equal(top_shape_windowed(centres, radii, kinds, zeros, ones, 16)[0], top)


def test_windowed_compositing_equals_the_full_masks():
    generator = torch.Generator().manual_seed(2)
    batch, count, size = 4, 48, 32
    radii = power_law_radii(torch.rand(batch, count, generator=generator), 2.0, 0.6, 20.0)
    centres = torch.rand(batch, count, 2, generator=generator) * size
    kinds = torch.randint(3, (batch, count), generator=generator)
    angles = torch.where(kinds == RECTANGLE, torch.rand(batch, count, generator=generator) * math.pi, 0.0)
    aspects = torch.where(kinds == RECTANGLE, 0.3 + 0.7 * torch.rand(batch, count, generator=generator), 1.0)
    reference = top_shape(shape_masks(centres, radii, kinds, angles, aspects, size))
    assert torch.equal(top_shape_windowed(centres, radii, kinds, angles, aspects, size), reference)
    # a large disc's area is about pi r^2
    one = torch.ones(1, 1)
    disc = shape_masks(torch.tensor([[[16.0, 16.0]]]), one * 10, (one * DISC).long(), one * 0, one, 32)
    assert abs(disc.sum().item() - math.pi * 100) < 12


def test_contour_radius_spectrum_peaks_at_the_class_frequencies():
    theta = torch.linspace(0, 2 * math.pi, 257)[:-1].double()
    radius = contour_radius(theta, torch.tensor(1.0), torch.tensor(0.1), 3, torch.tensor(0.05), 11).numpy()
    spectrum = np.abs(np.fft.rfft(radius - radius.mean())) / len(theta)
    assert set(np.argsort(spectrum)[-2:]) == {3, 11}
    assert abs(spectrum[3] - 0.05) < 1e-9 and abs(spectrum[11] - 0.025) < 1e-9


def test_contour_instances_are_closer_within_a_class_and_classes_follow_the_seed():
    contours = SinusoidalContours(num_classes=6, seed=4, image_size=32)
    assert SinusoidalContours(num_classes=6, seed=4, image_size=32).fingerprint() == contours.fingerprint()
    assert SinusoidalContours(num_classes=6, seed=5, image_size=32).fingerprint() != contours.fingerprint()
    assert torch.equal(contours.classes, SinusoidalContours(num_classes=6, seed=4, image_size=32).classes)
    n = contours.classes[:, :2]
    assert (n == n.round()).all() and n.min() >= 0 and n.max() <= 20
    labels = torch.arange(6).repeat_interleave(10)
    params = contours.instances(labels, torch.Generator().manual_seed(0))
    theta = torch.linspace(0, 2 * math.pi, 129)[:-1]
    outer = contour_radius(
        theta[None, :],
        params["base"][:, -1:],
        params["lam1"][:, -1:],
        params["n1"][:, None],
        params["lam2"][:, -1:],
        params["n2"][:, None],
    )
    features = np.abs(np.fft.rfft(outer.double().numpy(), axis=1))[:, 1:]
    distances = np.linalg.norm(features[:, None] - features[None, :], axis=-1)
    same = (labels[:, None] == labels[None, :]).numpy()
    np.fill_diagonal(distances, np.nan)
    for i in range(len(labels)):
        assert np.nanmax(distances[i][same[i]]) < np.nanmin(distances[i][~same[i]])


def test_mixture_offsets_labels_and_follows_the_weights():
    first = SinusoidalContours(num_classes=3, image_size=32)
    second = SinusoidalContours(num_classes=4, seed=1, image_size=32)
    mixture = Mixture([first, second], weights=[1, 3])
    assert mixture.num_classes == 7 and mixture.offsets == [0, 3] and mixture.weights == [0.25, 0.75]
    images, labels = mixture.sample(400, seed=9)
    from_second = labels >= 3
    assert abs(from_second.float().mean().item() - 0.75) < 0.07
    # each component renders exactly its own images, from its derived seed
    expected, expected_labels = second.sample(int(from_second.sum()), Mixture.component_seed(9, 1))
    assert torch.equal(images[from_second], expected) and torch.equal(labels[from_second] - 3, expected_labels)


def test_a_classless_component_makes_the_mixture_classless_and_sizes_must_match():
    mixture = Mixture([SinusoidalContours(num_classes=3, image_size=16), ColouredNoise(image_size=16)])
    assert mixture.num_classes == 0 and mixture.weights == [0.5, 0.5]
    _, labels = mixture.sample(16, seed=0)
    assert (labels == 0).all()
    with pytest.raises(ValueError, match="image_size"):
        Mixture([ColouredNoise(image_size=16), DeadLeaves(image_size=32)])
    with pytest.raises(ValueError, match="image_size=32 differs"):
        Mixture([ColouredNoise(image_size=16)], image_size=32)
    assert Mixture([ColouredNoise(image_size=16)], image_size=16).image_size == 16
    with pytest.raises(ValueError, match="weights"):
        Mixture([ColouredNoise(image_size=16)], weights=[1, 1])


@pytest.mark.parametrize(
    ("factory", "argument"),
    [
        (lambda: ColouredNoise(exponent_range=(2, 1)), "exponent_range"),
        (lambda: ColouredNoise(anisotropy_range=(0.5, 2)), "anisotropy_range"),
        (lambda: ColouredNoise(grating_prob=1.5), "grating_prob"),
        (lambda: DeadLeaves(radius_range=(0, 0.5)), "radius_range"),
        (lambda: DeadLeaves(shapes=["disc", "star"]), "shapes"),
        (lambda: DeadLeaves(num_shapes=0), "num_shapes"),
        (lambda: SinusoidalContours(num_classes=1), "num_classes"),
        (lambda: SinusoidalContours(frequency_range=(0.5, 3)), "frequency_range"),
        (lambda: SinusoidalContours(line_width=0), "line_width"),
    ],
)
def test_invalid_settings_are_refused_by_name(factory, argument: str):
    with pytest.raises(ValueError, match=argument):
        factory()


def _shrink(node) -> None:
    """Every source under ``node`` at 32 px, FractalDB ones tiny."""
    if OmegaConf.is_list(node):
        for item in node:
            _shrink(item)
    elif OmegaConf.is_dict(node):
        if "image_size" in node:
            node.image_size = 32
        if str(node.get("_target_", "")).endswith("FractalDB"):
            node.merge_with(TINY_FRACTALDB)
        for key in node:
            _shrink(node[key])


@pytest.mark.parametrize(
    "path", sorted(p for p in SOURCE_DIR.glob("*.yaml") if p.stem != "fractaldb"), ids=lambda p: p.stem
)
def test_every_source_option_instantiates_and_samples(path: Path):
    cfg = OmegaConf.load(path)
    _shrink(cfg)
    source = instantiate(cfg)
    images, labels = source.sample(4, seed=0)
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,) and source.image_size == 32
    json.dumps(source.describe())
