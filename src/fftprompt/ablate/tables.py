"""The ablation's results: per-variant statistics over seeds, the goal check, the markdown report and the bar plot.

Output files: ``ablation.json`` (settings, every run's metrics), ``ablation.md`` (mean +- sample std over seeds of
test accuracy and macro F1, trainable parameters, the goal check) and ``ablation.png`` (bar plot).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fftprompt.ablate.plan import ABLATIONS, LABELS, Variant
from fftprompt.tables import format_mean_std, markdown_table, mean_std
from fftprompt.utils import write_section

__all__ = ["METRIC_NAMES", "TASK_METRICS", "format_markdown", "goal_check", "plot", "summarise", "write_outputs"]

OURS = ("fft_shallow", "fft_deep", "fft_fourierft")
BASELINES = ("vpt_shallow", "vpt_deep", "vfpt")
SECTION = "ablation"  # of the --doc file
GOAL_MARGIN = 0.10  # fft prompts beat VPT and VFPT by at least 10 points of accuracy (mean of the seeds)


# the test metrics a report states per task: (primary, secondary); METRIC_NAMES: their short names in summaries
TASK_METRICS = {"classification": ("test/acc", "test/f1_macro"), "segmentation": ("test/dice", "test/miou")}
METRIC_NAMES = {"test/acc": "acc", "test/f1_macro": "f1", "test/dice": "dice", "test/miou": "miou"}


def summarise(
    variants: Sequence[Variant], runs: Sequence[dict[str, Any]], metrics: Sequence[str] = TASK_METRICS["classification"]
) -> list[dict[str, Any]]:
    """Per variant: mean and sample std over seeds of each test metric (``acc_mean``, ``f1_std``, ``dice_mean``,
    ... as :data:`METRIC_NAMES` names them), each seed's value (``<name>_per_seed``) and the trainable parameters."""
    rows = []
    for variant in variants:
        own = [r for r in runs if r["variant"] == variant.name]
        params = sorted({r["trainable_params"] for r in own})
        row: dict[str, Any] = {
            "name": variant.name,
            "label": variant.label,
            "kind": variant.kind,
            "trainable_params": params[0] if len(params) == 1 else params,
        }
        for key in metrics:
            short = METRIC_NAMES[key]
            row[f"{short}_mean"], row[f"{short}_std"] = mean_std([r[key] for r in own])
            row[f"{short}_per_seed"] = [r[key] for r in own]
        row["seeds"] = [r["seed"] for r in own]
        rows.append(row)
    return rows


def goal_check(summary: Sequence[dict[str, Any]], metric: str = "acc") -> list[dict[str, Any]]:
    """For every fft method present: its margin in ``<metric>_mean`` over the best of VPT shallow/deep and VFPT, and
    the parameter test."""
    by_name = {row["name"]: row for row in summary}
    baselines = [by_name[name] for name in BASELINES if name in by_name]
    if not baselines:
        return []
    best = max(baselines, key=lambda row: row[f"{metric}_mean"])
    checks = []
    for name in OURS:
        if name not in by_name:
            continue
        row = by_name[name]
        fewer = all(_params(row) <= _params(b) for b in baselines)
        margin = row[f"{metric}_mean"] - best[f"{metric}_mean"]
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


_RANDOM_SEEDS = " (each seed also draws the random backbone)"


def _weights(settings: dict[str, Any]) -> str:
    """How the frozen backbone was initialised (reports written before weights were recorded were random)."""
    weights = settings.get("backbone_weights")
    return f"`{weights}`-pretrained" if weights else "randomly initialised"


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
        f"{s['num_test']} test images; frozen {_weights(s)} `{s['backbone']}` (L={b['num_layers']} blocks, "
        f"D={b['embed_dim']}); {s['epochs']} epochs, batch {s['batch_size']}, the default optimiser settings of "
        f"`task/classification.yaml`; final weights tested (no validation-based selection); seeds "
        f"{', '.join(map(str, s['seeds']))}{'' if s.get('backbone_weights') else _RANDOM_SEEDS}. Overrides: "
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
        lines += [f"## {title}", ""]
        header = ["method", "trainable params", "accuracy (mean ± std)", "macro F1 (mean ± std)", "accuracy per seed"]
        table = []
        for r in rows:
            params = r["trainable_params"]
            params_text = f"{params:,}" if isinstance(params, int) else "/".join(f"{p:,}" for p in params)
            per_seed = ", ".join(f"{a:.3f}" for a in r["acc_per_seed"])
            accuracy, f1 = format_mean_std(r["acc_mean"], r["acc_std"]), format_mean_std(r["f1_mean"], r["f1_std"])
            table.append([r["label"], params_text, accuracy, f1, per_seed])
        lines += [*markdown_table(header, table, ["l", "r", "r", "r", "l"]), ""]
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
    ]
    lines += markdown_table(
        ["variant", "overrides"], [[v["label"], f"`{' '.join(v['overrides'])}`"] for v in report["variants"]]
    )
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
    ``doc``: its section :data:`SECTION`, text outside it kept); returns the paths written."""
    output.mkdir(parents=True, exist_ok=True)
    num_classes = max(len(report["settings"]["classes"]), 2)
    written = [output / "ablation.json", output / "ablation.md", plot(report, output / "ablation.png", num_classes)]
    written[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written[1].write_text(format_markdown(report, "ablation.png"), encoding="utf-8")
    if doc is not None:
        figure = doc.with_suffix(".png")
        written += [
            write_section(doc, SECTION, format_markdown(report, figure.name)),
            plot(report, figure, num_classes),
        ]
    return written
