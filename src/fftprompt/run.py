"""``train(cfg)`` and ``evaluate(cfg)``: build everything from a composed Hydra config, fit/test, write a run directory.

These are plain functions (the ``@hydra.main`` shims in :mod:`fftprompt.cli` only call them), so tests, notebooks and
``fftprompt-ablate`` compose a config with :func:`compose` and call them directly. What a run directory holds, and
every check on it, belongs to :mod:`fftprompt.rundir`; the report is assembled by :mod:`fftprompt.run_report`.
"""

from __future__ import annotations

import copy
import os
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from hydra import compose as compose_config
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate, to_absolute_path
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from fftprompt import rundir
from fftprompt.augment import SEVERITIES, check_corruptions
from fftprompt.backbone import Backbone, create_pretraining_vit, normalisation
from fftprompt.lit import AtomicCheckpointIO, ClassificationModule
from fftprompt.model import PromptedViT, create_model
from fftprompt.overrides import check_sweeper, eval_overrides
from fftprompt.pipeline import InputPipeline, build_augment, build_datamodule
from fftprompt.pretrain import FormulaPretrainModule, hardware, write_pretrained
from fftprompt.report import print_summary
from fftprompt.robustness import evaluate_corruptions
from fftprompt.run_report import ReportSettings, write_run_report
from fftprompt.runfiles import METRICS_FILE, RUN_CONFIG, RUN_ENTRIES
from fftprompt.spectral import FrequencyFeatures
from fftprompt.utils import is_installed, to_plain, write_json_atomic
from fftprompt.weights import RESOLVER, weights_path

__all__ = [
    "build",
    "build_backbone",
    "check_sweeper",
    "compose",
    "eval_config",
    "eval_overrides",
    "evaluate",
    "optimized_metric",
    "pretrain",
    "train",
]

CONFIG_DIR = Path(__file__).parent / "configs"
# packages that optional loggers need, and the fftprompt extra that installs them
_LOGGER_PACKAGES = {
    "lightning.pytorch.loggers.WandbLogger": (("wandb",), "wandb"),
    "lightning.pytorch.loggers.MLFlowLogger": (("mlflow",), "mlflow"),
    "lightning.pytorch.loggers.TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
}
# ${fftprompt.weights:<file>} in a config: the absolute path of a file shipped in fftprompt/weights (any directory)
OmegaConf.register_new_resolver(RESOLVER, weights_path, replace=True)


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The packaged config ``config_name`` composed with Hydra ``overrides``, as ``fftprompt-train`` (or
    ``fftprompt-eval`` for ``"eval"``, through :func:`eval_config`) composes it.

    Outside a Hydra app ``paths.output_dir`` has no default: pass it as an override.
    """
    check_sweeper(overrides)
    evaluation = config_name == "eval"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose_config(config_name, overrides=eval_overrides(overrides) if evaluation else list(overrides))
    return eval_config(cfg, overrides) if evaluation else cfg


def eval_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The evaluation config: the evaluated run's own :data:`RUN_ENTRIES` (its ``config.yaml``) with the ``overrides``
    that ``cfg`` was composed with on top; the rest (trainer, callbacks, output) stays ``cfg``'s.

    ``cfg`` is returned unchanged with ``use_run_config=false``, without a run ``config.yaml`` beside the weights
    (a bare adapter: the overrides must describe the model) and when the overrides select an ``experiment``. An
    override of a whole entry (``data=dtd``, ``seed=3``) takes that entry from ``cfg``; one below it
    (``data.root=...``) changes only that key. A data root the run resolved is taken as it resolved it.
    """
    source = cfg.get("adapter_path") or cfg.get("ckpt_path")
    if not cfg.get("use_run_config", False) or source is None:
        return cfg
    run_dir = rundir.run_dir_of(Path(to_absolute_path(str(source))))
    if not (run_dir / RUN_CONFIG).is_file():
        return cfg
    saved = rundir.read_config(run_dir)
    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_hydra_override()]
    keys = [str(override.key_or_group) for override in parsed]
    if "experiment" in keys:
        return cfg
    result = copy.deepcopy(cfg)
    with open_dict(result):
        for entry in RUN_ENTRIES:
            if entry in keys or entry not in saved:
                continue
            result[entry] = copy.deepcopy(saved[entry])
            if entry == "data" and isinstance(saved["data"], Mapping) and "root" in saved["data"]:
                result.data.root = rundir.data_root(run_dir, saved)
            for override, key in zip(parsed, keys, strict=True):
                if not key.startswith(f"{entry}."):
                    continue
                if override.is_delete():
                    parent, _, name = key.rpartition(".")
                    node = OmegaConf.select(result, parent)
                    if isinstance(node, DictConfig) and name in node:
                        del node[name]
                else:
                    value = OmegaConf.select(cfg, key)
                    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                    OmegaConf.update(result, key, value, merge=False, force_add=True)
    return result


def optimized_metric(cfg: DictConfig, metrics: Mapping[str, Any]) -> float | None:
    """The value a Hydra sweeper optimises: ``metrics[cfg.optimized_metric]`` when the config names one (the
    ``hparams_search`` configs name the best validation score, ``val/acc_best``), else the test score of the
    monitored metric (``test/acc``), or None when the run has none.

    Raises:
        ValueError: ``optimized_metric`` names a metric the run did not record.
    """
    key = cfg.get("optimized_metric")
    if key is None:
        return metrics.get(str(cfg.task.monitor).replace("val/", "test/", 1))
    if key not in metrics:
        recorded = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise ValueError(
            f"optimized_metric={key!r} is not among the run's metrics {recorded}; a *_best validation score needs "
            "the validation loop and a checkpoint callback monitoring it (callbacks=default)"
        )
    return float(metrics[key])


def build_backbone(cfg: DictConfig) -> tuple[Backbone, FrequencyFeatures | None]:
    """The frozen backbone and the frequency features (None without) that ``cfg`` describes."""
    backbone: Backbone = instantiate(cfg.backbone)
    features = _instantiate_optional(cfg.get("features"))
    if features is not None and not isinstance(features, FrequencyFeatures):
        features = features(patch_size=backbone.patch_size)
    return backbone, features


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiates backbone, datamodule, model and LightningModule from ``cfg`` (seed first for random weights).

    The backbone is built first, so that a randomly initialised backbone depends only on the seed set before the
    call. The datamodule receives the backbone's normalisation (``mean``, ``std``) and an absolute ``root``
    (relative roots are taken from the directory the command was started in). The model gets the number of
    classes the datamodule found; the batch augmentation (``augment``, None for ``augment=none``) gets the data's
    normalisation and goes to the LightningModule, which applies it after the batch transfer.

    Returns:
        ``{"backbone", "datamodule", "model", "module", "num_classes", "augment"}``.
    """
    backbone, features = build_backbone(cfg)
    datamodule = _build_datamodule(cfg, backbone)
    num_classes = int(datamodule.num_classes)
    task = str(cfg.task.name)
    if getattr(datamodule, "task", task) != task:
        raise ValueError(
            f"data {cfg.data._target_} is a {datamodule.task} dataset but task={task!r}: "
            f"add the override task={datamodule.task}"
        )
    model = create_model(
        backbone,
        num_classes,
        task=task,
        prompt=_instantiate_optional(cfg.get("prompt")),
        features=features,
        head=_instantiate_optional(cfg.task.get("head")),
        adapter=_instantiate_optional(cfg.get("adapter")),
        pooling=str(cfg.task.pooling),
    )
    model.class_names = list(datamodule.class_names)  # recorded in adapter.json and checkpoints
    # built as a reloaded run builds it (fftprompt.pipeline): the filter eval applies is the one predict applies
    augment = build_augment(to_plain(cfg.get("augment")), mean=datamodule.mean, std=datamodule.std)
    module = instantiate(cfg.task.module, model=model, num_classes=num_classes, augment=augment)
    return {
        "backbone": backbone,
        "datamodule": datamodule,
        "model": model,
        "module": module,
        "num_classes": num_classes,
        "augment": augment,
        "pipeline": InputPipeline.of(datamodule, augment),
    }


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fits prompts/adapter/head, tests the best (else last, else final) weights and writes the run directory.

    Config keys read besides the component groups: ``seed``, ``paths.output_dir``, ``overwrite`` (move an earlier
    run in the output directory aside, :func:`fftprompt.rundir.move_run_aside`, and start afresh), ``ckpt_path``
    (``last`` resumes from ``<output_dir>/checkpoints/last.ckpt``; a path resumes from that file), ``report``.
    Once the checks have passed, the resolved config goes to ``config.yaml`` and the launch (the command's
    overrides, time, place) is appended to ``launches.yaml``.

    Returns:
        ``(metrics, objects)``: the metrics written to ``metrics.json`` (without the config summary) and the
        objects built (``cfg``, ``model``, ``module``, ``datamodule``, ``trainer``, ``output_dir``, ``report``).

    Raises:
        ValueError: if the output directory holds an earlier run and neither ``overwrite`` nor resuming was asked,
            or ``ckpt_path=last`` has no checkpoint, or the config does not fit the data/run being resumed (every
            entry but :data:`fftprompt.runfiles.RESUME_MAY_CHANGE` must equal the run's ``config.yaml``).
    """
    output_dir = _output_dir(cfg)
    overwrite = bool(cfg.get("overwrite", False))
    resume = rundir.resume_checkpoint(output_dir, cfg.get("ckpt_path"), base=Path(to_absolute_path(".")))
    if resume is not None:
        rundir.check_resume(OmegaConf.to_container(cfg, resolve=True), rundir.run_dir_of(resume), checkpoint=resume)
    # a new run, or one continued from another directory's checkpoint: the output directory must not hold a run
    fresh = resume is None or rundir.run_dir_of(resume).resolve() != output_dir.resolve()
    if fresh:
        rundir.refuse_existing_run(output_dir, overwrite=overwrite)
    replaced = _move_aside(output_dir) if fresh and overwrite else None
    L.seed_everything(int(cfg.seed), workers=True)
    parts = build(cfg)
    model: PromptedViT = parts["model"]
    module: L.LightningModule = parts["module"]
    datamodule = parts["datamodule"]
    callbacks = _instantiate_collection(cfg.get("callbacks"))
    loggers = _instantiate_collection(cfg.get("logger"), "logger")
    trainer = _make_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            rundir.write_config(output_dir, OmegaConf.to_container(cfg, resolve=True))
            rundir.record_launch(output_dir, _launch("fftprompt-train", resumed_from=resume, replaced=replaced))

        start = time.perf_counter()
        with warnings.catch_warnings():
            # PromptedViT keeps the frozen backbone in eval() on purpose (no dropout / drop-path, as in VPT)
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            trainer.fit(
                module, datamodule=datamodule, ckpt_path=None if resume is None else str(resume), weights_only=True
            )
        train_seconds = time.perf_counter() - start

        best_validation = _best_validation(trainer)
        tested = bool(cfg.get("test", True))
        metrics, confusion, test_seconds, weights = {}, None, 0.0, "untested"
        if tested:
            test_checkpoint, weights = _test_checkpoint(trainer)
            start = time.perf_counter()
            results = trainer.test(
                module, datamodule=datamodule, ckpt_path=test_checkpoint, verbose=False, weights_only=True
            )
            test_seconds = time.perf_counter() - start
            metrics = _test_metrics(results)
            confusion = _test_confusion(module)  # a collective under DDP: every rank takes part
        metrics.update(
            trainable_params=model.num_trainable_parameters(),
            total_params=model.num_total_parameters(),
            train_seconds=round(train_seconds, 3),
            test_seconds=round(test_seconds, 3),
            epochs=int(trainer.current_epoch),
            steps=int(trainer.global_step),
            tested_weights=weights,
            **best_validation,
        )
        report = None
        if trainer.is_global_zero:
            model.save_trainable(output_dir, overwrite=True)  # the directory was checked for an earlier run above
            if tested:
                report = _write_report(cfg, output_dir, metrics, parts, loggers, "fftprompt training run", confusion)
                print_summary(metrics, report, title=f"test metrics ({weights} weights)")
            else:  # test=false: no report, whose figures would show test images; metrics.json only
                write_json_atomic(output_dir / METRICS_FILE, {**metrics, "config": _summary(cfg, parts)})
        objects = {
            "cfg": cfg,
            "model": model,
            "module": module,
            "datamodule": datamodule,
            "trainer": trainer,
            "output_dir": output_dir,
            "report": report,
        }
        return metrics, objects
    finally:
        _finish_loggers(loggers)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuilds the model from ``cfg``, loads a finished run's weights, tests it and writes ``metrics.json``/report.

    Exactly one of ``cfg.adapter_path`` (a run directory, ``adapter.safetensors`` or ``adapter.json``) and
    ``cfg.ckpt_path`` (a Lightning ``.ckpt`` file) names the weights. ``cfg`` must describe the training run's model:
    :func:`compose` and ``fftprompt-eval`` start from the run's ``config.yaml`` (:func:`eval_config`); the
    model-defining entries are compared with it and a difference is an error. The data's class names (and count)
    must be those the weights were trained on (recorded in ``adapter.json`` and the checkpoints). ``corruptions`` (a
    list of names) with ``severities`` also tests under ImageNet-C-style corruptions (:mod:`fftprompt.robustness`):
    ``test/corruption/...`` metrics and a table in the report.

    Returns:
        The test metrics (``test/...``) with parameter counts, ``test_seconds`` and ``weights`` (the source).
    """
    corruptions = _corruption_settings(cfg)
    adapter_path, ckpt_path = cfg.get("adapter_path"), cfg.get("ckpt_path")
    if (adapter_path is None) == (ckpt_path is None):
        raise ValueError(
            f"evaluate needs exactly one of adapter_path= (run dir or adapter.safetensors) and ckpt_path= (.ckpt "
            f"file); got adapter_path={adapter_path!r}, ckpt_path={ckpt_path!r}"
        )
    source = Path(to_absolute_path(str(adapter_path if adapter_path is not None else ckpt_path)))
    if not source.exists():
        raise ValueError(
            f"{'adapter_path' if adapter_path is not None else 'ckpt_path'}={str(source)!r} does not exist"
        )
    if ckpt_path is not None and not source.is_file():
        raise ValueError(f"ckpt_path={str(source)!r} is not a file; expected a Lightning .ckpt file")
    if ckpt_path is not None:
        rundir.check_checkpoint(source, f"ckpt_path={ckpt_path!s}")
    run_dir = rundir.run_dir_of(source)
    output_dir = _output_dir(cfg)
    if output_dir.resolve() == run_dir.resolve():
        raise ValueError(
            f"paths.output_dir={str(output_dir)!r} is the evaluated run's own directory; choose another (the default "
            "is runs/eval/<date>/<time>)"
        )
    overwrite = bool(cfg.get("overwrite", False))
    rundir.refuse_existing_run(output_dir, overwrite=overwrite)
    _check_matches_run(cfg, run_dir, purpose="evaluating")

    replaced = _move_aside(output_dir) if overwrite else None
    L.seed_everything(int(cfg.seed), workers=True)
    parts = build(cfg)
    datamodule = parts["datamodule"]
    root = getattr(datamodule, "root", None)
    data = type(datamodule).__name__ + ("" if root is None else f", {root}")
    rundir.check_classes(source, datamodule.class_names, data)
    model: PromptedViT = parts["model"]
    if adapter_path is not None:
        model.load_trainable(source)
    callbacks = _instantiate_collection(cfg.get("callbacks"))
    trainer = _make_trainer(cfg, callbacks=callbacks, logger=False)
    start = time.perf_counter()
    results = trainer.test(
        parts["module"],
        datamodule=datamodule,
        ckpt_path=str(source) if ckpt_path else None,
        verbose=False,
        weights_only=True,
    )
    metrics = _test_metrics(results)
    confusion = _test_confusion(parts["module"])
    metrics.update(
        trainable_params=model.num_trainable_parameters(),
        total_params=model.num_total_parameters(),
        test_seconds=round(time.perf_counter() - start, 3),
        weights=str(source),
    )
    sections = {}
    if corruptions is not None:
        start = time.perf_counter()
        robustness = evaluate_corruptions(
            trainer, parts["module"], parts["datamodule"], *corruptions, clean_metrics=metrics, seed=int(cfg.seed)
        )
        metrics.update(robustness.metrics(), corruption_seconds=round(time.perf_counter() - start, 3))
        sections["Robustness under corruptions"] = robustness.markdown()
    if trainer.is_global_zero:
        rundir.write_config(output_dir, OmegaConf.to_container(cfg, resolve=True))
        rundir.record_launch(output_dir, _launch("fftprompt-eval", weights=source, replaced=replaced))
        title = f"fftprompt evaluation of {source}"
        report = _write_report(cfg, output_dir, metrics, parts, [], title, confusion, sections)
        print_summary(metrics, report, title="test metrics")
    return metrics


def pretrain(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Formula-driven pretraining of a whole ViT, then ``<name>.safetensors``/``.sha256``/``.json``/``.md`` in
    ``paths.output_dir`` (:func:`fftprompt.pretrain.write_pretrained`).

    Config keys: ``formula`` (the classes), ``backbone`` (:func:`fftprompt.backbone.create_pretraining_vit` takes its
    arguments), ``module``, ``trainer`` (``max_steps`` sets the schedule, ``max_time`` may stop it earlier),
    ``callbacks``, ``logger``, ``seed``, ``name``, ``overwrite``, ``ckpt_path``.

    Returns:
        ``(card, objects)``: the model card written and ``{"cfg", "model", "module", "trainer", "paths"}``.
    """
    output_dir = _output_dir(cfg)
    name, overwrite = str(cfg.name), bool(cfg.get("overwrite", False))
    resume = rundir.resume_checkpoint(output_dir, cfg.get("ckpt_path"), base=Path(to_absolute_path(".")))
    existing = sorted(str(p) for p in output_dir.glob(f"{name}.*")) if output_dir.is_dir() else []
    if existing and not overwrite:
        raise ValueError(f"pretrained backbone files exist: {existing}; pass overwrite=true or another name=")
    L.seed_everything(int(cfg.seed), workers=True)
    formula = instantiate(cfg.formula)
    backbone_args = OmegaConf.to_container(cfg.backbone, resolve=True)
    backbone_args.pop("_target_", None)
    model = create_pretraining_vit(num_classes=formula.num_classes, **backbone_args)
    mean, std = normalisation(model)
    module: FormulaPretrainModule = instantiate(cfg.module, model=model, formula=formula, mean=mean, std=std)
    loggers = _instantiate_collection(cfg.get("logger"))
    trainer = _make_trainer(cfg, callbacks=_instantiate_collection(cfg.get("callbacks")), logger=loggers or False)
    output_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(output_dir, OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, ckpt_path=None if resume is None else str(resume), weights_only=True)
    seconds = module.fit_seconds
    images = int(trainer.global_step) * trainer.accumulate_grad_batches * module.batch_size
    card = {
        "backbone": backbone_args,
        "formula": {**formula.describe(), "target": str(cfg.formula._target_)},
        "image_size": formula.image_size,
        "num_classes": formula.num_classes,
        "steps": int(trainer.global_step),
        "planned_steps": int(trainer.max_steps),
        "batch_size": module.batch_size,
        "images_seen": images,
        "seed": int(cfg.seed),
        "optimizer": to_plain(OmegaConf.to_container(cfg.module, resolve=True)),
        "precision": str(cfg.trainer.precision),
        "wall_seconds": round(seconds, 1),
        "images_per_second": round(images / max(seconds, 1e-9), 1),
        "final_train_loss": module.history[-1]["loss"] if module.history else None,
        "final_train_acc": module.history[-1]["acc"] if module.history else None,
        "hardware": hardware(module.device),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "history": module.history,
    }
    paths = write_pretrained(output_dir, name, model, card, overwrite=overwrite)
    print(f"pretrained backbone: {paths['weights']} ({images} images, {seconds:.0f} s); model card {paths['markdown']}")
    return card, {"cfg": cfg, "model": model, "module": module, "trainer": trainer, "paths": paths}


# -- helpers -----------------------------------------------------------------------------------------------------


def _instantiate_optional(node: Any) -> Any:
    """``instantiate(node)``, or None for a missing/null/empty node (e.g. ``adapter=none``)."""
    if node is None or (isinstance(node, DictConfig) and len(node) == 0):
        return None
    return instantiate(node)


def _finish_loggers(loggers: Sequence[Logger]) -> None:
    """Ends the process-wide run a W&B logger opened (Lightning leaves it open), so that the next training in this
    process (a sweep's next trial) gets its own run instead of logging into this one; W&B's service process then
    completes the run's files (offline: ``wandb/offline-run-*``)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def _instantiate_collection(node: DictConfig | None, group: str = "callbacks") -> list[Any]:
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


def _build_datamodule(cfg: DictConfig, backbone: Backbone) -> L.LightningDataModule:
    root = None if cfg.data.get("root") is None else to_absolute_path(str(cfg.data.root))
    datamodule = build_datamodule(to_plain(cfg.data), mean=backbone.mean, std=backbone.std, root=root)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _output_dir(cfg: DictConfig) -> Path:
    try:
        value = cfg.paths.output_dir
    except Exception as error:  # omegaconf raises several types for missing keys and unresolvable interpolations
        raise ValueError(
            f"paths.output_dir cannot be resolved ({error}); outside a Hydra app set paths.output_dir explicitly"
        ) from error
    if value is None:
        raise ValueError("paths.output_dir is null; expected the run directory")
    return Path(to_absolute_path(str(value)))


def _move_aside(output_dir: Path) -> Path | None:
    """``overwrite=true``: moves an earlier run in ``output_dir`` aside (global rank 0 only: under DDP the other
    processes start after it, or at once with torchrun/srun, and must not move its new run)."""
    if rank_zero_only.rank != 0:
        return None
    replaced = rundir.move_run_aside(output_dir)
    if replaced is not None:
        print(f"overwrite=true: moved the earlier run {output_dir} aside to {replaced}", flush=True)
    return replaced


def _launch(command: str, **paths: Path | None) -> dict[str, Any]:
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


def _make_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """``instantiate(cfg.trainer, **kwargs)`` with checkpoints written atomically (unless a plugin sets its own IO)."""
    trainer: L.Trainer = instantiate(cfg.trainer, **kwargs)
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


def _test_confusion(module: L.LightningModule) -> torch.Tensor | None:
    """The test confusion matrix of a classification module (synchronised across processes), else None."""
    return module.test_confusion.compute().cpu() if isinstance(module, ClassificationModule) else None


def _corruption_settings(cfg: DictConfig) -> tuple[list[str], list[int]] | None:
    """The checked ``(corruptions, severities)`` of an evaluation config, None without ``corruptions``."""
    corruptions = cfg.get("corruptions")
    if corruptions is None:
        return None
    severities = cfg.get("severities")
    return check_corruptions(_as_list(corruptions), _as_list(SEVERITIES if severities is None else severities))


def _as_list(value: Any) -> list[Any]:
    """A config value as a list: ``corruptions=jpeg`` (one name) as well as ``corruptions=[jpeg,contrast]``."""
    return [value] if isinstance(value, (str, int, float)) else list(value)


def _randomly_initialised(cfg: DictConfig) -> bool:
    return not cfg.backbone.get("pretrained", False) and cfg.backbone.get("checkpoint_path") is None


def _check_matches_run(cfg: DictConfig, run_dir: Path, purpose: str) -> None:
    """Compares the model-defining entries of ``cfg`` with the run's saved config (:func:`rundir.check_matches_run`)."""
    rundir.check_matches_run(
        lambda key: to_plain(OmegaConf.select(cfg, key)),
        run_dir,
        purpose,
        randomly_initialised=_randomly_initialised(cfg),
    )


def _best_validation(trainer: L.Trainer) -> dict[str, float]:
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


def _test_checkpoint(trainer: L.Trainer) -> tuple[str | None, str]:
    """The checkpoint to test: best by the monitored metric, else the last one, else the weights in memory."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint):
        if callback.best_model_path and Path(callback.best_model_path).is_file():
            return callback.best_model_path, "best" if callback.monitor else "last-epoch"
        if callback.last_model_path and Path(callback.last_model_path).is_file():
            return callback.last_model_path, "last"
    return None, "final"


def _test_metrics(results: list[Mapping[str, float]]) -> dict[str, Any]:
    if not results:
        raise ValueError("trainer.test returned no results (is the test split empty?)")
    return {key: float(value) for key, value in sorted(results[0].items()) if key.startswith("test/")}


def _summary(cfg: DictConfig, parts: Mapping[str, Any]) -> dict[str, Any]:
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


def _write_report(
    cfg: DictConfig,
    output_dir: Path,
    metrics: dict[str, Any],
    parts: Mapping[str, Any],
    loggers: list[Logger],
    title: str,
    confusion: torch.Tensor | None,
    sections: Mapping[str, str] | None = None,
) -> Path:
    report = cfg.get("report")
    settings = ReportSettings() if report is None else instantiate(report)
    return write_run_report(
        output_dir,
        metrics,
        parts,
        summary=_summary(cfg, parts),
        settings=settings,
        loggers=loggers,
        title=title,
        confusion=confusion,
        sections=sections,
    )
