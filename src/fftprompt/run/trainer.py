"""The Lightning ``Trainer`` of a run and what it is given and gives back: callbacks and loggers instantiated from
the config (an optional logger's package checked first), atomic checkpoints, the best validation score, the
checkpoint to test and the test metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig

from fftprompt.lit import AtomicCheckpointIO, ClassificationModule
from fftprompt.utils import is_installed

# packages that optional loggers need, and the fftprompt extra that installs them
_LOGGER_PACKAGES = {
    "lightning.pytorch.loggers.WandbLogger": (("wandb",), "wandb"),
    "lightning.pytorch.loggers.MLFlowLogger": (("mlflow",), "mlflow"),
    "lightning.pytorch.loggers.TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
}


def instantiate_optional(node: Any) -> Any:
    """``instantiate(node)``, or None for a missing/null/empty node (e.g. ``adapter=none``)."""
    if node is None or (isinstance(node, DictConfig) and len(node) == 0):
        return None
    return instantiate(node)


def instantiate_collection(node: DictConfig | None, group: str = "callbacks") -> list[Any]:
    """Instantiates every entry with a ``_target_`` of a ``callbacks``/``logger`` mapping (null entries dropped)."""
    if node is None:
        return []
    objects = []
    for name, entry in node.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(f"entry {name!r} has no _target_; expected a mapping of name -> instantiable config")
        packages, extra = _LOGGER_PACKAGES.get(str(entry._target_), ((), ""))
        if packages and not any(is_installed(package) for package in packages):
            raise ValueError(
                f"{group}.{name} ({entry._target_}) needs the {packages[0]} package, which is not installed: pip "
                f"install 'fftprompt[{extra}]' (or pip install {packages[0]}), or choose another {group} (logger=csv)"
            )
        objects.append(instantiate(entry))
    return objects


def make_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """``instantiate(cfg.trainer, **kwargs)`` with checkpoints written atomically (unless a plugin sets its own IO)."""
    trainer: L.Trainer = instantiate(cfg.trainer, **kwargs)
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


def finish_loggers(loggers: Sequence[Logger]) -> None:
    """Ends the process-wide run a W&B logger opened (Lightning leaves it open), so that the next training in this
    process (a sweep's next trial) gets its own run instead of logging into this one; W&B's service process then
    completes the run's files (offline: ``wandb/offline-run-*``)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def best_validation_metrics(trainer: L.Trainer) -> dict[str, float]:
    """``{"<monitor>_best": score, "<monitor>_best_epoch": epoch}`` (e.g. ``val/acc_best``) of the checkpoint
    callback, when it monitored one (the epoch, counted from 0, read from the best checkpoint when it is on disk)."""
    callback = trainer.checkpoint_callback
    if not (isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_score is not None):
        return {}
    best = {f"{callback.monitor}_best": float(callback.best_model_score)}
    if callback.best_model_path and Path(callback.best_model_path).is_file():
        checkpoint = torch.load(callback.best_model_path, map_location="cpu", weights_only=True)
        best[f"{callback.monitor}_best_epoch"] = int(checkpoint["epoch"])
    return best


def checkpoint_to_test(trainer: L.Trainer) -> tuple[str | None, str]:
    """The checkpoint to test: best by the monitored metric, else the last one, else the weights in memory."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint):
        if callback.best_model_path and Path(callback.best_model_path).is_file():
            return callback.best_model_path, "best" if callback.monitor else "last-epoch"
        if callback.last_model_path and Path(callback.last_model_path).is_file():
            return callback.last_model_path, "last"
    return None, "final"


def test_metrics(results: list[Mapping[str, float]]) -> dict[str, Any]:
    """The ``test/...`` metrics of ``trainer.test``'s results (first dataloader), sorted by name."""
    if not results:
        raise ValueError("trainer.test returned no results (is the test split empty?)")
    return {key: float(value) for key, value in sorted(results[0].items()) if key.startswith("test/")}


def test_confusion(module: L.LightningModule) -> torch.Tensor | None:
    """The test confusion matrix of a classification module (synchronised across processes), else None."""
    return module.test_confusion.compute().cpu() if isinstance(module, ClassificationModule) else None
