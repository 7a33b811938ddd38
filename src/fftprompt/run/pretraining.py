"""``pretrain(cfg)``: pretraining of a whole ViT on rendered images (``fftprompt-pretrain``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from fftprompt import rundir
from fftprompt.backbone import create_pretraining_vit, normalisation
from fftprompt.pretrain import PretrainModule, hardware, write_pretrained
from fftprompt.run.config import resolve_output_dir
from fftprompt.run.selection import probe_selection
from fftprompt.run.trainer import (
    instantiate_collection,
    make_trainer,
)
from fftprompt.utils import to_plain
from fftprompt.weights import file_sha256


def pretrain(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pretraining of a whole ViT on rendered images, then ``<name>.safetensors``/``.sha256``/``.json``/``.md`` in
    ``paths.output_dir`` (:func:`fftprompt.pretrain.write_pretrained`).

    Config keys: ``source`` (the rendered images), ``objective`` (given ``num_features`` and ``num_classes``),
    ``backbone`` (:func:`fftprompt.backbone.create_pretraining_vit` takes its arguments), ``module``, ``trainer``
    (``max_steps`` sets the schedule, ``max_time`` may stop it earlier; ``backbone.checkpoint_path`` continues from
    those weights, recorded with their SHA256), ``callbacks``, ``selection`` (null: the last weights are written; a
    :class:`fftprompt.pretrain.ProbeSelection` config: the best validation probe's), ``logger``, ``seed``, ``name``,
    ``overwrite``, ``ckpt_path``.

    Returns:
        ``(card, objects)``: the model card written and ``{"cfg", "model", "module", "trainer", "paths"}``.
    """
    output_dir = resolve_output_dir(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    source = instantiate(cfg.source)
    backbone_args = OmegaConf.to_container(cfg.backbone, resolve=True)
    backbone_args.pop("_target_", None)
    model = create_pretraining_vit(num_classes=0, **backbone_args)
    objective = instantiate(cfg.objective, num_features=model.num_features, num_classes=source.num_classes)
    name = cfg.get("name") or f"{backbone_args['name']}_{type(source).__name__.lower()}_{objective.name}"
    overwrite = bool(cfg.get("overwrite", False))
    resume = rundir.resume_checkpoint(output_dir, cfg.get("ckpt_path"), base=Path(to_absolute_path(".")))
    existing = sorted(str(p) for p in output_dir.glob(f"{name}.*")) if output_dir.is_dir() else []
    if existing and not overwrite:
        raise ValueError(f"pretrained backbone files exist: {existing}; pass overwrite=true or another name=")
    mean, std = normalisation(model)
    module: PretrainModule = instantiate(
        cfg.module, model=model, source=source, objective=objective, mean=mean, std=std
    )
    selection = probe_selection(cfg.get("selection"), mean, std)  # None: the last weights are written
    loggers = instantiate_collection(cfg.get("logger"))
    callbacks = instantiate_collection(cfg.get("callbacks")) + ([selection] if selection is not None else [])
    trainer = make_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    output_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(output_dir, OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, ckpt_path=None if resume is None else str(resume), weights_only=True)
    seconds = module.fit_seconds
    images = int(trainer.global_step) * trainer.accumulate_grad_batches * module.batch_size
    card = {
        "backbone": backbone_args,
        "initial_weights": _initial_weights(backbone_args.get("checkpoint_path")),
        "source": {**source.describe(), "target": str(cfg.source._target_)},
        "objective": objective.describe(),
        "image_size": source.image_size,
        "num_classes": source.num_classes,
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
    if selection is not None:  # the weights of the step with the best validation probe, not the last ones
        selection.load_best(model)
        card["selection"] = selection.describe()
    paths = write_pretrained(output_dir, name, model, card, overwrite=overwrite)
    print(f"pretrained backbone: {paths['weights']} ({images} images, {seconds:.0f} s); model card {paths['markdown']}")
    return card, {"cfg": cfg, "model": model, "module": module, "trainer": trainer, "paths": paths}


def _initial_weights(path: str | None) -> dict[str, str] | None:
    """The file a run continued from (name and SHA256), None for random initial weights."""
    return None if path is None else {"file": Path(path).name, "sha256": file_sha256(path)}
