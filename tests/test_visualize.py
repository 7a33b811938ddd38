"""The frequency-feature panel and the ``fftprompt-features`` command (fftprompt.visualize)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from fftprompt.spectral import FrequencyFeatures
from fftprompt.visualize import load_image, main, plot_frequency_panel


def _write_image(path: Path, height: int, width: int, mode: str = "RGB") -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    pixels = np.stack([(rows * 7) % 256, (cols * 5) % 256, ((rows + cols) * 3) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return np.asarray(Image.open(path).convert("RGB"))


def test_load_image_crops_to_a_multiple_of_the_patch_size(tmp_path: Path) -> None:
    pixels = _write_image(tmp_path / "a.png", 40, 50)
    image = load_image(tmp_path / "a.png", patch_size=16)
    assert image.shape == (1, 3, 32, 48) and image.dtype == torch.float32
    # centre crop: rows 4..36, columns 1..49
    np.testing.assert_allclose(image[0].permute(1, 2, 0).numpy(), pixels[4:36, 1:49] / 255.0, atol=1e-6)

    resized = load_image(tmp_path / "a.png", patch_size=16, image_size=32)
    assert resized.shape == (1, 3, 32, 32)
    assert resized.min() >= 0.0 and resized.max() <= 1.0

    _write_image(tmp_path / "grey.png", 32, 32, mode="L")
    assert load_image(tmp_path / "grey.png", patch_size=16).shape == (1, 3, 32, 32)


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image(tmp_path / "notes.jpg")
    _write_image(tmp_path / "tiny.png", 8, 40)
    with pytest.raises(ValueError, match="smaller than one 16 px patch"):
        load_image(tmp_path / "tiny.png", patch_size=16)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        load_image(tmp_path / "tiny.png", patch_size=16, image_size=40)


def test_plot_frequency_panel_shows_every_map() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 48)
    maps = FrequencyFeatures(16, global_symmetry=False)(image)
    fig = plot_frequency_panel(image, maps, index=1, title="test")
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    expected_titles = (
        "mirror left-right",
        "rotation 90°",
        "cross-patch: mirror up-down",
        "dominant structure",
        "log(1 + |F|) per patch",
        "phase per patch",
        "radial energy profile",
        "orientation histogram",
    )
    for expected in expected_titles:
        assert any(expected in t for t in titles), expected
    with pytest.raises(ValueError, match="image is 32x32 px"):
        plot_frequency_panel(image[..., :32], maps)


@pytest.mark.slow
def test_main_writes_a_png_panel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_image(tmp_path / "texture.png", 70, 64)
    out = tmp_path / "panels" / "panel.png"
    assert main([str(tmp_path / "texture.png"), "--patch-size", "16", "--out", str(out), "--dpi", "40"]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as panel:
        width, height = panel.size
        pixels = np.asarray(panel.convert("L"), dtype=np.float32)
    assert width == 20 * 40  # five 4-inch columns
    assert 0.6 * width < height < 1.2 * width  # four rows for a near-square (64x64 after cropping) image
    assert pixels.std() > 20  # drawn content, not a blank page


def test_main_reports_a_bad_image_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jpg"
    assert main([str(missing), "--out", str(tmp_path / "x.png")]) == 2
    assert "nope.jpg" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
