"""Prompt sources: none, VPT (shallow/deep), VFPT and frequency-conditioned prompts (VAPT: :mod:`fftprompt.vapt`).

Every source is an ``nn.Module`` with one call, ``(images, maps, patch_tokens) -> prompts`` of shape ``(B, P, D)``
(shallow: inserted once, after timm's positional embedding) or ``(L, B, P, D)`` (deep: one set per block, replacing
the prompt slots at the input of every block). A deep source with ``per_layer = True`` instead returns the first
block's ``(B, P, D)`` and gives every later block's prompts from that block's input tokens through
``prompts_for_layer``, called inside the block loop. :class:`fftprompt.model.PromptedViT` owns the token order.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fftprompt.spectral import map_statistics

if TYPE_CHECKING:
    from fftprompt.spectral import FrequencyMaps

__all__ = [
    "FrequencyPrompt",
    "ModelDims",
    "NoPrompt",
    "PromptSource",
    "VFPTPrompt",
    "VPTPrompt",
    "vpt_init_bound",
]


@dataclass(frozen=True)
class ModelDims:
    """Facts about the backbone and the frequency features that prompt sources and heads build themselves from.

    Attributes:
        embed_dim: Token width ``D``.
        num_layers: Number of transformer blocks ``L`` (one prompt set each in deep mode).
        patch_size: Patch side ``p``.
        grid_size: Patch grid ``(h, w)`` of the backbone's default input size.
        in_chans: Image channels ``C``.
        feature_channels: ``C_f`` of ``FrequencyMaps.compact()``, 0 when the model computes no features.
        statistics_scales: ``S``, the patch sizes summarised by ``FrequencyMaps.statistics()`` (``2 * C_f * S``
            numbers; 1: the backbone's patch size only).
    """

    embed_dim: int
    num_layers: int
    patch_size: int
    grid_size: tuple[int, int]
    in_chans: int
    feature_channels: int = 0
    statistics_scales: int = 1

    @classmethod
    def of(cls, backbone: Any, features: nn.Module | None = None) -> ModelDims:
        """The dims of a :class:`~fftprompt.backbone.Backbone` with optional ``FrequencyFeatures``."""
        return cls(
            embed_dim=backbone.embed_dim,
            num_layers=backbone.num_blocks,
            patch_size=backbone.patch_size,
            grid_size=tuple(backbone.grid_size),
            in_chans=backbone.in_chans,
            feature_channels=0 if features is None else int(features.num_channels),
            statistics_scales=1 if features is None else 1 + len(features.statistics_patch_sizes),
        )


def vpt_init_bound(patch_size: int, embed_dim: int) -> float:
    """VPT's uniform prompt initialisation bound ``sqrt(6 / (3 p^2 + D))`` (Xavier over the patch projection)."""
    return math.sqrt(6.0 / (3 * patch_size**2 + embed_dim))


class PromptSource(nn.Module, abc.ABC):
    """Interface of every prompt source.

    Attributes:
        num_tokens: Prompt tokens ``P`` per prompted layer.
        deep: True when :meth:`forward` returns one prompt set per block ``(L, B, P, D)``.
        requires_maps: True when :meth:`forward` reads the ``FrequencyMaps``.
        per_layer: True when a deep source's later blocks get their prompts from :meth:`prompts_for_layer` (called
            with each block's input tokens) and :meth:`forward` returns the first block's ``(B, P, D)`` only.
        config: JSON-serialisable constructor arguments (without ``dims``), recorded in adapter checkpoints.
    """

    num_tokens: int = 0
    deep: bool = False
    requires_maps: bool = False
    per_layer: bool = False

    def __init__(self, dims: ModelDims, config: dict[str, Any]) -> None:
        super().__init__()
        self.dims = dims
        self.config = config
        # read from the recorded config, so that the attributes and adapter.json cannot disagree
        if "num_tokens" in config:
            _check_num_tokens(config["num_tokens"])
            self.num_tokens = config["num_tokens"]
        self.deep = config.get("deep", False)

    @abc.abstractmethod
    def forward(self, images: Tensor, maps: FrequencyMaps | None, patch_tokens: Tensor) -> Tensor:
        """Prompt tokens for a batch.

        Args:
            images: ``(B, C, H, W)`` normalised images.
            maps: Frequency maps of the images, or None when the model computes none.
            patch_tokens: ``(B, h * w, D)`` embedded patch tokens of the frozen backbone (after the positional
                embedding, before the first block).

        Returns:
            ``(B, P, D)`` when shallow or ``per_layer``, ``(L, B, P, D)`` when deep.
        """

    def prompts_for_layer(self, index: int, patch_tokens: Tensor) -> Tensor:
        """Prompts of block ``index >= 1`` from its input patch tokens ``(B, h * w, D) -> (B, P, D)``; called by
        :class:`fftprompt.model.PromptedViT` only for deep sources with ``per_layer = True``, which define it."""
        raise TypeError(f"{type(self).__name__} makes all its prompts in forward (per_layer is False)")

    def num_parameters(self) -> int:
        """Number of trainable parameters of this source."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class NoPrompt(PromptSource):
    """No prompts: the prompted model reduces exactly to the backbone."""

    def __init__(self, dims: ModelDims) -> None:
        super().__init__(dims, {})

    def forward(self, images: Tensor, maps: FrequencyMaps | None, patch_tokens: Tensor) -> Tensor:
        """``-> (B, 0, D)``: an empty prompt set."""
        return patch_tokens.new_zeros(patch_tokens.shape[0], 0, self.dims.embed_dim)


class VPTPrompt(PromptSource):
    """Visual Prompt Tuning (Jia et al., 2022): static learnable prompts, shallow or deep.

    Args:
        dims: Backbone facts.
        num_tokens: Prompts ``P`` per layer.
        deep: One prompt set per block (``(L, P, D)`` parameters) instead of one at the input.
        dropout: Dropout on the prompt embeddings while training.
    """

    def __init__(self, dims: ModelDims, num_tokens: int = 10, deep: bool = False, dropout: float = 0.0) -> None:
        super().__init__(dims, {"num_tokens": num_tokens, "deep": deep, "dropout": dropout})
        self.prompt_dropout = nn.Dropout(dropout)
        self.prompt_embeddings = _static_prompts(dims, num_tokens, deep)

    def forward(self, images: Tensor, maps: FrequencyMaps | None, patch_tokens: Tensor) -> Tensor:
        """``-> (B, P, D)`` or ``(L, B, P, D)``: the learned prompts broadcast over the batch."""
        prompts = self.prompt_dropout(self.prompt_embeddings)
        return _expand_batch(prompts, patch_tokens.shape[0], self.deep)


class VFPTPrompt(VPTPrompt):
    """Visual Fourier Prompt Tuning (Zeng et al., 2024).

    VPT-deep prompts where the first ``floor(alpha * P)`` prompts of each layer pass through
    ``Re(FFT_tokens(FFT_hidden(prompts)))`` (unnormalised FFTs over the Fourier prompts' hidden and token axes),
    placed before the plain prompts.

    Args:
        dims: Backbone facts.
        num_tokens: Prompts ``P`` per layer.
        alpha: Fraction of Fourier prompts in ``[0, 1]``.
        dropout: Dropout on the prompt embeddings (applied before the FFT) while training.
        deep: Deep by definition; ``False`` prompts the input only.
    """

    def __init__(
        self, dims: ModelDims, num_tokens: int = 10, alpha: float = 0.5, dropout: float = 0.0, deep: bool = True
    ) -> None:
        super().__init__(dims, num_tokens=num_tokens, deep=deep, dropout=dropout)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha}; expected a fraction in [0, 1]")
        # adapter.json records VFPT's own arguments, not the VPT ones passed up
        self.config = {"num_tokens": num_tokens, "alpha": alpha, "dropout": dropout, "deep": deep}
        self.num_fourier_tokens = math.floor(alpha * num_tokens)

    def forward(self, images: Tensor, maps: FrequencyMaps | None, patch_tokens: Tensor) -> Tensor:
        """``-> (B, P, D)`` or ``(L, B, P, D)``: Fourier prompts first, then the plain ones."""
        prompts = self.prompt_dropout(self.prompt_embeddings)
        n = self.num_fourier_tokens
        if n > 0:
            with torch.autocast(prompts.device.type, enabled=False):
                fourier = prompts[..., :n, :].float()
                fourier = torch.fft.fft(torch.fft.fft(fourier, dim=-1), dim=-2).real.to(prompts.dtype)
            prompts = torch.cat([fourier, prompts[..., n:, :]], dim=-2)
        return _expand_batch(prompts, patch_tokens.shape[0], self.deep)


class FrequencyPrompt(PromptSource):
    """Frequency-conditioned prompts: prompt tokens generated from each image's own patch spectra.

    Per patch, a descriptor is built from the compact frequency maps ``(C_f)``, a linear projection of the
    centred patch spectrum (log-magnitude, and phase as cos/sin, over a central ``spectrum_crop`` square of
    low frequencies), a fixed sin/cos code of the patch position and, optionally, a projection of the frozen
    backbone's embedded patch token. A small MLP embeds each descriptor to ``hidden_dim``; ``P`` learnable queries
    cross-attend over the ``h * w`` patch embeddings; the result is projected to ``D`` and added to static
    learnable prompts (VPT-initialised). The output projection starts small (normal, std ``init_std``), so the
    model starts as VPT with a small image-dependent perturbation and every parameter gets a gradient at once.

    In deep mode each block gets its own static prompts (they are the per-layer shift) plus the shared dynamic
    part times a per-layer channel scale (initialised to 1): ``prompts_l = static_l + scale_l * dynamic``.

    Args:
        dims: Backbone facts (``feature_channels`` = channels of ``FrequencyMaps.compact()``).
        num_tokens: Prompts ``P`` per layer.
        deep: One prompt set per block.
        hidden_dim: Width of the patch embeddings and queries.
        num_heads: Cross-attention heads (must divide ``hidden_dim``).
        use_spectrum: Feed the projected patch spectra (log-magnitude, phase) besides the compact maps.
        spectrum_crop: Side of the central (low-frequency) square of the centred ``p x p`` spectrum that is
            projected; None or ``>= p`` takes the whole spectrum.
        spectrum_dim: Width of the spectrum projection.
        use_patch_tokens: Also feed a projection of the frozen backbone's embedded patch tokens.
        patch_token_dim: Width of that projection.
        positional: Add a fixed sin/cos code of the patch position (the attention is otherwise blind to where a
            patch sits).
        use_statistics: Add an embedding of the orderless map statistics (per-channel mean and std over the grid,
            :func:`~fftprompt.spectral.map_statistics`, batch-normalised; at every patch size of the features'
            ``statistics_scales``) to every prompt's attended patch summary: the global texture signal that per-patch
            attention averages away.
        dropout: Dropout on the final prompts while training.
        init_std: Std of the output projection's initial weights.

    Attributes:
        last_attention: ``(B, P, h * w)`` head-averaged cross-attention weights of the last call (detached), or
            None before the first call.
    """

    requires_maps = True

    def __init__(
        self,
        dims: ModelDims,
        num_tokens: int = 10,
        deep: bool = False,
        hidden_dim: int = 64,
        num_heads: int = 4,
        use_spectrum: bool = True,
        spectrum_crop: int | None = 8,
        spectrum_dim: int = 32,
        use_patch_tokens: bool = False,
        patch_token_dim: int = 32,
        positional: bool = True,
        use_statistics: bool = False,
        dropout: float = 0.0,
        init_std: float = 1e-3,
    ) -> None:
        config = {
            "num_tokens": num_tokens,
            "deep": deep,
            "hidden_dim": hidden_dim,
            "num_heads": num_heads,
            "use_spectrum": use_spectrum,
            "spectrum_crop": spectrum_crop,
            "spectrum_dim": spectrum_dim,
            "use_patch_tokens": use_patch_tokens,
            "patch_token_dim": patch_token_dim,
            "positional": positional,
            "use_statistics": use_statistics,
            "dropout": dropout,
            "init_std": init_std,
        }
        super().__init__(dims, config)
        if hidden_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide hidden_dim={hidden_dim}")
        if spectrum_crop is not None and spectrum_crop < 1:
            raise ValueError(f"spectrum_crop={spectrum_crop}; expected a positive size or None (whole spectrum)")
        if dims.feature_channels == 0 and not use_spectrum:
            raise ValueError(
                "FrequencyPrompt has no frequency input: dims.feature_channels is 0 (no FrequencyFeatures) and "
                "use_spectrum is False"
            )
        if use_statistics and dims.feature_channels == 0:
            raise ValueError(
                "use_statistics=True summarises the compact maps, but dims.feature_channels is 0 (no feature groups): "
                "pass use_statistics=False or select feature groups"
            )
        self.num_heads = num_heads
        self.use_spectrum = use_spectrum
        self.use_patch_tokens = use_patch_tokens
        self.positional = positional
        self.use_statistics = use_statistics
        self.crop = dims.patch_size if spectrum_crop is None else min(spectrum_crop, dims.patch_size)
        self._last_attention: Tensor | None = None  # (B, heads, P, h * w), averaged over heads when read
        self._position_cache: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}

        descriptor_dim = dims.feature_channels
        if use_spectrum:
            # log-magnitude, cos(phase), sin(phase) of every channel over the crop
            self.spectrum_proj = nn.Linear(3 * dims.in_chans * self.crop**2, spectrum_dim)
            descriptor_dim += spectrum_dim
        if use_patch_tokens:
            self.patch_token_proj = nn.Linear(dims.embed_dim, patch_token_dim)
            descriptor_dim += patch_token_dim
        if positional:
            descriptor_dim += _POSITION_CODE_DIM
        self.patch_mlp = nn.Sequential(
            nn.Linear(descriptor_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
        )
        if use_statistics:
            # orderless map statistics, standardised over the training images as a probe standardises its inputs
            width = 2 * dims.feature_channels * dims.statistics_scales
            self.statistics_norm = _Standardize(width)
            self.statistics_proj = nn.Linear(width, hidden_dim)
        self.queries = nn.Parameter(torch.randn(num_tokens, hidden_dim) * hidden_dim**-0.5)
        self.key_value = nn.Linear(hidden_dim, 2 * hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, dims.embed_dim)
        nn.init.normal_(self.out_proj.weight, std=init_std)
        nn.init.zeros_(self.out_proj.bias)

        self.prompt_embeddings = _static_prompts(dims, num_tokens, deep)
        self.layer_scale = nn.Parameter(torch.ones(dims.num_layers, 1, dims.embed_dim)) if deep else None
        self.prompt_dropout = nn.Dropout(dropout)

    @property
    def last_attention(self) -> Tensor | None:
        """``(B, P, h * w)`` head-averaged cross-attention weights of the last call (detached), or None before it."""
        return None if self._last_attention is None else self._last_attention.mean(dim=1)

    def spectrum_descriptors(self, maps: FrequencyMaps) -> Tensor:
        """Cropped patch spectra as flat per-patch vectors.

        Args:
            maps: Frequency maps with ``log_magnitude`` and ``phase`` of shape ``(B, C, h, w, p, p)`` (centred).

        Returns:
            ``(B, h, w, 3 * C * k * k)``: log-magnitude, cos(phase) and sin(phase) over the central ``k x k`` square.
        """
        log_magnitude, phase = maps.log_magnitude, maps.phase
        p = log_magnitude.shape[-1]
        start = p // 2 - self.crop // 2
        window = slice(start, start + self.crop)
        # (B, h, w, C, k, k) views, stacked straight into the descriptor layout (B, h, w, 3, C, k, k): no extra copy
        log_magnitude = log_magnitude[..., window, window].permute(0, 2, 3, 1, 4, 5)
        phase = phase[..., window, window].permute(0, 2, 3, 1, 4, 5)
        stacked = torch.stack([log_magnitude, torch.cos(phase), torch.sin(phase)], dim=3)
        batch, h, w = stacked.shape[:3]
        return stacked.reshape(batch, h, w, -1)

    def forward(self, images: Tensor, maps: FrequencyMaps | None, patch_tokens: Tensor) -> Tensor:
        """``-> (B, P, D)`` or ``(L, B, P, D)``; see :meth:`forward_from_descriptors`."""
        if maps is None:
            raise ValueError(
                "FrequencyPrompt needs FrequencyMaps: build the model with features=FrequencyFeatures(...)"
            )
        compact = maps.compact() if self.dims.feature_channels > 0 else None
        spectrum = self.spectrum_descriptors(maps) if self.use_spectrum else None
        return self.forward_from_descriptors(compact, spectrum, patch_tokens, maps.scale_statistics)

    def forward_from_descriptors(
        self,
        compact: Tensor | None,
        spectrum: Tensor | None,
        patch_tokens: Tensor | None,
        scale_statistics: Tensor | None = None,
    ) -> Tensor:
        """Prompts from per-patch descriptors (differentiable in ``compact``, e.g. for integrated gradients).

        Args:
            compact: ``(B, C_f, h, w)`` output of ``FrequencyMaps.compact()``; None only when ``C_f == 0``.
            spectrum: ``(B, h, w, S)`` output of :meth:`spectrum_descriptors`; None when ``use_spectrum`` is False.
            patch_tokens: ``(B, h * w, D)`` embedded patch tokens; read only when ``use_patch_tokens``.
            scale_statistics: ``FrequencyMaps.scale_statistics`` ``(B, 2 * C_f * (S - 1))``, the statistics at the
                other patch sizes (held fixed: they do not follow ``compact``); read only when ``use_statistics``
                and ``dims.statistics_scales > 1``.

        Returns:
            ``(B, P, D)`` or, in deep mode, ``(L, B, P, D)``. Sets :attr:`last_attention` ``(B, P, h * w)``.
        """
        parts = []
        if self.dims.feature_channels > 0:
            if compact is None or compact.shape[1] != self.dims.feature_channels:
                got = None if compact is None else tuple(compact.shape)
                raise ValueError(f"compact maps of shape {got}; expected (B, {self.dims.feature_channels}, h, w)")
            batch, _, h, w = compact.shape
            parts.append(compact.permute(0, 2, 3, 1).reshape(batch, h * w, -1))
        if self.use_spectrum:
            if spectrum is None:
                raise ValueError("spectrum descriptors are None but use_spectrum is True")
            batch, h, w, _ = spectrum.shape
            parts.append(self.spectrum_proj(spectrum.reshape(batch, h * w, -1).to(self.spectrum_proj.weight.dtype)))
        if self.use_patch_tokens:
            if patch_tokens is None or patch_tokens.shape[1] != h * w:
                got = None if patch_tokens is None else tuple(patch_tokens.shape)
                raise ValueError(f"patch_tokens of shape {got}; expected (B, {h * w}, {self.dims.embed_dim})")
            parts.append(self.patch_token_proj(patch_tokens.detach()))
        dtype = parts[-1].dtype
        if self.positional:
            key = (h, w, parts[0].device, dtype)
            if key not in self._position_cache:  # a constant of the grid: built once, not on every call
                self._position_cache[key] = _position_code(h, w, device=parts[0].device, dtype=dtype)
            parts.append(self._position_cache[key].expand(batch, -1, -1))
        descriptors = torch.cat([part.to(dtype) for part in parts], dim=-1)  # (B, N, descriptor_dim)
        embedded = self.patch_mlp(descriptors)  # (B, N, hidden)

        keys, values = self.key_value(embedded).chunk(2, dim=-1)
        head_dim = keys.shape[-1] // self.num_heads
        keys = keys.reshape(batch, h * w, self.num_heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
        values = values.reshape(batch, h * w, self.num_heads, head_dim).transpose(1, 2)
        queries = self.queries.to(keys.dtype).reshape(self.num_tokens, self.num_heads, head_dim).transpose(0, 1)
        attention = torch.softmax(queries @ keys.transpose(-2, -1) * head_dim**-0.5, dim=-1)  # (B, heads, P, N)
        self._last_attention = attention.detach()
        attended = (attention @ values).transpose(1, 2).reshape(batch, self.num_tokens, -1)  # (B, P, hidden)
        if self.use_statistics:
            statistics = self.statistics_norm(self._statistics(compact, scale_statistics))
            attended = attended + self.statistics_proj(statistics).unsqueeze(1)
        dynamic = self.out_proj(attended)  # (B, P, D)

        if self.deep:
            prompts = self.prompt_embeddings.unsqueeze(1) + self.layer_scale.unsqueeze(1) * dynamic  # (L, B, P, D)
        else:
            prompts = self.prompt_embeddings + dynamic
        return self.prompt_dropout(prompts)

    def _statistics(self, compact: Tensor, scale_statistics: Tensor | None) -> Tensor:
        """``(B, 2 * C_f * S)``: the map statistics of ``compact``, then those of the other patch sizes."""
        dtype = self.statistics_proj.weight.dtype
        statistics = map_statistics(compact.to(dtype))
        expected = 2 * self.dims.feature_channels * (self.dims.statistics_scales - 1)
        if expected == 0:
            return statistics
        if scale_statistics is None or scale_statistics.shape != (compact.shape[0], expected):
            got = None if scale_statistics is None else tuple(scale_statistics.shape)
            raise ValueError(
                f"scale_statistics of shape {got}; expected ({compact.shape[0]}, {expected}): the statistics at "
                f"{self.dims.statistics_scales - 1} other patch size(s), from FrequencyFeatures(statistics_scales=...)"
            )
        return torch.cat([statistics, scale_statistics.to(dtype)], dim=-1)


class _Standardize(nn.Module):
    """Per-feature standardisation ``(B, F) -> (B, F)``: by the batch's statistics while training (running averages
    kept for evaluation), by the running averages in ``eval()`` or for a batch of one image. ``BatchNorm1d`` without
    affine parameters, as a plain module so that DDP's ``sync_batchnorm`` leaves it per process (``SyncBatchNorm``
    needs GPUs)."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, features: Tensor) -> Tensor:
        batch_statistics = self.training and features.shape[0] > 1
        return nn.functional.batch_norm(
            features, self.running_mean, self.running_var, None, None, batch_statistics, self.momentum, self.eps
        )


_POSITION_FREQUENCIES = (1.0, 2.0)
_POSITION_CODE_DIM = 4 * len(_POSITION_FREQUENCIES)


def _position_code(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed sin/cos code of the patch centres in ``[-1, 1]^2``: ``-> (1, h * w, 4 * len(frequencies))``."""
    rows = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    cols = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    angles = [math.pi * f * coordinate for f in _POSITION_FREQUENCIES for coordinate in (y, x)]
    code = torch.stack([fn(a) for a in angles for fn in (torch.sin, torch.cos)], dim=-1)
    return code.reshape(1, h * w, -1).to(dtype)


def _static_prompts(dims: ModelDims, num_tokens: int, deep: bool) -> nn.Parameter:
    """VPT-initialised learnable prompts: ``(P, D)``, or ``(L, P, D)`` when deep."""
    shape = (dims.num_layers, num_tokens, dims.embed_dim) if deep else (num_tokens, dims.embed_dim)
    bound = vpt_init_bound(dims.patch_size, dims.embed_dim)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _expand_batch(prompts: Tensor, batch: int, deep: bool) -> Tensor:
    """``(P, D) -> (B, P, D)`` or ``(L, P, D) -> (L, B, P, D)`` as a view."""
    if deep:
        return prompts.unsqueeze(1).expand(-1, batch, -1, -1)
    return prompts.unsqueeze(0).expand(batch, -1, -1)


def _check_num_tokens(num_tokens: int) -> None:
    if num_tokens < 1:
        raise ValueError(f"num_tokens={num_tokens}; expected at least 1 prompt token (use NoPrompt for none)")
