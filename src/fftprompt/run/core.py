"""``build(cfg)``, ``train(cfg)`` and ``evaluate(cfg)``: everything built from a composed config, fitted or tested,
and the run directory written.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from fftprompt import rundir
from fftprompt.augment import SEVERITIES, check_corruptions
from fftprompt.backbone import Backbone
from fftprompt.model import PromptedViT, create_model
from fftprompt.pipeline import InputPipeline, build_augment, build_datamodule
from fftprompt.report import print_summary
from fftprompt.robustness import evaluate_corruptions
from fftprompt.run.config import resolve_output_dir
from fftprompt.run.records import launch_entry, move_aside, run_summary, write_report
from fftprompt.run.trainer import (
    best_validation_metrics,
    checkpoint_to_test,
    finish_loggers,
    instantiate_collection,
    instantiate_optional,
    make_trainer,
    test_confusion,
    test_metrics,
)
from fftprompt.runfiles import METRICS_FILE
from fftprompt.spectral import FrequencyFeatures
from fftprompt.utils import to_plain, write_json_atomic


def build_backbone(cfg: DictConfig) -> tuple[Backbone, FrequencyFeatures | None]:
    """The frozen backbone and the frequency features (None without) that ``cfg`` describes."""
    backbone: Backbone = instantiate(cfg.backbone)
    features = instantiate_optional(cfg.get("features"))
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
    size = int(datamodule.image_size)
    if tuple(backbone.img_size) != (size, size) and not getattr(backbone.model.patch_embed, "dynamic_img_size", False):
        raise ValueError(
            f"data.image_size={size} but the backbone takes {backbone.img_size[0]}x{backbone.img_size[1]} images "
            "(backbone.img_size): give both one size (fftprompt-eval: drop the data.image_size override, the run's "
            "model is built for its own size)"
        )
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
        prompt=instantiate_optional(cfg.get("prompt")),
        features=features,
        head=instantiate_optional(cfg.task.get("head")),
        adapter=instantiate_optional(cfg.get("adapter")),
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
    output_dir = resolve_output_dir(cfg)
    overwrite = bool(cfg.get("overwrite", False))
    resume = rundir.resume_checkpoint(output_dir, cfg.get("ckpt_path"), base=Path(to_absolute_path(".")))
    if resume is not None:
        rundir.check_resume(OmegaConf.to_container(cfg, resolve=True), rundir.run_dir_of(resume), checkpoint=resume)
    # a new run, or one continued from another directory's checkpoint: the output directory must not hold a run
    fresh = resume is None or rundir.run_dir_of(resume).resolve() != output_dir.resolve()
    if fresh:
        rundir.refuse_existing_run(output_dir, overwrite=overwrite)
    replaced = move_aside(output_dir) if fresh and overwrite else None
    L.seed_everything(int(cfg.seed), workers=True)
    parts = build(cfg)
    model: PromptedViT = parts["model"]
    module: L.LightningModule = parts["module"]
    datamodule = parts["datamodule"]
    callbacks = instantiate_collection(cfg.get("callbacks"))
    loggers = instantiate_collection(cfg.get("logger"), "logger")
    trainer = make_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            rundir.write_config(output_dir, OmegaConf.to_container(cfg, resolve=True))
            rundir.record_launch(output_dir, launch_entry("fftprompt-train", resumed_from=resume, replaced=replaced))

        start = time.perf_counter()
        with warnings.catch_warnings():
            # PromptedViT keeps the frozen backbone in eval() on purpose (no dropout / drop-path, as in VPT)
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            trainer.fit(
                module, datamodule=datamodule, ckpt_path=None if resume is None else str(resume), weights_only=True
            )
        train_seconds = time.perf_counter() - start

        best_validation = best_validation_metrics(trainer)
        tested = bool(cfg.get("test", True))
        metrics, confusion, test_seconds, weights = {}, None, 0.0, "untested"
        if tested:
            test_checkpoint, weights = checkpoint_to_test(trainer)
            start = time.perf_counter()
            results = trainer.test(
                module, datamodule=datamodule, ckpt_path=test_checkpoint, verbose=False, weights_only=True
            )
            test_seconds = time.perf_counter() - start
            metrics = test_metrics(results)
            confusion = test_confusion(module)  # a collective under DDP: every rank takes part
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
        head_probe = getattr(module, "head_probe", None)
        if head_probe is not None:  # task.module.head_init=probe: what the head's probe fit chose
            metrics["head_probe_weight_decay"] = head_probe["weight_decay"]
            if head_probe["val_accuracy"][0] is not None:
                metrics["head_probe_val_acc"] = max(head_probe["val_accuracy"])
        report = None
        if trainer.is_global_zero:
            model.save_trainable(output_dir, overwrite=True)  # the directory was checked for an earlier run above
            if tested:
                report = write_report(cfg, output_dir, metrics, parts, loggers, "fftprompt training run", confusion)
                print_summary(metrics, report, title=f"test metrics ({weights} weights)")
            else:  # test=false: no report, whose figures would show test images; metrics.json only
                write_json_atomic(output_dir / METRICS_FILE, {**metrics, "config": run_summary(cfg, parts)})
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
        finish_loggers(loggers)


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
    output_dir = resolve_output_dir(cfg)
    if output_dir.resolve() == run_dir.resolve():
        raise ValueError(
            f"paths.output_dir={str(output_dir)!r} is the evaluated run's own directory; choose another (the default "
            "is runs/eval/<date>/<time>)"
        )
    overwrite = bool(cfg.get("overwrite", False))
    rundir.refuse_existing_run(output_dir, overwrite=overwrite)
    _check_matches_run(cfg, run_dir, purpose="evaluating")

    replaced = move_aside(output_dir) if overwrite else None
    L.seed_everything(int(cfg.seed), workers=True)
    parts = build(cfg)
    datamodule = parts["datamodule"]
    root = getattr(datamodule, "root", None)
    data = type(datamodule).__name__ + ("" if root is None else f", {root}")
    rundir.check_classes(source, datamodule.class_names, data)
    model: PromptedViT = parts["model"]
    if adapter_path is not None:
        model.load_trainable(source)
    callbacks = instantiate_collection(cfg.get("callbacks"))
    trainer = make_trainer(cfg, callbacks=callbacks, logger=False)
    start = time.perf_counter()
    results = trainer.test(
        parts["module"],
        datamodule=datamodule,
        ckpt_path=str(source) if ckpt_path else None,
        verbose=False,
        weights_only=True,
    )
    metrics = test_metrics(results)
    confusion = test_confusion(parts["module"])
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
        rundir.record_launch(output_dir, launch_entry("fftprompt-eval", weights=source, replaced=replaced))
        title = f"fftprompt evaluation of {source}"
        report = write_report(cfg, output_dir, metrics, parts, [], title, confusion, sections)
        print_summary(metrics, report, title="test metrics")
    return metrics


def _build_datamodule(cfg: DictConfig, backbone: Backbone) -> L.LightningDataModule:
    root = None if cfg.data.get("root") is None else to_absolute_path(str(cfg.data.root))
    datamodule = build_datamodule(to_plain(cfg.data), mean=backbone.mean, std=backbone.std, root=root)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


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
