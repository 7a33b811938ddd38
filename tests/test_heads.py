from __future__ import annotations

import numpy as np
import pytest
import torch

from fftprompt.heads import ClassificationHead, LinearDecoder, PUPDecoder


def test_classification_head_is_a_linear_map_with_optional_norm():
    torch.manual_seed(0)
    head = ClassificationHead(16, 4)
    pooled = torch.randn(3, 16)
    logits = head(pooled)
    assert logits.shape == (3, 4)
    torch.testing.assert_close(logits, pooled @ head.classifier.weight.T + head.classifier.bias)
    assert not head.requires_maps
    normed = ClassificationHead(16, 4, norm=True)
    # LayerNorm first: shifting and scaling the features changes nothing
    torch.testing.assert_close(normed(pooled), normed(pooled * 3 + 1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="num_classes=0"):
        ClassificationHead(16, 0)


def test_classification_head_dropout_only_in_training():
    head = ClassificationHead(16, 4, dropout=0.9)
    pooled = torch.randn(8, 16)
    head.eval()
    assert torch.equal(head(pooled), head(pooled))
    head.train()
    assert not torch.equal(head(pooled), head(pooled))


def test_standardising_head_standardises_each_feature_as_a_probe_does():
    torch.manual_seed(0)
    head = ClassificationHead(16, 4, standardize=True)
    pooled = torch.randn(32, 16) * torch.linspace(0.1, 10, 16) + 5  # features of very different scales
    x = pooled.double().numpy()
    standardised = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)  # numpy: batch mean, biased variance
    weight, bias = head.classifier.weight.detach().double().numpy(), head.classifier.bias.detach().double().numpy()
    np.testing.assert_allclose(head(pooled).detach().double().numpy(), standardised @ weight.T + bias, atol=1e-4)
    # eval: the running averages, and they travel with the head's state to a head rebuilt from its config
    head.eval()
    rebuilt = ClassificationHead(**head.config).eval()
    rebuilt.load_state_dict(head.state_dict())
    torch.testing.assert_close(rebuilt(pooled), head(pooled))
    assert (
        "standardize" not in ClassificationHead(16, 4).config
    )  # adapters written before the option reload as they were


@pytest.mark.parametrize("decoder", [LinearDecoder, PUPDecoder])
def test_decoders_produce_input_sized_masks(decoder):
    torch.manual_seed(0)
    head = decoder(32, 3, patch_size=8)
    grid = torch.randn(2, 32, 4, 5)
    assert head(grid).shape == (2, 3, 32, 40)
    assert head(grid, output_size=(30, 37)).shape == (2, 3, 30, 37)
    assert not head.requires_maps


def test_linear_decoder_is_per_patch_linear_before_upsampling():
    head = LinearDecoder(8, 2, patch_size=4)
    grid = torch.zeros(1, 8, 2, 2)
    grid[0, :, 1, 1] = 1.0
    logits = head(grid)
    # the far corner only sees patch (0, 0): bias alone
    torch.testing.assert_close(logits[0, :, 0, 0], head.classifier.bias)
    expected = head.classifier.weight[:, :, 0, 0].sum(1) + head.classifier.bias
    torch.testing.assert_close(logits[0, :, -1, -1], expected)


@pytest.mark.parametrize("decoder", [LinearDecoder, PUPDecoder])
def test_decoders_read_frequency_maps_when_configured(decoder):
    torch.manual_seed(0)
    head = decoder(32, 2, patch_size=8, feature_channels=5).eval()
    assert head.requires_maps
    grid = torch.randn(1, 32, 4, 4)
    maps = torch.rand(1, 5, 4, 4)
    out = head(grid, maps)
    assert out.shape == (1, 2, 32, 32)
    assert not torch.allclose(out, head(grid, maps * 0))
    with pytest.raises(ValueError, match=r"compact maps of shape \(B, 5, 4, 4\); got None"):
        head(grid)
    with pytest.raises(ValueError, match=r"got \(1, 3, 4, 4\)"):
        head(grid, maps[:, :3])


def test_pup_decoder_upsamples_progressively_and_handles_odd_patch_sizes():
    head = PUPDecoder(16, 2, patch_size=16, hidden_channels=8)
    assert len(head.stages) == 4
    assert head(torch.randn(2, 16, 2, 3)).shape == (2, 2, 32, 48)
    odd = PUPDecoder(16, 2, patch_size=14, hidden_channels=8)
    assert len(odd.stages) == 3
    assert odd(torch.randn(2, 16, 2, 2)).shape == (2, 2, 28, 28)
    with pytest.raises(ValueError, match="feature_channels=-1"):
        PUPDecoder(16, 2, patch_size=8, feature_channels=-1)
