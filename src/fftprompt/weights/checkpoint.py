"""Reading a local backbone weights file (``backbone.checkpoint_path=``) into a plain state dict.

The file may be ``.safetensors`` or a ``torch.save`` file (read with ``weights_only=True``), its state dict wrapped
by a training framework (``{"state_dict": ...}``, ``{"model": ...}``) and its keys prefixed (``module.``,
``model.``). Adapting the keys to a timm model (and dropping its classifier) is :mod:`fftprompt.backbone`'s, the one
importer of timm.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["read_state_dict"]

# wrappers that training frameworks put around a state dict, and key prefixes they add (checked in this order)
_STATE_DICT_WRAPPERS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
_KEY_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "_orig_mod.")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of the safetensors or torch file ``path``, unwrapped from a common container, a common key prefix
    stripped.

    Raises:
        ValueError: if the file cannot be read, holds no state dict or no tensors.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the readers raise many types (SafetensorError, UnpicklingError, EOFError, ...)
        raise ValueError(f"checkpoint {str(path)!r} could not be read: {type(error).__name__}: {error}") from error
    for wrapper in _STATE_DICT_WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(state).__name__}; expected a state dict")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"checkpoint {str(path)!r} holds no tensors")
    for prefix in _KEY_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors
