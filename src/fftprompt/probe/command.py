"""``probe(cfg)``: the ``fftprompt-probe`` command as a plain function (the ``@hydra.main`` shim is in
:mod:`fftprompt.cli`). Builds the encoder (a backbone, or a finished run's model) and the data, computes every
image's features once, runs :func:`fftprompt.probe.protocol.evaluate_probes`, writes ``metrics.json`` and
``probe.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from fftprompt.backbone import Backbone
from fftprompt.data.base import ImageDataModule
from fftprompt.probe.features import extract_features, pooled_tokens
from fftprompt.probe.protocol import evaluate_probes, random_splits
from fftprompt.rundir import load_run, move_run_aside
from fftprompt.runfiles import METRICS_FILE, PROBE_TABLE
from fftprompt.spectral import FrequencyFeatures
from fftprompt.tables import format_mean_std, markdown_table, mean_std
from fftprompt.tokens import pool as pool_tokens
from fftprompt.utils import atomic_write, check_choice, to_plain

__all__ = ["probe"]
_SPLITS = ("train", "val", "test")


def probe(cfg: DictConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the probe ``cfg`` (``configs/probe.yaml`` composed) describes; returns what ``metrics.json`` holds.

    Args:
        cfg: The composed config.
        echo: Where progress lines go.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    check_choice("split", cfg.split, ("data", "random"))
    check_choice("select_on", cfg.select_on, ("val", "test"))
    if cfg.pooling is not None:
        check_choice("pooling", cfg.pooling, ("cls", "mean"))
    feature_sets, classifiers = [str(s) for s in cfg.feature_sets], [str(c) for c in cfg.classifiers]
    if not feature_sets or not classifiers:
        raise ValueError(
            "feature_sets and classifiers must not be empty (e.g. feature_sets=[fft] classifiers=[linear])"
        )
    out_dir = _out_dir(cfg)
    _refuse_existing(out_dir, bool(cfg.overwrite))

    encoder, datamodule, source = _encoder_and_data(cfg)
    datamodule.setup("fit")
    patch_size = int(cfg.fft_patch_size or encoder["patch_size"])
    frequency: FrequencyFeatures = instantiate(cfg.features)(patch_size=patch_size)
    echo(f"probe: {source['description']}, data {type(datamodule).__name__} ({len(datamodule.class_names)} classes)")

    parts, labels, membership = [], [], []
    for split in _SPLITS:
        images = datamodule.evaluation_dataset(split)  # the training split too without random augmentation
        loader = DataLoader(images, batch_size=int(cfg.batch_size), shuffle=False, num_workers=0)
        tick = time.perf_counter()
        split_features, split_labels = extract_features(
            loader, feature_sets, backbone=encoder["pooled"], frequency=frequency.to(cfg.device), device=cfg.device
        )
        parts.append(split_features)
        labels.append(split_labels)
        membership.append(np.full(len(split_labels), _SPLITS.index(split)))
        echo(f"features of {len(split_labels)} {split} images in {time.perf_counter() - tick:.1f} s")
    features = {name: torch.cat([part[name] for part in parts]) for name in feature_sets}
    all_labels, member = torch.cat(labels), np.concatenate(membership)

    if cfg.split == "random":
        splits = random_splits(all_labels, list(cfg.per_class), int(cfg.repeats), int(cfg.split_seed))
    else:
        splits = [{split: np.flatnonzero(member == i) for i, split in enumerate(_SPLITS)}]
    dropped_ks = sorted({int(k) for k in cfg.ks if any(int(k) > len(s["train"]) for s in splits)})
    if "knn" in classifiers and dropped_ks:
        echo(f"k-NN: ks {dropped_ks} exceed the training images and are left out of the grid")
    echo(
        f"fitting on {len(splits)} split(s), choosing on {cfg.select_on}"
        + (" (an upper bound)" if cfg.select_on == "test" else "")
    )
    results = evaluate_probes(
        features,
        all_labels,
        splits,
        len(datamodule.class_names),
        classifiers=classifiers,
        weight_decays=[float(w) for w in cfg.weight_decays],
        ks=[int(k) for k in cfg.ks],
        temperature=float(cfg.temperature),
        select_on=str(cfg.select_on),
        progress=echo,
    )
    metrics = {
        "source": source,
        "data": {
            "module": type(datamodule).__name__,
            "class_names": list(datamodule.class_names),
            "image_size": int(getattr(datamodule, "image_size", 0)),
            "split_sizes": [{split: len(s[split]) for split in _SPLITS} for s in splits],
        },
        "protocol": {
            "split": str(cfg.split),
            "select_on": str(cfg.select_on),
            **(
                {"per_class": list(cfg.per_class), "repeats": int(cfg.repeats), "split_seed": int(cfg.split_seed)}
                if cfg.split == "random"
                else {}
            ),
            "weight_decays": [float(w) for w in cfg.weight_decays],
            "ks": [int(k) for k in cfg.ks],
            "ks_left_out": dropped_ks if "knn" in classifiers else [],
            "temperature": float(cfg.temperature),
            "pooling": encoder["pooling"],
            "fft_patch_size": patch_size,
        },
        "feature_dims": {name: int(matrix.shape[1]) for name, matrix in features.items()},
        "summary": _summary(results),
        "results": {  # the per-image outcomes are for paired comparisons of one split (fftprompt-ablate), not here
            name: {c: [{k: v for k, v in r.items() if k != "test_correct"} for r in runs] for c, runs in by.items()}
            for name, by in results.items()
        },
        "timing": {
            "wall_s": round(time.perf_counter() - started, 2),
            "cpu_s": round(time.process_time() - cpu_started, 2),
            "threads": torch.get_num_threads(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "config": _config_record(cfg),
    }
    table = _table(metrics)
    atomic_write(out_dir / METRICS_FILE, lambda t: t.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8"))
    atomic_write(out_dir / PROBE_TABLE, lambda t: t.write_text("\n".join(table) + "\n", encoding="utf-8"))
    echo("\n".join(table))
    echo(f"probe results: {out_dir / METRICS_FILE}, {out_dir / PROBE_TABLE}")
    return metrics


def _config_record(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values; with a run_dir, without the unused backbone entry (it may not resolve)."""
    keys = [key for key in cfg if not (key == "backbone" and cfg.run_dir is not None)]
    return {str(key): to_plain(cfg[key]) for key in keys}


def _out_dir(cfg: DictConfig) -> Path:
    if cfg.out_dir is not None:
        return Path(to_absolute_path(str(cfg.out_dir)))
    if cfg.run_dir is not None:
        return Path(to_absolute_path(str(cfg.run_dir))) / "probe"
    return Path(to_absolute_path("runs/probe")) / time.strftime("%Y-%m-%d_%H-%M-%S")


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """Never replaces an earlier result silently: refused, or with ``overwrite=true`` moved aside whole."""
    if not (out_dir / METRICS_FILE).exists():
        return
    if not overwrite:
        raise ValueError(
            f"{out_dir} already holds a probe result ({METRICS_FILE}); choose another out_dir or pass overwrite=true"
        )
    print(f"overwrite=true: moved the earlier result {out_dir} aside to {move_run_aside(out_dir)}", flush=True)


def _encoder_and_data(cfg: DictConfig) -> tuple[dict[str, Any], ImageDataModule, dict[str, Any]]:
    """The images -> pooled tokens function (with its patch size and pooling), the data module (the encoder's
    normalisation, in-process loading; its splits are read without augmentation) and a description of the source."""
    data = cfg.get("data")
    if cfg.run_dir is not None:
        run = load_run(to_absolute_path(str(cfg.run_dir)), data_root=cfg.data_root, device=str(cfg.device))
        model = run.model
        pooling = str(cfg.pooling or model.pooling)
        layout = model.token_layout()

        def pool(tokens: torch.Tensor) -> torch.Tensor:
            return pool_tokens(tokens, layout, pooling, norm=model.backbone.fc_norm)

        encoder = {"pooled": lambda images: pooled_tokens(model.forward_features, pool, images)}
        backbone: Backbone = model.backbone
        datamodule = run.datamodule if data is None else _datamodule(data, backbone)
        source = {"run_dir": str(run.run_dir), "description": f"run {run.run_dir} ({backbone.name}, {pooling} pooling)"}
    else:
        if data is None:
            raise ValueError("no data: give data=<config> (e.g. data=dtd data.root=/data/dtd) or a run_dir=")
        backbone = instantiate(cfg.backbone)
        pooling = str(cfg.pooling or "cls")
        layout = backbone.token_layout()
        encoder = {
            "pooled": lambda images: pooled_tokens(
                backbone, lambda t: pool_tokens(t, layout, pooling, norm=backbone.fc_norm), images
            )
        }
        datamodule = _datamodule(data, backbone)
        checkpoint = cfg.backbone.get("checkpoint_path")
        source = {
            "backbone": to_plain(OmegaConf.to_container(cfg.backbone, resolve=True)),
            "description": f"backbone {backbone.name} ({checkpoint or 'no checkpoint'}, {pooling} pooling)",
        }
    encoder.update(patch_size=backbone.patch_size, pooling=pooling)
    return encoder, datamodule, source


def _datamodule(data: DictConfig, backbone: Backbone) -> ImageDataModule:
    overrides: dict[str, Any] = {
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "augment": False,
        "num_workers": 0,
    }
    if data.get("root") is not None:
        overrides["root"] = to_absolute_path(str(data.root))
    datamodule = instantiate(data, **overrides)
    if not isinstance(datamodule, ImageDataModule) or datamodule.task != "classification":
        raise ValueError(f"data._target_={data.get('_target_')!r}: the probe needs a classification data module")
    return datamodule


def _summary(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per feature set and classifier: mean and sample std over the splits of test accuracy and macro F1."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_classifier in results.items():
        summary[name] = {}
        for classifier, runs in by_classifier.items():
            acc_mean, acc_std = mean_std([r["test"]["acc"] for r in runs])
            f1_mean, f1_std = mean_std([r["test"]["f1_macro"] for r in runs])
            summary[name][classifier] = {
                "acc_mean": acc_mean,
                "acc_std": acc_std,
                "f1_mean": f1_mean,
                "f1_std": f1_std,
                "chosen": [r["chosen"] for r in runs],
            }
    return summary


def _table(metrics: dict[str, Any]) -> list[str]:
    protocol = metrics["protocol"]
    splits = metrics["data"]["split_sizes"]
    chosen_on = "the test split (an upper bound)" if protocol["select_on"] == "test" else "the validation split"
    lines = [
        f"# Probe: {metrics['source']['description']}",
        "",
        f"{metrics['data']['module']}, {len(metrics['data']['class_names'])} classes, {len(splits)} split(s) of "
        f"{splits[0]['train']} training / {splits[0]['val']} validation / {splits[0]['test']} test images; "
        f"weight decay and k chosen on {chosen_on}; mean ± sample std over the splits.",
        "",
    ]
    rows = []
    for name, by_classifier in metrics["summary"].items():
        for classifier, entry in by_classifier.items():
            chosen = ", ".join(" ".join(f"{k}={v:g}" for k, v in c.items()) for c in entry["chosen"])
            rows.append(
                [
                    name,
                    metrics["feature_dims"][name],
                    classifier,
                    format_mean_std(entry["acc_mean"], entry["acc_std"]),
                    format_mean_std(entry["f1_mean"], entry["f1_std"]),
                    chosen,
                ]
            )
    header = ["features", "dims", "classifier", "test accuracy", "macro F1", "chosen per split"]
    return lines + markdown_table(header, rows, ["l", "r", "l", "r", "r", "l"])
