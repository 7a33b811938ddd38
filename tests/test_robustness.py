"""ImageNet-C-style corruptions (known answers, references) and the robustness evaluation of a finished run."""

from __future__ import annotations

import colorsys
import json
import re

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from conftest import tiny_config
from fftprompt.augment import CORRUPTIONS, check_corruptions, corrupt
from fftprompt.augment.functional import seeded_generator
from fftprompt.robustness import CorruptedDataset, CorruptionResults


def mid_grey(size: int = 32, batch: int = 2) -> torch.Tensor:
    """Images in [0.35, 0.65]: far enough from 0 and 1 that weak corruptions are not clipped."""
    return 0.35 + 0.3 * torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_keeps_the_range_changes_the_image_and_is_seeded(name):
    images = mid_grey(48)
    first = corrupt(images, name, 5, seeded_generator((1,)))
    again = corrupt(images, name, 5, seeded_generator((1,)))
    assert first.shape == images.shape and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert (first - images).abs().mean() > 1e-3
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    mild = corrupt(images, name, 1, seeded_generator((1,)))
    assert (mild - images).abs().mean() <= (first - images).abs().mean() + 1e-6  # severity 5 is the strongest


def test_gaussian_noise_has_imagenet_c_standard_deviations():
    images = torch.full((4, 3, 64, 64), 0.5)
    for severity, sigma in zip(range(1, 4), (0.08, 0.12, 0.18), strict=True):
        noise = corrupt(images, "gaussian_noise", severity, seeded_generator((severity,))) - images
        assert float(noise.std()) == pytest.approx(sigma, rel=0.03)


def test_contrast_scales_deviations_from_each_channel_mean():
    images = mid_grey()
    out = corrupt(images, "contrast", 3, None)
    means = images.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(out, (images - means) * 0.2 + means)


def test_gaussian_blur_matches_scipy_at_the_reference_size():
    images = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    out = corrupt(images, "gaussian_blur", 2, None)  # sigma 2 at 224 px
    reference = gaussian_filter(images.double().numpy(), sigma=(0, 0, 2, 2), mode="nearest", truncate=4.0)
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-5)


def test_brightness_adds_to_the_hsv_value():
    images = mid_grey(8, 1)
    out = corrupt(images, "brightness", 2, None)
    pixels = images[0].permute(1, 2, 0).reshape(-1, 3).double().numpy()
    expected = []
    for r, g, b in pixels:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        expected.append(colorsys.hsv_to_rgb(h, s, min(1.0, v + 0.2)))
    np.testing.assert_allclose(out[0].permute(1, 2, 0).reshape(-1, 3).numpy(), np.asarray(expected), atol=1e-5)


def test_jpeg_keeps_flat_colour_and_removes_fine_detail():
    flat = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    compressed = corrupt(flat, "jpeg", 5, None)  # quality 7: coarse colour steps, but no pattern appears
    assert compressed.std(dim=(-2, -1)).max() < 1e-6 and (compressed - flat).abs().max() < 12 / 255
    checkerboard = 0.5 + 0.2 * (-1.0) ** (torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1))
    images = checkerboard.expand(1, 3, 32, 32)
    errors = [float((corrupt(images, "jpeg", s, None) - images).abs().mean()) for s in (1, 5)]
    assert 0.05 < errors[0] < errors[1]  # the finest pattern is destroyed, more so at quality 7 than at 25


def test_pixelate_averages_blocks():
    images = mid_grey(32, 1)
    out = corrupt(images, "pixelate", 2, None)  # factor 0.5: 2 x 2 blocks
    blocks = images.reshape(1, 3, 16, 2, 16, 2).mean(dim=(3, 5))
    torch.testing.assert_close(out, blocks.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_bad_corruptions_and_severities_fail_with_one_line_errors():
    for corruptions, severities, message in [
        (["fog"], [1], "unknown ['fog']"),
        (["jpeg"], [0], "0 is not an integer from 1 to 5"),
        (["jpeg"], [6], "6 is not an integer from 1 to 5"),
        (["jpeg"], [2.5], "2.5 is not an integer from 1 to 5"),
        ([], [1], "corruptions is empty"),
        (["jpeg", "jpeg"], [1], "repeats"),
    ]:
        with pytest.raises(ValueError) as error:
            check_corruptions(corruptions, severities)
        assert message in str(error.value) and "\n" not in str(error.value)


def test_corrupted_dataset_corrupts_in_pixel_space_and_keeps_targets():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = mid_grey(16, 3)
    normalised = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    dataset = [(normalised[i], i) for i in range(3)]
    corrupted = CorruptedDataset(dataset, "contrast", 1, mean, std, seed=0)
    image, target = corrupted[2]
    assert target == 2
    back = image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    torch.testing.assert_close(back, corrupt(pixels[2:3], "contrast", 1)[0], atol=1e-5, rtol=0)


def test_results_table_means_and_relative_drops():
    results = CorruptionResults("acc", 0.8, {"jpeg": {1: 0.6, 3: 0.4}, "contrast": {1: 0.8, 3: 0.8}})
    metrics = results.metrics()
    assert metrics["test/corruption/jpeg/3/acc"] == 0.4
    assert metrics["test/corruption/jpeg/mean/acc"] == pytest.approx(0.5)
    assert metrics["test/corruption/jpeg/relative_drop"] == pytest.approx(0.375)
    assert metrics["test/corruption/mean/acc"] == pytest.approx(0.65)
    assert metrics["test/corruption/relative_drop"] == pytest.approx(0.1875)
    table = results.markdown()
    assert "| jpeg | 0.6000 | 0.4000 | 0.5000 | +37.5% |" in table


@pytest.mark.slow
def test_evaluate_writes_the_corruption_table_into_metrics_and_report(tmp_path):
    from fftprompt.run import evaluate, train

    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, "trainer.max_epochs=1"))
    overrides = [f"adapter_path={run_dir}"]
    cfg = tiny_config(
        tmp_path / "eval", *overrides, "corruptions=[gaussian_noise,jpeg]", "severities=[1,5]", name="eval"
    )
    metrics = evaluate(cfg)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    keys = [f"test/corruption/{c}/{s}/acc" for c in ("gaussian_noise", "jpeg") for s in (1, 5)]
    assert all(0.0 <= saved[k] <= 1.0 for k in keys) and all(metrics[k] == saved[k] for k in keys)
    mean = np.mean([saved[k] for k in keys])
    assert saved["test/corruption/mean/acc"] == pytest.approx(mean)
    assert saved["test/corruption/relative_drop"] == pytest.approx((saved["test/acc"] - mean) / saved["test/acc"])
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Robustness under corruptions" in report and "| gaussian_noise |" in report
    # the same evaluation twice gives the same numbers (seeded corruptions)
    again = evaluate(tiny_config(tmp_path / "again", *overrides, "corruptions=jpeg", "severities=5", name="eval"))
    assert again["test/corruption/jpeg/5/acc"] == saved["test/corruption/jpeg/5/acc"]


def test_evaluate_rejects_bad_corruption_settings_before_building(tmp_path):
    from fftprompt.run import evaluate

    for override, message in [("corruptions=[snowfall]", "unknown ['snowfall']"), ("severities=[0,3]", "0 is not")]:
        cfg = tiny_config(tmp_path, "adapter_path=/nonexistent", "corruptions=[jpeg]", override, name="eval")
        with pytest.raises(ValueError, match=re.escape(message)):
            evaluate(cfg)


@pytest.mark.slow
def test_segmentation_trains_with_fda_and_is_evaluated_by_dice_under_corruptions(tmp_path):
    from fftprompt.run import evaluate, train

    run_dir = tmp_path / "seg"
    metrics, objects = train(tiny_config(run_dir, "data=symmetry_seg", "augment=fda", "trainer.max_epochs=1"))
    assert "test/dice" in metrics and type(objects["module"].augment).__name__ == "FourierDomainAdaptation"
    cfg = tiny_config(
        tmp_path / "eval",
        "data=symmetry_seg",
        f"adapter_path={run_dir}",
        "corruptions=contrast",
        "severities=1",
        name="eval",
    )
    results = evaluate(cfg)
    assert 0.0 <= results["test/corruption/contrast/1/dice"] <= 1.0 and "test/corruption/mean/dice" in results


class _CountingTrainer:
    """Stands in for a Lightning trainer: records the corruptions it tests, returns a made-up accuracy."""

    def __init__(self) -> None:
        self.tested: list[tuple[str, int]] = []

    def test(self, module, dataloaders, verbose):
        dataset = dataloaders.dataset
        self.tested.append((dataset.corruption, dataset.severity))
        return [{"test/acc": 0.5 - 0.05 * dataset.severity}]


@pytest.mark.parametrize(
    ("size", "no_ops"), [(32, {"defocus_blur": [1, 2, 3], "gaussian_blur": [1]}), (64, {"defocus_blur": [1]})]
)
def test_corruptions_that_leave_the_images_unchanged_are_flagged_and_left_out_of_the_means(size, no_ops):
    from types import SimpleNamespace

    from fftprompt.robustness import evaluate_corruptions

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pixels = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))  # texture: any blur shows
    dataset = [((pixels[i] - 0.5) / 0.25, i % 2) for i in range(4)]
    datamodule = SimpleNamespace(dataset=lambda split: dataset, mean=mean, std=std, batch_size=4, num_workers=0)
    trainer = _CountingTrainer()
    names, levels = ["defocus_blur", "gaussian_blur", "contrast"], [1, 2, 3, 4, 5]
    results = evaluate_corruptions(trainer, None, datamodule, names, levels, clean_metrics={"test/acc": 0.6})
    assert results.no_ops == no_ops
    tested = [(n, s) for n in names for s in levels if s not in no_ops.get(n, [])]
    assert trainer.tested == tested
    metrics = results.metrics()
    for name, severities in no_ops.items():
        for severity in severities:
            assert metrics[f"test/corruption/{name}/{severity}/no_op"] == 1.0
            assert f"test/corruption/{name}/{severity}/acc" not in metrics
    # the means are over the tested corruptions only
    accuracy = {n: [0.5 - 0.05 * s for m, s in tested if m == n] for n in names}
    assert metrics["test/corruption/defocus_blur/mean/acc"] == pytest.approx(np.mean(accuracy["defocus_blur"]))
    assert metrics["test/corruption/mean/acc"] == pytest.approx(np.mean([np.mean(v) for v in accuracy.values()]))
    table = results.markdown()
    assert "| defocus_blur | no-op |" in table and "left out of the means" in table
