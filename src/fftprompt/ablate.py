"""``fftprompt-ablate``: methods x seeds at matched trainable-parameter budgets, and frequency-feature ablations.

Every run is :func:`fftprompt.run.train` on a config composed from the packaged Hydra configs (the default demo:
generated symmetry benchmark, small randomly initialised ViT, CPU) with the overrides of one variant, so the ablation
trains exactly what ``fftprompt-train`` trains. Runs write their directories under ``<output>/runs/<variant>/seed<k>``
(no logger, no checkpoints, no validation loop: the final weights are tested, the same rule for every method; no
frequency-map figures). A finished run whose saved ``config.yaml`` equals the composed config is reused, so an
interrupted ablation continues where it stopped (``--rerun`` trains everything again). ``--jobs N`` trains the runs
in ``N`` worker processes (every ``N``-th run each, logs in ``<output>/logs``) and then collects them.

Budgets. The reference budget is VPT-deep's and VFPT's standard 10 prompts per block, ``B = 10 * L * D`` prompt
parameters (``--budget`` overrides it); every method is sized from the backbone and the features of the composed
config to at most ``B`` trainable parameters besides the (shared) classification head:

- VPT-shallow: ``B // D`` prompts; VPT-deep and VFPT: ``B // (L * D)`` prompts per block;
- FourierFT (the config's targets, ``q`` and ``v``): ``n_frequency = B // M`` for ``M`` adapted matrices;
- fft prompts (shallow: 4 prompts; deep: 2 per block): the widest generator (``hidden_dim`` h, ``spectrum_dim`` h/2,
  ``spectrum_crop`` 4, 2 heads) with at most ``B`` parameters;
- fft prompts + FourierFT: a quarter of ``B`` for FourierFT, the widest shallow generator within the rest.

Feature ablations use the fft-shallow generator settings with one feature group removed
(``features.groups``), or without the spectrum projection (``prompt.use_spectrum=false``); their parameter counts
drop slightly with the narrower input.

Output: ``ablation.json`` (settings, every run's metrics), ``ablation.md`` (mean +- sample std over seeds of test
accuracy and macro F1, trainable parameters, the goal check) and ``ablation.png`` (bar plot) in ``--output``, and
the markdown (with the figure next to it) at ``--doc`` when given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fftprompt.backbone import Backbone
from fftprompt.fourierft import FourierFTConfig
from fftprompt.model import create_model
from fftprompt.prompts import FrequencyPrompt, ModelDims
from fftprompt.spectral import FEATURE_GROUPS

__all__ = ["ABLATIONS", "METHODS", "Variant", "main", "plan_variants", "run_ablation"]

CONFIG_DIR = Path(__file__).parent / "configs"
METHODS = ("linear_probe", "vpt_shallow", "vpt_deep", "vfpt", "fft_shallow", "fft_deep", "fourierft", "fft_fourierft")
ABLATIONS = ("fft_no_symmetry", "fft_no_orientation", "fft_no_radial", "fft_no_cross_patch", "fft_no_spectrum")
LABELS = {
    "linear_probe": "linear probe",
    "vpt_shallow": "VPT shallow",
    "vpt_deep": "VPT deep",
    "vfpt": "VFPT",
    "fft_shallow": "fft prompts shallow",
    "fft_deep": "fft prompts deep",
    "fourierft": "FourierFT",
    "fft_fourierft": "fft prompts + FourierFT",
    "fft_no_symmetry": "fft shallow without symmetry maps",
    "fft_no_orientation": "fft shallow without orientation maps",
    "fft_no_radial": "fft shallow without radial bands",
    "fft_no_cross_patch": "fft shallow without cross-patch symmetry",
    "fft_no_spectrum": "fft shallow without spectrum projection",
}
OURS = ("fft_shallow", "fft_deep", "fft_fourierft")
BASELINES = ("vpt_shallow", "vpt_deep", "vfpt")
GOAL_MARGIN = 0.10  # fft prompts beat VPT and VFPT by at least 10 points of accuracy (mean of the seeds)

# every run: no logger, no checkpoints, no validation loop, no progress bar or summary, no frequency-map figures
RUN_OVERRIDES = (
    "logger=none",
    "callbacks=none",
    "++trainer.enable_checkpointing=false",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "++trainer.limit_val_batches=0",
    "report.frequency_panels=0",
    "overwrite=true",
)
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
    "backbone.depth=2",
    "backbone.embed_dim=32",
    "backbone.num_heads=2",
)
QUICK_EPOCHS = 1

_FFT_SHALLOW_TOKENS = 4
_FFT_DEEP_TOKENS = 2
_FFT_HEADS = 2
_FFT_CROP = 4
_FOURIERFT_SHARE = 0.25  # of the budget, in fft prompts + FourierFT


VariantKind = Literal["method", "feature ablation"]


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a name, a label and the Hydra overrides that make it from the base config."""

    name: str
    label: str
    overrides: tuple[str, ...]
    kind: VariantKind


def _fft_overrides(hidden_dim: int, num_tokens: int) -> tuple[str, ...]:
    return (
        f"prompt.num_tokens={num_tokens}",
        f"prompt.hidden_dim={hidden_dim}",
        f"prompt.num_heads={_FFT_HEADS}",
        f"prompt.spectrum_dim={max(hidden_dim // 2, 1)}",
        f"prompt.spectrum_crop={_FFT_CROP}",
    )


def _fft_prompt_params(dims: ModelDims, hidden_dim: int, num_tokens: int, deep: bool) -> int:
    prompt = FrequencyPrompt(
        dims,
        num_tokens=num_tokens,
        deep=deep,
        hidden_dim=hidden_dim,
        num_heads=_FFT_HEADS,
        spectrum_dim=max(hidden_dim // 2, 1),
        spectrum_crop=_FFT_CROP,
    )
    return prompt.num_parameters()


def _widest_fft(dims: ModelDims, budget: int, num_tokens: int, deep: bool) -> int:
    """The largest even ``hidden_dim`` whose generator has at most ``budget`` parameters."""
    best = None
    for hidden_dim in range(_FFT_HEADS, 513, _FFT_HEADS):
        if _fft_prompt_params(dims, hidden_dim, num_tokens, deep) > budget:
            break
        best = hidden_dim
    if best is None:
        raise ValueError(
            f"budget {budget}: even the smallest fft prompt generator ({num_tokens} tokens, hidden_dim {_FFT_HEADS}) "
            "has more parameters; raise --budget"
        )
    return best


def plan_variants(
    base: DictConfig, names: Sequence[str], budget: int | None = None
) -> tuple[list[Variant], dict[str, Any]]:
    """Sizes every requested variant to the parameter budget of ``base`` (a composed train config).

    Builds the backbone and the features of ``base`` (not the data) to read ``D``, ``L``, the feature channels and
    the FourierFT matrices.

    Returns:
        The variants in the order of ``names`` and a description of the budget (``budget``, ``embed_dim``,
        ``num_layers``, ``feature_channels``, ``fourierft_matrices``, ``head_params``).
    """
    unknown = [n for n in names if n not in METHODS + ABLATIONS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected names from {list(METHODS + ABLATIONS)}")
    backbone: Backbone = instantiate(base.backbone)
    features = instantiate(base.features)(patch_size=backbone.patch_size)
    dims = ModelDims(
        embed_dim=backbone.embed_dim,
        num_layers=backbone.num_blocks,
        patch_size=backbone.patch_size,
        grid_size=backbone.grid_size,
        in_chans=backbone.in_chans,
        feature_channels=features.num_channels,
    )
    embed_dim, layers = dims.embed_dim, dims.num_layers
    budget = 10 * layers * embed_dim if budget is None else budget
    adapter_node = base.get("adapter") or OmegaConf.load(CONFIG_DIR / "adapter" / "fourierft.yaml")
    targets = tuple(adapter_node.targets)
    # with one entry per adapted matrix, the adapter's parameter count is the number of matrices
    probe = create_model(backbone, 2, adapter=FourierFTConfig(n_frequency=1, targets=targets))
    matrices = sum(p.numel() for p in probe.trainable_parameters()["adapter"])

    fft_shallow = _widest_fft(dims, budget, _FFT_SHALLOW_TOKENS, deep=False)
    fft_deep = _widest_fft(dims, budget, _FFT_DEEP_TOKENS, deep=True)
    fourier_small = max(int(budget * _FOURIERFT_SHARE) // matrices, 1)
    fft_combined = _widest_fft(dims, budget - fourier_small * matrices, _FFT_SHALLOW_TOKENS, deep=False)
    no_adapter = ("adapter=none",)
    shallow = ("prompt=fft", *_fft_overrides(fft_shallow, _FFT_SHALLOW_TOKENS), *no_adapter)
    overrides: dict[str, tuple[str, ...]] = {
        "linear_probe": ("prompt=none", *no_adapter),
        "vpt_shallow": ("prompt=vpt", f"prompt.num_tokens={max(budget // embed_dim, 1)}", *no_adapter),
        "vpt_deep": ("prompt=vpt_deep", f"prompt.num_tokens={max(budget // (layers * embed_dim), 1)}", *no_adapter),
        "vfpt": ("prompt=vfpt", f"prompt.num_tokens={max(budget // (layers * embed_dim), 1)}", *no_adapter),
        "fft_shallow": shallow,
        "fft_deep": ("prompt=fft_deep", *_fft_overrides(fft_deep, _FFT_DEEP_TOKENS), *no_adapter),
        "fourierft": ("prompt=none", "adapter=fourierft", f"adapter.n_frequency={max(budget // matrices, 1)}"),
        "fft_fourierft": (
            "prompt=fft",
            *_fft_overrides(fft_combined, _FFT_SHALLOW_TOKENS),
            "adapter=fourierft",
            f"adapter.n_frequency={fourier_small}",
        ),
        "fft_no_spectrum": (*shallow, "prompt.use_spectrum=false"),
    }
    for group in FEATURE_GROUPS:
        kept = ",".join(g for g in FEATURE_GROUPS if g != group)
        overrides[f"fft_no_{group}"] = (*shallow, f"features.groups=[{kept}]")
    variants = [
        Variant(name, LABELS[name], overrides[name], "method" if name in METHODS else "feature ablation")
        for name in names
    ]
    description = {
        "budget": budget,
        "embed_dim": embed_dim,
        "num_layers": layers,
        "feature_channels": dims.feature_channels,
        "fourierft_matrices": matrices,
        "fourierft_targets": list(targets),
    }
    return variants, description


def _compose(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _finished(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The metrics of a finished run in ``run_dir`` made from the same config, else None."""
    metrics_path, config_path = run_dir / "metrics.json", run_dir / "config.yaml"
    if not (metrics_path.is_file() and config_path.is_file()):
        return None
    saved = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    if saved != OmegaConf.to_container(cfg, resolve=True):
        return None
    return json.loads(metrics_path.read_text(encoding="utf-8"))


def run_ablation(args: argparse.Namespace, trained_by_workers: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Trains (or reuses) every variant x seed of this process's shard and returns the ablation report.

    Args:
        args: Parsed command line.
        trained_by_workers: Run directories that worker processes of this invocation trained (reported as trained,
            not reused, although this process reads them from disk).
    """
    from fftprompt.run import train

    torch.set_num_threads(args.threads)
    output = Path(args.output).resolve()
    scale = QUICK_OVERRIDES if args.quick else FULL_OVERRIDES
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if args.quick else FULL_EPOCHS)
    shared = [*scale, f"trainer.max_epochs={epochs}", *RUN_OVERRIDES]
    base = _compose([*shared, f"paths.output_dir={output}", *args.overrides])
    variants, budget = plan_variants(base, [*args.methods, *args.ablations], args.budget)

    start = time.perf_counter()
    load_before = _load_average()
    runs: list[dict[str, Any]] = []
    pairs = [(variant, seed) for variant in variants for seed in args.seeds]
    shard, shards = args.shard
    for index, (variant, seed) in enumerate(pairs):
        if index % shards != shard:
            continue
        run_dir = output / "runs" / variant.name / f"seed{seed}"
        # the user's overrides come last: they win over the variant's
        cfg = _compose([*shared, *variant.overrides, f"seed={seed}", f"paths.output_dir={run_dir}", *args.overrides])
        metrics = None if args.rerun else _finished(run_dir, cfg)
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
        "load_average": {"before": load_before, "after": _load_average()},
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(variants: Sequence[Variant], runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: mean and sample std over seeds of test accuracy and macro F1, and the trainable parameters."""
    rows = []
    for variant in variants:
        own = [r for r in runs if r["variant"] == variant.name]
        acc_mean, acc_std = _mean_std([r["test/acc"] for r in own])
        f1_mean, f1_std = _mean_std([r["test/f1_macro"] for r in own])
        params = sorted({r["trainable_params"] for r in own})
        rows.append(
            {
                "name": variant.name,
                "label": variant.label,
                "kind": variant.kind,
                "trainable_params": params[0] if len(params) == 1 else params,
                "acc_mean": acc_mean,
                "acc_std": acc_std,
                "f1_mean": f1_mean,
                "f1_std": f1_std,
                "acc_per_seed": [r["test/acc"] for r in own],
                "seeds": [r["seed"] for r in own],
            }
        )
    return rows


def goal_check(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every fft method present: its margin over the best of VPT shallow/deep and VFPT, and the parameter test."""
    by_name = {row["name"]: row for row in summary}
    baselines = [by_name[name] for name in BASELINES if name in by_name]
    if not baselines:
        return []
    best = max(baselines, key=lambda row: row["acc_mean"])
    checks = []
    for name in OURS:
        if name not in by_name:
            continue
        row = by_name[name]
        fewer = all(_params(row) <= _params(b) for b in baselines)
        margin = row["acc_mean"] - best["acc_mean"]
        checks.append(
            {
                "name": name,
                "label": row["label"],
                "best_baseline": best["name"],
                "margin": margin,
                "no_more_params": fewer,
                "met": fewer and round(margin, 9) >= GOAL_MARGIN,  # accuracies are fractions of the test set
            }
        )
    return checks


def _params(row: dict[str, Any]) -> int:
    value = row["trainable_params"]
    return max(value) if isinstance(value, list) else int(value)


def format_markdown(report: dict[str, Any], figure: str | None = "ablation.png") -> str:
    """The ablation report as markdown: settings, the methods table, the feature-ablation table, the goal check."""
    s, b = report["settings"], report["budget"]
    load, runs = report["load_average"], report["runs"]
    trained = sum(not r["reused"] for r in runs)
    lines = [
        "# Ablation: methods at matched parameter budgets, and frequency-feature ablations",
        "",
        f"Generated symmetry benchmark ({len(s['classes'])} classes: {', '.join(s['classes'])}; region size "
        f"{s['region_size']} of the image side), {s['image_size']} px, {s['num_train']} training and "
        f"{s['num_test']} test images; frozen randomly initialised `{s['backbone']}` (L={b['num_layers']} blocks, "
        f"D={b['embed_dim']}); {s['epochs']} epochs, batch {s['batch_size']}, the default optimiser settings of "
        f"`task/classification.yaml`; final weights tested (no validation-based selection); seeds "
        f"{', '.join(map(str, s['seeds']))} (each seed also draws the random backbone). Overrides: "
        f"`{' '.join(s['overrides']) or '(none)'}`.",
        "",
        f"Budget: at most {b['budget']:,} trainable parameters besides the classification head (VPT-deep with 10 "
        f"prompts per block), FourierFT on {'/'.join(b['fourierft_targets'])} ({b['fourierft_matrices']} matrices), "
        f"{b['feature_channels']} compact feature channels.",
        "",
        f"Time: {report['wall_seconds'] / 60:.1f} min wall for this invocation, which trained {trained} of "
        f"{len(runs)} runs ({len(runs) - trained} reused from an earlier one; the runs' own training loops sum to "
        f"{sum(r['train_seconds'] for r in runs) / 60:.1f} min), with {s['jobs']} process"
        f"{'es' if s['jobs'] > 1 else ''} of {s['threads']} torch thread{'s' if s['threads'] > 1 else ''}; 1-minute "
        f"load average {load['before']} before, {load['after']} after (the machine is shared: other jobs ran too).",
        "",
    ]
    if report.get("command"):
        lines[2:2] = [f"Command: `{report['command']}`", ""]
    for kind, title in (("method", "Methods"), ("feature ablation", "Feature ablations (fft prompts shallow)")):
        rows = [r for r in report["summary"] if r["kind"] == kind]
        if not rows:
            continue
        lines += [
            f"## {title}",
            "",
            "| method | trainable params | accuracy (mean ± std) | macro F1 (mean ± std) | accuracy per seed |",
            "|---|---:|---:|---:|---|",
        ]
        for r in rows:
            params = r["trainable_params"]
            params_text = f"{params:,}" if isinstance(params, int) else "/".join(f"{p:,}" for p in params)
            per_seed = ", ".join(f"{a:.3f}" for a in r["acc_per_seed"])
            lines.append(
                f"| {r['label']} | {params_text} | {r['acc_mean']:.3f} ± {r['acc_std']:.3f} "
                f"| {r['f1_mean']:.3f} ± {r['f1_std']:.3f} | {per_seed} |"
            )
        lines.append("")
    checks = goal_check(report["summary"])
    if checks:
        lines += ["## Goal: fft prompts beat VPT and VFPT by >= 10 points at no more trainable parameters", ""]
        for c in checks:
            verdict = "met" if c["met"] else "missed"
            lines.append(
                f"- {c['label']}: {c['margin'] * 100:+.1f} points over the best baseline "
                f"({LABELS[c['best_baseline']]}), {'no more' if c['no_more_params'] else 'MORE'} trainable "
                f"parameters: **{verdict}**"
            )
        lines.append("")
    if figure is not None:
        lines += [f"![test accuracy per method, mean ± std over seeds]({figure})", ""]
    lines += [
        "## Configurations",
        "",
        "Hydra overrides of each variant on top of the settings above (`fftprompt-train` with these reproduces a "
        "run; add `seed=<k>`):",
        "",
        "| variant | overrides |",
        "|---|---|",
    ]
    lines += [f"| {v['label']} | `{' '.join(v['overrides'])}` |" for v in report["variants"]]
    lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path, num_classes: int) -> Path:
    """Bar plot of mean test accuracy (± std over seeds) per variant, with the chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["summary"]
    colours = {
        name: "tab:orange" if name in OURS else ("tab:green" if name in ABLATIONS else "tab:blue")
        for name in (r["name"] for r in rows)
    }
    figure, axis = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.5))
    positions = range(len(rows))
    axis.bar(
        positions,
        [r["acc_mean"] for r in rows],
        yerr=[r["acc_std"] for r in rows],
        color=[colours[r["name"]] for r in rows],
        capsize=3,
    )
    axis.axhline(1.0 / num_classes, color="grey", linestyle="--", linewidth=1, label="chance")
    axis.set_xticks(list(positions), [r["label"] for r in rows], rotation=40, ha="right", fontsize=8)
    axis.set_ylabel("test accuracy")
    axis.set_ylim(0, 1)
    axis.set_title(f"symmetry benchmark, mean ± std over {len(report['settings']['seeds'])} seeds")
    axis.legend(loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_outputs(report: dict[str, Any], output: Path, doc: Path | None) -> list[Path]:
    """Writes ``ablation.json``, ``ablation.md`` and ``ablation.png`` to ``output`` (and the markdown + figure at
    ``doc``); returns the paths written."""
    output.mkdir(parents=True, exist_ok=True)
    num_classes = max(len(report["settings"]["classes"]), 2)
    written = [output / "ablation.json", output / "ablation.md", plot(report, output / "ablation.png", num_classes)]
    written[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written[1].write_text(format_markdown(report, "ablation.png"), encoding="utf-8")
    if doc is not None:
        figure = doc.with_suffix(".png")
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(format_markdown(report, figure.name), encoding="utf-8")
        written += [doc, plot(report, figure, num_classes)]
    return written


def _names(text: str, allowed: Sequence[str], option: str, parser: argparse.ArgumentParser) -> list[str]:
    if text.strip().lower() == "none":
        return []
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in allowed]
    if bad:
        parser.error(f"{option} {bad}: expected a comma-separated subset of {list(allowed)} (or none)")
    return names


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fftprompt-ablate",
        description=__doc__.split("\n\n")[0],
        epilog="Trailing arguments are Hydra overrides of the train config, e.g. trainer.max_epochs=3 "
        "data.num_train=500; they are applied after the variant's own overrides.",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {METHODS}, or none")
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help=f"subset of {ABLATIONS}, or none")
    parser.add_argument("--quick", action="store_true", help="tiny ViT, 32 px, a few dozen images, 1 epoch (tests)")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {FULL_EPOCHS} ({QUICK_EPOCHS} with --quick)")
    parser.add_argument("--budget", type=int, default=None, help="prompt/adapter parameter budget (default 10*L*D)")
    parser.add_argument("--output", default="runs/ablation", help="folder of the run directories and the results")
    parser.add_argument("--doc", default=None, help="also write the markdown here (figure next to it, .png)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads per process (1: these small models gain little from more, and on a shared "
        "machine a second thread mostly waits for a core)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel by worker processes")
    parser.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)  # worker I of N: every N-th run from I
    parser.add_argument("--runs-only", action="store_true", help=argparse.SUPPRESS)  # worker: train, write nothing
    parser.add_argument("--rerun", action="store_true", help="train again even when a finished run matches")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config")
    args = parser.parse_args(list(argv))
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers such as 0,1,2")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: expected at least one seed, without repeats")
    args.methods = _names(args.methods, METHODS, "--methods", parser)
    args.ablations = _names(args.ablations, ABLATIONS, "--ablations", parser)
    if not args.methods and not args.ablations:
        parser.error("nothing to run: --methods and --ablations are both empty")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.budget is not None and args.budget < 1:
        parser.error("--budget must be >= 1")
    if args.threads < 1 or args.jobs < 1:
        parser.error("--threads and --jobs must be >= 1")
    try:
        shard, shards = (int(v) for v in args.shard.split("/"))
    except ValueError:
        parser.error(f"--shard {args.shard!r}: expected I/N")
    if not 0 <= shard < shards:
        parser.error(f"--shard {args.shard!r}: expected 0 <= I < N")
    args.shard = (shard, shards)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides {bad}: expected Hydra overrides such as trainer.max_epochs=3")
    return args


def _worker_command(args: argparse.Namespace, shard: int) -> list[str]:
    command = [sys.executable, "-m", "fftprompt.ablate", "--runs-only", "--shard", f"{shard}/{args.jobs}"]
    command += ["--seeds", ",".join(map(str, args.seeds)), "--methods", ",".join(args.methods) or "none"]
    command += ["--ablations", ",".join(args.ablations) or "none", "--output", str(args.output)]
    command += ["--threads", str(args.threads)]
    command += ["--quick"] * args.quick + ["--rerun"] * args.rerun
    command += [] if args.epochs is None else ["--epochs", str(args.epochs)]
    command += [] if args.budget is None else ["--budget", str(args.budget)]
    return [*command, *args.overrides]


def _run_workers(args: argparse.Namespace) -> frozenset[str]:
    """Trains the runs in ``args.jobs`` worker processes (logs in ``<output>/logs``); returns the run directories
    whose ``metrics.json`` they wrote."""
    import subprocess

    runs = Path(args.output).resolve() / "runs"
    before = {str(p.parent): p.stat().st_mtime_ns for p in runs.glob("*/seed*/metrics.json")}
    logs = Path(args.output).resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for shard in range(args.jobs):
        log = (logs / f"worker{shard}.log").open("w", encoding="utf-8")
        processes.append((subprocess.Popen(_worker_command(args, shard), stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for shard, (process, log) in enumerate(processes):
        if process.wait() != 0:
            failed.append(f"worker {shard} exited with {process.returncode} (see {log.name})")
        log.close()
    if failed:
        raise RuntimeError("; ".join(failed))
    after = {str(p.parent): p.stat().st_mtime_ns for p in runs.glob("*/seed*/metrics.json")}
    return frozenset(run for run, stamp in after.items() if before.get(run) != stamp)


def main(argv: Sequence[str] | None = None) -> int:
    """``fftprompt-ablate``: runs the ablation and writes the tables and the plot."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    start, load_before = time.perf_counter(), _load_average()
    trained: frozenset[str] = frozenset()
    if args.jobs > 1 and not args.runs_only:
        trained = _run_workers(args)
        args.rerun = False  # the workers trained what was asked; this process only collects
    report = run_ablation(args, trained)
    if args.runs_only:
        return 0
    report["wall_seconds"] = time.perf_counter() - start
    report["load_average"]["before"] = load_before
    report["command"] = shlex.join(["fftprompt-ablate", *(sys.argv[1:] if argv is None else argv)])
    written = write_outputs(report, Path(args.output).resolve(), None if args.doc is None else Path(args.doc))
    print(format_markdown(report, figure=None))
    print("written: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
