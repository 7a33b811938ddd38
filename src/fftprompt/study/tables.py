"""The study's results: statistics over seeds, the goal check and the markdown of ``docs/robustness.md``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from fftprompt.methods import METHOD_LABELS
from fftprompt.tables import format_mean_std

__all__ = ["DISCUSSION", "format_markdown", "goal_check", "summarise"]

DISCUSSION = "## Discussion"  # a hand-written section under this heading survives a rewrite of the document
GOAL_GAIN, GOAL_LOSS = 0.05, 0.01  # cross-domain gain of at least 5 points, in-domain loss of at most 1 point
AUGMENT_LABELS = {"none": "none", "fda": "FDA", "amp_mix": "amplitude mix", "band": "band filter"}
DATASET_LABELS = {"shift": "shift benchmark", "dtd": "DTD (dtd_300)", "breastmnist": "BreastMNIST"}


def _stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN when a value is missing)."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method, augment): mean and std over seeds of every accuracy."""
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["dataset"], r["method"], r["augment"]) for r in records))
    for dataset, method, augment in keys:
        own = [r for r in records if (r["dataset"], r["method"], r["augment"]) == (dataset, method, augment)]
        row: dict[str, Any] = {"dataset": dataset, "method": method, "augment": augment, "seeds": len(own)}
        row["in_domain"] = _stats([r["in_domain"] for r in own])
        row["in_domain_auroc"] = _stats([r.get("in_domain_auroc", float("nan")) for r in own])
        if own[0]["domains"]:
            for name in own[0]["domains"]:
                row[f"domain/{name}"] = _stats([r["domains"][name] for r in own])
            row["cross_domain"] = _stats([statistics.fmean(r["domains"].values()) for r in own])
        row["corruption_mean"] = _stats([r["corruption_mean"] for r in own])
        row["corruption_drop"] = _stats([r["corruption_drop"] for r in own])
        row["trainable_params"] = own[0]["trainable_params"]
        rows.append(row)
    return rows


def goal_check(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and augmentation on the shift benchmark: cross-domain gain and in-domain change against none."""
    by_key = {(r["dataset"], r["method"], r["augment"]): r for r in rows}
    checks = []
    for (dataset, method, augment), row in by_key.items():
        base = by_key.get((dataset, method, "none"))
        if dataset != "shift" or augment == "none" or base is None or "cross_domain" not in row:
            continue
        gain = row["cross_domain"][0] - base["cross_domain"][0]
        change = row["in_domain"][0] - base["in_domain"][0]
        met = round(gain, 9) >= GOAL_GAIN and round(change, 9) >= -GOAL_LOSS
        checks.append({"method": method, "augment": augment, "gain": gain, "in_change": change, "met": met})
    return checks


def _no_op_note(records: Sequence[dict[str, Any]]) -> str:
    """Which corruptions left the images unchanged at a dataset's image size (not tested, not averaged)."""
    found: dict[str, set[str]] = {}
    for record in records:
        for name, row in record.get("corruptions", {}).items():
            for severity, value in row.items():
                if value is None:
                    found.setdefault(record["dataset"], set()).add(f"{name} {severity}")
    if not found:
        return ""
    listed = "; ".join(f"{dataset}: {', '.join(sorted(items))}" for dataset, items in found.items())
    return (
        f" No-ops at the image size, not tested and left out of *corrupted* and *drop* ({listed}): they change no "
        "pixel by half an 8-bit level."
    )


def _cell(stat: tuple[float, float]) -> str:
    return format_mean_std(*stat)


def format_markdown(report: dict[str, Any]) -> str:
    """The study as markdown (everything up to the hand-written discussion)."""
    s = report["settings"]
    rows = report["summary"]
    trained = sum(not r["reused"] for r in report["runs"])
    lines = [
        "# Robustness: domain shift and corruptions, with and without frequency-domain augmentation",
        "",
        f"Command: `{report['command']}`",
        "",
        "**Backbone: the randomly initialised demo ViT** (`vit_demo_patch8`: 4 blocks of width 96, 8 px patches, "
        "drawn from each run's seed). This project has no pretrained weights yet (nothing can be downloaded where it "
        "is tested), so these numbers say how the augmentations interact with prompts and deltas on random "
        "features, not how they do on a pretrained ViT-B/16.",
        "",
        f"Settings: {s['image_size']} px images, {s['epochs']} epochs, batch 64 (shift) / 32 (real data), the "
        "default optimiser settings of `task/classification.yaml`, final weights tested (no validation-based "
        f"selection); seeds {', '.join(map(str, s['seeds']))} (each seed also draws the random backbone); methods "
        f"{', '.join(METHOD_LABELS[m] for m in s['methods'])} at their default sizes; augmentations "
        f"{', '.join(AUGMENT_LABELS[a] for a in s['augments'])} at their config defaults (`augment=fda`: beta 0.1, "
        "in-batch styles, p 0.5; `augment=amp_mix`: alpha 1, whole spectrum, p 0.5). Extra overrides: "
        f"`{' '.join(s['overrides']) or '(none)'}`.",
        "",
        "Data: **shift benchmark** = `experiment=symmetry_shift` at the CPU demo's scale (whole-image symmetry, "
        f"{s['shift_counts']}); trained in its source domain (noise and blob textures, natural colours, white "
        "pixel noise, no blur) and tested in it (*in-domain*) and in three shifted domains (`data.test_domain=`): "
        + "; ".join(f"*{k}* `{v}`" for k, v in s["domains"].items())
        + ". *Cross-domain* accuracy is the mean over the three. **DTD**: `dtd_300` (5 classes x 120 images, a "
        "seeded 1/3-1/3-1/3 split); **BreastMNIST**: the official 546/78/156 split; both have no second domain "
        "here, so they report in-domain and corruption accuracy.",
        "",
        f"Corruptions (`fftprompt-eval ... corruptions=[{','.join(s['corruptions'])}] "
        f"severities=[{','.join(map(str, s['severities']))}]`, ImageNet-C parameters, spatial ones scaled from "
        "224 px): "
        "*corrupted* is the test accuracy averaged over corruptions and severities; *drop* is (clean - corrupted) / "
        "clean." + _no_op_note(report["runs"]),
        "",
        f"Time: {report['wall_seconds'] / 60:.1f} min wall for this invocation, which trained {trained} of "
        f"{len(report['runs'])} runs (the rest reused from an earlier invocation), one process with "
        f"{s['threads']} torch thread(s), on {report['machine']}; 1-minute load average {report['load_before']} before "
        f"and {report['load_after']} after (the machine is shared with other jobs).",
        "",
    ]
    for dataset in s["datasets"]:
        own = [r for r in rows if r["dataset"] == dataset]
        if not own:
            continue
        domain_names = [k.split("/", 1)[1] for k in own[0] if k.startswith("domain/")]
        chance = report["majority"].get(dataset)
        lines += [f"## {DATASET_LABELS.get(dataset, dataset)}", ""]
        if chance is not None:
            lines += [f"Majority-class share of the test split (the accuracy of a constant answer): {chance:.3f}.", ""]
        header = ["method", "augment", "in-domain", "in-domain AUROC"]
        if domain_names:
            header += ["cross-domain", *domain_names]
        header += ["corrupted", "drop", "trainable"]
        lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
        for r in own:
            cells = [METHOD_LABELS[r["method"]], AUGMENT_LABELS[r["augment"]], _cell(r["in_domain"])]
            cells.append(_cell(r["in_domain_auroc"]))
            if domain_names:
                cells += [_cell(r["cross_domain"]), *(_cell(r[f"domain/{n}"]) for n in domain_names)]
            cells += [_cell(r["corruption_mean"]), f"{r['corruption_drop'][0]:+.1%}", f"{r['trainable_params']:,}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    checks = goal_check(rows)
    if checks:
        lines += [
            f"## Goal: fda or amp_mix raises cross-domain accuracy by >= {GOAL_GAIN * 100:.0f} points without losing "
            f"more than {GOAL_LOSS * 100:.0f} point in-domain (shift benchmark, mean of the seeds)",
            "",
        ]
        for c in checks:
            lines.append(
                f"- {METHOD_LABELS[c['method']]} + {AUGMENT_LABELS[c['augment']]}: cross-domain "
                f"{c['gain'] * 100:+.1f} points, in-domain {c['in_change'] * 100:+.1f} points: "
                f"**{'met' if c['met'] else 'missed'}**"
            )
        met = [c for c in checks if c["met"]]
        lines += ["", f"Goal {'met' if met else 'missed'} ({len(met)} of {len(checks)} combinations).", ""]
    lines += [
        "## Runs",
        "",
        "Per run (accuracy; seeds in order):",
        "",
        "| dataset | method | augment | in-domain | cross-domain | corrupted |",
        "|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((r["dataset"], r["method"], r["augment"]) for r in report["runs"]):
        own = [r for r in report["runs"] if (r["dataset"], r["method"], r["augment"]) == key]
        cross = ", ".join(f"{statistics.fmean(r['domains'].values()):.3f}" for r in own) if own[0]["domains"] else ""
        in_domain = ", ".join(f"{r['in_domain']:.3f}" for r in own)
        corrupted = ", ".join(f"{r['corruption_mean']:.3f}" for r in own)
        label = f"| {key[0]} | {METHOD_LABELS[key[1]]} | {AUGMENT_LABELS[key[2]]} |"
        lines.append(f"{label} {in_domain} | {cross} | {corrupted} |")
    lines.append("")
    return "\n".join(lines)
