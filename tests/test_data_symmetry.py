"""The generated symmetry benchmark: determinism, exact symmetry, learnability, nuisance statistics, data module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from fftprompt.data import SYMMETRY_CLASSES, SymmetryDataModule, SymmetryGenerator
from fftprompt.data.domains import apply_palette, colour_noise
from fftprompt.data.symmetry import SYMMETRY_GROUPS, symmetrize, transform_patch

TRANSFORMS = ("mirror_lr", "mirror_ud", "mirror_diag", "mirror_antidiag", "rot180", "rot90")


def region_scores(batch) -> np.ndarray:
    """Normalised correlation ``<p, T p> / <p, p>`` of each (mean-removed) region with each transform, ``(B, 6)``.

    Computed over the region's own pixels (the square or disc, itself invariant under every transform).
    """
    scores = []
    for image, (top, left, side), region in zip(batch.images, batch.boxes, batch.regions, strict=True):
        patch = image[:, top : top + side, left : left + side].astype(np.float64)
        inside = region[top : top + side, left : left + side]
        patch = patch - patch[:, inside].mean(axis=1)[:, None, None]
        energy = (patch[:, inside] ** 2).sum()
        scores.append([(patch[:, inside] * transform_patch(patch, t)[:, inside]).sum() / energy for t in TRANSFORMS])
    return np.asarray(scores)


def test_images_depend_only_on_seed_split_and_index():
    generator = SymmetryGenerator(image_size=32, seed=3)
    full = generator.generate("train", np.arange(12))
    alone = generator.generate("train", [7, 2])
    np.testing.assert_array_equal(alone.images[0], full.images[7])
    np.testing.assert_array_equal(alone.images[1], full.images[2])
    np.testing.assert_array_equal(alone.regions[0], full.regions[7])
    again = SymmetryGenerator(image_size=32, seed=3).generate("train", np.arange(12))
    np.testing.assert_array_equal(again.images, full.images)
    other_split = generator.generate("val", np.arange(12))
    other_seed = SymmetryGenerator(image_size=32, seed=4).generate("train", np.arange(12))
    assert not np.array_equal(other_split.images, full.images)
    assert not np.array_equal(other_seed.images, full.images)
    assert full.images.dtype == np.uint8 and full.images.shape == (12, 3, 32, 32)
    np.testing.assert_array_equal(full.labels, np.arange(12) % 6)  # balanced classes


@pytest.mark.parametrize("name", SYMMETRY_CLASSES)
def test_symmetrize_is_exactly_invariant_with_unit_variance(name):
    size, side = 32, 14
    rng = np.random.default_rng(0)
    length = 1.5  # Gaussian-smoothed white noise with a known autocorrelation
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    response = np.exp(-2 * np.pi**2 * length**2 * (fx**2 + fy**2))
    response[0, 0] = 0
    fields = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((2000, size, size))) * response))
    fields /= fields.std()
    autocorrelation = np.real(np.fft.ifft2(response**2))
    autocorrelation /= autocorrelation[0, 0]
    patches = symmetrize(fields, autocorrelation, top=5, left=30, size=side, name=name)  # wraps around the field
    for element in SYMMETRY_GROUPS[name]:
        np.testing.assert_allclose(transform_patch(patches, element), patches, atol=1e-9)
    variance = (patches**2).mean(axis=0)  # over 2000 independent fields, per pixel
    assert variance.min() > 0.82 and variance.max() < 1.18, (variance.min(), variance.max())
    if name != "none":  # a different element breaks it
        other = "mirror_ud" if name in ("mirror_lr", "mirror_diag", "mirror_antidiag") else "mirror_lr"
        assert np.abs(transform_patch(patches, other) - patches).mean() > 0.3


def test_labels_are_learnable_from_region_flip_correlations():
    classes = ("none", *TRANSFORMS)
    generator = SymmetryGenerator(image_size=64, classes=classes, seed=1)
    batch = generator.generate("test", np.arange(350))
    scores = region_scores(batch)
    for label, name in enumerate(classes):
        own = scores[batch.labels == label]
        if name == "none":
            assert np.median(own.max(axis=1)) < 0.4
            continue
        column = TRANSFORMS.index(name)
        implied = [TRANSFORMS.index(t) for t in SYMMETRY_GROUPS[name] if t in TRANSFORMS]  # rot90 implies rot180
        others = np.delete(own, implied, axis=1)
        assert np.mean(own[:, column] > others.max(axis=1)) >= 0.95, name
        assert np.median(own[:, column]) > 0.75, name
    # A rule on these scores recovers the label almost always: the label is a function of the image.
    predicted = []
    for row in scores:
        if min(row[4], row[5]) > 0.5:
            predicted.append(classes.index("rot90"))
        else:
            best = int(np.argmax(row[:5]))
            predicted.append(classes.index(TRANSFORMS[best]) if row[best] > 0.5 else 0)
    assert np.mean(np.asarray(predicted) == batch.labels) > 0.93


def test_none_class_has_the_low_level_statistics_of_the_symmetric_classes():
    generator = SymmetryGenerator(image_size=48, seed=2)
    batch = generator.generate("train", np.arange(600))
    stds, means, gradients = [], [], []
    for image, region in zip(batch.images.astype(np.float64), batch.regions, strict=True):
        pixels = image[:, region]
        stds.append(pixels.std(axis=1).mean())
        means.append(pixels.mean())
        inside = region[1:, :] & region[:-1, :]
        gradients.append(np.abs(np.diff(image, axis=1))[:, inside].mean())
    stds, means, gradients = map(np.asarray, (stds, means, gradients))
    none = batch.labels == generator.classes.index("none")
    for values in (stds, means, gradients):
        ratio = values[none].mean() / values[~none].mean()
        assert 0.85 < ratio < 1.15, ratio
    sizes = batch.boxes[:, 2]
    assert 0.85 < sizes[none].mean() / sizes[~none].mean() < 1.15
    # Position nuisance: region centres spread over the image, not fixed at its centre.
    centres = batch.boxes[:, :2] + sizes[:, None] / 2
    assert centres.std(axis=0).min() > 3


def test_generator_rejects_bad_settings():
    with pytest.raises(ValueError, match="mirror_xy"):
        SymmetryGenerator(classes=("none", "mirror_xy"))
    with pytest.raises(ValueError, match="at least 2 distinct"):
        SymmetryGenerator(classes=("none", "none"))
    with pytest.raises(ValueError, match="texture"):
        SymmetryGenerator(textures=("checkerboard",))
    with pytest.raises(ValueError, match="region_size"):
        SymmetryGenerator(region_size=(0.8, 0.2))
    with pytest.raises(ValueError, match="split"):
        SymmetryGenerator().generate("training", [0])


def test_classification_data_module_batches():
    dm = SymmetryDataModule(image_size=32, batch_size=16, num_train=48, num_val=12, num_test=12, seed=5)
    dm.setup()
    assert dm.task == "classification" and dm.num_classes == 6
    assert dm.class_names == ["none", "mirror_lr", "mirror_ud", "mirror_diag", "rot180", "rot90"]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64
    assert type(images) is torch.Tensor
    # Without augmentation the loader returns exactly the generated pixels, normalised.
    val_images, val_labels = next(iter(dm.val_dataloader()))
    expected = dm.generator.generate("val", np.arange(12))
    np.testing.assert_allclose(dm.denormalize(val_images).numpy(), expected.images / 255.0, atol=1e-6)
    np.testing.assert_array_equal(val_labels.numpy(), expected.labels)
    # Seeded shuffling: the same order on a second module.
    again = SymmetryDataModule(image_size=32, batch_size=16, num_train=48, num_val=12, num_test=12, seed=5)
    torch.testing.assert_close(next(iter(again.train_dataloader()))[1], labels)


@pytest.mark.parametrize("seg_labels", ["binary", "per_class"])
def test_segmentation_masks_mark_the_symmetric_region(seg_labels):
    dm = SymmetryDataModule(
        image_size=32, batch_size=12, num_train=12, num_val=12, num_test=12, task="segmentation", seg_labels=seg_labels
    )
    dm.setup()
    assert dm.task == "segmentation"
    _, masks = next(iter(dm.test_dataloader()))
    assert masks.shape == (12, 32, 32) and masks.dtype == torch.int64
    truth = dm.generator.generate("test", np.arange(12))
    for mask, label, region in zip(masks.numpy(), truth.labels, truth.regions, strict=True):
        name = dm.generator.classes[label]
        if name == "none":
            assert mask.max() == 0
            continue
        value = 1 if seg_labels == "binary" else dm.class_names.index(name)
        np.testing.assert_array_equal(mask, region * value)
    if seg_labels == "binary":
        assert dm.class_names == ["background", "symmetric"]
    else:
        assert dm.class_names == ["background", "mirror_lr", "mirror_ud", "mirror_diag", "rot180", "rot90"]


def test_uncached_items_equal_cached_items_and_augmentation_keeps_shapes():
    kwargs = dict(image_size=32, num_train=8, num_val=4, num_test=4, seed=1)
    cached = SymmetryDataModule(**kwargs).dataset("train")
    lazy = SymmetryDataModule(cache=False, **kwargs).dataset("train")
    torch.testing.assert_close(cached[5][0], lazy[5][0])
    assert int(cached[5][1]) == int(lazy[5][1]) == 5
    augmented = SymmetryDataModule(augment=True, task="segmentation", **kwargs).dataset("train")
    image, mask = augmented[3]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert set(mask.unique().tolist()) <= {0, 1}


def test_worker_processes_give_the_same_batches():
    kwargs = dict(image_size=32, batch_size=8, num_train=16, num_val=8, num_test=8)
    single = next(iter(SymmetryDataModule(**kwargs).val_dataloader()))
    workers = next(iter(SymmetryDataModule(num_workers=1, **kwargs).val_dataloader()))
    torch.testing.assert_close(single[0], workers[0])


def test_data_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="task='detection'"):
        SymmetryDataModule(task="detection")
    with pytest.raises(ValueError, match="seg_labels"):
        SymmetryDataModule(seg_labels="rgb")
    with pytest.raises(ValueError, match="mean"):
        SymmetryDataModule(mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="num_val=0"):
        SymmetryDataModule(num_val=0)


# -- domain parameters (fftprompt.data.domains) ------------------------------------------------------------------


def test_the_grey_palette_renders_equal_channels():
    batch = SymmetryGenerator(image_size=32, noise_std=0.0, palette="grey").generate("test", np.arange(12))
    assert np.array_equal(batch.images[:, 0], batch.images[:, 1]) and np.array_equal(
        batch.images[:, 1], batch.images[:, 2]
    )
    natural = SymmetryGenerator(image_size=32, noise_std=0.0).generate("test", np.arange(12))
    assert not np.array_equal(natural.images[:, 0], natural.images[:, 1])
    np.testing.assert_array_equal(batch.labels, natural.labels)  # the same draws, another rendering
    np.testing.assert_array_equal(batch.regions, natural.regions)


def test_palettes_keep_the_texture_contrast():
    rng = np.random.default_rng(0)
    mean, mixing = rng.uniform(0.25, 0.75, 3), rng.normal(size=(3, 2))
    for palette in ("grey", "warm", "cool"):
        new_mean, new_mixing = apply_palette(mean, mixing, palette)
        np.testing.assert_allclose(np.linalg.norm(new_mixing, axis=0), np.linalg.norm(mixing, axis=0))
        assert not np.allclose(new_mean, mean) and np.all((new_mean >= 0.1) & (new_mean <= 0.9))


def radial_power(noise: np.ndarray) -> tuple[float, float]:
    """Mean power below and above a quarter of the sampling frequency."""
    power = np.abs(np.fft.fft2(noise)) ** 2
    frequency = np.hypot(np.fft.fftfreq(noise.shape[-1])[:, None], np.fft.fftfreq(noise.shape[-1])[None, :])
    return float(power[..., (frequency > 0) & (frequency < 0.25)].mean()), float(power[..., frequency >= 0.25].mean())


def test_coloured_noise_keeps_its_standard_deviation_and_tilts_its_spectrum():
    white = np.random.default_rng(1).standard_normal((4, 3, 64, 64)).astype(np.float32)
    ratios = {}
    for colour in ("white", "pink", "brown"):
        noise = colour_noise(white, colour)
        np.testing.assert_allclose(noise.std(axis=(-2, -1)), white.std(axis=(-2, -1)), rtol=1e-4)
        low, high = radial_power(noise)
        ratios[colour] = low / high
    assert 0.8 < ratios["white"] < 1.25 and ratios["brown"] > ratios["pink"] > 3 * ratios["white"]


def test_blur_is_a_gaussian_filter_of_the_unblurred_rendering():
    plain = SymmetryGenerator(image_size=32, noise_std=0.0).generate("val", np.arange(6))
    blurred = SymmetryGenerator(image_size=32, noise_std=0.0, blur=0.05).generate("val", np.arange(6))
    reference = gaussian_filter(plain.images.astype(np.float64), sigma=(0, 0, 1.6, 1.6), mode="reflect")
    unclipped = [i for i, image in enumerate(plain.images) if image.min() > 0 and image.max() < 255]
    assert len(unclipped) >= 4  # images that clipping (before the blur, or after) does not change
    assert np.abs(blurred.images[unclipped] - reference[unclipped]).max() <= 1.0  # 8-bit rounding before and after
    assert np.abs(blurred.images.astype(float) - plain.images).mean() > 2.0


def test_a_test_domain_changes_only_the_test_split():
    kwargs = dict(image_size=32, batch_size=8, num_train=8, num_val=8, num_test=8)
    plain = SymmetryDataModule(**kwargs)
    shifted = SymmetryDataModule(**kwargs, test_domain={"palette": "warm", "noise_colour": "pink", "blur": 0.02})
    for split in ("train", "val"):
        torch.testing.assert_close(plain.dataset(split)[3][0], shifted.dataset(split)[3][0])
    assert not torch.allclose(plain.dataset("test")[3][0], shifted.dataset("test")[3][0])
    assert [plain.dataset("test")[i][1] for i in range(8)] == [shifted.dataset("test")[i][1] for i in range(8)]
    assert shifted.test_generator.palette == "warm" and shifted.generator.palette == "natural"


def test_bad_domain_parameters_fail_with_one_line_errors():
    for make, message in [
        (lambda: SymmetryDataModule(test_domain={"colour": "warm"}), "unknown keys ['colour']"),
        (lambda: SymmetryDataModule(test_domain={"palette": "neon"}), "test_domain.palette='neon'"),
        (lambda: SymmetryDataModule(palette="sepia"), "palette='sepia'"),
        (lambda: SymmetryGenerator(noise_colour="violet"), "noise_colour='violet'"),
        (lambda: SymmetryGenerator(blur=-0.1), "blur=-0.1 must lie in [0, 0.5]"),
    ]:
        with pytest.raises(ValueError) as error:
            make()
        assert message in str(error.value) and "\n" not in str(error.value)
