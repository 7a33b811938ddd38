"""Frequency-domain augmentation and filters: known answers of the functional core, the batch transforms, the hook."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fftprompt.augment import AmplitudeMix, BandFilter, FourierDomainAdaptation
from fftprompt.augment.functional import (
    amplitude,
    apply_response,
    band_response,
    fda_radius,
    frequency_radius,
    low_frequency_window,
    mix_amplitude,
    swap_low_amplitude,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def grating(size: int, ky: int, kx: int, amplitude_: float = 1.0) -> torch.Tensor:
    """``amplitude * cos(2 pi (ky y + kx x) / size)`` on a ``size x size`` grid."""
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    return amplitude_ * torch.cos(2 * torch.pi * (ky * y + kx * x) / size)


def test_fda_with_beta_zero_is_the_identity():
    images = torch.rand(3, 3, 32, 32)
    window = low_frequency_window(32, 32, fda_radius(0.0, 32, 32))
    assert not window.any()
    out = swap_low_amplitude(images, window, partner=torch.tensor([2, 0, 1]))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_amplitude_swap_keeps_the_phase_and_takes_the_style_amplitude_in_the_window():
    generator = torch.Generator().manual_seed(0)
    images, style = torch.rand(2, 3, 32, 32, generator=generator), torch.rand(2, 3, 32, 32, generator=generator)
    window = low_frequency_window(32, 32, fda_radius(0.1, 32, 32))  # |k| < 3
    assert int(window.sum()) == 5 * 3  # k_y in -2..2, k_x in 0..2 on the half spectrum
    out = swap_low_amplitude(images, window, style_amplitude=amplitude(style))
    before, after = torch.fft.fft2(images.double()), torch.fft.fft2(out.double())
    phase_difference = torch.angle(after * before.conj())
    assert phase_difference.abs().max() < 1e-4  # the phase is kept at every frequency
    half_after, half_style, half_before = (torch.fft.rfft2(t.double()).abs() for t in (out, style, images))
    torch.testing.assert_close(half_after[..., window], half_style[..., window], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(half_after[..., ~window], half_before[..., ~window], atol=1e-4, rtol=1e-5)


def test_amplitude_swap_matches_a_numpy_full_spectrum_reference():
    rng = np.random.default_rng(1)
    images, style = rng.random((2, 3, 24, 20)), rng.random((2, 3, 24, 20))
    b = fda_radius(0.15, 24, 20)  # 3
    ky, kx = np.fft.fftfreq(24, 1 / 24)[:, None], np.fft.fftfreq(20, 1 / 20)[None, :]
    mask = (np.abs(ky) < b) & (np.abs(kx) < b)
    spectrum = np.fft.fft2(images)
    reference = np.fft.ifft2(
        np.where(mask, np.abs(np.fft.fft2(style)), np.abs(spectrum)) * np.exp(1j * np.angle(spectrum))
    )
    assert np.abs(reference.imag).max() < 1e-12  # a symmetric window keeps the image real
    window = low_frequency_window(24, 20, b)
    out = swap_low_amplitude(torch.from_numpy(images), window, style_amplitude=amplitude(torch.from_numpy(style)))
    np.testing.assert_allclose(out.numpy(), reference.real, atol=2e-5)
    # in-batch partners give the same as pasting the partners' amplitudes
    both = torch.from_numpy(np.concatenate([images, style]))
    in_batch = swap_low_amplitude(both, window, partner=torch.tensor([2, 3, 0, 1]))
    np.testing.assert_allclose(in_batch[:2].numpy(), reference.real, atol=2e-5)


def test_amplitude_mix_interpolates_amplitudes_and_keeps_the_phase():
    generator = torch.Generator().manual_seed(2)
    images, other = torch.rand(3, 3, 16, 16, generator=generator), torch.rand(3, 3, 16, 16, generator=generator)
    weight = torch.tensor([0.0, 0.25, 1.0, 0.0, 0.0, 0.0])
    out = mix_amplitude(torch.cat([images, other]), weight, torch.tensor([3, 4, 5, 0, 1, 2]))[:3]
    torch.testing.assert_close(out[0], images[0], atol=1e-5, rtol=0)
    expected = 0.75 * amplitude(images[1]) + 0.25 * amplitude(other[1])
    torch.testing.assert_close(amplitude(out[1]), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(amplitude(out[2]), amplitude(other[2]), atol=1e-4, rtol=1e-5)
    phase_difference = torch.angle(torch.fft.fft2(out.double()) * torch.fft.fft2(images.double()).conj())
    assert phase_difference.abs().max() < 1e-4


@pytest.mark.parametrize(
    "kind, low, high, kept",
    [
        ("lowpass", 0.0, 0.2, {3}),
        ("bandpass", 0.2, 0.5, {12}),
        ("highpass", 0.5, 1.0, {25}),
        ("notch", 0.2, 0.5, {3, 25}),
    ],
)
def test_band_filters_keep_in_band_gratings_and_remove_the_others_exactly(kind, low, high, kept):
    size = 64  # radial frequency of k cycles along an axis: k / 32
    parts = {3: grating(size, 3, 0), 12: grating(size, 0, 12, 0.5), 25: grating(size, 25, 0, 0.25)}
    image = (0.7 + sum(parts.values()))[None, None].float()
    out = apply_response(image, band_response(size, size, kind, low=low, high=high))
    expected = 0.7 + sum((parts[k] for k in kept), torch.zeros(size, size, dtype=torch.float64))
    torch.testing.assert_close(out[0, 0].double(), expected, atol=1e-5, rtol=0)  # the mean is always kept
    removed_energy = sum(float((parts[k] ** 2).sum()) for k in set(parts) - kept)
    residual_energy = float(((out[0, 0].double() - expected) ** 2).sum())
    assert removed_energy > 100 and residual_energy < 1e-6


def test_emphasis_multiplies_high_frequencies_by_one_plus_gain():
    low_part, high_part = grating(32, 2, 1), grating(32, 0, 10)
    out = apply_response((low_part + high_part)[None].float(), band_response(32, 32, "emphasis", low=0.4, gain=1.5))
    torch.testing.assert_close(out[0].double(), low_part + 2.5 * high_part, atol=1e-5, rtol=0)


def test_frequency_radius_is_one_at_the_axis_nyquist_frequency():
    radius = frequency_radius(16, 16)
    assert radius.shape == (16, 9)
    assert radius[0, 0] == 0 and radius[0, 8] == pytest.approx(1.0) and radius[8, 0] == pytest.approx(1.0)


# -- the batch transforms ----------------------------------------------------------------------------------------


def normalised(images: torch.Tensor) -> torch.Tensor:
    return (images - 0.5) / 0.25


@pytest.mark.parametrize(
    "factory",
    [
        lambda: FourierDomainAdaptation(beta=0.1, p=0.7, seed=3, mean=MEAN, std=STD),
        lambda: AmplitudeMix(p=0.7, seed=3, mean=MEAN, std=STD),
        lambda: BandFilter(kind="highpass", low=0.3, p=0.7, seed=3, mean=MEAN, std=STD),
    ],
)
def test_transforms_are_deterministic_under_a_seed_and_differ_between_draws(factory):
    images = normalised(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    first, again, other = factory()(images, (5, 0, 0)), factory()(images, (5, 0, 0)), factory()(images, (6, 0, 0))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    changed = (first - images).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 0 < int(changed.sum()) < 16  # p=0.7: some images transformed, not all (for this seed)


def test_probability_zero_and_one():
    images = normalised(torch.rand(8, 3, 32, 32))
    assert torch.equal(AmplitudeMix(p=0.0, mean=MEAN, std=STD)(images, (0,)), images)
    out = AmplitudeMix(p=1.0, alpha=1.0, mean=MEAN, std=STD)(images, (0,))
    assert bool(((out - images).abs().amax(dim=(1, 2, 3)) > 1e-4).all())


def test_fda_in_batch_transfers_the_mean_colour_of_another_image():
    colours = torch.tensor([[0.3, 0.5, 0.7], [0.6, 0.4, 0.5]])
    images = colours[:, :, None, None] + 0.05 * torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    out = FourierDomainAdaptation(beta=0.1, p=1.0, mean=MEAN, std=STD)(normalised(images), (0,))
    pixels = out * 0.25 + 0.5
    # two images: the partner of each is the other one, whose zero-frequency amplitude (mean colour) it takes
    torch.testing.assert_close(pixels.mean(dim=(-2, -1)), images.flip(0).mean(dim=(-2, -1)), atol=1e-4, rtol=0)


def test_fda_with_a_style_folder_takes_the_style_images_low_frequencies(tmp_path):
    style = np.zeros((40, 40, 3), np.uint8)
    style[...] = (200, 60, 120)
    Image.fromarray(style).save(tmp_path / "style.png")
    (tmp_path / "notes.txt").write_text("not an image")
    fda = FourierDomainAdaptation(beta=0.1, style_dir=str(tmp_path), p=1.0, mean=MEAN, std=STD)
    images = 0.5 + 0.05 * torch.rand(4, 3, 32, 32)
    pixels = fda(normalised(images), (0,)) * 0.25 + 0.5
    expected = torch.tensor([200, 60, 120]) / 255.0
    torch.testing.assert_close(pixels.mean(dim=(-2, -1)), expected.expand(4, 3), atol=1e-4, rtol=0)
    # a flat style has no amplitude at the other window frequencies: they vanish, the rest is kept
    window = low_frequency_window(32, 32, 3)
    window[0, 0] = False
    assert amplitude(pixels)[..., window].max() < 1e-3
    assert (
        amplitude(pixels)[..., ~low_frequency_window(32, 32, 3)]
        .sub(amplitude(images)[..., ~low_frequency_window(32, 32, 3)])
        .abs()
        .max()
        < 1e-3
    )


def test_bad_settings_fail_with_one_line_errors(tmp_path):
    cases = [
        (lambda: FourierDomainAdaptation(beta=0.0), "beta=0.0 must lie in (0, 0.5]"),
        (lambda: FourierDomainAdaptation(beta=0.6), "beta=0.6 must lie in (0, 0.5]"),
        (lambda: FourierDomainAdaptation(style_dir=str(tmp_path)), "holds no image files"),
        (lambda: FourierDomainAdaptation(style_dir=str(tmp_path / "missing")), "is not a folder"),
        (lambda: AmplitudeMix(alpha=0.0), "alpha=0.0 must lie in (0, 1]"),
        (lambda: AmplitudeMix(p=1.5), "p=1.5 must lie in [0, 1]"),
        (lambda: BandFilter(kind="median"), "median"),
        (lambda: BandFilter(kind="bandpass", low=0.5, high=0.2), "needs 0 <= low < high"),
        (lambda: BandFilter(preprocess=True, p=0.5), "set p=1.0"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError) as error:
            make()
        assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"selects no frequency on 32x32 images.*beta >= 0.0312"):
        FourierDomainAdaptation(beta=0.01, p=1.0, mean=MEAN, std=STD)(torch.zeros(2, 3, 32, 32), (0,))


def test_preprocessing_filters_evaluation_batches_and_augmentations_leave_them_alone():
    images = normalised(torch.rand(4, 3, 32, 32))
    assert torch.equal(AmplitudeMix(mean=MEAN, std=STD).evaluation(images), images)
    band = BandFilter(kind="lowpass", high=0.25, p=1.0, preprocess=True, mean=MEAN, std=STD)
    expected = apply_response(images, band_response(32, 32, "lowpass", high=0.25))
    torch.testing.assert_close(band.evaluation(images), expected)
    torch.testing.assert_close(band(images, (0,)), expected)


# -- the Lightning hook ------------------------------------------------------------------------------------------


def lightning_module(task: str, augment):
    from fftprompt.backbone import create_backbone
    from fftprompt.lit import ClassificationModule, SegmentationModule
    from fftprompt.model import create_model

    backbone = create_backbone("vit_demo_patch8", img_size=32, depth=1, embed_dim=16, num_heads=2)
    model = create_model(backbone, 2, task=task)
    cls = ClassificationModule if task == "classification" else SegmentationModule
    return cls(model, 2, augment=augment)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_the_module_augments_training_batches_only_and_never_touches_targets(task):
    module = lightning_module(task, AmplitudeMix(p=1.0, seed=0, mean=MEAN, std=STD))
    images = normalised(torch.rand(4, 3, 32, 32))
    target = torch.randint(0, 2, (4,) if task == "classification" else (4, 32, 32))
    module._trainer = SimpleNamespace(training=True, global_step=7, global_rank=0)
    out, out_target = module.on_after_batch_transfer((images, target.clone()), 0)
    assert out.shape == images.shape and not torch.allclose(out, images) and torch.equal(out_target, target)
    torch.testing.assert_close(out, AmplitudeMix(p=1.0, seed=0, mean=MEAN, std=STD)(images, (7, 0, 0)))
    second, _ = module.on_after_batch_transfer((images, target), 0)  # the next batch of the same step: other draws
    torch.testing.assert_close(second, AmplitudeMix(p=1.0, seed=0, mean=MEAN, std=STD)(images, (7, 1, 0)))
    module._trainer = SimpleNamespace(training=False, global_step=7, global_rank=0)
    assert torch.equal(module.on_after_batch_transfer((images, target), 0)[0], images)


def test_zero_amplitudes_take_the_new_amplitude_with_phase_zero():
    flat = torch.full((1, 1, 8, 8), 0.5)  # every frequency but the mean is exactly zero
    style = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    window = low_frequency_window(8, 8, 2)
    out = swap_low_amplitude(flat, window, style_amplitude=amplitude(style))
    torch.testing.assert_close(amplitude(out)[..., window], amplitude(style)[..., window], atol=1e-5, rtol=1e-5)


def test_amplitude_mix_with_a_ratio_leaves_high_frequencies_alone():
    images = normalised(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(7)).mul(0.5).add(0.25))
    out = AmplitudeMix(ratio=0.25, p=1.0, mean=MEAN, std=STD)(images, (0,))
    window = low_frequency_window(32, 32, int(0.5 * 32) // 2 + 1)  # FACT's centred square of side sqrt(ratio) * 32
    changed = (amplitude(out) - amplitude(images)).abs().amax(dim=(0, 1))
    assert changed[window].max() > 1e-2 and changed[~window].max() < 1e-3


# -- the benchmark and the GPU ---------------------------------------------------------------------------------


def test_bench_augment_reports_every_augmentation_and_its_overhead(tmp_path):
    import json

    from fftprompt.bench import main as bench_main

    path = tmp_path / "augment.json"
    options = ["--img-size", "32", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--json", str(path)]
    assert bench_main(["augment", *options]) == 0
    report = json.loads(path.read_text())
    assert [r["augment"] for r in report["results"]] == ["none", "fda", "amp_mix", "band"]
    assert all(r["step_ms"] > 0 and r["step_cpu_ms"] > 0 for r in report["results"])
    assert set(report["overheads"]) == {"fda", "amp_mix", "band"} and report["goal"] == 0.10
    assert report["results"][0]["augment_ms"] == 0 and all(r["augment_ms"] > 0 for r in report["results"][1:])


@pytest.mark.gpu
def test_transforms_run_on_the_gpu_and_agree_with_the_cpu():
    images = normalised(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(8)))
    band = BandFilter(kind="bandpass", low=0.1, high=0.6, p=1.0, preprocess=True, mean=MEAN, std=STD)
    torch.testing.assert_close(band.evaluation(images.cuda()).cpu(), band.evaluation(images), atol=1e-5, rtol=1e-5)
    for augment in (
        FourierDomainAdaptation(beta=0.1, p=0.5, mean=MEAN, std=STD),
        AmplitudeMix(p=0.5, mean=MEAN, std=STD),
    ):
        first, again = augment(images.cuda(), (1, 0, 0)), augment(images.cuda(), (1, 0, 0))
        assert first.device.type == "cuda" and torch.equal(first, again) and not torch.equal(first.cpu(), images)


def test_evaluating_a_run_needs_its_preprocessing_filter(tmp_path):
    from fftprompt import rundir

    band = {"_target_": "fftprompt.augment.BandFilter", "kind": "lowpass", "high": 0.5, "p": 1.0, "preprocess": True}
    saved = {"task": {"name": "classification"}, "augment": {**band, "seed": 1}}
    rundir.write_config(tmp_path, saved)

    def check(current: dict) -> None:
        def select(key: str):
            node = current
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            return node

        rundir.check_matches_run(select, tmp_path, "evaluating", randomly_initialised=False)

    check({**saved, "augment": {**band, "seed": 2}})  # the seed does not matter to a filter
    with pytest.raises(ValueError, match=r"augment \(preprocessing\)"):
        check({**saved, "augment": None})
    fda = {"_target_": "fftprompt.augment.FourierDomainAdaptation", "preprocess": False}
    rundir.write_config(tmp_path, {**saved, "augment": fda})
    check({**saved, "augment": None})  # a training-only augmentation is not part of the model
