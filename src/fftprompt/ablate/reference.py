"""Reference rows of the real-data comparison, from ``fftprompt-probe``'s functional core: (a) FFT statistics +
linear head (no ViT), (b) the frozen backbone's pooled token + linear head fitted by L-BFGS, (c) k-NN on the same
tokens (and the two feature sets concatenated + linear), on the data module's own train / val / test splits.

Weight decay and ``k`` are chosen on the validation split, the test split is read once per row. The fits are
deterministic (a strictly convex objective solved from zero; k-NN has no training), so each row is computed once
per setting, without seeds; with the random backbone it uses the ViT drawn from the first seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor
from torch.utils.data import DataLoader

from fftprompt.probe import evaluate_probes, extract_features, pooled_tokens
from fftprompt.run import build, compose
from fftprompt.spectral import FrequencyFeatures
from fftprompt.tokens import pool
from fftprompt.utils import to_plain, write_json_atomic

__all__ = ["REFERENCES", "add_references", "reference_parameters", "reference_rows", "reference_table_rows"]

# name -> (label, feature set, classifier)
REFERENCES = {
    "ref_fft_linear": ("FFT statistics + linear (no ViT)", "fft", "linear"),
    "ref_backbone_linear": ("backbone probe, L-BFGS", "backbone", "linear"),
    "ref_backbone_knn": ("backbone k-NN", "backbone", "knn"),
    "ref_both_linear": ("FFT statistics + backbone, L-BFGS", "both", "linear"),
}
_SPLITS = ("train", "val", "test")


def reference_parameters(classifier: str, dims: int, num_classes: int) -> int:
    """Fitted parameters of a reference row: ``K * (F + 1)`` for the linear head, 0 for k-NN (it stores the
    training features instead)."""
    return num_classes * (dims + 1) if classifier == "linear" else 0


def reference_table_rows(
    features: dict[str, Tensor],
    labels: Tensor,
    splits: dict[str, np.ndarray],
    num_classes: int,
    *,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    ks: Sequence[int] = (10, 20, 100, 200),
) -> list[dict[str, Any]]:
    """The rows of :data:`REFERENCES` from precomputed features (pure: no model, no data).

    Args:
        features: ``{"fft", "backbone", "both"}`` -> ``(N, F)`` features of every image (all splits pooled).
        labels: ``(N,)``.
        splits: ``{"train", "val", "test"}`` -> indices into the rows.
        num_classes: ``K``.
        weight_decays: The linear probe's grid (chosen on validation).
        ks: The k-NN grid (chosen on validation; values above the training images left out).

    Returns:
        Per row: ``name``, ``label``, ``features``, ``classifier``, ``trainable_params``, ``acc``, ``f1`` (test),
        ``val_acc`` (of the chosen value), ``chosen``, ``grid`` (validation accuracy per grid value),
        ``test_correct`` (1 or 0 per test image, in ``splits["test"]`` order).
    """
    wanted = {fs for _, fs, _ in REFERENCES.values()}
    missing = sorted(wanted - set(features))
    if missing:
        raise ValueError(f"reference rows need the feature sets {missing}")
    results = evaluate_probes(
        {name: features[name] for name in sorted(wanted)},
        labels,
        [splits],
        num_classes,
        classifiers=("linear", "knn"),
        weight_decays=weight_decays,
        ks=ks,
        select_on="val",
    )
    rows = []
    for name, (label, feature_set, classifier) in REFERENCES.items():
        entry = results[feature_set][classifier][0]
        rows.append(
            {
                "name": name,
                "label": label,
                "features": feature_set,
                "classifier": classifier,
                "trainable_params": reference_parameters(classifier, int(features[feature_set].shape[1]), num_classes),
                "acc": entry["test"]["acc"],
                "f1": entry["test"]["f1_macro"],
                "val_acc": entry["grid"][str(next(iter(entry["chosen"].values())))],
                "chosen": entry["chosen"],
                "grid": entry["grid"],
                "test_correct": entry["test_correct"],
            }
        )
    return rows


def reference_rows(cfg: DictConfig, batch_size: int = 64) -> list[dict[str, Any]]:
    """:func:`reference_table_rows` for the frozen backbone (without the config's prompts and adapter) and the data of
    ``cfg`` (a composed classification train config; augmentation off, the backbone's normalisation, the backbone
    built after seeding with ``cfg.seed``)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.data.augment = False  # the features of the images as tested, for the training split too
        # the frozen backbone alone: an adapter's FourierFT coefficients start random and would shift the tokens
        cfg.prompt, cfg.adapter = None, None
        # the backbone's own readout: the class token unless the config pools the patches' mean (prompt=fft's
        # readout of the prompt tokens has no tokens to read here)
        cfg.task.pooling = str(cfg.task.pooling) if str(cfg.task.pooling) in ("cls", "mean") else "cls"
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    parts = build(cfg)
    backbone, datamodule = parts["backbone"], parts["datamodule"]
    settings = {key: value for key, value in to_plain(cfg.features).items() if not key.startswith("_")}
    frequency = FrequencyFeatures(patch_size=backbone.patch_size, **settings)
    pooling = str(cfg.task.pooling)
    layout = backbone.token_layout()

    def encode(images: Tensor) -> Tensor:
        return pooled_tokens(backbone, lambda tokens: pool(tokens, layout, pooling, norm=backbone.fc_norm), images)

    parts_by_split, labels, bounds = [], [], [0]
    for split in _SPLITS:
        loader = DataLoader(datamodule.dataset(split), batch_size=batch_size, shuffle=False, num_workers=0)
        split_features, split_labels = extract_features(
            loader, ("fft", "backbone", "both"), backbone=encode, frequency=frequency
        )
        parts_by_split.append(split_features)
        labels.append(split_labels)
        bounds.append(bounds[-1] + len(split_labels))
    features = {name: torch.cat([part[name] for part in parts_by_split]) for name in parts_by_split[0]}
    splits = {split: np.arange(bounds[i], bounds[i + 1]) for i, split in enumerate(_SPLITS)}
    return reference_table_rows(features, torch.cat(labels), splits, int(datamodule.num_classes))


def add_references(reports: Sequence[dict[str, Any]], args: Any) -> None:
    """Adds ``reference`` (the rows of :func:`reference_rows`) to every classification report of a setting with all
    its training images, computed once per setting and kept in ``<output>/<setting>/reference.json`` (reused while
    the setting's overrides and seed are unchanged and it holds the per-image outcomes; ``--rerun`` computes it
    again)."""
    for report in reports:
        settings = report["settings"]
        if settings["task"] != "classification" or settings["shots"] is not None:
            continue
        subdir = f"{settings['dataset']}-{settings['backbone_init']}"
        path = Path(args.output).resolve() / subdir / "reference.json"
        key = {"overrides": list(settings["overrides"]), "seed": int(settings["seeds"][0])}
        cached = None if args.rerun or not path.is_file() else json.loads(path.read_text(encoding="utf-8"))
        if cached is not None and cached.get("key") == key and all("test_correct" in r for r in cached["rows"]):
            report["reference"] = cached["rows"]
            continue
        cfg = compose([*settings["overrides"], f"seed={key['seed']}", f"paths.output_dir={path.parent}"])
        started = time.perf_counter()
        report["reference"] = reference_rows(cfg)
        print(f"[reference] {subdir}: {len(report['reference'])} rows in {time.perf_counter() - started:.0f} s")
        write_json_atomic(path, {"key": key, "rows": report["reference"]})
