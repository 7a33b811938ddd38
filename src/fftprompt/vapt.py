"""Visual Adaptive Prompt Tuning (VAPT; Le et al., "Revisit Visual Prompt Tuning: The Expressiveness of Prompt
Experts", arXiv 2501.18936, ICLR 2026; code: github.com/Minhchuyentoancbn/VAPT).

VPT's prompts are constants; VAPT's are functions of the tokens the prompted block reads. For block ``l`` the
adaptive prompts are computed from the block's input patch tokens ``X_l`` ``(B, h * w, D)``:

1. ``LayerNorm_l`` over each token (the official code norms class and patch tokens together and then drops the class
   token; the norm is per token, so this is the same);
2. the patch grid ``(B, D, h, w)`` goes through a **channel-wise convolution**: one ``k x k`` kernel shared by every
   channel (``groups = D``, no padding, no bias; ``shared_kernel=False`` gives each channel its own), then
   ``Dropout2d``;
3. a **token-wise projector** ``Linear_l(h' * w' -> P)`` mixes the ``h' * w'`` positions into ``P`` prompt tokens,
   per channel (``(B, D, h' w') -> (B, D, P) -> (B, P, D)``); it is **zero-initialised** (weight and bias);
4. the **feature projector**, one MLP shared by all layers: ``g(u) = u + W_2 relu(W_1 u)`` (``D -> r -> D``, no
   biases, dropout on the hidden units).

Deep VAPT (the paper's method, ``deep=True``): block 0 gets static VPT prompts (the official ``VPT_DEPTH = 1``), every
later block its adaptive prompts from its own input; these are produced inside the block loop through
:meth:`VAPTPrompt.prompts_for_layer` (``per_layer = True``, see :meth:`fftprompt.model.PromptedViT._forward_tokens`).
Shallow VAPT (``deep=False``): the adaptive prompts of block 0, from the embedded patch tokens (the official code's
shallow setting is plain VPT-shallow, which is ``prompt=vpt`` here).

Initialisation: the zero token-wise projectors make every adaptive prompt exactly zero at the start (``g(0) = 0``),
so deep VAPT starts as VPT-deep with its static first-layer prompts and zero prompts in the later blocks, and shallow
VAPT as VPT-shallow with zero prompts; not as the bare backbone (zero tokens still take part in attention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fftprompt.prompts import ModelDims, PromptSource, _static_prompts

if TYPE_CHECKING:
    from fftprompt.spectral import FrequencyMaps

__all__ = ["VAPTPrompt"]


class VAPTPrompt(PromptSource):
    """Visual Adaptive Prompt Tuning: prompts generated from the backbone's own tokens at each prompted block.

    Parameters (deep): ``P * D`` static prompts of block 0, per later block ``2 D`` (LayerNorm) ``+ k^2`` (``D k^2``
    when ``shared_kernel`` is False) ``+ (h' w' + 1) P`` (token-wise projector), and ``2 D r`` once (feature
    projector), where ``h' = h - k + 1``. Shallow: one adaptive layer and no static prompts.

    Args:
        dims: Backbone facts; ``grid_size`` fixes the token-wise projectors' input ``h' * w'``, so the model runs at
            that grid only.
        num_tokens: Prompts ``P`` per block.
        deep: Adaptive prompts at every block after the first (static VPT prompts at the first); False: adaptive
            prompts at the input only.
        hidden_dim: ``r``, the feature projector's hidden width (the paper's examples use 8).
        kernel_size: ``k``, side of the channel-wise convolution kernel (at most the grid's smaller side).
        shared_kernel: One kernel for all channels (the official ``CHANNELWISE=True``); False: one per channel.
        dropout: Dropout on the static prompts while training (VPT's; 0 as in ``prompt=vpt``).
        mlp_dropout: Dropout on the feature projector's hidden units while training (official ``DROPOUT_MLP``).
        map_dropout: ``Dropout2d`` on the convolved token maps while training (fixed at 0.1 in the official code).
    """

    per_layer = True

    def __init__(
        self,
        dims: ModelDims,
        num_tokens: int = 10,
        deep: bool = True,
        hidden_dim: int = 8,
        kernel_size: int = 3,
        shared_kernel: bool = True,
        dropout: float = 0.0,
        mlp_dropout: float = 0.1,
        map_dropout: float = 0.1,
    ) -> None:
        config = {
            "num_tokens": num_tokens,
            "deep": deep,
            "hidden_dim": hidden_dim,
            "kernel_size": kernel_size,
            "shared_kernel": shared_kernel,
            "dropout": dropout,
            "mlp_dropout": mlp_dropout,
            "map_dropout": map_dropout,
        }
        super().__init__(dims, config)
        h, w = dims.grid_size
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim={hidden_dim}; expected a feature projector width of at least 1")
        if not 1 <= kernel_size <= min(h, w):
            raise ValueError(
                f"kernel_size={kernel_size}; expected 1 .. {min(h, w)} (the {h}x{w} patch grid's smaller side)"
            )
        self.grid = (h, w)
        self.kernel_size = kernel_size
        positions = (h - kernel_size + 1) * (w - kernel_size + 1)
        # adaptive layers: blocks 1 .. L-1 when deep (block 0 is static), block 0 alone when shallow
        adaptive = dims.num_layers - 1 if deep else 1
        kernels = 1 if shared_kernel else dims.embed_dim
        self.prompt_embeddings = _static_prompts(dims, num_tokens, deep=False) if deep else None
        self.prompt_dropout = nn.Dropout(dropout)
        self.norms = nn.ModuleList([nn.LayerNorm(dims.embed_dim) for _ in range(adaptive)])
        # official init: standard normal kernels
        self.kernels = nn.Parameter(torch.randn(adaptive, kernels, 1, kernel_size, kernel_size))
        self.map_dropout = nn.Dropout2d(map_dropout)
        self.token_projectors = nn.ModuleList([nn.Linear(positions, num_tokens) for _ in range(adaptive)])
        for projector in self.token_projectors:
            nn.init.zeros_(projector.weight)
            nn.init.zeros_(projector.bias)
        self.feature_projector = nn.Sequential(
            nn.Linear(dims.embed_dim, hidden_dim, bias=False),
            nn.ReLU(),
            nn.Dropout(mlp_dropout),
            nn.Linear(hidden_dim, dims.embed_dim, bias=False),
        )

    def forward(self, images: Tensor, maps: FrequencyMaps | None, patch_tokens: Tensor) -> Tensor:
        """``-> (B, P, D)``: the prompts of the first block (static when deep, adaptive when shallow); the deeper
        blocks' come from :meth:`prompts_for_layer`."""
        if self.deep:
            return self.prompt_dropout(self.prompt_embeddings).unsqueeze(0).expand(patch_tokens.shape[0], -1, -1)
        return self._adaptive(0, patch_tokens)

    def prompts_for_layer(self, index: int, patch_tokens: Tensor) -> Tensor:
        """Adaptive prompts of block ``index`` (``1 .. L-1``, deep only) from its input patch tokens.

        Args:
            index: The block about to run.
            patch_tokens: ``(B, h * w, D)`` the block's input patch tokens (prefix and prompts dropped).

        Returns:
            ``(B, P, D)``.
        """
        if not self.deep or not 1 <= index < self.dims.num_layers:
            raise ValueError(
                f"prompts_for_layer({index}): expected a block 1 .. {self.dims.num_layers - 1} of a deep VAPTPrompt "
                f"(deep={self.deep})"
            )
        return self._adaptive(index - 1, patch_tokens)

    def _adaptive(self, layer: int, patch_tokens: Tensor) -> Tensor:
        """Adaptive layer ``layer``'s prompts: ``(B, h * w, D) -> (B, P, D)``."""
        batch, count, dim = patch_tokens.shape
        h, w = self.grid
        if count != h * w or dim != self.dims.embed_dim:
            raise ValueError(
                f"VAPTPrompt got patch tokens of shape {tuple(patch_tokens.shape)}; its token-wise projectors are "
                f"built for the {h}x{w} grid: expected (B, {h * w}, {self.dims.embed_dim}) (images of the backbone's "
                "img_size)"
            )
        normed = self.norms[layer](patch_tokens)
        grid = normed.transpose(1, 2).reshape(batch, dim, h, w)
        kernel = self.kernels[layer].to(grid.dtype).expand(dim, 1, self.kernel_size, self.kernel_size)
        mixed = self.map_dropout(F.conv2d(grid, kernel, groups=dim))  # (B, D, h', w')
        tokens = self.token_projectors[layer](mixed.flatten(2)).transpose(1, 2)  # (B, P, D)
        return tokens + self.feature_projector(tokens)
