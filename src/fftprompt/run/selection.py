"""The ``selection`` entry of ``fftprompt-pretrain``: its data configs built into data modules (normalised like the
ViT, without augmentation) and the :class:`fftprompt.pretrain.ProbeSelection` callback around them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from fftprompt.data.base import ImageDataModule
from fftprompt.pretrain import ProbeSelection

__all__ = ["probe_selection"]


def probe_selection(node: DictConfig | None, mean: Sequence[float], std: Sequence[float]) -> ProbeSelection | None:
    """The checkpoint-selection callback a pretraining config's ``selection`` entry describes (None for null).

    ``selection.data`` maps a name to a data config (``configs/data/*.yaml`` keys); each is built with the ViT's
    ``mean``/``std``, ``augment=false`` and its root made absolute. A missing root is a ``ValueError`` naming the key.
    """
    if node is None:
        return None
    data = node.get("data")
    if not isinstance(data, DictConfig) or len(data) == 0:
        raise ValueError("selection.data: expected a mapping name -> data config, e.g. selection.data.dtd.root=<dir>")
    modules = {str(name): _datamodule(f"selection.data.{name}", entry, mean, std) for name, entry in data.items()}
    settings: dict[str, Any] = {key: node[key] for key in node if key != "data"}
    factory = instantiate(OmegaConf.create(settings), _partial_=True, _convert_="all")
    return factory(data=modules)


def _datamodule(key: str, entry: Any, mean: Sequence[float], std: Sequence[float]) -> ImageDataModule:
    if not isinstance(entry, DictConfig) or "_target_" not in entry:
        raise ValueError(f"{key}: expected a data config with a _target_ (e.g. the keys of configs/data/dtd.yaml)")
    missing = [name for name in entry if OmegaConf.is_missing(entry, name)]
    if missing:
        raise ValueError(f"{key}: {', '.join(missing)} missing; pass {key}.{missing[0]}=<value> (or ~{key} to drop it)")
    overrides: dict[str, Any] = {"mean": list(mean), "std": list(std), "augment": False}
    if entry.get("root") is not None:
        overrides["root"] = to_absolute_path(str(entry.root))
    try:
        module = instantiate(entry, **overrides)
    except Exception as error:  # Hydra wraps the constructor's error; say which entry it came from
        cause = error.__cause__ or error
        raise ValueError(f"{key}: {str(cause).splitlines()[0]}") from error
    if not isinstance(module, ImageDataModule) or module.task != "classification":
        raise ValueError(f"{key}._target_={entry._target_!r}: the probe needs a classification data module")
    return module
