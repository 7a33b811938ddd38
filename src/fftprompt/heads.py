"""Task heads: a classification head on pooled features and segmentation decoders on the patch-token grid.

Segmentation decoders can also read the compact frequency maps ``(B, C_f, h, w)``, concatenated to the token grid
(``feature_channels > 0``). Every head exposes ``requires_maps`` and ``config`` (JSON-serialisable constructor
arguments, recorded in adapter checkpoints).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fftprompt.linear_probe import LinearProbe

__all__ = ["ClassificationHead", "LinearDecoder", "PUPDecoder"]


class ClassificationHead(nn.Module):
    """Optional LayerNorm, optional per-feature standardisation, dropout and a linear classifier: ``(B, D) -> (B, K)``.

    Args:
        embed_dim: Width ``D`` of the pooled features.
        num_classes: Classes ``K``.
        norm: LayerNorm the pooled features first.
        dropout: Dropout before the classifier while training.
        standardize: Standardise each feature by batch statistics while training and running averages in eval
            (``BatchNorm1d`` without affine parameters, MAE's linear-probing head), as a fitted probe standardises
            its inputs.
    """

    requires_maps = False

    def __init__(
        self, embed_dim: int, num_classes: int, norm: bool = False, dropout: float = 0.0, standardize: bool = False
    ) -> None:
        super().__init__()
        _check_classes(num_classes)
        self.config = {"embed_dim": embed_dim, "num_classes": num_classes, "norm": norm, "dropout": dropout}
        if standardize:  # recorded only when on, so that adapters written before the option reload unchanged
            self.config["standardize"] = True
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()
        self.standardize = nn.BatchNorm1d(embed_dim, affine=False) if standardize else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        """``(B, D) -> (B, K)`` logits."""
        return self.classifier(self.dropout(self.standardize(self.norm(pooled))))

    def probe_inputs(self, pooled: Tensor) -> Tensor:
        """``(B, D) -> (B, D)``: the features a linear probe that :meth:`load_probe` takes is fitted on."""
        return self.norm(pooled)

    @torch.no_grad()
    def load_probe(self, probe: LinearProbe) -> None:
        """Sets the classifier to a linear probe fitted on :meth:`probe_inputs`, so that in eval mode the head's
        logits equal ``probe.logits`` (LP-FT: training then starts from the fitted probe).

        With ``standardize``, its running statistics become the probe's standardisation; otherwise that is folded
        into the classifier's weight and bias.
        """
        expected = (self.num_classes, self.classifier.in_features)
        if tuple(probe.weight.shape) != expected:
            raise ValueError(f"probe weight {tuple(probe.weight.shape)}; this head expects {expected} (classes, width)")
        if isinstance(self.standardize, nn.BatchNorm1d):
            variance = probe.standardizer.std.square() - self.standardize.eps
            self.standardize.running_mean.copy_(probe.standardizer.mean)
            self.standardize.running_var.copy_(variance.clamp_min(0))
            weight, bias = probe.weight, probe.bias
        else:
            weight, bias = probe.folded()
        self.classifier.weight.copy_(weight)
        self.classifier.bias.copy_(bias)


class _SegmentationDecoder(nn.Module, abc.ABC):
    """Shared part of the segmentation decoders: input checks, the recorded config, resizing to the output size.

    Subclasses define :meth:`_decode`.
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int, feature_channels: int) -> None:
        super().__init__()
        _check_classes(num_classes)
        if feature_channels < 0:
            raise ValueError(f"feature_channels={feature_channels}; expected >= 0 (0: no frequency maps)")
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.feature_channels = feature_channels
        self.config: dict[str, int] = {
            "embed_dim": embed_dim,
            "num_classes": num_classes,
            "patch_size": patch_size,
            "feature_channels": feature_channels,
        }

    @property
    def requires_maps(self) -> bool:
        return self.feature_channels > 0

    def forward(self, grid: Tensor, maps: Tensor | None = None, output_size: tuple[int, int] | None = None) -> Tensor:
        """Mask logits.

        Args:
            grid: ``(B, D, h, w)`` patch tokens.
            maps: ``(B, C_f, h, w)`` compact frequency maps, when ``feature_channels > 0``.
            output_size: ``(H, W)``; default ``(h p, w p)``.

        Returns:
            ``(B, K, H, W)`` logits.
        """
        logits = self._decode(self._inputs(grid, maps))
        size = self._output_size(grid, output_size)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    @abc.abstractmethod
    def _decode(self, inputs: Tensor) -> Tensor:
        """``(B, D + C_f, h, w) -> (B, K, h', w')`` logits at the decoder's own resolution (each decoder's own)."""

    def _inputs(self, grid: Tensor, maps: Tensor | None) -> Tensor:
        """Token grid ``(B, D, h, w)``, with the compact maps ``(B, C_f, h, w)`` appended when configured."""
        if not self.requires_maps:
            return grid
        if maps is None or maps.shape[1] != self.feature_channels or maps.shape[-2:] != grid.shape[-2:]:
            got = None if maps is None else tuple(maps.shape)
            raise ValueError(
                f"{type(self).__name__} expects compact maps of shape (B, {self.feature_channels}, "
                f"{grid.shape[-2]}, {grid.shape[-1]}); got {got}"
            )
        return torch.cat([grid, maps.to(grid.dtype)], dim=1)

    def _output_size(self, grid: Tensor, output_size: tuple[int, int] | None) -> tuple[int, int]:
        if output_size is not None:
            return (int(output_size[0]), int(output_size[1]))
        return (grid.shape[-2] * self.patch_size, grid.shape[-1] * self.patch_size)


class LinearDecoder(_SegmentationDecoder):
    """1x1 convolution on the token grid, then bilinear upsampling to the input size.

    Args:
        embed_dim: Token width ``D``.
        num_classes: Classes ``K``.
        patch_size: Patch side ``p`` (default output size ``(h p, w p)``).
        feature_channels: ``C_f`` of the compact frequency maps to concatenate, 0 for none.
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int, feature_channels: int = 0) -> None:
        super().__init__(embed_dim, num_classes, patch_size, feature_channels)
        self.classifier = nn.Conv2d(embed_dim + feature_channels, num_classes, kernel_size=1)

    def _decode(self, inputs: Tensor) -> Tensor:
        return self.classifier(inputs)


class PUPDecoder(_SegmentationDecoder):
    """SETR's progressive upsampling: ``floor(log2 p)`` stages of conv3x3-BatchNorm-ReLU then 2x upsampling.

    A final 1x1 convolution gives the class logits, bilinearly resized to the input size (exact when ``p`` is a
    power of two).

    Args:
        embed_dim: Token width ``D``.
        num_classes: Classes ``K``.
        patch_size: Patch side ``p``.
        feature_channels: ``C_f`` of the compact frequency maps to concatenate to the grid, 0 for none.
        hidden_channels: Channels of the upsampling stages.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        patch_size: int,
        feature_channels: int = 0,
        hidden_channels: int = 64,
    ) -> None:
        super().__init__(embed_dim, num_classes, patch_size, feature_channels)
        self.config["hidden_channels"] = hidden_channels
        num_stages = max(1, int(math.log2(patch_size)))
        stages = []
        in_channels = embed_dim + feature_channels
        for _ in range(num_stages):
            stages.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(hidden_channels),
                    nn.ReLU(inplace=True),
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                )
            )
            in_channels = hidden_channels
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Conv2d(hidden_channels, num_classes, kernel_size=1)

    def _decode(self, inputs: Tensor) -> Tensor:
        return self.classifier(self.stages(inputs))


def _check_classes(num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}; expected at least 1")
