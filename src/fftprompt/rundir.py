"""The run directory: the one module that knows its layout, reads a finished run back and guards it.

A run directory (``paths.output_dir`` of ``fftprompt-train``) holds::

    config.yaml                        the resolved config of the run
    metrics.json                       test metrics (``test/...``), parameter counts, timings, a config summary
    report.md, figures/*.png           the report (:mod:`fftprompt.report`)
    adapter.safetensors, adapter.json  the trained tensors (:meth:`fftprompt.model.PromptedViT.save_trainable`)
    checkpoints/{last,best-*}.ckpt     Lightning checkpoints (trainable tensors and optimiser state only)
    csv/version_*/metrics.csv          the CSV logger's history (one version per fit, resumes included)
    explain/                           ``fftprompt-explain``'s figures and ``explain.md``

Everything else asks this module: where a file is, whether a directory holds a run (and must not be overwritten),
whether a checkpoint is safe to load and belongs to the run, and how to rebuild a finished run's model and data.
Configs come in and go out as plain Python values (``dict``), never as Hydra objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import fftprompt.data
from fftprompt.backbone import Backbone, create_backbone
from fftprompt.data.base import ImageDataModule
from fftprompt.lit import FINGERPRINT_KEY
from fftprompt.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PromptedViT, frozen_fingerprint, load_model
from fftprompt.report import FIGURE_DIR, METRICS_FILE, REPORT_FILE
from fftprompt.utils import atomic_write

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CHECKPOINT_DIR",
    "EXPLAIN_DIR",
    "FIGURE_DIR",
    "LAST_CHECKPOINT",
    "METRICS_FILE",
    "MODEL_KEYS",
    "REPORT_FILE",
    "RUN_CONFIG",
    "LoadedRun",
    "check_checkpoint",
    "check_frozen_weights",
    "check_matches_run",
    "finished_metrics",
    "load_run",
    "read_class_names",
    "read_config",
    "read_metrics",
    "refuse_existing_run",
    "resume_checkpoint",
    "write_config",
]

RUN_CONFIG = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
EXPLAIN_DIR = "explain"
# config entries that define the model: evaluation and resuming must use the run's values
MODEL_KEYS = ("backbone", "features", "prompt", "adapter", "task.name", "task.pooling", "task.head")


# -- writing and guarding ------------------------------------------------------------------------------------------


def write_config(run_dir: str | Path, config: Mapping[str, Any]) -> Path:
    """Writes the resolved run config (plain values) to ``run_dir/config.yaml`` atomically."""
    text = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
    return atomic_write(Path(run_dir) / RUN_CONFIG, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def refuse_existing_run(run_dir: Path, overwrite: bool) -> None:
    """Raises ``ValueError`` when ``run_dir`` holds a finished run (metrics.json) or an unfinished one (checkpoints)."""
    if overwrite:
        return
    if (run_dir / METRICS_FILE).exists():
        raise ValueError(
            f"{run_dir} already holds a finished run ({METRICS_FILE}); choose another paths.output_dir, pass "
            "overwrite=true to replace it, or ckpt_path=last to resume it"
        )
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
        raise ValueError(
            f"{checkpoints} holds checkpoints of an unfinished run; resume it with ckpt_path=last or pass "
            "overwrite=true to start afresh"
        )


def resume_checkpoint(run_dir: Path, value: str | Path | None, *, base: Path | None = None) -> Path | None:
    """The checkpoint ``ckpt_path=value`` names (``"last"``: the run's ``last.ckpt``), checked; None for None.

    Args:
        run_dir: The run directory.
        value: ``"last"``, a checkpoint path, or None.
        base: Directory that relative paths are taken from (default: the working directory).
    """
    if value is None:
        return None
    path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT if str(value) == "last" else (base or Path()) / str(value)
    if not path.is_file():
        raise ValueError(f"ckpt_path={str(value)!r}: checkpoint {path} does not exist; expected a run's last.ckpt")
    check_checkpoint(path, f"ckpt_path={value!s}")
    return path


def check_checkpoint(path: Path, what: str) -> dict[str, Any]:
    """Reads ``path`` as Lightning will (``weights_only=True``) so that a bad file fails here, before any building.

    A checkpoint holding pickled code (or any object beyond tensors and plain containers) is refused without
    running it; a truncated or corrupted file gets an error naming it instead of a zip-reader message mid-run.

    Returns:
        The checkpoint's contents.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError (bad zip), EOFError, ... depending on the damage
        text = str(error).strip()
        code = re.search(r"GLOBAL (\S+)", text)
        if code is not None:
            reason = f"it names the Python object {code.group(1)}, which unpickling would import and may run"
        else:  # the first sentence: torch's messages go on with generic advice
            reason = f"{type(error).__name__}: " + (text.splitlines()[0].split(". ")[0] if text else "no message")
        raise ValueError(
            f"{what}: {path} cannot be loaded safely (weights_only=True): {reason}; expected a Lightning "
            "checkpoint written by fftprompt (tensors and plain values only), not truncated or corrupted"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{what}: {path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return checkpoint


def check_matches_run(select: Callable[[str], Any], run_dir: Path, purpose: str, *, randomly_initialised: bool) -> None:
    """Compares the model-defining entries of a config with ``run_dir/config.yaml`` (skipped when it is absent).

    Args:
        select: Dotted key (``"task.name"``) -> plain value of the current config (None when missing).
        run_dir: The run directory.
        purpose: What is being done, for the message (``"resuming"``, ``"evaluating"``).
        randomly_initialised: The backbone has no weights, so the seed that draws them defines the model too.
    """
    saved_path = run_dir / RUN_CONFIG
    if not saved_path.is_file():
        return
    saved = read_config(run_dir)
    keys = [*MODEL_KEYS, "seed"] if randomly_initialised else list(MODEL_KEYS)
    differences = []
    for key in keys:
        mine, theirs = select(key), _select(saved, key)
        if mine != theirs:
            differences.append(f"{key}: {theirs!r} in the run, {mine!r} now")
    # a preprocessing filter (augment.preprocess) changes what the model sees at test time: it is part of the model
    mine, theirs = (_preprocessing(a) for a in (select("augment"), _select(saved, "augment")))
    if mine != theirs:
        differences.append(f"augment (preprocessing): {theirs!r} in the run, {mine!r} now")
    if differences:
        raise ValueError(
            f"{purpose} {run_dir}: the config does not describe the run's model ({saved_path}):\n  "
            + "\n  ".join(differences)
            + "\npass the training run's overrides (listed in its .hydra/overrides.yaml when launched from the CLI)"
        )


def check_frozen_weights(model: PromptedViT, run_dir: Path) -> None:
    """Raises when the run's newest checkpoint records a fingerprint of other frozen weights than ``model``'s."""
    checkpoints = sorted((run_dir / CHECKPOINT_DIR).glob("*.ckpt"))
    if not checkpoints:
        return
    try:
        stored = torch.load(checkpoints[-1], map_location="cpu", weights_only=True).get(FINGERPRINT_KEY)
    except Exception as error:  # UnpicklingError, RuntimeError (bad zip), EOFError, ... depending on the damage
        raise ValueError(f"{checkpoints[-1]} cannot be read as a Lightning checkpoint: {error}") from error
    current = frozen_fingerprint(model)
    if stored is not None and not np.isclose(stored, current, rtol=1e-9, atol=1e-6):
        raise ValueError(
            f"{run_dir}: the rebuilt backbone's frozen weights (fingerprint {current!r}) differ from the trained ones "
            f"({stored!r} in {checkpoints[-1].name})"
        )


# -- reading -------------------------------------------------------------------------------------------------------


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as plain values."""
    path = Path(run_dir) / RUN_CONFIG
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a mapping; expected the config written by fftprompt-train")
    return config


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``metrics.json``, or None when the run has not finished."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def read_class_names(run_dir: str | Path) -> list[str] | None:
    """The class names ``adapter.json`` records (``class_names``, in label order), or None when it records none."""
    path = Path(run_dir) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("class_names")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{path} is not a JSON object: {error}") from error
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{path}: class_names={names!r}; expected a list of strings")
    return list(names)


def finished_metrics(run_dir: Path, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metrics of a finished run in ``run_dir`` trained from exactly ``config`` (plain values), else None."""
    if not (Path(run_dir) / RUN_CONFIG).is_file():
        return None
    metrics = read_metrics(run_dir)
    if metrics is None or read_config(run_dir) != dict(config):
        return None
    return metrics


@dataclass
class LoadedRun:
    """A finished training run, reloaded.

    Attributes:
        run_dir: The run directory.
        model: The model with the run's trained tensors, in ``eval()``.
        config: The run's resolved ``config.yaml`` as plain Python values.
        datamodule: The run's data module (with the backbone's normalisation, in-process loading), not set up.
    """

    run_dir: Path
    model: PromptedViT
    config: dict[str, Any]
    datamodule: ImageDataModule


def load_run(run_dir: str | Path, *, data_root: str | Path | None = None, device: str = "cpu") -> LoadedRun:
    """Rebuilds a finished run's model (and data module) from ``adapter.json``, ``adapter.safetensors`` and
    ``config.yaml``.

    A randomly initialised backbone is drawn again from the run's seed, as training drew it; when the run has a
    Lightning checkpoint, its fingerprint of the frozen weights must match the rebuilt model's.

    Args:
        run_dir: Directory written by ``fftprompt-train``.
        data_root: Data root to use instead of the recorded one.
        device: Device to put the model on.
    """
    run_dir = Path(run_dir)
    for required in (ADAPTER_CONFIG, RUN_CONFIG):
        if not (run_dir / required).is_file():
            raise ValueError(f"{run_dir / required} not found; expected a finished fftprompt-train run directory")
    config = read_config(run_dir)
    description = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    backbone_config = dict(description.get("backbone", {}).get("config") or {})
    if backbone_config.get("pretrained") or backbone_config.get("checkpoint_path"):
        model = load_model(run_dir)
    else:
        if "name" not in backbone_config or "seed" not in config:
            raise ValueError(f"{run_dir}: cannot redraw the random backbone (no recorded timm arguments or seed)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config["seed"]))  # train() seeds, then builds the backbone first
            backbone = create_backbone(**backbone_config)
        model = load_model(run_dir, backbone=backbone)
    check_frozen_weights(model, run_dir)
    model.to(device).eval()
    return LoadedRun(run_dir, model, config, _datamodule(config, run_dir, model.backbone, data_root))


def _datamodule(config: dict[str, Any], run_dir: Path, backbone: Backbone, data_root: str | Path | None) -> Any:
    data = dict(config.get("data") or {})
    target = str(data.pop("_target_", ""))
    cls = getattr(fftprompt.data, target.rsplit(".", 1)[-1], None)
    if not target.startswith("fftprompt.data.") or not (isinstance(cls, type) and issubclass(cls, ImageDataModule)):
        raise ValueError(f"{run_dir / RUN_CONFIG}: data._target_={target!r} is not a data module of fftprompt.data")
    if "root" in data:
        recorded = (read_metrics(run_dir) or {}).get("config", {}).get("data_root")
        data["root"] = str(data_root or recorded or data["root"])  # training resolved the root to an absolute path
    data.update(mean=list(backbone.mean), std=list(backbone.std), num_workers=0)
    return cls(**data)


def _preprocessing(augment: Any) -> dict[str, Any] | None:
    """The settings of a preprocessing ``augment`` entry (without its seed), None for none or a training-only one."""
    if not isinstance(augment, Mapping) or not augment.get("preprocess"):
        return None
    return {key: value for key, value in augment.items() if key != "seed"}


def _select(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
