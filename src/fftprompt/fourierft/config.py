"""FourierFT settings: :class:`FourierFTConfig` holds every default and checks every value, once.

Targets (:attr:`FourierFTConfig.targets`):

- ``"q"``, ``"k"``, ``"v"``: the matching ``d x d_in`` row block of timm's fused ``qkv`` linear (``d = d_out / 3``),
  each block with its own coefficients and the entries of a ``d x d_in`` matrix. All blocks of one ``qkv`` live in a
  single wrapper whose delta is the block-stacked delta (zeros for the other blocks), so the layer keeps its one
  matrix product. A linear layer whose own name is ``q``, ``k`` or ``v`` is adapted whole.
- any other plain name (``"qkv"``, ``"proj"``, ``"fc1"``, ``"fc2"``, ...): every ``nn.Linear`` whose module path ends
  in that component.
- ``"re:<regex>"``: every ``nn.Linear`` whose full module path (``blocks.3.mlp.fc1``) matches ``<regex>`` entirely.

Only ``nn.Linear`` modules are adapted (timm's ``patch_embed.proj`` is a convolution and never matches ``"proj"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

__all__ = [
    "QKV_BLOCKS",
    "REGEX_PREFIX",
    "VIT_B_N_FREQUENCY",
    "AdapterDtype",
    "FourierFTConfig",
    "GradMode",
    "Init",
]

GradMode = Literal["auto", "dense", "fft"]
Init = Literal["normal", "zeros"]
AdapterDtype = Literal["float32", "bfloat16", "float16"]

QKV_BLOCKS = ("q", "k", "v")
REGEX_PREFIX = "re:"

VIT_B_N_FREQUENCY = 3000
"""Spectral entries per matrix in the FourierFT paper's ViT-B image-classification runs (Gao et al., ICML 2024)."""


@dataclass
class FourierFTConfig:
    """Where and how FourierFT adapts a model.

    Args:
        n_frequency: Learnable spectral entries ``n`` per adapted matrix (per row block for ``q``/``k``/``v``).
        scaling: Factor applied to ``Re(ifft2(S))``.
        seed: Seed of the entry locations (PEFT's ``random_loc_seed``); equal shapes share locations.
        targets: What to adapt: ``"q"``, ``"k"``, ``"v"`` (row blocks of fused ``qkv``), module-name components
            such as ``"qkv"``, ``"proj"``, ``"fc1"``, ``"fc2"``, or ``"re:<regex>"`` over full module paths.
            Any sequence (a YAML list) is stored as a tuple.
        init: Coefficient initialisation: ``"normal"`` (standard normal, as PEFT with ``init_weights=False``) or
            ``"zeros"`` (the adapted model starts equal to the base model).
        grad_mode: How the coefficient gradient is computed: ``"dense"`` (from the weight gradient), ``"fft"`` (from
            FFTs of the layer inputs and output gradients) or ``"auto"`` (cheaper one for the device and shape).
        dtype: Storage dtype of the coefficients (and of their gradients and optimiser state): ``"float32"``,
            ``"bfloat16"`` or ``"float16"``; ``None`` keeps float32 (float64 on float64 weights) unless the trainer's
            precision converts the model (``bf16-true``). An explicit dtype survives such conversions. The spectrum
            and its FFTs stay in float32 either way; the delta is cast to the coefficients' dtype after the FFT (as
            PEFT does) and added to the weight in the layer's compute dtype.
    """

    n_frequency: int = 1000
    scaling: float = 150.0
    seed: int = 777
    targets: tuple[str, ...] = ("q", "v")
    init: Init = "normal"
    grad_mode: GradMode = "auto"
    dtype: AdapterDtype | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n_frequency, bool) or not isinstance(self.n_frequency, int) or self.n_frequency <= 0:
            raise ValueError(f"FourierFTConfig.n_frequency={self.n_frequency!r}; expected a positive int")
        if (
            isinstance(self.scaling, bool)
            or not isinstance(self.scaling, (int, float))
            or not math.isfinite(self.scaling)
        ):
            raise ValueError(f"FourierFTConfig.scaling={self.scaling!r}; expected a finite number")
        self.scaling = float(self.scaling)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"FourierFTConfig.seed={self.seed!r}; expected a non-negative int")
        if isinstance(self.targets, str) or not isinstance(self.targets, Sequence):
            raise ValueError(
                f"FourierFTConfig.targets={self.targets!r}; expected a sequence of strings such as ('q', 'v')"
            )
        self.targets = tuple(self.targets)
        if not self.targets:
            raise ValueError("FourierFTConfig.targets is empty; expected at least one target such as 'q'")
        for target in self.targets:
            if not isinstance(target, str) or not target or target == REGEX_PREFIX:
                raise ValueError(f"FourierFTConfig.targets contains {target!r}; expected non-empty strings")
            if target.startswith(REGEX_PREFIX):
                try:
                    re.compile(target[len(REGEX_PREFIX) :])
                except re.error as error:
                    raise ValueError(f"FourierFTConfig.targets: bad regular expression {target!r}: {error}") from None
        duplicates = sorted({t for t in self.targets if self.targets.count(t) > 1})
        if duplicates:
            raise ValueError(f"FourierFTConfig.targets repeats {duplicates}")
        if "qkv" in self.targets and any(t in QKV_BLOCKS for t in self.targets):
            raise ValueError(
                f"FourierFTConfig.targets={self.targets}: 'qkv' adapts the whole fused layer and cannot be combined "
                "with its row blocks 'q', 'k', 'v'"
            )
        if self.init not in get_args(Init):
            raise ValueError(f"FourierFTConfig.init={self.init!r}; expected one of {get_args(Init)}")
        if self.grad_mode not in get_args(GradMode):
            raise ValueError(f"FourierFTConfig.grad_mode={self.grad_mode!r}; expected one of {get_args(GradMode)}")
        if self.dtype is not None and self.dtype not in get_args(AdapterDtype):
            raise ValueError(
                f"FourierFTConfig.dtype={self.dtype!r}; expected one of {get_args(AdapterDtype)} or null (float32 "
                "unless the trainer's precision converts the model)"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (``targets`` as a list), in field order; :meth:`from_dict` reads them back."""
        return asdict(self) | {"targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FourierFTConfig:
        """A validated config from :meth:`to_dict`'s output (lists from JSON or YAML become tuples).

        Raises:
            TypeError: A key is not a setting.
            ValueError: A value is invalid.
        """
        return cls(**values)
