"""Running the ablation: the base config and its budget plan, every variant x seed through one ``train`` call each,
and worker processes for ``--jobs``.

Every run is :func:`fftprompt.run.train` on a config composed by :func:`fftprompt.run.compose` (the packaged configs,
as ``fftprompt-train`` composes them) with the overrides of one variant, so the ablation trains exactly what
``fftprompt-train`` trains. Runs write their directories under ``<output>/[<setting>/]runs/<variant>/seed<k>``
(:attr:`~fftprompt.ablate.settings.Setting.subdir`). A finished run
whose saved config equals the composed one is reused (:func:`fftprompt.rundir.finished_metrics`).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fftprompt.ablate.plan import Variant, plan_variants
from fftprompt.ablate.settings import Setting, plan_settings
from fftprompt.ablate.tables import METRIC_NAMES, TASK_METRICS, summarise
from fftprompt.fourierft import FourierFTConfig, count_fourierft_matrices
from fftprompt.methods import COMPARISON_OVERRIDES
from fftprompt.prompts import ModelDims
from fftprompt.run import build, build_backbone, compose, train
from fftprompt.rundir import finished_metrics
from fftprompt.runfiles import METRICS_FILE

__all__ = [
    "FULL_OVERRIDES",
    "QUICK_OVERRIDES",
    "RUN_OVERRIDES",
    "plan_ablation",
    "run_ablation",
    "run_settings",
    "run_workers",
    "train_or_reuse",
]

# every run: mode=comparison (no logger, checkpoints, validation loop, progress bar or summary, frequency-map figures)
RUN_OVERRIDES = COMPARISON_OVERRIDES
# the classic ablation: the demo config with fewer images; its 39 runs took 27 min with one 1-thread process on a
# shared 2-core machine (docs/ablation.md)
CLASSIC = plan_settings(["generated"], ["pretrained"])[0]
FULL_OVERRIDES = CLASSIC.overrides
FULL_EPOCHS = CLASSIC.epochs
# --quick: a 2-block ViT of width 32 on 32 px images and a few dozen images, one epoch (for tests)
QUICK = plan_settings(["generated"], ["random"], quick=True)[0]
QUICK_OVERRIDES = QUICK.overrides
QUICK_EPOCHS = QUICK.epochs


def plan_ablation(
    base: DictConfig, names: Sequence[str], budget: int | None = None
) -> tuple[list[Variant], dict[str, Any]]:
    """:func:`~fftprompt.ablate.plan.plan_variants` for ``base`` (a composed train config).

    Builds the backbone and the features of ``base`` (not the data) for the dims and the FourierFT matrices; when
    ``base`` has no adapter, FourierFT variants use :class:`FourierFTConfig`'s default targets.

    Returns:
        The variants and the budget description, with the FourierFT targets (``fourierft_targets``) added.
    """
    backbone, features = build_backbone(base)
    dims = ModelDims.of(backbone, features)
    adapter = base.get("adapter")
    targets = tuple(adapter.targets) if adapter else FourierFTConfig().targets
    matrices = count_fourierft_matrices(backbone.model, FourierFTConfig(targets=targets))
    variants, description = plan_variants(dims, matrices, names, budget)
    return variants, {**description, "fourierft_targets": list(targets)}


def run_ablation(
    args: argparse.Namespace, trained_by_workers: frozenset[str] = frozenset(), setting: Setting | None = None
) -> dict[str, Any]:
    """Trains (or reuses) every variant x seed of this process's shard in one setting; returns its report.

    Args:
        args: Parsed command line (:func:`fftprompt.ablate.cli.parse_args`).
        trained_by_workers: Run directories that worker processes of this invocation trained (reported as trained,
            not reused, although this process reads them from disk).
        setting: The dataset and backbone; default the classic ablation's (``--quick``: its tiny version).
    """
    torch.set_num_threads(args.threads)
    setting = setting if setting is not None else (QUICK if args.quick else CLASSIC)
    output = Path(args.output).resolve() / setting.subdir
    epochs = setting_epochs(args, setting)
    shared = [*setting.overrides, f"trainer.max_epochs={epochs}", *RUN_OVERRIDES]
    base = compose([*shared, f"paths.output_dir={output}", *args.overrides])
    variants, budget = plan_ablation(base, [*args.methods, *args.ablations], args.budget)

    start = time.perf_counter()
    load_before = load_average()
    keys = TASK_METRICS[str(base.task.name)]
    runs: list[dict[str, Any]] = []
    pairs = [(variant, seed) for variant in variants for seed in args.seeds]
    shard, shards = args.shard
    for index, (variant, seed) in enumerate(pairs):
        if index % shards != shard:
            continue
        run_dir = output / "runs" / variant.name / f"seed{seed}"
        # the user's overrides come last: they win over the variant's
        cfg = compose([*shared, *variant.overrides, f"seed={seed}", f"paths.output_dir={run_dir}", *args.overrides])
        metrics, reused = train_or_reuse(cfg, run_dir, args.rerun, trained_by_workers)
        runs.append(run_record(variant.name, seed, run_dir, reused, metrics, keys))
        print_run(setting, variant.name, seed, metrics, keys, reused)
    return {
        "settings": describe_setting(args, setting, base, epochs),
        "budget": budget,
        "variants": [
            {"name": v.name, "label": v.label, "kind": v.kind, "overrides": list(v.overrides)} for v in variants
        ],
        "runs": runs,
        "summary": summarise(variants, runs, keys),
        "wall_seconds": time.perf_counter() - start,
        "load_average": {"before": load_before, "after": load_average()},
    }


def train_or_reuse(
    cfg: DictConfig, run_dir: Path, rerun: bool, trained_by_workers: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], bool]:
    """The metrics of the run ``cfg`` describes in ``run_dir``: a finished run with the same config is reused (unless
    ``rerun``), else it is trained. Returns ``(metrics, reused)`` (runs that this invocation's workers trained are
    not reported as reused)."""
    metrics = None if rerun else finished_metrics(run_dir, OmegaConf.to_container(cfg, resolve=True))
    reused = metrics is not None and str(run_dir) not in trained_by_workers
    if metrics is None:
        metrics, _ = train(cfg)
    return metrics, reused


def run_record(
    variant: str, seed: int, run_dir: Path, reused: bool, metrics: dict[str, Any], keys: Sequence[str]
) -> dict[str, Any]:
    """One run as the reports list it: variant, seed, folder, reused, its test metrics, parameters, time."""
    return {
        "variant": variant,
        "seed": seed,
        "run_dir": str(run_dir),
        "reused": reused,
        **{k: metrics[k] for k in (*keys, "trainable_params", "train_seconds")},
    }


def print_run(
    setting: Setting, variant: str, seed: int, metrics: dict[str, Any], keys: Sequence[str], reused: bool
) -> None:
    took = "reused" if reused else f"{metrics['train_seconds']:.0f} s"
    where = f"{setting.subdir} " if setting.subdir else ""
    scores = " ".join(f"{METRIC_NAMES[k]} {metrics[k]:.3f}" for k in keys)
    print(
        f"[ablate] {where}{variant:<20} seed {seed}: {scores} params {metrics['trainable_params']:,} ({took})",
        flush=True,
    )


def describe_setting(args: argparse.Namespace, setting: Setting, base: DictConfig, epochs: int) -> dict[str, Any]:
    """The ``settings`` entry of a report: the setting, the command's options and the data."""
    return {
        "dataset": setting.dataset,
        "backbone_init": setting.backbone,
        "shots": setting.shots,
        "seeds": list(args.seeds),
        "epochs": epochs,
        "quick": args.quick,
        "overrides": [*setting.overrides, *args.overrides],
        "threads": args.threads,
        "jobs": args.jobs,
        "task": str(base.task.name),
        "metrics": list(TASK_METRICS[str(base.task.name)]),
        "backbone": str(base.backbone.name),
        "backbone_weights": (
            Path(str(base.backbone.checkpoint_path)).name if base.backbone.get("checkpoint_path") else None
        ),
        **describe_data(base),
    }


def setting_epochs(args: argparse.Namespace, setting: Setting) -> int:
    """``--epochs`` or the setting's, scaled for a few-shot setting (:func:`_few_shot_epochs`)."""
    epochs = args.epochs if args.epochs is not None else setting.epochs
    if setting.shots is not None:
        epochs = _few_shot_epochs(setting, epochs, args.overrides)
    return epochs


def run_settings(
    args: argparse.Namespace, settings: Sequence[Setting], trained_by_workers: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """:func:`run_ablation` for every setting, in order."""
    return [run_ablation(args, trained_by_workers, setting) for setting in settings]


def describe_data(cfg: DictConfig) -> dict[str, Any]:
    """The data of ``cfg`` as the reports state it: image size, batch, split sizes, classes, the test split's
    majority-class share (the accuracy of always predicting it; of the pixels, for segmentation), and the generated
    benchmark's region size."""
    datamodule = build(cfg)["datamodule"]
    splits = {split: datamodule.dataset(split) for split in ("train", "val", "test")}
    test_split = splits["test"]
    labels = getattr(test_split, "labels", None)
    if labels is None:  # classification: one label per image; segmentation: every pixel of every mask
        labels = torch.cat([torch.as_tensor(test_split[i][1]).flatten() for i in range(len(test_split))])
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64).flatten())
    return {
        "image_size": int(cfg.data.image_size),
        "batch_size": int(cfg.data.batch_size),
        "num_train": len(splits["train"]),
        "num_val": len(splits["val"]),
        "num_test": len(test_split),
        "classes": list(datamodule.class_names),
        "majority_fraction": float(counts.max()) / float(counts.sum()),
        "region_size": list(cfg.data.get("region_size", [])),
    }


def _few_shot_epochs(setting: Setting, epochs: int, overrides: Sequence[str]) -> int:
    """``epochs`` scaled by (training images of all) / (training images of the few-shot split): every few-shot run
    sees as many training images as the setting with all of them."""
    full_overrides = [o for o in setting.overrides if not o.startswith("data.train_per_class=")]
    full = compose([*full_overrides, "paths.output_dir=/nonexistent", *overrides])
    few = compose([*setting.overrides, "paths.output_dir=/nonexistent", *overrides])
    sizes = [len(build(cfg)["datamodule"].dataset("train")) for cfg in (full, few)]
    return max(epochs, math.ceil(epochs * sizes[0] / sizes[1]))


def load_average() -> float | None:
    """The 1-minute load average, where the OS reports it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def worker_command(args: argparse.Namespace, shard: int) -> list[str]:
    """The command line of worker ``shard`` of ``args.jobs``: this invocation's options, training only its shard."""
    command = [sys.executable, "-m", "fftprompt.ablate", "--runs-only", "--shard", f"{shard}/{args.jobs}"]
    command += ["--seeds", ",".join(map(str, args.seeds)), "--methods", ",".join(args.methods) or "none"]
    command += ["--ablations", ",".join(args.ablations) or "none", "--output", str(args.output)]
    command += ["--threads", str(args.threads)]
    command += ["--quick"] * args.quick + ["--rerun"] * args.rerun
    command += [] if args.epochs is None else ["--epochs", str(args.epochs)]
    command += [] if args.budget is None else ["--budget", str(args.budget)]
    command += ["--datasets", ",".join(args.datasets), "--backbones", ",".join(args.backbones)]
    command += ["--shots", ",".join(map(str, args.shots)) or "none"]
    command += [] if args.data_root is None else ["--data-root", str(args.data_root)]
    if args.tune:
        command += ["--tune", "--lr-scales", ",".join(map(repr, args.lr_scales))]
        command += ["--weight-decays", ",".join(map(repr, args.weight_decays))]
    return [*command, *args.overrides]


def run_workers(args: argparse.Namespace) -> frozenset[str]:
    """Trains the runs in ``args.jobs`` worker processes (logs in ``<output>/logs``); returns the run directories
    whose metrics they wrote."""
    output = Path(args.output).resolve()

    def stamps() -> dict[str, int]:  # seed<k> run directories only, not runs moved aside by overwrite=true
        found = output.glob(f"**/runs/*/seed*/{METRICS_FILE}")
        runs = {str(p.parent): p.stat().st_mtime_ns for p in found if p.parent.name.removeprefix("seed").isdigit()}
        trials = output.glob(f"**/trials/*/lr*/{METRICS_FILE}")  # --tune's trials
        return {**runs, **{str(p.parent): p.stat().st_mtime_ns for p in trials}}

    before = stamps()
    logs = output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for shard in range(args.jobs):
        log = (logs / f"worker{shard}.log").open("w", encoding="utf-8")
        processes.append((subprocess.Popen(worker_command(args, shard), stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for shard, (process, log) in enumerate(processes):
        if process.wait() != 0:
            failed.append(f"worker {shard} exited with {process.returncode} (see {log.name})")
        log.close()
    if failed:
        raise RuntimeError("; ".join(failed))
    after = stamps()
    return frozenset(run for run, stamp in after.items() if before.get(run) != stamp)
