"""Running the ablation: the base config and its budget plan, every variant x seed through one ``train`` call each,
and worker processes for ``--jobs``.

Every run is :func:`fftprompt.run.train` on a config composed by :func:`fftprompt.run.compose` (the packaged configs,
as ``fftprompt-train`` composes them) with the overrides of one variant, so the ablation trains exactly what
``fftprompt-train`` trains. Runs write their directories under ``<output>/runs/<variant>/seed<k>``. A finished run
whose saved config equals the composed one is reused (:func:`fftprompt.rundir.finished_metrics`).
"""

from __future__ import annotations

import argparse
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
from fftprompt.ablate.tables import summarise
from fftprompt.fourierft import FourierFTConfig
from fftprompt.methods import COMPARISON_OVERRIDES
from fftprompt.model import create_model
from fftprompt.prompts import ModelDims
from fftprompt.run import build_backbone, compose, train
from fftprompt.rundir import METRICS_FILE, finished_metrics

__all__ = ["FULL_OVERRIDES", "QUICK_OVERRIDES", "RUN_OVERRIDES", "plan_ablation", "run_ablation", "run_workers"]

# every run: no logger, no checkpoints, no validation loop, no progress bar or summary, no frequency-map figures
RUN_OVERRIDES = COMPARISON_OVERRIDES
# the full ablation: the demo config with fewer images; its 39 runs took 27 min with one 1-thread process on a shared
# 2-core machine (docs/ablation.md)
FULL_OVERRIDES = ("data.num_train=1000", "data.num_val=64")
FULL_EPOCHS = 10
# --quick: a 2-block ViT of width 32 on 32 px images and a few dozen images, one epoch (for tests)
QUICK_OVERRIDES = (
    "data.image_size=32",
    "data.num_train=32",
    "data.num_val=8",
    "data.num_test=24",
    "data.batch_size=16",
    "backbone.checkpoint_path=null",  # a randomly initialised tiny ViT: the shipped weights are the demo's size
    "backbone.depth=2",
    "backbone.embed_dim=32",
    "backbone.num_heads=2",
)
QUICK_EPOCHS = 1


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
    # with one entry per adapted matrix, the adapter's parameter count is the number of matrices
    probe = create_model(backbone, 2, adapter=FourierFTConfig(n_frequency=1, targets=targets))
    matrices = sum(p.numel() for p in probe.trainable_parameters()["adapter"])
    variants, description = plan_variants(dims, matrices, names, budget)
    return variants, {**description, "fourierft_targets": list(targets)}


def run_ablation(args: argparse.Namespace, trained_by_workers: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Trains (or reuses) every variant x seed of this process's shard and returns the ablation report.

    Args:
        args: Parsed command line (:func:`fftprompt.ablate.cli.parse_args`).
        trained_by_workers: Run directories that worker processes of this invocation trained (reported as trained,
            not reused, although this process reads them from disk).
    """
    torch.set_num_threads(args.threads)
    output = Path(args.output).resolve()
    scale = QUICK_OVERRIDES if args.quick else FULL_OVERRIDES
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if args.quick else FULL_EPOCHS)
    shared = [*scale, f"trainer.max_epochs={epochs}", *RUN_OVERRIDES]
    base = compose([*shared, f"paths.output_dir={output}", *args.overrides])
    variants, budget = plan_ablation(base, [*args.methods, *args.ablations], args.budget)

    start = time.perf_counter()
    load_before = load_average()
    runs: list[dict[str, Any]] = []
    pairs = [(variant, seed) for variant in variants for seed in args.seeds]
    shard, shards = args.shard
    for index, (variant, seed) in enumerate(pairs):
        if index % shards != shard:
            continue
        run_dir = output / "runs" / variant.name / f"seed{seed}"
        # the user's overrides come last: they win over the variant's
        cfg = compose([*shared, *variant.overrides, f"seed={seed}", f"paths.output_dir={run_dir}", *args.overrides])
        metrics = None if args.rerun else finished_metrics(run_dir, OmegaConf.to_container(cfg, resolve=True))
        reused = metrics is not None and str(run_dir) not in trained_by_workers
        if metrics is None:
            metrics, _ = train(cfg)
        runs.append(
            {
                "variant": variant.name,
                "seed": seed,
                "run_dir": str(run_dir),
                "reused": reused,
                **{k: metrics[k] for k in ("test/acc", "test/f1_macro", "trainable_params", "train_seconds")},
            }
        )
        took = "reused" if reused else f"{metrics['train_seconds']:.0f} s"
        print(
            f"[ablate] {variant.name:<20} seed {seed}: acc {metrics['test/acc']:.3f} "
            f"f1 {metrics['test/f1_macro']:.3f} params {metrics['trainable_params']:,} ({took})",
            flush=True,
        )
    wall_seconds = time.perf_counter() - start
    data = base.data
    return {
        "settings": {
            "seeds": list(args.seeds),
            "epochs": epochs,
            "quick": args.quick,
            "overrides": [*scale, *args.overrides],
            "threads": args.threads,
            "jobs": args.jobs,
            "backbone": str(base.backbone.name),
            "backbone_weights": (
                Path(str(base.backbone.checkpoint_path)).name if base.backbone.get("checkpoint_path") else None
            ),
            "image_size": int(data.image_size),
            "num_train": int(data.num_train),
            "num_test": int(data.num_test),
            "batch_size": int(data.batch_size),
            "region_size": list(data.get("region_size", [])),
            "classes": list(data.get("classes", [])),
        },
        "budget": budget,
        "variants": [
            {"name": v.name, "label": v.label, "kind": v.kind, "overrides": list(v.overrides)} for v in variants
        ],
        "runs": runs,
        "summary": summarise(variants, runs),
        "wall_seconds": wall_seconds,
        "load_average": {"before": load_before, "after": load_average()},
    }


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
    return [*command, *args.overrides]


def run_workers(args: argparse.Namespace) -> frozenset[str]:
    """Trains the runs in ``args.jobs`` worker processes (logs in ``<output>/logs``); returns the run directories
    whose metrics they wrote."""
    runs = Path(args.output).resolve() / "runs"

    def stamps() -> dict[str, int]:  # seed<k> run directories only, not runs moved aside by overwrite=true
        found = runs.glob(f"*/seed*/{METRICS_FILE}")
        return {str(p.parent): p.stat().st_mtime_ns for p in found if p.parent.name.removeprefix("seed").isdigit()}

    before = stamps()
    logs = Path(args.output).resolve() / "logs"
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
