"""FourierFT on whole models: match targets, inject and merge layers, save and load the coefficients.

Target matching follows :attr:`FourierFTConfig.targets <fftprompt.fourierft.config.FourierFTConfig>`; the coefficient
state dict holds only the trainable coefficients, since the entry locations are regenerated from the seed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fftprompt.fourierft.bank import FourierFTBank
from fftprompt.fourierft.config import QKV_BLOCKS, REGEX_PREFIX, FourierFTConfig
from fftprompt.fourierft.layer import FULL_LAYER, FourierFTLinear

__all__ = [
    "count_fourierft_matrices",
    "fourierft_state_dict",
    "inject_fourierft",
    "load_fourierft_state_dict",
    "merge_fourierft",
    "unload_fourierft",
]


def _adaptable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``nn.Linear`` modules by path, excluding those already wrapped by a FourierFT layer."""
    wrapped = {name for name, module in model.named_modules() if isinstance(module, FourierFTLinear)}
    if wrapped:
        raise ValueError(
            f"model already has FourierFT layers ({sorted(wrapped)[:3]}...); merge_fourierft it before adapting again"
        )
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def _available_targets(linears: Mapping[str, nn.Linear]) -> str:
    components = sorted({name.rsplit(".", 1)[-1] for name in linears})
    example = next(iter(linears), "blocks.0.mlp.fc1")
    blocks = ", 'q'/'k'/'v' (row blocks of fused 'qkv')" if "qkv" in components else ""
    return f"nn.Linear name components {components}{blocks}, or 're:<regex>' over paths such as {example!r}"


def _match_targets(linears: Mapping[str, nn.Linear], targets: tuple[str, ...]) -> tuple[dict[str, set[str]], list[str]]:
    """What each target adapts: ``({path: {"full"} or q/k/v block names}, unmatched targets)``."""
    plan: dict[str, set[str]] = {}
    unmatched = []
    for target in targets:
        matched = False
        for name in linears:
            last = name.rsplit(".", 1)[-1]
            if target.startswith(REGEX_PREFIX):
                hit, kind = re.fullmatch(target[len(REGEX_PREFIX) :], name) is not None, FULL_LAYER
            elif target in QKV_BLOCKS and last == "qkv":
                hit, kind = True, target
            else:
                hit, kind = last == target, FULL_LAYER
            if hit:
                matched = True
                plan.setdefault(name, set()).add(kind)
        if not matched:
            unmatched.append(target)
    return plan, unmatched


def _plan(model: nn.Module, config: FourierFTConfig) -> tuple[dict[str, nn.Linear], dict[str, set[str]]]:
    """The linear layers of ``model`` and what ``config.targets`` adapt of them (:func:`_match_targets`), checked."""
    if not isinstance(config, FourierFTConfig):
        raise ValueError(f"FourierFT: config is a {type(config).__name__}; expected a FourierFTConfig")
    linears = _adaptable_linears(model)
    plan, unmatched = _match_targets(linears, config.targets)
    if unmatched:
        raise ValueError(
            f"FourierFT targets {unmatched} match no layer of {type(model).__name__}; available: "
            f"{_available_targets(linears)}"
        )
    for name, kinds in plan.items():
        if FULL_LAYER in kinds and len(kinds) > 1:
            raise ValueError(
                f"FourierFT targets adapt {name!r} both whole and as blocks {sorted(kinds - {FULL_LAYER})}; choose one"
            )
    return linears, plan


def count_fourierft_matrices(model: nn.Module, config: FourierFTConfig) -> int:
    """How many matrices :func:`inject_fourierft` would adapt in ``model`` (a ``q``/``k``/``v`` row block counts as
    one), found without building any layer: ``n_frequency`` coefficients each.

    Raises:
        ValueError: as :func:`inject_fourierft` for targets that match nothing or adapt a layer twice.
    """
    _, plan = _plan(model, config)
    return sum(len(kinds) for kinds in plan.values())


def inject_fourierft(model: nn.Module, config: FourierFTConfig) -> list[str]:
    """Replace the targeted linear layers of ``model`` in place by :class:`FourierFTLinear` wrappers.

    Base weights of the adapted layers are frozen; other parameters of ``model`` are left as they are. Layers (and
    ``q``/``k``/``v`` blocks) of equal shape share their entry locations.

    Args:
        model: Any module, e.g. a timm ``VisionTransformer``.
        config: Targets and FourierFT settings.

    Returns:
        Module paths of the adapted layers, in module order (a ``qkv`` adapted on blocks appears once).

    Raises:
        ValueError: A target matches no ``nn.Linear`` (the message lists what exists), a ``qkv`` targeted by blocks has
            a row count not divisible by 3, or ``n_frequency`` exceeds a matrix's size (naming the layer). No layer is
            replaced then.
    """
    linears, plan = _plan(model, config)
    # every wrapper is built (and its shape checked) before the first one replaces its layer
    wrappers = {
        name: FourierFTLinear(
            module,
            config,
            blocks=None if plan[name] == {FULL_LAYER} else sorted(plan[name], key=QKV_BLOCKS.index),
            name=name,
        )
        for name, module in linears.items()
        if name in plan
    }
    for name, wrapper in wrappers.items():
        _set_submodule(model, name, wrapper)
    FourierFTBank(list(wrappers.values()))  # layers of one shape synthesise their deltas together
    return list(wrappers)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def merge_fourierft(model: nn.Module) -> nn.Module:
    """Merge every FourierFT delta into its base weight and put the plain ``nn.Linear`` back, in place.

    Args:
        model: A model adapted by :func:`inject_fourierft` (or a single :class:`FourierFTLinear`).

    Returns:
        The same model without FourierFT modules (the base layer itself when ``model`` is a FourierFT layer).
    """
    if isinstance(model, FourierFTLinear):
        if not model.merged:
            model.merge()
        return model.base_layer
    for name, module in list(model.named_modules()):
        if isinstance(module, FourierFTLinear):
            if not module.merged:
                module.merge()
            _set_submodule(model, name, module.base_layer)
    return model


def unload_fourierft(model: nn.Module) -> nn.Module:
    """Put every adapted layer's base ``nn.Linear`` back without merging (PEFT's ``unload``), in place.

    Args:
        model: A model adapted by :func:`inject_fourierft`, with no delta merged.

    Returns:
        The same model as it was before the injection (the deltas are dropped).

    Raises:
        ValueError: A layer's delta is merged into its base weight (unloading would keep it).
    """
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, FourierFTLinear)]
    merged = [name for name, module in layers if module.merged]
    if merged:
        raise ValueError(f"FourierFT layers {merged[:3]} are merged; unmerge() them before unloading")
    if isinstance(model, FourierFTLinear):
        return model.base_layer
    for name, module in layers:
        _set_submodule(model, name, module.base_layer)
    return model


def fourierft_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The trainable FourierFT coefficients of ``model``, keyed by parameter path.

    Keys look like ``blocks.0.attn.qkv.fourierft_spectrum.q``; locations are not included (they are regenerated from
    the seed when the adapters are injected again).

    Args:
        model: A model containing :class:`FourierFTLinear` layers.

    Returns:
        Detached ``(n,)`` tensors sharing storage with the parameters.
    """
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, FourierFTLinear):
            prefix = f"{name}." if name else ""
            for key, parameter in module.fourierft_spectrum.items():
                state[f"{prefix}fourierft_spectrum.{key}"] = parameter.detach()
    return state


@torch.no_grad()
def load_fourierft_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Copy coefficients saved by :func:`fourierft_state_dict` into a model adapted with the same configuration.

    Args:
        model: A model with :class:`FourierFTLinear` layers (same targets, ``n_frequency`` and seed).
        state_dict: Coefficients keyed by parameter path.

    Raises:
        ValueError: Keys are missing or unexpected, or a shape differs.
    """
    current = fourierft_state_dict(model)
    missing = sorted(set(current) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"FourierFT state dict does not fit the model: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    for key, target in current.items():
        source = state_dict[key]
        if source.shape != target.shape:
            raise ValueError(
                f"FourierFT state dict: {key!r} has shape {tuple(source.shape)}; expected {tuple(target.shape)}"
            )
        target.copy_(source)
