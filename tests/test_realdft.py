"""The real DFTs that the ONNX export swaps in equal torch.fft; the maps built on them equal spectral's."""

from __future__ import annotations

import pytest
import torch

from fftprompt.prompts import FrequencyPrompt, ModelDims, VFPTPrompt
from fftprompt.realdft import (
    RealFrequencyFeatures,
    RealVFPTPrompt,
    dft_matrices,
    real_centred_fft2,
    real_irfft2,
    real_symmetry_scores,
    use_real_dft,
)
from fftprompt.spectral import FrequencyFeatures, patch_spectrum, symmetry_gather_index, symmetry_scores

SIZES = (7, 8, 16)  # odd sides have no Nyquist frequency and no shift folded into the window


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("size", SIZES)
def test_real_fft2_equals_torch_fft(size):
    signal = torch.randn(4, 3, size, size, generator=generator())
    expected = torch.fft.fftshift(torch.fft.fft2(signal.double()), dim=(-2, -1))
    real, imag = real_centred_fft2(signal, *dft_matrices(size, centred=True))
    torch.testing.assert_close(real.double(), expected.real, rtol=0, atol=1e-5)
    torch.testing.assert_close(imag.double(), expected.imag, rtol=0, atol=1e-5)
    # the self-conjugate frequencies of a real signal are exactly real, as from torch.fft
    centre = size // 2
    self_conjugate = [centre] + ([0] if size % 2 == 0 else [])
    assert (imag[..., self_conjugate, :][..., self_conjugate] == 0).all()


@pytest.mark.parametrize("size", SIZES)
def test_real_irfft2_equals_torch_irfft2(size):
    half = torch.randn(5, size, size // 2 + 1, 2, generator=generator())
    expected = torch.fft.irfft2(torch.view_as_complex(half), s=(size, size))
    torch.testing.assert_close(
        real_irfft2(half[..., 0], half[..., 1], *dft_matrices(size)), expected, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("size", SIZES)
def test_real_symmetry_scores_equal_spectral(size):
    images = torch.randn(2, 3, 2 * size, 2 * size, generator=generator())
    images[1, :, :size, :size] = images[1, :, :size, :size].flip(-1)  # some patches more symmetric than others
    spectrum = patch_spectrum(images, size).mean(dim=1)
    expected = symmetry_scores(spectrum)
    scores = real_symmetry_scores(spectrum.real, spectrum.imag, symmetry_gather_index(size), *dft_matrices(size))
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_real_frequency_features_give_the_same_maps(size):
    features = FrequencyFeatures(size, global_symmetry=True, statistics_scales=(2,))
    images = torch.randn(2, 3, 6 * size, 6 * size, generator=generator())
    images[0, :, :size, :size] = 0.5  # an empty patch: every score 0 on both roads
    expected, maps = features(images), RealFrequencyFeatures(features)(images)
    for name in ("log_magnitude", "symmetry", "orientation", "dominant_orientation", "radial", "cross_patch"):
        torch.testing.assert_close(getattr(maps, name), getattr(expected, name), rtol=0, atol=1e-5, msg=name)
    torch.testing.assert_close(maps.global_symmetry, expected.global_symmetry, rtol=0, atol=1e-5)
    torch.testing.assert_close(maps.scale_statistics, expected.scale_statistics, rtol=0, atol=1e-4)
    # the phase enters the prompts as cos and sin, continuous across the branch cut at +-pi
    torch.testing.assert_close(maps.phase.cos(), expected.phase.cos(), rtol=0, atol=1e-4)
    torch.testing.assert_close(maps.phase.sin(), expected.phase.sin(), rtol=0, atol=1e-4)
    assert maps.channel_names == expected.channel_names and maps.compact().shape == expected.compact().shape


def test_real_vfpt_prompts_and_the_swap():
    dims = ModelDims(embed_dim=32, num_layers=3, patch_size=8, grid_size=(4, 4), in_chans=3, feature_channels=0)
    torch.manual_seed(0)
    parent = torch.nn.Module()
    parent.prompt = VFPTPrompt(dims, num_tokens=5, alpha=0.6).eval()
    parent.features = FrequencyFeatures(8)
    original = parent.prompt
    patch_tokens = torch.zeros(3, 16, 32)
    expected = original(None, None, patch_tokens)
    use_real_dft(parent)
    assert isinstance(parent.prompt, RealVFPTPrompt) and isinstance(parent.features, RealFrequencyFeatures)
    assert parent.prompt.num_tokens == 5 and parent.prompt.deep  # read through to the original
    torch.testing.assert_close(parent.prompt(None, None, patch_tokens), expected, rtol=0, atol=1e-5)


def test_the_swap_keeps_the_statistics_of_other_patch_sizes():
    dims = ModelDims(embed_dim=32, num_layers=3, patch_size=8, grid_size=(4, 4), in_chans=3, feature_channels=0)
    parent = torch.nn.Module()
    parent.features = FrequencyFeatures(8, statistics_scales=(0.5, 2))
    dims = ModelDims(**{**dims.__dict__, "feature_channels": parent.features.num_channels, "statistics_scales": 3})
    torch.manual_seed(0)
    parent.prompt = FrequencyPrompt(dims, num_tokens=3, hidden_dim=16, use_statistics=True, init_std=0.5).eval()
    images = torch.randn(2, 3, 32, 32, generator=generator())
    tokens = torch.zeros(2, 16, 32)
    expected = parent.prompt(images, parent.features(images), tokens)
    original = parent.features
    use_real_dft(parent)
    assert isinstance(parent.features, RealFrequencyFeatures)
    assert all(type(scale) is FrequencyFeatures for scale in original.scales)  # the original is left as it was
    assert all(isinstance(scale, RealFrequencyFeatures) for scale in parent.features.scales)
    torch.testing.assert_close(parent.prompt(images, parent.features(images), tokens), expected, rtol=0, atol=1e-4)
