"""The comparison's results across settings: per-dataset tables (formula-pretrained vs random backbone), the few-shot
curve, the goal checks, ``comparison.{json,md,png}`` and the section of ``--doc``.

Input: one :func:`~fftprompt.ablate.runner.run_ablation` report per setting (``settings.dataset``,
``settings.backbone_init``, ``settings.shots`` say which), each with its per-variant ``summary``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fftprompt.ablate.paired import paired_rows
from fftprompt.ablate.plan import LABELS
from fftprompt.ablate.tables import BASELINES, OURS, goal_check
from fftprompt.tables import format_mean_std, markdown_table
from fftprompt.utils import write_json_atomic, write_section

__all__ = [
    "PROBE_LIFT_GOAL",
    "SECTION",
    "TUNED_SECTION",
    "format_comparison",
    "plot_comparison",
    "standard_error",
    "write_comparison",
]

SECTION = "real-data comparison"
TUNED_SECTION = "tuned comparison"
PROBE_LIFT_GOAL = 0.15  # the pretrained backbone lifts the linear probe on DTD by >= 15 points (mean of the seeds)
DATASET_NAMES = {
    "generated": "generated symmetry benchmark",
    "dtd": "DTD (dtd_300: 5 classes x 120 real images)",
    "breastmnist": "BreastMNIST (full npz: breast ultrasound, benign/normal vs malignant)",
    "isbi": "ISBI 2012 EM membranes (30 slices, membranes = class 1)",
    "kvasir": "Kvasir-SEG (the sample's 5 polyp images)",
}
# the two metrics of a task's tables: (summary name, column title)
_COLUMNS = {
    "classification": (("acc", "accuracy"), ("f1", "macro F1")),
    "segmentation": (("dice", "Dice"), ("miou", "mIoU")),
}
DATASET_ORDER = ["generated", "dtd", "breastmnist", "isbi", "kvasir"]


def _task(report: dict[str, Any]) -> str:
    return report["settings"].get("task", "classification")


def standard_error(p: float, n: int) -> float:
    """Binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` on ``n`` independent test images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


_Key = tuple[str, str, "int | None"]


def _index(reports: Sequence[dict[str, Any]]) -> dict[_Key, dict[str, Any]]:
    return {(r["settings"]["dataset"], r["settings"]["backbone_init"], r["settings"]["shots"]): r for r in reports}


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report["summary"] if row["kind"] == "method"}


def _params(row: dict[str, Any]) -> str:
    value = row["trainable_params"]
    return f"{value:,}" if isinstance(value, int) else "/".join(f"{v:,}" for v in value)


def _order(values: Sequence[Any], preferred: Sequence[Any]) -> list[Any]:
    return [v for v in preferred if v in values] + [v for v in values if v not in preferred]


def _dataset_table(index: dict[_Key, dict[str, Any]], dataset: str, backbones: Sequence[str]) -> list[str]:
    per_backbone = {b: _rows(index[(dataset, b, None)]) for b in backbones if (dataset, b, None) in index}
    reports = {b: index[(dataset, b, None)] for b in per_backbone}
    (first_metric, first_title), (second_metric, second_title) = _COLUMNS[_task(next(iter(reports.values())))]
    names = list(next(iter(per_backbone.values())))
    header = ["method", "trainable params"]
    for backbone in per_backbone:
        header += [f"{backbone}: {first_title}", f"{backbone}: {second_title}"]
    pair = all(b in per_backbone for b in ("pretrained", "random"))
    header += ["pretrained − random (points)"] if pair else []
    table = []
    for name in names:
        first = next(iter(per_backbone.values()))[name]
        row = [LABELS[name], _params(first)]
        for rows in per_backbone.values():
            row += [format_mean_std(rows[name][f"{first_metric}_mean"], rows[name][f"{first_metric}_std"])]
            row += [format_mean_std(rows[name][f"{second_metric}_mean"], rows[name][f"{second_metric}_std"])]
        if pair:
            lift = (
                per_backbone["pretrained"][name][f"{first_metric}_mean"]
                - per_backbone["random"][name][f"{first_metric}_mean"]
            )
            row.append(f"{lift * 100:+.1f}")
        table.append(row)
    references = {b: {r["name"]: r for r in report.get("reference", [])} for b, report in reports.items()}
    for name in next((list(refs) for refs in references.values() if refs), []):
        any_row = next(refs[name] for refs in references.values() if name in refs)
        row = [f"*reference:* {any_row['label']}", f"{any_row['trainable_params']:,}"]
        for backbone in per_backbone:
            ref = references[backbone].get(name)
            row += ["–", "–"] if ref is None else [f"{ref['acc']:.3f}", f"{ref['f1']:.3f}"]
        if pair:
            both = [references[b].get(name) for b in ("pretrained", "random")]
            row.append("–" if None in both else f"{(both[0]['acc'] - both[1]['acc']) * 100:+.1f}")
        table.append(row)
    return markdown_table(header, table, ["l"] + ["r"] * (len(header) - 1))


def _standard_error_line(report: dict[str, Any]) -> str | None:
    """The test set's standard error at the best accuracy of the setting (methods and reference rows)."""
    if _task(report) != "classification":
        return None
    scores = [(row["acc_mean"], LABELS[row["name"]]) for row in _rows(report).values()]
    scores += [(ref["acc"], ref["label"]) for ref in report.get("reference", [])]
    best, label = max(scores)
    n = report["settings"]["num_test"]
    return (
        f"Test standard error ({report['settings']['backbone_init']} backbone): sqrt(p(1-p)/n) = "
        f"{standard_error(best, n):.3f} at the best accuracy p = {best:.3f} ({label}), n = {n} test images."
    )


def _paired_table(report: dict[str, Any]) -> list[str]:
    """Every row's accuracy difference to the validation-chosen frequency method, with its paired standard error
    (:mod:`.paired`); empty without per-image outcomes."""
    rows = paired_rows(report)
    if not rows:
        return []
    anchor = next(row for row in rows if row["anchor"])
    n = report["settings"]["num_test"]
    lines = [
        f"Paired on the same {n} test images ({report['settings']['backbone_init']} backbone), against "
        f"**{anchor['label']}** (of the frequency-prompt methods, the best mean validation score of its final runs): "
        "per image, the share of a row's seeds that are right minus the anchor's; the mean is the difference of the "
        "accuracies, its standard error the paired one, std/sqrt(n), and the interval ± 1.96 of it (in points).",
        "",
    ]
    table = []
    for row in rows:
        label = f"*reference:* {row['label']}" if row["reference"] else row["label"]
        if row["anchor"]:
            table.append([label, f"{row['acc']:.3f}", "anchor", "", ""])
            continue
        low, high = (row["difference"] + sign * 1.96 * row["se"] for sign in (-1, 1))
        table.append(
            [
                label,
                f"{row['acc']:.3f}",
                f"{row['difference'] * 100:+.1f}",
                f"{row['se'] * 100:.1f}",
                f"[{low * 100:+.1f}, {high * 100:+.1f}]",
            ]
        )
    header = ["row", "accuracy", "difference", "paired SE", "95% interval"]
    return lines + markdown_table(header, table, ["l", "r", "r", "r", "r"])


def _tuning_table(report: dict[str, Any]) -> list[str]:
    """Every trial of every variant: its validation score and chosen epoch; the chosen trial in bold."""
    tuning = report.get("tuning")
    if not tuning:
        return []
    trial_names = [t["trial"] for t in next(iter(tuning.values()))["trials"]]
    header = ["method", *trial_names, "chosen", "final runs' best epochs"]
    table = []
    finals = {}
    for run in report["runs"]:
        finals.setdefault(run["variant"], []).append(run.get("epoch"))
    for name, entry in tuning.items():
        cells = []
        for i, trial in enumerate(entry["trials"]):
            score = "–" if trial["val_score"] is None else f"{trial['val_score']:.3f}"
            text = f"{score} (ep {trial['epoch']})"
            cells.append(f"**{text}**" if i == entry["chosen"] else text)
        epochs = ", ".join(str(e) for e in finals.get(name, []))
        table.append([LABELS[name], *cells, entry["trials"][entry["chosen"]]["trial"], epochs])
    return markdown_table(header, table, ["l"] + ["r"] * (len(header) - 1))


def _few_shot_table(index: dict[_Key, dict[str, Any]], dataset: str, backbones: Sequence[str]) -> list[str]:
    shots = sorted({k[2] for k in index if k[0] == dataset and k[2] is not None})
    columns = [(b, k) for b in backbones for k in (*shots, None) if (dataset, b, k) in index]
    if not shots or not columns:
        return []
    header = ["method"]
    for backbone, k in columns:
        train = index[(dataset, backbone, k)]["settings"]["num_train"]
        header.append(f"{backbone}, {k if k else 'all'} per class ({train} images)")
    names = list(_rows(index[(dataset, *columns[0])]))
    table = []
    for name in names:
        row = [LABELS[name]]
        for key in columns:
            summary = _rows(index[(dataset, *key)])[name]
            row.append(format_mean_std(summary["acc_mean"], summary["acc_std"]))
        table.append(row)
    return markdown_table(header, table, ["l"] + ["r"] * len(columns))


def goals(reports: Sequence[dict[str, Any]]) -> list[str]:
    """The goal lines: the DTD linear-probe lift, every method above chance, fft prompts against VPT/VFPT."""
    index = _index(reports)
    lines = []
    pretrained, random = index.get(("dtd", "pretrained", None)), index.get(("dtd", "random", None))
    if pretrained and random:
        lift = _rows(pretrained)["linear_probe"]["acc_mean"] - _rows(random)["linear_probe"]["acc_mean"]
        verdict = "met" if round(lift, 9) >= PROBE_LIFT_GOAL else "missed"
        lines.append(
            f"- Linear probe on DTD, pretrained − random: {lift * 100:+.1f} points (mean of "
            f"{len(pretrained['settings']['seeds'])} seeds; goal >= {PROBE_LIFT_GOAL * 100:.0f}): **{verdict}**"
        )
    for (dataset, backbone, shots), report in index.items():
        if backbone != "pretrained" or shots is not None:
            continue
        rows = _rows(report)
        if _task(report) != "classification":
            for check in goal_check(report["summary"], "dice"):
                word = "beats" if check["margin"] > 0 else "trails"
                lines.append(
                    f"- {DATASET_NAMES[dataset]}: {check['label']} {word} the best of VPT/VFPT "
                    f"({LABELS[check['best_baseline']]}) by {abs(check['margin']) * 100:.1f} points of Dice"
                )
            continue
        floor = report["settings"]["majority_fraction"]
        below = [LABELS[n] for n, r in rows.items() if r["acc_mean"] <= floor]
        status = "every method above it" if not below else "at or below it: " + ", ".join(below)
        lines.append(
            f"- {DATASET_NAMES[dataset]}, pretrained: chance (the majority class's share of the test split) is "
            f"{floor:.3f}; {status}"
        )
        for check in goal_check(report["summary"]):
            word = "beats" if check["margin"] > 0 else "trails"
            lines.append(
                f"  - {check['label']} {word} the best of VPT/VFPT ({LABELS[check['best_baseline']]}) by "
                f"{abs(check['margin']) * 100:.1f} points"
                + ("" if check["no_more_params"] else " (with MORE trainable parameters)")
            )
    return lines


def format_comparison(reports: Sequence[dict[str, Any]], meta: dict[str, Any], figure: str | None) -> str:
    """The comparison as a markdown section (``##`` title): settings, one table per dataset, the few-shot table,
    the goal lines, the overrides."""
    index = _index(reports)
    first = reports[0]
    s, b = first["settings"], first["budget"]
    datasets = _order(sorted({k[0] for k in index}, key=str), DATASET_ORDER)
    tuned = meta.get("protocol") == "tuned"
    backbones = _order(sorted({k[1] for k in index}), ["pretrained", "random"])
    runs = [run for report in reports for run in report["runs"]]
    trained = sum(not r["reused"] for r in runs)
    trials = [t for r in reports for entry in r.get("tuning", {}).values() for t in entry["trials"]]
    weights = next((r["settings"]["backbone_weights"] for r in reports if r["settings"]["backbone_weights"]), None)
    if tuned:
        grid = meta["grid"]
        protocol = (
            f"**tuned**: every method gets the same grid of {len(grid['lr_scales']) * len(grid['weight_decays'])} "
            f"trials (its own learning rates scaled by {', '.join(f'{v:g}' for v in grid['lr_scales'])} x weight "
            f"decay {', '.join(f'{v:g}' for v in grid['weight_decays'])}), each trained on the training split "
            f"(seed {s['seeds'][0]}) with the validation loop on; the trial and the epoch with the best validation "
            "score are chosen (validation only; the trials never read the test split); the chosen setting is trained "
            "with every seed and its best-validation checkpoint tested once"
        )
    else:
        protocol = "the default optimiser settings; final weights tested (no validation-based selection)"
    lines = [
        "## Real images, tuned on validation: every method with the same tuning budget"
        if tuned
        else "## Real images: the methods with a formula-pretrained and a random backbone",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Frozen `{s['backbone']}` (L={b['num_layers']} blocks, D={b['embed_dim']}): "
        + (
            f"**pretrained** = the `{weights}` weights (pretrained by this project on rendered images, no natural "
            "images; [pretraining.md](pretraining.md)), "
            if weights
            else ""
        )
        + "**random** = the ViT randomly initialised from each run's seed (`backbone.checkpoint_path=null`). Every "
        f"method at "
        f"most {b['budget']:,} trainable parameters besides the head, sized as in the ablation above; seeds "
        f"{', '.join(map(str, s['seeds']))}; {protocol}. Mean ± sample std over the seeds; the seeds change the "
        "training (and the random backbone), not the splits or the few-shot images (`data.seed=0`). *Reference* "
        "rows (`fftprompt-probe`'s functional core on the same train / val / test split: linear heads fitted by "
        "L-BFGS, k-NN; weight decay and k chosen on validation, test read once) are deterministic: computed once, "
        "no seeds (with the random backbone: the ViT of the first seed).",
        "",
        f"Time: {meta['wall_seconds'] / 60:.1f} min wall for this invocation, which trained {trained} of {len(runs)} "
        f"runs ({len(runs) - trained} reused; their training loops sum to "
        f"{sum(r['train_seconds'] for r in runs) / 60:.1f} min"
        + (
            f"; and {sum(not t['reused'] for t in trials)} of {len(trials)} tuning trials, "
            f"{sum(t['train_seconds'] for t in trials) / 60:.1f} min"
            if trials
            else ""
        )
        + f"), with {s['jobs']} process"
        f"{'es' if s['jobs'] > 1 else ''} of {s['threads']} torch thread{'s' if s['threads'] > 1 else ''}; 1-minute "
        f"load average {meta['load_before']} before, {meta['load_after']} after (shared machine).",
        "",
    ]
    data_rows = []
    for dataset in datasets:
        for shots in sorted({k[2] for k in index if k[0] == dataset}, key=lambda k: (k is not None, k or 0)):
            report = next(index[(dataset, bb, shots)] for bb in backbones if (dataset, bb, shots) in index)
            rs = report["settings"]
            backbone_free = [o for o in rs["overrides"] if not o.startswith("backbone.")]
            data_rows.append(
                [
                    DATASET_NAMES[dataset] + ("" if shots is None else f", {shots} per class"),
                    f"{rs['num_train']} / {rs.get('num_val', '?')} / {rs['num_test']}",
                    len(rs["classes"]),
                    f"{rs['majority_fraction']:.3f}",
                    rs["image_size"],
                    rs["epochs"],
                    f"`{' '.join(backbone_free).replace(meta.get('data_root') or '//', '<data-root>')}`",
                ]
            )
    if meta.get("data_root"):
        lines += ["`<data-root>`: the folder holding `dtd_300/` (DTD's layout) and `medmnist/breastmnist.npz`.", ""]
    lines += markdown_table(
        ["data", "train / val / test images", "classes", "majority class (pixels)", "px", "epochs", "overrides"],
        data_rows,
        ["l", "r", "r", "r", "r", "r", "l"],
    )
    lines.append("")
    for dataset in datasets:
        if not any((dataset, bb, None) in index for bb in backbones):
            continue
        first = next(index[(dataset, bb, None)] for bb in backbones if (dataset, bb, None) in index)
        titles = " and ".join(title for _, title in _COLUMNS[_task(first)])
        lines += [f"### {DATASET_NAMES[dataset]}: test {titles}", ""]
        lines += [*_dataset_table(index, dataset, backbones), ""]
        for backbone in backbones:
            report = index.get((dataset, backbone, None))
            line = None if report is None else _standard_error_line(report)
            lines += [] if line is None else [line, ""]
            paired = [] if report is None else _paired_table(report)
            lines += [*paired, ""] if paired else []
        for backbone in backbones:
            report = index.get((dataset, backbone, None))
            trials = [] if report is None else _tuning_table(report)
            if trials:
                monitor = next(iter(report["tuning"].values()))["monitor"]
                lines += [
                    f"Tuning, {backbone} backbone: best validation {monitor} of each trial (epoch counted from 0); "
                    "the chosen trial in bold.",
                    "",
                    *trials,
                    "",
                ]
        few = _few_shot_table(index, dataset, backbones)
        if few:
            lines += [f"### Few-shot: {DATASET_NAMES[dataset]}, test accuracy by training images per class", ""]
            lines += [
                "Each few-shot run sees as many training images as the run with all of them (its epochs scaled up).",
                "",
                *few,
                "",
            ]
    goal_lines = goals(reports)
    if goal_lines:
        lines += ["### Goals and margins", "", *goal_lines, ""]
    if figure is not None:
        lines += [f"![test accuracy per method and setting, mean ± std over seeds]({figure})", ""]
    lines += [
        "Each run is `fftprompt-train` with the data overrides above, the method's overrides (the ablation's "
        "configurations table), `seed=<k>`, and `backbone.checkpoint_path=null` for the random backbone.",
        "",
    ]
    return "\n".join(lines)


def plot_comparison(reports: Sequence[dict[str, Any]], path: Path) -> Path:
    """One panel per dataset (bars: accuracy per method, pretrained and random, ± std, chance line) and one per
    few-shot dataset (accuracy against training images per class, pretrained)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = _index(reports)
    datasets = _order(sorted({k[0] for k in index if k[2] is None}), DATASET_ORDER)
    few_shot = sorted({k[0] for k in index if k[2] is not None})
    panels = len(datasets) + len(few_shot)
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.8), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=False):
        backbones = [bb for bb in ("pretrained", "random") if (dataset, bb, None) in index]
        names = list(_rows(index[(dataset, backbones[0], None)]))
        (metric, title), _ = _COLUMNS[_task(index[(dataset, backbones[0], None)])]
        width = 0.8 / len(backbones)
        for j, backbone in enumerate(backbones):
            rows = _rows(index[(dataset, backbone, None)])
            axis.bar(
                [i + j * width for i in range(len(names))],
                [rows[n][f"{metric}_mean"] for n in names],
                width,
                yerr=[rows[n][f"{metric}_std"] for n in names],
                capsize=2,
                label=backbone,
                color="tab:orange" if backbone == "pretrained" else "tab:grey",
            )
        if metric == "acc":
            floor = index[(dataset, backbones[0], None)]["settings"]["majority_fraction"]
            axis.axhline(floor, color="black", linestyle="--", linewidth=1, label="majority class")
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], [LABELS[n] for n in names])
        axis.tick_params(axis="x", labelrotation=45, labelsize=7)
        axis.set_ylim(0, 1)
        axis.set_title(dataset, fontsize=10)
        axis.set_ylabel(f"test {title}")
        axis.legend(fontsize=7, loc="upper left")
    for axis, dataset in zip(axes[0][len(datasets) :], few_shot, strict=False):
        backbone = "pretrained" if any(k[1] == "pretrained" for k in index) else next(iter(index))[1]
        keys = sorted((k for k in index if k[0] == dataset and k[1] == backbone), key=lambda k: k[2] or 10**9)
        for name in [n for n in (*BASELINES, *OURS, "linear_probe", "fourierft") if n in _rows(index[keys[0]])]:
            sizes = [index[k]["settings"]["num_train"] // len(index[k]["settings"]["classes"]) for k in keys]
            axis.plot(sizes, [_rows(index[k])[name]["acc_mean"] for k in keys], marker="o", label=LABELS[name])
        axis.set_xscale("log")
        axis.set_xticks(sizes, [str(size) for size in sizes])
        axis.minorticks_off()
        axis.set_xlabel(f"training images per class ({backbone} backbone)")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"{dataset}: few-shot", fontsize=10)
        axis.legend(fontsize=6)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def write_comparison(
    reports: Sequence[dict[str, Any]], meta: dict[str, Any], output: Path, doc: Path | None
) -> list[Path]:
    """Writes ``comparison.json``, ``comparison.md`` and ``comparison.png`` to ``output`` (``comparison_tuned.*``
    for the tuned protocol), and (with ``doc``) the section :data:`SECTION` (:data:`TUNED_SECTION`) of ``doc`` with
    its figure ``<doc stem>_comparison[_tuned].png`` next to it."""
    output.mkdir(parents=True, exist_ok=True)
    stem = "comparison_tuned" if meta.get("protocol") == "tuned" else "comparison"
    section = TUNED_SECTION if meta.get("protocol") == "tuned" else SECTION
    written = [write_json_atomic(output / f"{stem}.json", {**meta, "settings": list(reports)})]
    written.append(plot_comparison(reports, output / f"{stem}.png"))
    markdown = format_comparison(reports, meta, f"{stem}.png")
    written.append(output / f"{stem}.md")
    written[-1].write_text(markdown, encoding="utf-8")
    if doc is not None:
        figure = doc.with_name(f"{doc.stem}_{stem}.png")
        written += [write_section(doc, section, format_comparison(reports, meta, figure.name))]
        written.append(plot_comparison(reports, figure))
    return written
