"""Budget planning: every variant of the ablation sized to one trainable-parameter budget, from the model's dims.

Pure arithmetic over :class:`~fftprompt.prompts.ModelDims` and the number of matrices FourierFT adapts; no config,
no data. The reference budget is VPT-deep's and VFPT's standard 10 prompts per block, ``B = 10 * L * D`` prompt
parameters; every method gets at most ``B`` trainable parameters besides the (shared) classification head:

- VPT-shallow: ``B // D`` prompts; VPT-deep and VFPT: ``B // (L * D)`` prompts per block;
- FourierFT: ``n_frequency = B // M`` for ``M`` adapted matrices;
- fft prompts (shallow: 4 prompts; deep: 2 per block): the widest generator (``hidden_dim`` h, ``spectrum_dim`` h/2,
  ``spectrum_crop`` 4, 2 heads) with at most ``B`` parameters;
- fft prompts + FourierFT: fft prompts shallow's generator and FourierFT with the parameters it leaves
  (``n_frequency = (B - generator) // M``), so that the combination holds its fft part whole; where that leaves
  FourierFT less than a tenth of ``B``, the widest shallow generator within nine tenths of ``B``, FourierFT the rest.
- VAPT: VPT-deep's prompts per block (fewer where the token-wise projectors alone exceed ``B``) and the widest
  feature projector (``hidden_dim`` r) with at most ``B`` parameters.

Feature ablations use the fft-shallow generator settings with one feature group removed (``features.groups``),
without the spectrum projection (``prompt.use_spectrum=false``) or the map statistics (``prompt.use_statistics=false``),
or with the head on the class token instead of the prompts (``task.pooling=cls``); their parameter counts drop
slightly with the narrower input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fftprompt.methods import METHOD_LABELS, TRAINED_METHODS
from fftprompt.prompts import FrequencyPrompt, ModelDims
from fftprompt.spectral import FEATURE_GROUPS
from fftprompt.vapt import VAPTPrompt

__all__ = ["ABLATIONS", "LABELS", "METHODS", "Variant", "plan_variants"]

METHODS = tuple(TRAINED_METHODS)
ABLATIONS = (
    "fft_no_symmetry",
    "fft_no_orientation",
    "fft_no_radial",
    "fft_no_cross_patch",
    "fft_no_spectrum",
    "fft_no_statistics",
    "fft_cls_readout",
)
LABELS = {
    **METHOD_LABELS,
    "fft_no_symmetry": "fft shallow without symmetry maps",
    "fft_no_orientation": "fft shallow without orientation maps",
    "fft_no_radial": "fft shallow without radial bands",
    "fft_no_cross_patch": "fft shallow without cross-patch symmetry",
    "fft_no_spectrum": "fft shallow without spectrum projection",
    "fft_no_statistics": "fft shallow without map statistics",
    "fft_cls_readout": "fft shallow, head on the class token",
}

_FFT_SHALLOW_TOKENS = 4
_FFT_DEEP_TOKENS = 2
_FFT_HEADS = 2
_FFT_CROP = 4
_FOURIERFT_MIN_SHARE = 0.1  # of the budget, the least FourierFT gets in fft prompts + FourierFT

VariantKind = Literal["method", "feature ablation"]


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a name, a label and the Hydra overrides that make it from the base config."""

    name: str
    label: str
    overrides: tuple[str, ...]
    kind: VariantKind


def _fft_settings(hidden_dim: int, num_tokens: int, statistics: bool = True) -> dict[str, Any]:
    """The fft prompt generator of width ``hidden_dim``: ``FrequencyPrompt`` arguments (the map statistics as
    ``prompt=fft`` has them, whose constructor default of False keeps old adapters loadable)."""
    return {
        "num_tokens": num_tokens,
        "hidden_dim": hidden_dim,
        "num_heads": _FFT_HEADS,
        "spectrum_dim": max(hidden_dim // 2, 1),
        "spectrum_crop": _FFT_CROP,
        "use_statistics": statistics,
    }


def _fft_parameters(dims: ModelDims, settings: dict[str, Any], deep: bool = False) -> int:
    return FrequencyPrompt(dims, deep=deep, **settings).num_parameters()


def _fft_overrides(settings: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        f"prompt.{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items()
    )


def _widest_fft(dims: ModelDims, budget: int, num_tokens: int, deep: bool) -> dict[str, Any]:
    """The widest generator (largest even ``hidden_dim``) with at most ``budget`` parameters: with the map
    statistics, or without them where even the narrowest generator with them exceeds ``budget`` (tiny backbones;
    the overrides then say ``prompt.use_statistics=false``)."""
    for statistics in (True, False) if dims.feature_channels else (False,):  # statistics summarise the maps
        best = None
        for hidden_dim in range(_FFT_HEADS, 513, _FFT_HEADS):
            settings = _fft_settings(hidden_dim, num_tokens, statistics)
            if _fft_parameters(dims, settings, deep) > budget:
                break
            best = settings
        if best is not None:
            return best
    raise ValueError(
        f"budget {budget}: even the smallest fft prompt generator ({num_tokens} tokens, hidden_dim {_FFT_HEADS}) "
        "has more parameters; raise --budget"
    )


def _sized_vapt(dims: ModelDims, budget: int, num_tokens: int) -> tuple[str, ...]:
    """VAPT with at most ``num_tokens`` prompts per block (fewer when its token-wise projectors alone exceed
    ``budget``, as on tiny backbones) and the widest feature projector within ``budget`` (linear in ``hidden_dim``)."""
    for tokens in range(num_tokens, 0, -1):
        smallest = VAPTPrompt(dims, num_tokens=tokens, hidden_dim=1).num_parameters()
        if smallest <= budget:
            per_unit = VAPTPrompt(dims, num_tokens=tokens, hidden_dim=2).num_parameters() - smallest
            return f"prompt.num_tokens={tokens}", f"prompt.hidden_dim={1 + (budget - smallest) // per_unit}"
    raise ValueError(
        f"budget {budget}: even the smallest VAPT (1 prompt per block, hidden_dim 1) has {smallest} parameters; "
        "raise --budget"
    )


def plan_variants(
    dims: ModelDims, fourierft_matrices: int, names: Sequence[str], budget: int | None = None
) -> tuple[list[Variant], dict[str, Any]]:
    """Sizes every requested variant to the parameter budget.

    Args:
        dims: The backbone and features of the base config (``ModelDims.of(backbone, features)``).
        fourierft_matrices: Matrices ``M`` that the base config's FourierFT targets adapt.
        names: Variants, from :data:`METHODS` and :data:`ABLATIONS`.
        budget: Trainable parameters besides the head; default ``10 * L * D``.

    Returns:
        The variants in the order of ``names`` and a description of the budget (``budget``, ``embed_dim``,
        ``num_layers``, ``feature_channels``, ``fourierft_matrices``).
    """
    unknown = [n for n in names if n not in METHODS + ABLATIONS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected names from {list(METHODS + ABLATIONS)}")
    embed_dim, layers, matrices = dims.embed_dim, dims.num_layers, fourierft_matrices
    budget = 10 * layers * embed_dim if budget is None else budget
    fft_shallow = _widest_fft(dims, budget, _FFT_SHALLOW_TOKENS, deep=False)
    fft_deep = _widest_fft(dims, budget, _FFT_DEEP_TOKENS, deep=True)
    fft_combined = fft_shallow
    if budget - _fft_parameters(dims, fft_shallow) < budget * _FOURIERFT_MIN_SHARE:
        fft_combined = _widest_fft(dims, int(budget * (1 - _FOURIERFT_MIN_SHARE)), _FFT_SHALLOW_TOKENS, deep=False)
    fourier_small = max((budget - _fft_parameters(dims, fft_combined)) // matrices, 1)
    tokens_per_block = max(budget // (layers * embed_dim), 1)
    per_block = f"prompt.num_tokens={tokens_per_block}"
    vapt = _sized_vapt(dims, budget, tokens_per_block) if "vapt" in names else ()
    prompt_sizes = {
        "vpt_shallow": (f"prompt.num_tokens={max(budget // embed_dim, 1)}",),
        "vpt_deep": (per_block,),
        "vfpt": (per_block,),
        "vapt": vapt,
        "fft_shallow": _fft_overrides(fft_shallow),
        "fft_deep": _fft_overrides(fft_deep),
        "fft_fourierft": _fft_overrides(fft_combined),
    }
    adapter_sizes = {
        "fourierft": (f"adapter.n_frequency={max(budget // matrices, 1)}",),
        "fft_fourierft": (f"adapter.n_frequency={fourier_small}",),
    }
    overrides = {
        name: (
            f"prompt={method.prompt}",
            *prompt_sizes.get(name, ()),
            f"adapter={method.adapter}",
            *adapter_sizes.get(name, ()),
        )
        for name, method in TRAINED_METHODS.items()
    }
    shallow = overrides["fft_shallow"]
    overrides["fft_no_spectrum"] = (*shallow, "prompt.use_spectrum=false")
    overrides["fft_no_statistics"] = (*shallow, "prompt.use_statistics=false")
    overrides["fft_cls_readout"] = (*shallow, "task.pooling=cls")
    for group in FEATURE_GROUPS:
        kept = ",".join(g for g in FEATURE_GROUPS if g != group)
        overrides[f"fft_no_{group}"] = (*shallow, f"features.groups=[{kept}]")
    variants = [
        Variant(name, LABELS[name], overrides[name], "method" if name in METHODS else "feature ablation")
        for name in names
    ]
    description = {
        "budget": budget,
        "embed_dim": embed_dim,
        "num_layers": layers,
        "feature_channels": dims.feature_channels,
        "fourierft_matrices": matrices,
    }
    return variants, description
