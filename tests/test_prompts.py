from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fftprompt.prompts import FrequencyPrompt, ModelDims, NoPrompt, VFPTPrompt, VPTPrompt, vpt_init_bound
from fftprompt.spectral import FrequencyFeatures, map_statistics

DIMS = ModelDims(embed_dim=32, num_layers=3, patch_size=8, grid_size=(4, 4), in_chans=3, feature_channels=0)


def _inputs(batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=generator)
    patch_tokens = torch.randn(batch, 16, 32, generator=generator)
    return images, patch_tokens


def _frequency(dims: ModelDims = DIMS, **kwargs):
    features = FrequencyFeatures(patch_size=dims.patch_size)
    dims = ModelDims(**{**dims.__dict__, "feature_channels": features.num_channels})
    return features, FrequencyPrompt(dims, **kwargs)


def test_no_prompt_is_empty():
    images, tokens = _inputs()
    source = NoPrompt(DIMS)
    assert source(images, None, tokens).shape == (2, 0, 32)
    assert source.num_parameters() == 0 and not source.deep and not source.requires_maps


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_shapes_init_and_parameter_count(deep):
    torch.manual_seed(0)
    source = VPTPrompt(DIMS, num_tokens=5, deep=deep)
    images, tokens = _inputs()
    prompts = source(images, None, tokens)
    assert prompts.shape == ((3, 2, 5, 32) if deep else (2, 5, 32))
    bound = math.sqrt(6 / (3 * 8**2 + 32))
    assert vpt_init_bound(8, 32) == pytest.approx(bound)
    weights = source.prompt_embeddings
    assert weights.abs().max() <= bound and weights.abs().max() > 0.8 * bound
    assert torch.equal(prompts[..., 1, :, :] if deep else prompts[1], weights if deep else weights)
    assert source.num_parameters() == (3 if deep else 1) * 5 * 32


def test_vpt_dropout_only_while_training():
    source = VPTPrompt(DIMS, num_tokens=20, dropout=0.5)
    images, tokens = _inputs()
    source.train()
    dropped = source(images, None, tokens)
    assert (dropped == 0).float().mean() > 0.3
    source.eval()
    assert torch.equal(source(images, None, tokens)[0], source.prompt_embeddings)


def test_vfpt_fourier_prompts_come_first_and_follow_the_formula():
    source = VFPTPrompt(DIMS, num_tokens=5, alpha=0.5)
    assert source.deep and source.num_fourier_tokens == 2
    images, tokens = _inputs()
    prompts = source(images, None, tokens)
    assert prompts.shape == (3, 2, 5, 32)
    weights = source.prompt_embeddings.detach()
    fourier = torch.fft.fft(torch.fft.fft(weights[:, :2], dim=-1), dim=-2).real
    torch.testing.assert_close(prompts[:, 0, :2].detach(), fourier)
    assert torch.equal(prompts[:, 0, 2:].detach(), weights[:, 2:])
    # numpy reference of the double FFT for one layer
    reference = torch.from_numpy(__import__("numpy").fft.fft2(weights[1, :2].numpy()).real).float()
    torch.testing.assert_close(prompts[1, 1, :2].detach(), reference, rtol=1e-5, atol=1e-5)


def test_vfpt_alpha_zero_is_vpt_and_bad_alpha_raises():
    source = VFPTPrompt(DIMS, num_tokens=4, alpha=0.0, deep=False)
    images, tokens = _inputs()
    assert torch.equal(source(images, None, tokens)[0], source.prompt_embeddings)
    with pytest.raises(ValueError, match="alpha=1.5"):
        VFPTPrompt(DIMS, alpha=1.5)
    with pytest.raises(ValueError, match="num_tokens=0"):
        VPTPrompt(DIMS, num_tokens=0)


def test_frequency_prompt_depends_on_the_image():
    torch.manual_seed(0)
    features, source = _frequency(num_tokens=6)
    source.eval()
    images, tokens = _inputs(batch=2)
    prompts = source(images, features(images), tokens)
    assert prompts.shape == (2, 6, 32)
    assert not torch.allclose(prompts[0], prompts[1])
    # at init the prompts are the static VPT prompts plus a small image-dependent part
    dynamic = prompts - source.prompt_embeddings
    assert 0 < dynamic.abs().max() < 0.1 * source.prompt_embeddings.abs().max()
    constant = torch.full((1, 3, 32, 32), 0.7)
    flat = source(constant, features(constant), tokens[:1])
    assert torch.isfinite(flat).all()
    attention = source.last_attention
    assert attention.shape == (1, 6, 16)
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 6))


def test_frequency_prompt_deep_uses_per_layer_static_prompts_and_scale():
    torch.manual_seed(0)
    features, source = _frequency(num_tokens=4, deep=True)
    images, tokens = _inputs()
    maps = features(images)
    prompts = source(images, maps, tokens)
    assert prompts.shape == (3, 2, 4, 32)
    with torch.no_grad():
        source.layer_scale[2].zero_()
    prompts = source(images, maps, tokens)
    torch.testing.assert_close(prompts[2], source.prompt_embeddings[2].expand(2, -1, -1))
    assert not torch.allclose(prompts[1], source.prompt_embeddings[1].expand(2, -1, -1))


def test_frequency_prompt_gradients_reach_the_compact_maps():
    torch.manual_seed(0)
    features, source = _frequency(num_tokens=3, use_patch_tokens=True)
    images, tokens = _inputs()
    maps = features(images)
    compact = maps.compact().clone().requires_grad_(True)
    prompts = source.forward_from_descriptors(compact, source.spectrum_descriptors(maps), tokens)
    torch.testing.assert_close(prompts, source(images, maps, tokens))
    prompts.square().sum().backward()
    assert compact.grad is not None and compact.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in source.parameters())


def test_spectrum_descriptors_take_the_central_crop():
    features, source = _frequency(spectrum_crop=4)
    images, _ = _inputs(batch=1)
    maps = features(images)
    descriptors = source.spectrum_descriptors(maps)
    assert descriptors.shape == (1, 4, 4, 3 * 3 * 4 * 4)
    # patch (1, 2): log-magnitude of channel 0 over rows/cols 2..5 of the centred 8 x 8 spectrum come first
    expected = maps.log_magnitude[0, 0, 1, 2, 2:6, 2:6].reshape(-1)
    torch.testing.assert_close(descriptors[0, 1, 2, :16], expected)
    cosines = descriptors[0, 1, 2, 3 * 16 : 4 * 16]
    torch.testing.assert_close(cosines, torch.cos(maps.phase[0, 0, 1, 2, 2:6, 2:6]).reshape(-1))


def test_frequency_prompt_options_change_its_inputs():
    features, maps_only = _frequency(use_spectrum=False, positional=False)
    assert not hasattr(maps_only, "spectrum_proj")
    images, tokens = _inputs()
    assert maps_only(images, features(images), tokens).shape == (2, 10, 32)
    with pytest.raises(ValueError, match="no frequency input"):
        FrequencyPrompt(DIMS, use_spectrum=False)
    with pytest.raises(ValueError, match="needs FrequencyMaps"):
        maps_only(images, None, tokens)
    with pytest.raises(ValueError, match="num_heads=3"):
        FrequencyPrompt(DIMS, hidden_dim=64, num_heads=3)
    spectrum_only = FrequencyPrompt(DIMS)  # no compact maps (feature_channels=0), spectrum alone
    assert spectrum_only(images, features(images), tokens).shape == (2, 10, 32)


def test_frequency_prompt_parameter_count():
    _, source = _frequency(num_tokens=4, hidden_dim=16, num_heads=2, spectrum_crop=2, spectrum_dim=8)
    c_f = source.dims.feature_channels
    descriptor = c_f + 8 + 8  # compact maps, spectrum projection, position code
    expected = (
        (3 * 3 * 2 * 2 * 8 + 8)  # spectrum projection
        + (descriptor * 16 + 16)
        + 2 * 16
        + (16 * 16 + 16)
        + 2 * 16  # patch MLP with two LayerNorms
        + 4 * 16  # queries
        + (16 * 32 + 32)  # keys and values
        + (16 * 32 + 32)  # output projection
        + 4 * 32  # static prompts
    )
    assert source.num_parameters() == expected


def test_map_statistics_are_numpy_means_and_stds_over_the_grid():
    maps = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(1))
    flat = maps.numpy().reshape(3, 5, -1)
    expected = np.concatenate([flat.mean(axis=2), flat.std(axis=2)], axis=1)  # numpy's std: population
    np.testing.assert_allclose(map_statistics(maps).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_frequency_prompt_statistics_branch():
    features, prompt = _frequency(num_tokens=4, hidden_dim=16, use_statistics=True, init_std=0.5)
    images, tokens = _inputs(batch=4)
    maps = features(images)
    statistics = map_statistics(maps.compact())
    reference = torch.nn.BatchNorm1d(statistics.shape[1], affine=False)
    # standardised as BatchNorm1d without affine parameters: batch statistics while training, running ones after
    prompt.train(), reference.train()
    assert torch.allclose(prompt.statistics_norm(statistics), reference(statistics), atol=1e-5)
    prompt.eval(), reference.eval()
    assert torch.allclose(prompt.statistics_norm(statistics), reference(statistics), atol=1e-5)
    # a training batch of one image uses the running statistics instead of failing
    prompt.train()
    single = prompt(images[:1], features(images[:1]), tokens[:1])
    assert single.shape == (1, 4, 32) and torch.isfinite(single).all()
    # the statistics reach the prompts, and every parameter of the branch gets a gradient
    prompt.eval()
    with_statistics = prompt(images, maps, tokens)
    with torch.no_grad():
        prompt.statistics_proj.weight.zero_(), prompt.statistics_proj.bias.zero_()
    assert not torch.allclose(with_statistics, prompt(images, maps, tokens))
    _, fresh = _frequency(num_tokens=4, hidden_dim=16, use_statistics=True, init_std=0.5)
    fresh.train()
    fresh(images, maps, tokens).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fresh.statistics_proj.parameters())
    with pytest.raises(ValueError, match="use_statistics=True summarises the compact maps"):
        FrequencyPrompt(DIMS, use_statistics=True)


def test_frequency_prompt_reads_the_statistics_of_every_patch_size():
    features = FrequencyFeatures(patch_size=8, statistics_scales=(0.5, 2))
    dims = dataclasses.replace(DIMS, feature_channels=features.num_channels, statistics_scales=3)
    prompt = FrequencyPrompt(dims, num_tokens=4, hidden_dim=16, use_statistics=True, init_std=0.5).eval()
    assert prompt.statistics_proj.in_features == features.num_statistics
    images, tokens = _inputs(batch=4)
    maps = features(images)
    changed = dataclasses.replace(maps, scale_statistics=maps.scale_statistics + 1.0)
    assert not torch.allclose(prompt(images, maps, tokens), prompt(images, changed, tokens))
    with pytest.raises(ValueError, match=r"scale_statistics of shape None; expected \(4, 92\)"):
        prompt(images, FrequencyFeatures(patch_size=8)(images), tokens)
