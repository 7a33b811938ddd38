"""The tuned protocol of ``fftprompt-ablate --tune``: per method the same grid of trials (:mod:`.tuning`), the
setting and the epoch chosen on validation, then the chosen setting trained with every seed and tested once.

Runs go to ``<output>/<setting>/tuned/trials/<variant>/<trial>/`` (``seed=<first seed>``, ``test=false``: the test
split is never read) and ``<output>/<setting>/tuned/runs/<variant>/seed<k>/`` (the chosen trial's overrides; the
checkpoint of the best validation score is tested). Every run uses ``mode=tuning`` (validation loop and best-score
checkpoint on, no logger). Finished runs with an unchanged config are reused. ``--jobs`` shards by variant: a worker
runs every trial and final run of its variants, since the final runs need all the trials.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fftprompt.ablate.runner import (
    describe_setting,
    load_average,
    plan_ablation,
    print_run,
    run_record,
    setting_epochs,
    train_or_reuse,
)
from fftprompt.ablate.settings import Setting
from fftprompt.ablate.tables import TASK_METRICS, summarise
from fftprompt.ablate.tuning import LR_KEYS, choose, plan_trials
from fftprompt.run import compose

__all__ = ["TUNING_OVERRIDES", "method_learning_rates", "run_tuned"]

TUNING_OVERRIDES = ("mode=tuning",)


def method_learning_rates(cfg: DictConfig) -> dict[str, float | None]:
    """The learning rates of :data:`~fftprompt.ablate.tuning.LR_KEYS` that ``cfg`` (a composed train config) sets."""
    rates = {key: OmegaConf.select(cfg, key) for key in LR_KEYS}
    return {key: None if value is None else float(value) for key, value in rates.items()}


def run_tuned(
    args: argparse.Namespace, setting: Setting, trained_by_workers: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Tunes every variant of this process's shard on validation in one setting, then trains and tests the chosen
    setting with every seed; returns the setting's report (:func:`~fftprompt.ablate.runner.run_ablation`'s, plus
    ``tuning``: per variant its trials, with validation score and chosen epoch, and the chosen trial)."""
    torch.set_num_threads(args.threads)
    output = Path(args.output).resolve() / (setting.subdir or "generated-pretrained") / "tuned"
    epochs = setting_epochs(args, setting)
    shared = [*setting.overrides, f"trainer.max_epochs={epochs}", *TUNING_OVERRIDES]
    base = compose([*shared, f"paths.output_dir={output}", *args.overrides])
    variants, budget = plan_ablation(base, [*args.methods, *args.ablations], args.budget)
    keys = TASK_METRICS[str(base.task.name)]
    monitor = str(base.task.monitor)
    tune_seed = args.seeds[0]

    start, load_before = time.perf_counter(), load_average()
    runs: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}
    shard, shards = args.shard
    for index, variant in enumerate(variants):
        if index % shards != shard:
            continue
        own = compose([*shared, *variant.overrides, f"paths.output_dir={output}", *args.overrides])
        trials = plan_trials(method_learning_rates(own), args.lr_scales, args.weight_decays)
        records = []
        for trial in trials:
            run_dir = output / "trials" / variant.name / trial.name
            cfg = compose(
                [
                    *shared,
                    *variant.overrides,
                    *trial.overrides,
                    f"seed={tune_seed}",
                    "test=false",
                    f"paths.output_dir={run_dir}",
                    *args.overrides,
                ]
            )
            metrics, reused = train_or_reuse(cfg, run_dir, args.rerun, trained_by_workers)
            if any(key.startswith("test/") for key in metrics):
                raise RuntimeError(f"{run_dir}: a tuning trial holds test metrics; it must not read the test split")
            records.append(
                {
                    "trial": trial.name,
                    "lr_scale": trial.lr_scale,
                    "weight_decay": trial.weight_decay,
                    "overrides": list(trial.overrides),
                    "val_score": metrics.get(f"{monitor}_best"),
                    "epoch": metrics.get(f"{monitor}_best_epoch"),
                    "run_dir": str(run_dir),
                    "reused": reused,
                    "train_seconds": metrics["train_seconds"],
                }
            )
            took = "reused" if reused else f"{metrics['train_seconds']:.0f} s"
            print(
                f"[tune] {setting.subdir} {variant.name:<20} {trial.name:<16} {monitor} "
                f"{records[-1]['val_score']:.3f} at epoch {records[-1]['epoch']} ({took})",
                flush=True,
            )
        chosen = choose([record["val_score"] for record in records])
        tuning[variant.name] = {"monitor": monitor, "seed": tune_seed, "trials": records, "chosen": chosen}
        for seed in args.seeds:
            run_dir = output / "runs" / variant.name / f"seed{seed}"
            overrides = [*variant.overrides, *trials[chosen].overrides, f"seed={seed}"]
            cfg = compose([*shared, *overrides, f"paths.output_dir={run_dir}", *args.overrides])
            metrics, reused = train_or_reuse(cfg, run_dir, args.rerun, trained_by_workers)
            record = run_record(variant.name, seed, run_dir, reused, metrics, keys)
            record.update(val_score=metrics.get(f"{monitor}_best"), epoch=metrics.get(f"{monitor}_best_epoch"))
            runs.append(record)
            print_run(setting, variant.name, seed, metrics, keys, reused)
    return {
        "settings": {**describe_setting(args, setting, base, epochs), "protocol": "tuned"},
        "budget": budget,
        "variants": [
            {"name": v.name, "label": v.label, "kind": v.kind, "overrides": list(v.overrides)} for v in variants
        ],
        "tuning": tuning,
        "runs": runs,
        "summary": summarise([v for v in variants if v.name in tuning], runs, keys),  # a worker: its shard only
        "wall_seconds": time.perf_counter() - start,
        "load_average": {"before": load_before, "after": load_average()},
    }
