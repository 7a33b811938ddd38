"""The run directory: the one module that reads a finished run back and guards it.

A run directory (``paths.output_dir`` of ``fftprompt-train``; the names: :mod:`fftprompt.runfiles`) holds::

    config.yaml                        the resolved config of the run
    metrics.json                       test metrics (``test/...``), parameter counts, timings, a config summary
    report.md, figures/*.png           the report (:mod:`fftprompt.report`)
    adapter.safetensors, adapter.json  the trained tensors (:meth:`fftprompt.model.PromptedViT.save_trainable`)
    checkpoints/{last,best-*}.ckpt     Lightning checkpoints (trainable tensors and optimiser state only)
    csv/version_*/metrics.csv          the CSV logger's history (one version per fit, resumes included)
    launches.yaml                      one entry per command that trained (or evaluated) here: its overrides,
                                       command line, time, working directory, checkpoint resumed from
    cli.log                            the command's log (Hydra's run directory is the run directory)
    explain/                           ``fftprompt-explain``'s figures and ``explain.md``

``overwrite=true`` never writes into an earlier run: the whole directory is moved aside to
``<run>.replaced-<date>-<time>`` next to it (:func:`move_run_aside`) and the new run starts from an empty one.

Everything else asks this module: where a file is, whether a directory holds a run (and must not be overwritten),
whether a checkpoint is safe to load and belongs to the run, whether a config may resume it, which classes its
weights know, and how to rebuild a finished run's model and data. Configs come in and go out as plain Python values
(``dict``), never as Hydra objects.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from fftprompt.backbone import create_backbone
from fftprompt.data.base import ImageDataModule
from fftprompt.lit import CLASS_NAMES_KEY, FINGERPRINT_KEY
from fftprompt.model import PromptedViT, frozen_fingerprint, load_model, read_description
from fftprompt.pipeline import InputPipeline, build_augment, build_datamodule
from fftprompt.runfiles import (
    ADAPTER_CONFIG,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    LAUNCHES,
    METRICS_FILE,
    MODEL_KEYS,
    REPLACED_MARK,
    RESUME_COMPARED,
    RESUME_MAY_CHANGE,
    RESUME_MAY_GROW,
    RUN_CONFIG,
    covering,
)
from fftprompt.utils import ABSENT, atomic_write, leaf_differences
from fftprompt.utils import select as select_key
from fftprompt.weights import file_sha256, locate_weights

__all__ = [
    "LoadedRun",
    "check_checkpoint",
    "check_classes",
    "check_frozen_weights",
    "check_matches_run",
    "check_resume",
    "data_root",
    "finished_metrics",
    "load_run",
    "move_run_aside",
    "moved_aside_from",
    "read_class_names",
    "read_config",
    "read_launches",
    "read_metrics",
    "record_launch",
    "refuse_existing_run",
    "resume_checkpoint",
    "run_dir_of",
    "write_config",
]

_CHECKPOINT, _WEIGHTS_FILE = "backbone.checkpoint_path", ("backbone.checkpoint_path", "backbone.checkpoint_sha256")


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


def move_run_aside(run_dir: Path) -> Path | None:
    """For ``overwrite=true``: moves a non-empty ``run_dir`` to ``<run_dir>.replaced-<date>-<time>`` next to it (a
    rename, nothing is deleted) and creates ``run_dir`` again, empty.

    Returns:
        Where the earlier contents are now, or None when ``run_dir`` was missing or empty.

    Raises:
        ValueError: if ``run_dir`` is or contains the working directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    here, resolved = Path.cwd().resolve(), run_dir.resolve()
    if here == resolved or resolved in here.parents:
        raise ValueError(
            f"overwrite=true would move {run_dir} aside, but it holds the working directory {here}; choose another "
            "paths.output_dir"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, count = resolved.with_name(f"{resolved.name}{REPLACED_MARK}{stamp}"), 1
    while target.exists():
        count += 1
        target = resolved.with_name(f"{resolved.name}{REPLACED_MARK}{stamp}-{count}")
    os.rename(resolved, target)  # same parent directory: one atomic rename
    run_dir.mkdir()
    return target


# the name move_run_aside gives an earlier run: <run>.replaced-<date>-<time>[-<count>]
_MOVED_ASIDE = re.compile(re.escape(REPLACED_MARK) + r"\d{8}-\d{6}(-\d+)?$")


def moved_aside_from(run_dir: Path) -> Path | None:
    """The run directory whose ``overwrite=true`` moved ``run_dir`` aside (:func:`move_run_aside`), or None when
    ``run_dir`` was not moved aside."""
    match = _MOVED_ASIDE.search(Path(run_dir).name)
    return None if match is None else Path(run_dir).with_name(Path(run_dir).name[: match.start()])


def run_dir_of(path: Path) -> Path:
    """The run directory ``path`` belongs to: itself for a directory, the parent of a file, and the parent of
    ``checkpoints/`` for a Lightning checkpoint."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    return run_dir.parent if run_dir.name == CHECKPOINT_DIR else run_dir


def record_launch(run_dir: Path, launch: Mapping[str, Any]) -> Path:
    """Appends ``launch`` (plain values) to ``run_dir/launches.yaml`` (atomically): one entry per command that trained
    or evaluated in the directory, written once its checks have passed, so a refused command leaves no entry."""
    launches = [*read_launches(run_dir), dict(launch)]
    text = yaml.safe_dump(launches, sort_keys=False, allow_unicode=True)
    return atomic_write(Path(run_dir) / LAUNCHES, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def read_launches(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of ``run_dir/launches.yaml`` (oldest first; empty when there is none)."""
    path = Path(run_dir) / LAUNCHES
    return _read_yaml(path, list, "the launches written by fftprompt") if path.is_file() else []


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
        purpose: What is being done, for the message (``"evaluating"``).
        randomly_initialised: The backbone has no weights, so the seed that draws them defines the model too.
    """
    saved_path = run_dir / RUN_CONFIG
    if not saved_path.is_file():
        return
    saved = read_config(run_dir)
    keys = [*MODEL_KEYS, "seed"] if randomly_initialised else list(MODEL_KEYS)
    differences = [
        line
        for key in keys
        for line, leaf, *_ in leaf_differences(select_key(saved, key), select(key), key)
        if leaf not in _WEIGHTS_FILE  # the same weights may lie elsewhere now: compared by SHA256 below
    ]
    mine, theirs = (_weights_sha256(run_dir, path) for path in (select(_CHECKPOINT), select_key(saved, _CHECKPOINT)))
    if mine != theirs:
        differences.append(f"{_CHECKPOINT}: weights with SHA256 {theirs} in the run, {mine} now (another model)")
    # a preprocessing filter (augment.preprocess) changes what the model sees at test time: it is part of the model
    mine, theirs = (_preprocessing(a) for a in (select("augment"), select_key(saved, "augment")))
    if mine != theirs:
        differences.append(f"augment (preprocessing): {theirs!r} in the run, {mine!r} now")
    if differences:
        raise ValueError(
            f"{purpose} {run_dir}: the config does not describe the run's model ({saved_path}):\n  "
            + "\n  ".join(differences)
            + "\ndrop these overrides: fftprompt-eval starts from the run's config.yaml (unless use_run_config=false)"
        )


def check_resume(config: Mapping[str, Any], run_dir: Path, *, checkpoint: Path | None = None) -> None:
    """Refuses to resume the run in ``run_dir`` with a ``config`` (plain values) that trains differently.

    Every entry is compared with ``run_dir/config.yaml`` except :data:`RESUME_MAY_CHANGE` (but those under
    :data:`RESUME_COMPARED`); :data:`RESUME_MAY_GROW` may only grow (the lists: :mod:`fftprompt.runfiles`). Without a
    ``config.yaml`` (a checkpoint from elsewhere) nothing can be compared: a warning says so.

    Raises:
        ValueError: listing every entry that differs, with the run's and the new value, and how to proceed.
    """
    saved_path = Path(run_dir) / RUN_CONFIG
    if not saved_path.is_file():
        warnings.warn(
            f"resuming from {checkpoint or run_dir}: no {saved_path}, so the config cannot be compared with the one "
            "the checkpoint was trained with",
            stacklevel=2,
        )
        return
    differences = []
    for line, key, theirs, mine in leaf_differences(read_config(run_dir), dict(config), ""):
        if _may_change_on_resume(key):
            continue
        if key in RESUME_MAY_GROW:
            if _limit(mine) >= _limit(theirs):
                continue
            line += " (it may only grow when resuming)"
        differences.append(line)
    if differences:
        raise ValueError(
            f"resuming {run_dir}: the config differs from the run's ({saved_path}) in entries that change "
            "training:\n  " + "\n  ".join(differences) + "\nresume with the run's values (drop or undo these "
            "overrides), or train a new run with the new ones: another paths.output_dir, or overwrite=true (which "
            "moves this run aside). A resume may extend trainer.max_epochs/max_steps and change paths, logging, "
            "progress and report settings, loader workers and callbacks other than checkpointing and early stopping"
        )


def check_classes(weights: Path, class_names: Sequence[str], data: str, *, purpose: str = "evaluating") -> None:
    """Refuses data whose classes differ from those the weights at ``weights`` were trained on.

    Args:
        weights: A run directory or adapter file (class names from ``adapter.json``) or a Lightning ``.ckpt``.
        class_names: The data's class names in label order.
        data: The data, for the message (``"ImageFolderDataModule, /data/x"``).
        purpose: What is being done, for the message.

    Raises:
        ValueError: naming both lists (or both counts, for weights written before class names were recorded).
    """
    weights, names, count = Path(weights), None, None
    if weights.is_file() and weights.suffix == ".ckpt":
        checkpoint = check_checkpoint(weights, str(weights))
        source = weights
        names = checkpoint.get(CLASS_NAMES_KEY)
        count = (checkpoint.get("hyper_parameters") or {}).get("num_classes")
    else:
        directory = weights.parent if weights.is_file() else weights
        source = directory / ADAPTER_CONFIG
        description = read_description(directory)
        names = description.get("class_names")
        count = ((description.get("head") or {}).get("config") or {}).get("num_classes")
    run_dir, current = run_dir_of(weights), list(class_names)
    if names is not None and [str(n) for n in names] != current:
        raise ValueError(
            f"{purpose} {run_dir}: the weights were trained on the classes {[str(n) for n in names]} ({source}) but "
            f"the data ({data}) has {current}; evaluate on data with the training classes, in the same order"
        )
    if names is None and count is not None and int(count) != len(current):
        raise ValueError(
            f"{purpose} {run_dir}: the weights were trained on {int(count)} classes ({source}) but the data ({data}) "
            f"has {len(current)}: {current}"
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
    return _read_yaml(Path(run_dir) / RUN_CONFIG, dict, "the config written by fftprompt-train")


def _read_yaml(path: Path, kind: type, expected: str) -> Any:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(value, kind):
        raise ValueError(f"{path} does not hold a {'mapping' if kind is dict else kind.__name__}; expected {expected}")
    return value


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
        pipeline: The model's input pipeline: ``datamodule.transform("test")``, then :meth:`logits` filters.
    """

    run_dir: Path
    model: PromptedViT
    config: dict[str, Any]
    datamodule: ImageDataModule
    pipeline: InputPipeline

    def logits(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S)`` test-transformed images -> outputs, the run's preprocessing filter applied as in eval."""
        return self.model(self.pipeline.prepare(images))


def load_run(
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    device: str = "cpu",
    backbone: Mapping[str, Any] | None = None,
) -> LoadedRun:
    """Rebuilds a finished run's model, data and input pipeline from ``adapter.*`` and ``config.yaml``, as trained.

    Backbone weights are found by recorded path and SHA256 (:func:`fftprompt.weights.locate_weights`: a moved run or
    a re-made clone finds the shipped file of that name). A random backbone is drawn again from the run's seed;
    when the run has a Lightning checkpoint, its fingerprint of the frozen weights must match the rebuilt model's.

    Args:
        run_dir: Directory written by ``fftprompt-train``.
        data_root: Data root to use instead of the recorded one.
        device: Device to put the model on.
        backbone: ``{"checkpoint_path": file}``: the run's backbone weights file where it is now (same SHA256).
    """
    run_dir = Path(run_dir)
    for required in (ADAPTER_CONFIG, RUN_CONFIG):
        if not (run_dir / required).is_file():
            raise ValueError(f"{run_dir / required} not found; expected a finished fftprompt-train run directory")
    config = read_config(run_dir)
    backbone_config = dict(read_description(run_dir).get("backbone", {}).get("config") or {})
    recorded, given = backbone_config.get("checkpoint_path"), (backbone or {}).get("checkpoint_path")
    if set(backbone or {}) - {"checkpoint_path"} or (given is not None and recorded is None):
        raise ValueError(
            f"backbone={dict(backbone or {})}: a finished run takes only backbone.checkpoint_path, the weights file it "
            f"was trained on where it is now ({run_dir} was trained on {recorded or 'no weights file'})"
        )
    if recorded is not None:
        located = locate_weights(recorded, backbone_config.get("checkpoint_sha256"), given=given)
        backbone_config["checkpoint_path"] = str(located)
    elif not backbone_config.get("pretrained") and ("name" not in backbone_config or "seed" not in config):
        raise ValueError(f"{run_dir}: cannot redraw the random backbone (no recorded timm arguments or seed)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.get("seed", 0)))  # train() seeds, then builds the backbone first (random weights)
        model = load_model(run_dir, backbone=create_backbone(**backbone_config))
    check_frozen_weights(model, run_dir)
    model.to(device).eval()
    datamodule = _datamodule(config, run_dir, model, data_root)
    augment = build_augment(config.get("augment"), mean=datamodule.mean, std=datamodule.std)
    return LoadedRun(run_dir, model, config, datamodule, InputPipeline.of(datamodule, augment))


def _datamodule(config: dict[str, Any], run_dir: Path, model: PromptedViT, root: str | Path | None) -> ImageDataModule:
    mean, std, root = model.backbone.mean, model.backbone.std, root or data_root(run_dir, config)
    return build_datamodule(config.get("data") or {}, mean=mean, std=std, root=root, num_workers=0)


def _weights_sha256(run_dir: Path, path: Any) -> str | None:
    """SHA256 of the weights ``path`` names, as :func:`load_run` finds them (the recorded one for a moved file)."""
    recorded = read_description(run_dir)["backbone"]["config"] if (run_dir / ADAPTER_CONFIG).is_file() else {}
    if path is not None and str(path) == recorded.get("checkpoint_path") and not Path(str(path)).is_file():
        return recorded.get("checkpoint_sha256") or file_sha256(locate_weights(str(path), None))
    return None if path is None else file_sha256(locate_weights(str(path), None))


def _preprocessing(augment: Any) -> dict[str, Any] | None:
    """The settings of a preprocessing ``augment`` entry (without its seed), None for none or a training-only one."""
    if not isinstance(augment, Mapping) or not augment.get("preprocess"):
        return None
    return {key: value for key, value in augment.items() if key != "seed"}


def data_root(run_dir: Path, config: Mapping[str, Any]) -> str | None:
    """The run's data root: the absolute path training resolved (``metrics.json``) if the run finished, else the
    recorded ``data.root`` of ``config`` (the run's config, plain values); None for data without a root."""
    recorded = (read_metrics(run_dir) or {}).get("config", {}).get("data_root")
    given = (config.get("data") or {}).get("root")
    return None if given is None else str(recorded or given)


def _may_change_on_resume(key: str) -> bool:
    """Whether the most specific entry of :data:`RESUME_MAY_CHANGE` / :data:`RESUME_COMPARED` naming ``key`` (or a
    mapping above it) lets it change."""
    names = covering(key, (*RESUME_MAY_CHANGE, *RESUME_COMPARED))
    return bool(names) and max(names, key=len) in RESUME_MAY_CHANGE


def _limit(value: Any) -> float:
    """A run-length limit as a number: -1, null or absent mean no limit."""
    if value is ABSENT or value is None or value == -1:
        return math.inf
    return float(value)
