"""What a run records besides its weights: the launch entry of ``launches.yaml``, the summary of its config and
its report; and an earlier run moved aside for ``overwrite=true``. Where these files live is
:mod:`fftprompt.rundir`'s; the report's content is :mod:`fftprompt.run_report`'s.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Mapping
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from fftprompt import rundir
from fftprompt.run_report import ReportSettings, write_run_report


def move_aside(output_dir: Path) -> Path | None:
    """``overwrite=true``: moves an earlier run in ``output_dir`` aside (global rank 0 only: under DDP the other
    processes start after it, or at once with torchrun/srun, and must not move its new run)."""
    if rank_zero_only.rank != 0:
        return None
    replaced = rundir.move_run_aside(output_dir)
    if replaced is not None:
        print(f"overwrite=true: moved the earlier run {output_dir} aside to {replaced}", flush=True)
    return replaced


def launch_entry(command: str, **paths: Path | None) -> dict[str, Any]:
    """The entry :func:`fftprompt.rundir.record_launch` appends: when, where and how (the Hydra overrides inside a
    command; None for a config composed in Python, whose ``config.yaml`` is the whole record)."""
    overrides = [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else None
    return {
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": None if overrides is None else " ".join([command, shlex.join(overrides)]).strip(),
        "overrides": overrides,
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "fftprompt_version": version("fftprompt"),
        **{key: None if value is None else str(value) for key, value in paths.items()},
    }


def run_summary(cfg: DictConfig, parts: Mapping[str, Any]) -> dict[str, Any]:
    """The run's settings in a few words (the ``config`` entry of ``metrics.json`` and the report's table);
    ``parts`` as :func:`fftprompt.run.build` returns them."""
    datamodule, model = parts["datamodule"], parts["model"]
    adapter = cfg.get("adapter")
    summary: dict[str, Any] = {
        "task": str(cfg.task.name),
        "data": str(cfg.data._target_).rsplit(".", 1)[-1],
        "data_root": None if cfg.data.get("root") is None else to_absolute_path(str(cfg.data.root)),
        "num_classes": parts["num_classes"],
        "image_size": int(cfg.data.image_size),
        "backbone": model.backbone.name,
        "backbone_weights": (
            cfg.backbone.checkpoint_path
            if cfg.backbone.get("checkpoint_path")
            else ("pretrained" if cfg.backbone.get("pretrained") else "random (seeded)")
        ),
        "prompt": f"{type(model.prompt).__name__}({model.prompt.num_tokens} tokens, deep={model.prompt.deep})",
        "adapter": "none" if not adapter else f"FourierFT(n={adapter.n_frequency}, scaling={adapter.scaling})",
        "augment": repr(parts["augment"]) if parts.get("augment") is not None else "none",
        "head": type(model.head).__name__,
        "seed": int(cfg.seed),
    }
    for split in ("train", "val", "test"):
        summary[f"{split}_images"] = len(datamodule.dataset(split))
    return {key: value for key, value in summary.items() if value is not None}


def write_report(
    cfg: DictConfig,
    output_dir: Path,
    metrics: dict[str, Any],
    parts: Mapping[str, Any],
    loggers: list[Logger],
    title: str,
    confusion: torch.Tensor | None,
    sections: Mapping[str, str] | None = None,
) -> Path:
    """Writes ``metrics.json``, the figures and ``report.md`` (:func:`fftprompt.run_report.write_run_report`) with the
    ``cfg.report`` settings; returns the report's path."""
    report = cfg.get("report")
    settings = ReportSettings() if report is None else instantiate(report)
    return write_run_report(
        output_dir,
        metrics,
        parts,
        summary=run_summary(cfg, parts),
        settings=settings,
        loggers=loggers,
        title=title,
        confusion=confusion,
        sections=sections,
    )
