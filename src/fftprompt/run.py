"""``train(cfg)`` and ``evaluate(cfg)``: build everything from a composed Hydra config, fit/test, write a run directory.

These are plain functions (the ``@hydra.main`` shims in :mod:`fftprompt.cli` only call them), so tests and notebooks
compose a config with ``hydra.compose`` and call them directly. A run directory (``cfg.paths.output_dir``) holds::

    config.yaml                      the resolved config of the run
    metrics.json                     test metrics (``test/...``), parameter counts, timings, a config summary
    report.md, figures/*.png         learning curves, confusion matrix or predicted masks, frequency maps
    adapter.safetensors, adapter.json  the trained prompt/adapter/head tensors (PromptedViT.save_trainable)
    checkpoints/{last,best-*}.ckpt   Lightning checkpoints (trainable tensors and optimiser state only)
    csv/version_*/metrics.csv        the CSV logger's history (one version per fit, resumes included)
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from hydra.utils import instantiate, to_absolute_path
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from fftprompt.backbone import Backbone
from fftprompt.lit import AtomicCheckpointIO, ClassificationModule
from fftprompt.model import PromptedViT, create_model
from fftprompt.report import print_summary, write_report

__all__ = ["build", "evaluate", "train"]

RUN_CONFIG = "config.yaml"
METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = "last.ckpt"
# config entries that define the model: evaluation and resuming must use the run's values
_MODEL_KEYS = ("backbone", "features", "prompt", "adapter", "task.name", "task.pooling", "task.head")


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiates backbone, datamodule, model and LightningModule from ``cfg`` (seed first for random weights).

    The backbone is built first, so that a randomly initialised backbone depends only on the seed set before the
    call. The datamodule receives the backbone's normalisation (``mean``, ``std``) and an absolute ``root``
    (relative roots are taken from the directory the command was started in). The model gets the number of
    classes the datamodule found.

    Returns:
        ``{"backbone", "datamodule", "model", "module", "num_classes"}``.
    """
    backbone: Backbone = instantiate(cfg.backbone)
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
        features=_instantiate_optional(cfg.get("features")),
        head=_instantiate_optional(cfg.task.get("head")),
        adapter=_instantiate_optional(cfg.get("adapter")),
        pooling=str(cfg.task.pooling),
    )
    module = instantiate(cfg.task.module, model=model, num_classes=num_classes)
    return {
        "backbone": backbone,
        "datamodule": datamodule,
        "model": model,
        "module": module,
        "num_classes": num_classes,
    }


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fits prompts/adapter/head, tests the best (else last, else final) weights and writes the run directory.

    Config keys read besides the component groups: ``seed``, ``paths.output_dir``, ``overwrite`` (allow writing
    into a directory that holds a finished or unfinished run), ``ckpt_path`` (``last`` resumes from
    ``<output_dir>/checkpoints/last.ckpt``; a path resumes from that file), ``report.num_samples``.

    Returns:
        ``(metrics, objects)``: the metrics written to ``metrics.json`` (without the config summary) and the
        objects built (``cfg``, ``model``, ``module``, ``datamodule``, ``trainer``, ``output_dir``, ``report``).

    Raises:
        ValueError: if the output directory holds an earlier run and neither ``overwrite`` nor resuming was asked,
            or ``ckpt_path=last`` has no checkpoint, or the config does not fit the data/run being resumed.
    """
    output_dir = _output_dir(cfg)
    resume = _resume_checkpoint(cfg, output_dir)
    if resume is None:
        _refuse_existing_run(output_dir, overwrite=bool(cfg.get("overwrite", False)))
    else:
        _check_matches_run(cfg, output_dir, purpose="resuming")
    L.seed_everything(int(cfg.seed), workers=True)
    parts = build(cfg)
    model: PromptedViT = parts["model"]
    module: L.LightningModule = parts["module"]
    datamodule = parts["datamodule"]
    callbacks = _instantiate_collection(cfg.get("callbacks"))
    loggers = _instantiate_collection(cfg.get("logger"))
    trainer = _make_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    output_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / RUN_CONFIG, resolve=True)

    start = time.perf_counter()
    with warnings.catch_warnings():
        # PromptedViT keeps the frozen backbone in eval() on purpose (no dropout / drop-path, as in VPT)
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(module, datamodule=datamodule, ckpt_path=None if resume is None else str(resume), weights_only=True)
    train_seconds = time.perf_counter() - start

    test_checkpoint, weights = _test_checkpoint(trainer)
    start = time.perf_counter()
    results = trainer.test(module, datamodule=datamodule, ckpt_path=test_checkpoint, verbose=False, weights_only=True)
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
    )
    report = None
    if trainer.is_global_zero:
        model.save_trainable(output_dir, overwrite=True)  # the directory was checked for an earlier run above
        report = _write_run_report(
            cfg, output_dir, metrics, parts, loggers, title="fftprompt training run", confusion=confusion
        )
        print_summary(metrics, report, title=f"test metrics ({weights} weights)")
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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuilds the model from ``cfg``, loads a finished run's weights, tests it and writes ``metrics.json``/report.

    Exactly one of ``cfg.adapter_path`` (a run directory, ``adapter.safetensors`` or ``adapter.json``) and
    ``cfg.ckpt_path`` (a Lightning ``.ckpt`` file) names the weights. ``cfg`` must describe the same model as the
    training run (pass the same overrides); when the run directory has its ``config.yaml``, the model-defining
    entries are compared and a difference is an error.

    Returns:
        The test metrics (``test/...``) with parameter counts, ``test_seconds`` and ``weights`` (the source).
    """
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
        _check_checkpoint(source, f"ckpt_path={ckpt_path!s}")
    run_dir = source if source.is_dir() else source.parent
    if run_dir.name == "checkpoints":
        run_dir = run_dir.parent
    output_dir = _output_dir(cfg)
    _refuse_existing_run(output_dir, overwrite=bool(cfg.get("overwrite", False)))
    _check_matches_run(cfg, run_dir, purpose="evaluating")

    L.seed_everything(int(cfg.seed), workers=True)
    parts = build(cfg)
    model: PromptedViT = parts["model"]
    if adapter_path is not None:
        model.load_trainable(source)
    callbacks = _instantiate_collection(cfg.get("callbacks"))
    trainer = _make_trainer(cfg, callbacks=callbacks, logger=False)
    start = time.perf_counter()
    results = trainer.test(
        parts["module"],
        datamodule=parts["datamodule"],
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
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / RUN_CONFIG, resolve=True)
        report = _write_run_report(
            cfg, output_dir, metrics, parts, [], title=f"fftprompt evaluation of {source}", confusion=confusion
        )
        print_summary(metrics, report, title="test metrics")
    return metrics


# -- helpers -----------------------------------------------------------------------------------------------------


def _instantiate_optional(node: Any) -> Any:
    """``instantiate(node)``, or None for a missing/null/empty node (e.g. ``adapter=none``)."""
    if node is None or (isinstance(node, DictConfig) and len(node) == 0):
        return None
    return instantiate(node)


def _instantiate_collection(node: DictConfig | None) -> list[Any]:
    """Instantiates every entry with a ``_target_`` of a ``callbacks``/``logger`` mapping (null entries dropped)."""
    if node is None:
        return []
    objects = []
    for name, entry in node.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(f"entry {name!r} has no _target_; expected a mapping of name -> instantiable config")
        objects.append(instantiate(entry))
    return objects


def _build_datamodule(cfg: DictConfig, backbone: Backbone) -> L.LightningDataModule:
    overrides: dict[str, Any] = {"mean": list(backbone.mean), "std": list(backbone.std)}
    root = cfg.data.get("root")
    if root is not None:
        overrides["root"] = to_absolute_path(str(root))
    datamodule = instantiate(cfg.data, **overrides)
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


def _resume_checkpoint(cfg: DictConfig, output_dir: Path) -> Path | None:
    value = cfg.get("ckpt_path")
    if value is None:
        return None
    path = output_dir / "checkpoints" / LAST_CHECKPOINT if str(value) == "last" else Path(to_absolute_path(str(value)))
    if not path.is_file():
        raise ValueError(f"ckpt_path={value!r}: checkpoint {path} does not exist; expected a run's last.ckpt")
    _check_checkpoint(path, f"ckpt_path={value!s}")
    return path


def _check_checkpoint(path: Path, what: str) -> None:
    """Reads ``path`` as Lightning will (``weights_only=True``) so that a bad file fails here, before any building.

    A checkpoint holding pickled code (or any object beyond tensors and plain containers) is refused without
    running it; a truncated or corrupted file gets an error naming it instead of a zip-reader message mid-run.
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


def _make_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """``instantiate(cfg.trainer, **kwargs)`` with checkpoints written atomically (unless a plugin sets its own IO)."""
    trainer: L.Trainer = instantiate(cfg.trainer, **kwargs)
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


def _test_confusion(module: L.LightningModule) -> torch.Tensor | None:
    """The test confusion matrix of a classification module (synchronised across processes), else None."""
    return module.test_confusion.compute().cpu() if isinstance(module, ClassificationModule) else None


def _refuse_existing_run(output_dir: Path, overwrite: bool) -> None:
    """Raises when ``output_dir`` holds a finished run (metrics.json) or an unfinished one (checkpoints)."""
    if overwrite:
        return
    if (output_dir / METRICS_FILE).exists():
        raise ValueError(
            f"{output_dir} already holds a finished run ({METRICS_FILE}); choose another paths.output_dir, pass "
            "overwrite=true to replace it, or ckpt_path=last to resume it"
        )
    checkpoints = output_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
        raise ValueError(
            f"{checkpoints} holds checkpoints of an unfinished run; resume it with ckpt_path=last or pass "
            "overwrite=true to start afresh"
        )


def _randomly_initialised(cfg: DictConfig) -> bool:
    return not cfg.backbone.get("pretrained", False) and cfg.backbone.get("checkpoint_path") is None


def _check_matches_run(cfg: DictConfig, run_dir: Path, purpose: str) -> None:
    """Compares the model-defining entries of ``cfg`` with ``run_dir/config.yaml`` (skipped when it is absent)."""
    saved_path = run_dir / RUN_CONFIG
    if not saved_path.is_file():
        return
    saved = OmegaConf.load(saved_path)
    # a randomly initialised backbone is defined by the seed it was drawn with
    keys = [*_MODEL_KEYS, "seed"] if _randomly_initialised(cfg) else list(_MODEL_KEYS)
    differences = []
    for key in keys:
        mine, theirs = _plain(OmegaConf.select(cfg, key)), _plain(OmegaConf.select(saved, key))
        if mine != theirs:
            differences.append(f"{key}: {theirs!r} in the run, {mine!r} now")
    if differences:
        raise ValueError(
            f"{purpose} {run_dir}: the config does not describe the run's model ({saved_path}):\n  "
            + "\n  ".join(differences)
            + "\npass the training run's overrides (listed in its .hydra/overrides.yaml when launched from the CLI)"
        )


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


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


def _csv_histories(loggers: list[Logger]) -> list[Path]:
    """``metrics.csv`` of every version of the run's CSV logger (resumed fits log into a new version)."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            root = Path(logger.root_dir)
            versions = sorted(root.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
            return [p for p in versions if p.is_file()]
    return []


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
        "head": type(model.head).__name__,
        "seed": int(cfg.seed),
    }
    for split in ("train", "val", "test"):
        summary[f"{split}_images"] = len(datamodule.dataset(split))
    return {key: value for key, value in summary.items() if value is not None}


def _write_run_report(
    cfg: DictConfig,
    output_dir: Path,
    metrics: dict[str, Any],
    parts: Mapping[str, Any],
    loggers: list[Logger],
    title: str,
    confusion: torch.Tensor | None = None,
) -> Path:
    module, model, datamodule = parts["module"], parts["model"], parts["datamodule"]
    num_samples = int(cfg.get("report", {}).get("num_samples", 6))
    images, targets = _first_test_images(datamodule, num_samples)
    kwargs: dict[str, Any] = {"history_csv": _csv_histories(loggers)}
    if isinstance(module, ClassificationModule):
        kwargs["confusion"] = confusion if confusion is not None else module.test_confusion.compute().cpu()
        kwargs["class_names"] = list(datamodule.class_names)
    else:
        kwargs["segmentation_samples"] = {
            "images": images,
            "targets": targets,
            "predictions": _predict(model, images).argmax(dim=1),
            "mean": list(datamodule.mean),
            "std": list(datamodule.std),
            "num_classes": parts["num_classes"],
        }
    count = int(cfg.get("report", {}).get("frequency_panels", 2))
    figures = _frequency_figures(model, images, targets, datamodule, output_dir / "figures", count)
    explain_count = int(cfg.get("report", {}).get("explain_images", 2))
    if explain_count > 0:
        # small versions of fftprompt-explain's figures: few images, few integration steps, low resolution
        kwargs["explanations"] = {
            "model": model,
            "images": images[:explain_count],
            "mean": list(datamodule.mean),
            "std": list(datamodule.std),
            "labels": targets[:explain_count],
            "class_names": list(datamodule.class_names),
            "ig_steps": 32,
            "dpi": 60,
            "title": "Explanations of the first test images",
        }
    return write_report(output_dir, metrics, title=title, summary=_summary(cfg, parts), figures=figures, **kwargs)


def _first_test_images(datamodule: L.LightningDataModule, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = [], []
    seen = 0
    for batch_images, batch_targets in datamodule.test_dataloader():
        images.append(batch_images)
        targets.append(batch_targets)
        seen += batch_images.shape[0]
        if seen >= count:
            break
    return torch.cat(images)[:count], torch.cat(targets)[:count]


@torch.no_grad()
def _predict(model: PromptedViT, images: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = model(images.to(device)).float().cpu()
    model.train(was_training)
    if logits.ndim == 4 and logits.shape[-2:] != images.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def _frequency_figures(
    model: PromptedViT,
    images: torch.Tensor,
    targets: torch.Tensor,
    datamodule: L.LightningDataModule,
    figure_dir: Path,
    count: int,
) -> dict[str, Path]:
    """Frequency-map panels (:func:`fftprompt.visualize.plot_frequency_panel`) of the first ``count`` test images.

    The maps are computed from the normalised images, as the model sees them; the panel shows the image
    de-normalised. Nothing is drawn when the model has no frequency features.
    """
    if model.features is None or count == 0:
        return {}
    import matplotlib.pyplot as plt

    from fftprompt.visualize import plot_frequency_panel

    figures: dict[str, Path] = {}
    device = next(model.parameters()).device
    maps = model.compute_maps(images[:count].to(device))
    shown = datamodule.denormalize(images[:count])
    names = list(datamodule.class_names)
    for index in range(min(count, images.shape[0])):
        label = f"class {names[int(targets[index])]}" if targets.ndim == 1 else "segmentation sample"
        figure = plot_frequency_panel(shown, maps, index=index, title=f"test image {index} ({label})")
        path = figure_dir / f"frequency_maps_{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=60)
        plt.close(figure)
        figures[f"Frequency maps of test image {index}"] = path
    return figures
