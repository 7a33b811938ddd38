"""Known-answer tests of the frequency features (fftprompt.spectral)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fftprompt.spectral import (
    CROSS_PATCH_NAMES,
    FEATURE_GROUPS,
    SYMMETRY_NAMES,
    FrequencyFeatures,
    dominant_orientation,
    global_symmetry,
    log_magnitude,
    map_statistics,
    orientation_bin_index,
    orientation_energy,
    patch_spectrum,
    patchify,
    phase,
    power_spectrum,
    radial_bin_index,
    radial_energy,
    symmetry_map,
    unpatchify,
)

# numpy versions of the six transforms, written independently of the DFT index maps in spectral.py
NUMPY_TRANSFORMS = {
    "mirror_lr": lambda a: np.flip(a, -1),
    "mirror_ud": lambda a: np.flip(a, -2),
    "mirror_diag": lambda a: np.swapaxes(a, -1, -2),
    "mirror_antidiag": lambda a: np.swapaxes(np.rot90(a, 2, axes=(-2, -1)), -1, -2),
    "rot180": lambda a: np.rot90(a, 2, axes=(-2, -1)),
    "rot90": lambda a: np.rot90(a, 1, axes=(-2, -1)),
}


def _numpy_patch_spectrum(x: np.ndarray, p: int, window: str) -> np.ndarray:
    """Reference: loop over patches, remove the mean, window, numpy fft2, fftshift."""
    batch, channels, height, width = x.shape
    line = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(p) / p) if window == "hann" else np.ones(p)
    out = np.zeros((batch, channels, height // p, width // p, p, p), dtype=np.complex128)
    for i in range(height // p):
        for j in range(width // p):
            patch = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].astype(np.float64)
            patch = patch - patch.mean(axis=(-2, -1), keepdims=True)
            out[:, :, i, j] = np.fft.fftshift(np.fft.fft2(patch * np.outer(line, line)), axes=(-2, -1))
    return out


def _brute_force_symmetry(patch: np.ndarray) -> np.ndarray:
    """Peak of <q, roll(T q, s)> / <q, q> over all shifts, by explicit rolls."""
    size = patch.shape[-1]
    scores = []
    for name in SYMMETRY_NAMES:
        transformed = NUMPY_TRANSFORMS[name](patch)
        peak = max(
            float(np.sum(patch * np.roll(transformed, (a, b), axis=(0, 1)))) for a in range(size) for b in range(size)
        )
        scores.append(np.clip(peak / np.sum(patch * patch), 0.0, 1.0))
    return np.array(scores)


def _grating(size: int, theta_deg: float, frequency: float, offset: float = 0.3) -> torch.Tensor:
    """Stripes along orientation theta (x right, y up), ``frequency`` cycles/pixel across them: (1, 1, S, S)."""
    rows, cols = torch.meshgrid(torch.arange(size).double(), torch.arange(size).double(), indexing="ij")
    y = -rows
    theta = math.radians(theta_deg)
    across = -math.sin(theta) * cols + math.cos(theta) * y  # coordinate along the stripes' normal
    return torch.cos(2 * math.pi * frequency * across + offset).float()[None, None]


# ------------------------------------------------------------------------------------------------- spectra


def test_patchify_layout_and_roundtrip() -> None:
    x = torch.randn(2, 3, 24, 40)
    patches = patchify(x, 8)
    assert patches.shape == (2, 3, 3, 5, 8, 8)
    torch.testing.assert_close(patches[:, :, 1, 3], x[:, :, 8:16, 24:32])
    torch.testing.assert_close(unpatchify(patches), x)


@pytest.mark.parametrize("window", ["hann", "none"])
@pytest.mark.parametrize("patch_size", [8, 5])  # even sizes fold fftshift into the window, odd ones shift
def test_patch_spectrum_matches_numpy(window: str, patch_size: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3 * patch_size, 4 * patch_size)).astype(np.float32) * 2.0 + 0.5
    got = patch_spectrum(torch.from_numpy(x), patch_size, window).numpy()
    want = _numpy_patch_spectrum(x, patch_size, window)
    assert got.dtype == np.complex64
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5

    maps = FrequencyFeatures(patch_size, window=window)(torch.from_numpy(x))
    np.testing.assert_allclose(maps.log_magnitude.numpy(), np.log1p(np.abs(want)), rtol=1e-5, atol=1e-5)
    significant = np.abs(want) > 1e-2 * np.abs(want).max()
    phase_error = np.angle(np.exp(1j * (maps.phase.numpy() - np.angle(want))))
    assert np.abs(phase_error[significant]).max() < 1e-4


def test_log_magnitude_and_phase_helpers() -> None:
    spectrum = torch.tensor([3 + 4j, -1 + 0j, 0 - 2j], dtype=torch.complex64)
    torch.testing.assert_close(log_magnitude(spectrum), torch.log1p(torch.tensor([5.0, 1.0, 2.0])))
    torch.testing.assert_close(phase(spectrum), torch.tensor([math.atan2(4, 3), math.pi, -math.pi / 2]))


# ------------------------------------------------------------------------------------------------ symmetry


@pytest.mark.parametrize("patch_size", [8, 7])
def test_symmetry_scores_match_brute_force_correlation(patch_size: int) -> None:
    rng = np.random.default_rng(1)
    patches = rng.normal(size=(3, 1, patch_size, patch_size))
    # make some scores large: one patch half-symmetric under lr, one under rot90
    patches[1, 0] += NUMPY_TRANSFORMS["mirror_lr"](patches[1, 0])
    patches[2, 0] += 0.7 * NUMPY_TRANSFORMS["rot90"](patches[2, 0])
    got = symmetry_map(patch_spectrum(torch.from_numpy(patches).float(), patch_size, "none"))[:, :, 0, 0]
    for b in range(3):
        centred = patches[b, 0] - patches[b, 0].mean()
        np.testing.assert_allclose(got[b].numpy(), _brute_force_symmetry(centred), atol=2e-5)


def _symmetrise(patch: np.ndarray, name: str) -> np.ndarray:
    if name == "rot90":
        return sum(np.rot90(patch, k) for k in range(4))
    return patch + NUMPY_TRANSFORMS[name](patch)


@pytest.mark.parametrize("name", SYMMETRY_NAMES)
def test_symmetric_patch_scores_high_on_its_channel_at_any_position(name: str) -> None:
    rng = np.random.default_rng(2)
    size, count = 16, 12
    patches = []
    for k in range(count):
        symmetric = _symmetrise(rng.normal(size=(size, size)), name)
        # move the axis / centre anywhere in the patch (circularly)
        patches.append(np.roll(symmetric, (3 * k, 5 * k + 1), axis=(0, 1)))
    x = torch.from_numpy(np.stack(patches)[:, None]).float()
    scores = symmetry_map(patch_spectrum(x, size, "none"))[:, :, 0, 0]
    target = SYMMETRY_NAMES.index(name)
    assert scores[:, target].min() > 0.95
    # rot90 symmetry implies rot180 symmetry; every other channel stays low
    implied = {"rot180"} if name == "rot90" else set()
    others = [i for i, other in enumerate(SYMMETRY_NAMES) if i != target and other not in implied]
    assert scores[:, others].max() < 0.75
    assert scores[:, others].mean() < 0.45


@pytest.mark.parametrize("name", ["mirror_lr", "mirror_ud"])
def test_hann_symmetry_falls_off_smoothly_as_the_axis_leaves_the_centre(name: str) -> None:
    torch.manual_seed(3)
    size, half = 16, 40
    left = torch.randn(32, 1, size, half)
    strip = torch.cat([left, left[..., :-1].flip(-1)], dim=-1)  # mirror axis at column half - 1, a pixel centre
    means = []
    for offset in range(5):
        start = half - 1 - size // 2 - offset  # the Hann window is symmetric about column size // 2
        patch = strip[..., start : start + size]
        if name == "mirror_ud":
            patch = patch.transpose(-1, -2)
        means.append(symmetry_map(patch_spectrum(patch, size))[:, SYMMETRY_NAMES.index(name), 0, 0].mean().item())
    assert means[0] > 0.99
    assert means[1] > 0.8
    assert all(a > b for a, b in zip(means, means[1:4], strict=False)), means
    assert all(a - b < 0.3 for a, b in zip(means, means[1:], strict=False)), means
    assert means[4] < 0.45


@pytest.mark.parametrize("window", ["hann", "none"])
def test_white_noise_scores_low(window: str) -> None:
    torch.manual_seed(4)
    maps = FrequencyFeatures(16, window=window)(torch.randn(4, 3, 64, 64))
    assert maps.symmetry.mean(dim=(0, 2, 3)).max() < 0.4
    assert maps.symmetry.max() < 0.75
    # white noise has a flat power spectrum: on average each orientation bin gets its share of the frequency grid
    # (the square grid puts 25 to 39 of the 255 non-zero frequencies in each bin), and coherence is low
    bins = orientation_bin_index(16, 8)
    share = (bins == torch.arange(8).view(8, 1, 1)).sum(dim=(1, 2)) / 255
    torch.testing.assert_close(maps.orientation.mean(dim=(0, 2, 3)), share.float(), atol=0.015, rtol=0)
    assert maps.dominant_orientation.norm(dim=1).mean() < 0.15


def test_empty_patches_give_zero_maps() -> None:
    x = torch.randn(1, 3, 32, 32)
    x[..., :16, :16] = 0.0  # zero patch
    x[..., 16:, 16:] = 0.7  # constant patch: zero after mean removal
    maps = FrequencyFeatures(16)(x)
    for corner in ((0, 0), (1, 1)):
        i, j = corner
        assert maps.symmetry[0, :, i, j].abs().max() == 0
        assert maps.orientation[0, :, i, j].abs().max() == 0
        assert maps.dominant_orientation[0, :, i, j].abs().max() == 0
        assert maps.radial[0, :, i, j].abs().max() == 0
        assert maps.cross_patch[0, :, i, j].abs().max() == 0
    assert maps.symmetry[0, :, 0, 1].max() > 0  # the noise patches are not empty
    torch.testing.assert_close(maps.orientation[0, :, 0, 1].sum(), torch.tensor(1.0))


def test_global_symmetry_of_mirrored_image() -> None:
    torch.manual_seed(5)
    half = torch.randn(2, 3, 32, 32)
    mirrored = torch.cat([half, half.flip(-1)], dim=-1)[..., 16:48]  # 32 x 32, symmetric about its centre line
    scores = global_symmetry(mirrored, window="none")
    assert scores.shape == (2, 6)
    assert scores[:, SYMMETRY_NAMES.index("mirror_lr")].min() > 0.99
    assert scores[:, SYMMETRY_NAMES.index("mirror_ud")].max() < 0.5
    maps = FrequencyFeatures(16, global_symmetry=True)(mirrored)
    assert maps.global_symmetry is not None and maps.global_symmetry.shape == (2, 6)
    assert FrequencyFeatures(16)(mirrored).global_symmetry is None
    with pytest.raises(ValueError, match="square"):
        global_symmetry(torch.randn(1, 3, 32, 48))


# --------------------------------------------------------------------------------------- orientation, radial


@pytest.mark.parametrize("bin_index", range(8))
def test_grating_orientation(bin_index: int) -> None:
    theta = bin_index * 22.5
    maps = FrequencyFeatures(16)(_grating(64, theta, frequency=0.2))
    u, v = maps.dominant_orientation[0]
    estimate = torch.rad2deg(torch.atan2(v, u) / 2) % 180
    error = ((estimate - theta + 90) % 180 - 90).abs()
    assert error.max() < 5.0
    assert torch.hypot(u, v).min() > 0.9
    assert (maps.orientation[0].argmax(dim=0) == bin_index).all()
    torch.testing.assert_close(maps.orientation.sum(dim=1), torch.ones(1, 4, 4))


def test_orientation_angle_convention() -> None:
    """x to the right, y up: horizontal stripes are 0 degrees, stripes rising to the right are 45 degrees."""
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images = {
        0.0: torch.cos(2 * math.pi * 0.25 * rows),  # intensity varies down the image: horizontal stripes
        90.0: torch.cos(2 * math.pi * 0.25 * cols),
        45.0: torch.cos(2 * math.pi * 0.2 * (rows + cols) / math.sqrt(2)),  # constant along rows + cols
        135.0: torch.cos(2 * math.pi * 0.2 * (rows - cols) / math.sqrt(2)),
    }
    features = FrequencyFeatures(16)
    for theta, image in images.items():
        u, v = features(image[None, None]).dominant_orientation[0, :, 0, 0]
        estimate = math.degrees(math.atan2(v, u) / 2) % 180
        assert abs((estimate - theta + 90) % 180 - 90) < 2.0, (theta, estimate)


def test_bin_index_tables() -> None:
    radial = radial_bin_index(16, 4)  # centred layout: zero frequency at (8, 8), Nyquist 8 cycles per patch
    assert radial[8, 8] == -1
    assert radial[8, 9] == 0 and radial[7, 9] == 0  # |k| = 1 and sqrt(2)
    assert radial[8, 10] == 1 and radial[8, 13] == 2 and radial[8, 15] == 3  # |k| = 2, 5, 7: bands of 2 cycles
    assert radial[0, 8] == 3 and radial[0, 0] == 3  # Nyquist and the corner beyond it
    orientation = orientation_bin_index(16, 4)  # bins centred on 0, 45, 90, 135 degrees
    assert orientation[8, 8] == -1
    assert orientation[7, 8] == 0  # vertical frequency (y up): horizontal stripes
    assert orientation[8, 9] == 2  # horizontal frequency: vertical stripes
    assert orientation[7, 9] == 3  # frequency up-right (45 deg): stripes at 135 deg
    assert orientation[9, 9] == 1  # frequency down-right (-45 deg): stripes at 45 deg


@pytest.mark.parametrize(("cycles", "band"), [(2, 0), (6, 1), (10, 2), (14, 3)])
def test_radial_energy_lands_in_the_right_band(cycles: int, band: int) -> None:
    size = 32  # bands of 4 cycles per patch; the Hann window spreads energy by one cycle
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    image = torch.cos(2 * math.pi * cycles * (cols + 0.3 * rows) / size)  # slightly oblique
    radial = FrequencyFeatures(size, radial_bins=4)(image[None, None]).radial
    assert radial[0, band].min() > 0.9
    torch.testing.assert_close(radial.sum(dim=1), torch.ones(1, 2, 2))


# --------------------------------------------------------------------------------------------- cross-patch


@pytest.mark.parametrize("name", CROSS_PATCH_NAMES)
def test_cross_patch_symmetry_of_mirrored_images(name: str) -> None:
    torch.manual_seed(6)
    quarter = torch.randn(2, 3, 32, 48)
    flips = {"cross_lr": (-1,), "cross_ud": (-2,), "cross_rot180": (-2, -1)}[name]
    if name == "cross_ud":
        quarter = quarter.transpose(-1, -2)
        image = torch.cat([quarter, quarter.flip(flips)], dim=-2)
    elif name == "cross_lr":
        image = torch.cat([quarter, quarter.flip(flips)], dim=-1)
    else:
        image = torch.cat([quarter, quarter.flip(flips)], dim=-2)  # bottom half = top half rotated by 180 degrees
    maps = FrequencyFeatures(16)(image)
    target = CROSS_PATCH_NAMES.index(name)
    assert maps.cross_patch[:, target].min() > 0.999
    others = [i for i in range(3) if i != target]
    assert maps.cross_patch[:, others].mean() < 0.1

    random = FrequencyFeatures(16)(torch.randn(2, 3, 64, 96))
    assert random.cross_patch.mean() < 0.1
    assert random.cross_patch.max() < 0.3


def test_cross_patch_symmetry_matches_a_loop_over_patch_pairs() -> None:
    torch.manual_seed(10)
    x = torch.randn(2, 3, 48, 64)
    x[0, :, :16, :16] = 0.5  # an empty (constant) patch: its pairs score 0
    maps = FrequencyFeatures(16)(x).cross_patch.numpy()
    patches = patchify(x, 16).double().numpy()
    patches = patches - patches.mean(axis=(-2, -1), keepdims=True)
    _, _, h, w, _, _ = patches.shape
    for b in range(2):
        for i in range(h):
            for j in range(w):
                a = patches[b, :, i, j]
                partners = (
                    np.flip(patches[b, :, i, w - 1 - j], -1),
                    np.flip(patches[b, :, h - 1 - i, j], -2),
                    np.flip(patches[b, :, h - 1 - i, w - 1 - j], (-2, -1)),
                )
                for k, partner in enumerate(partners):
                    norm = np.sqrt(np.sum(a * a) * np.sum(partner * partner))
                    expected = 0.0 if norm < 1e-6 else np.clip(np.sum(a * partner) / norm, 0.0, 1.0)
                    assert maps[b, k, i, j] == pytest.approx(expected, abs=1e-5), (b, k, i, j)


def test_module_projects_orientation_and_radial_energy_at_once_like_the_functions() -> None:
    torch.manual_seed(11)
    x = torch.randn(2, 3, 32, 48)
    features = FrequencyFeatures(16, orientation_bins=6, radial_bins=3)
    maps = features(x)
    power = power_spectrum(patch_spectrum(x, 16))
    torch.testing.assert_close(maps.orientation, orientation_energy(power, features.orientation_index, 6))
    torch.testing.assert_close(maps.radial, radial_energy(power, features.radial_index, 3))
    torch.testing.assert_close(maps.dominant_orientation, dominant_orientation(power, features.doubled_angle))


# ------------------------------------------------------------------------------------------------ module


def test_bad_inputs_raise_value_error() -> None:
    features = FrequencyFeatures(16)
    with pytest.raises(ValueError, match="30x32 is not a multiple of the patch size 16"):
        features(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 3, 32, 40), 16)
    with pytest.raises(ValueError, match="C in"):
        features(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="window"):
        FrequencyFeatures(16, window="hamming")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="texture"):
        FrequencyFeatures(16, groups=("symmetry", "texture"))  # type: ignore[list-item]


def test_single_channel_equals_replicated_grey() -> None:
    torch.manual_seed(7)
    grey = torch.randn(2, 1, 32, 48)
    features = FrequencyFeatures(16, global_symmetry=False)
    one, three = features(grey), features(grey.expand(-1, 3, -1, -1))
    assert one.log_magnitude.shape == (2, 1, 2, 3, 16, 16)
    for field in ("symmetry", "orientation", "dominant_orientation", "radial", "cross_patch"):
        torch.testing.assert_close(getattr(one, field), getattr(three, field), atol=1e-5, rtol=1e-4)


def test_channel_names_groups_and_compact() -> None:
    features = FrequencyFeatures(16, orientation_bins=6, radial_bins=3)
    assert features.num_channels == 6 + (2 + 6) + 3 + 3 == len(features.channel_names)
    maps = features(torch.randn(2, 3, 32, 64))
    compact = maps.compact()
    assert compact.shape == (2, features.num_channels, 2, 4)
    assert maps.channel_names == features.channel_names
    torch.testing.assert_close(compact[:, features.channel_groups["symmetry"]], maps.symmetry)
    torch.testing.assert_close(compact[:, features.channel_groups["orientation"][:2]], maps.dominant_orientation)
    torch.testing.assert_close(compact[:, features.channel_groups["orientation"][2:]], maps.orientation)
    torch.testing.assert_close(compact[:, features.channel_groups["radial"]], maps.radial)
    torch.testing.assert_close(compact[:, features.channel_groups["cross_patch"]], maps.cross_patch)
    assert features.channel_names[:6] == SYMMETRY_NAMES and features.channel_names[-3:] == CROSS_PATCH_NAMES

    # groups are reordered into FEATURE_GROUPS order
    subset = FrequencyFeatures(16, groups=("cross_patch", "radial"))
    assert subset.channel_names == ("radial_0", "radial_1", "radial_2", "radial_3", *CROSS_PATCH_NAMES)
    assert subset.channel_groups == {"radial": [0, 1, 2, 3], "cross_patch": [4, 5, 6]}
    sub_maps = subset(torch.randn(1, 3, 32, 32))
    assert sub_maps.groups == ("radial", "cross_patch") and sub_maps.compact().shape == (1, 7, 2, 2)
    assert set(FEATURE_GROUPS) == set(FrequencyFeatures(16).channel_groups)
    assert FrequencyFeatures(16, groups=()).num_channels == 0


def test_autocast_bfloat16_keeps_float32_outputs() -> None:
    torch.manual_seed(8)
    x = torch.randn(2, 3, 32, 32)
    features = FrequencyFeatures(16, global_symmetry=True)
    reference = features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = features(x)
    for field in ("log_magnitude", "phase", "symmetry", "orientation", "dominant_orientation", "radial"):
        assert getattr(maps, field).dtype == torch.float32, field
        torch.testing.assert_close(getattr(maps, field), getattr(reference, field))
    assert maps.cross_patch.dtype == torch.float32 and maps.global_symmetry.dtype == torch.float32
    # bfloat16 input is upcast, not computed in bfloat16
    assert features(x.bfloat16()).symmetry.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(9)
    x = torch.randn(2, 3, 64, 64)
    features = FrequencyFeatures(16, global_symmetry=True)
    cpu = features(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu = features.cuda()(x.cuda())
    for field in ("log_magnitude", "symmetry", "orientation", "dominant_orientation", "radial", "cross_patch"):
        value = getattr(gpu, field)
        assert value.device.type == "cuda" and value.dtype == torch.float32
        torch.testing.assert_close(value.cpu(), getattr(cpu, field), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.global_symmetry.cpu(), cpu.global_symmetry, atol=1e-4, rtol=1e-4)


def test_statistics_scales_summarise_the_maps_at_other_patch_sizes() -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = FrequencyFeatures(patch_size=8, statistics_scales=(0.5, 2))
    maps = features(images)
    assert features.statistics_patch_sizes == (4, 16)
    expected = torch.cat([map_statistics(FrequencyFeatures(patch_size=p)(images).compact()) for p in (8, 4, 16)], 1)
    torch.testing.assert_close(maps.statistics(), expected)
    assert features.num_statistics == 3 * 2 * features.num_channels == expected.shape[1]
    # the per-patch maps stay at the patch size; without scales the statistics are those of compact()
    plain = FrequencyFeatures(patch_size=8)(images)
    assert torch.equal(maps.compact(), plain.compact()) and plain.scale_statistics is None
    assert torch.equal(plain.statistics(), map_statistics(plain.compact()))
    assert not features.state_dict()  # the other scales' extractors hold no state either


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ((0.3,), "2.4; each scale must give a whole"),
        ((1,), "other than patch_size"),
        ((0.125,), "at least 2"),
        ((2, 2.0), "repeat a patch size"),
    ],
)
def test_statistics_scales_errors_name_the_scale(scales, message) -> None:
    with pytest.raises(ValueError, match=message):
        FrequencyFeatures(patch_size=8, statistics_scales=scales)
