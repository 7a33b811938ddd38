"""``fftprompt-compare RUN_OR_SWEEP ...``: one table of many runs, their seeds aggregated.

Every run directory under the given paths (a run, a Hydra multirun folder, an ablation's output) is read through
:mod:`fftprompt.rundir`: ``config.yaml`` and ``metrics.json``. Finished runs are grouped by the config entries whose
values differ between them, except the seed (aggregated: mean ± sample standard deviation over the ``n`` runs of a
group) and entries that only locate a run (``paths.*``, anything holding its own output directory, report
settings) or name a file or folder (absolute paths, ``*root``, ``*dir``, ``*path``: listed when they differ, grouped
only when asked with ``--by``). ``--by KEY,...`` chooses the grouping columns instead. A run moved aside by
``overwrite=true`` (``<run>.replaced-<time>``) is skipped, and a copy of a run (the same config but its paths, the
same ``metrics.json``) is counted once; the report says how many. The method (linear probe, VPT, VFPT, fft
prompts, FourierFT, ...) is labelled by :func:`fftprompt.methods.method_label` from the prompt class and the adapter,
and stands for their other entries unless those differ between runs of one method. Outputs:
``comparison.md`` (the table, runs that are unfinished or failed and why, every run), ``comparison.csv`` (one row
per group) and ``comparison.png`` (the metric against trainable parameters, log x: the usual PEFT plot).

The command uses argparse, not Hydra: it takes paths to many runs, not one run's config (as ``fftprompt-ablate``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fftprompt.methods import METHOD_LABELS, method_label
from fftprompt.report import save_figure
from fftprompt.rundir import moved_aside_from, read_config, read_metrics
from fftprompt.runfiles import CHECKPOINT_DIR, HYDRA_CONFIG, LOG_FILE, METRICS_FILE, NOT_GROUPED, RUN_CONFIG, covering
from fftprompt.tables import format_mean_std, markdown_table, mean_std
from fftprompt.utils import atomic_write

__all__ = [
    "COMPARISON_FILES",
    "Group",
    "RunRecord",
    "collect_runs",
    "compare",
    "find_run_dirs",
    "differing_paths",
    "group_runs",
    "main",
]

COMPARISON_FILES = ("comparison.md", "comparison.csv", "comparison.png")
# what a job leaves before fftprompt writes its config: the log of the job, or Hydra's .hydra/ of older versions
JOB_STARTED = (LOG_FILE, HYDRA_CONFIG)
# entries a method stands for (unless they differ between runs of one method)
_METHOD_PART = re.compile(r"^(prompt|adapter)(\..*)?$")
# entries that name a file or folder: where a run or its data lies, not what it trained (grouped only with --by)
_PATH_KEY = re.compile(r"(^|\.|_)(root|dir|dirpath|path|file)$")
_ABSOLUTE_PATH = re.compile(r'^"(/|~|[A-Za-z]:[\\\\/])')
_COUNTS = ("trainable_params", "total_params", "train_seconds")


@dataclass
class RunRecord:
    """One run directory as read from disk.

    Attributes:
        run_dir: The directory.
        status: ``"finished"`` (metrics.json), ``"unfinished"`` (config.yaml, no metrics.json: running, stopped or
            failed during training), ``"failed"`` (Hydra started the job but the run wrote no config.yaml, or its
            files cannot be read), ``"evaluation"`` (an ``fftprompt-eval`` output, not a training run),
            ``"replaced"`` (moved aside by ``overwrite=true``) or ``"duplicate"`` (a copy of an earlier run).
        reason: Why a run is not finished, for the report.
        config: The flattened ``config.yaml`` (dotted keys -> JSON text of the value).
        metrics: ``metrics.json`` of a finished run.
    """

    run_dir: Path
    status: str
    reason: str = ""
    config: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> str:
        return self.config.get("seed", "?")

    @property
    def method(self) -> str:
        """The method's table label, from the prompt class and whether FourierFT adapted the backbone."""
        prompt = json.loads(self.config.get("prompt._target_", '""')).rsplit(".", 1)[-1]
        deep = json.loads(self.config.get("prompt.deep", "false"))
        adapted = json.loads(self.config.get("adapter", "null")) is not None or "adapter._target_" in self.config
        return method_label(prompt or "NoPrompt", bool(deep), adapted)

    @property
    def defining(self) -> dict[str, str]:
        """The config entries that define the run: all but the seed, its paths and entries holding its directory."""
        return {k: v for k, v in self.config.items() if not covering(k, NOT_GROUPED) and not _locates_run(self, k)}


@dataclass
class Group:
    """Finished runs that share every grouped setting.

    Attributes:
        settings: The grouped settings' values (the method's label, JSON text of config values).
        runs: The runs, in the order found.
    """

    settings: tuple[str, ...]
    runs: list[RunRecord]

    @property
    def key(self) -> tuple[str, ...]:
        """The grouped settings' values as table text (numbers to 6 significant digits, class paths shortened)."""
        return tuple(_shown(value) for value in self.settings)

    @property
    def exact(self) -> tuple[Any, ...]:
        """The grouped settings' values as config values (the method as its label)."""
        return tuple(_decoded(value) for value in self.settings)

    def values(self, metric: str) -> list[float]:
        return [float(r.metrics[metric]) for r in self.runs if isinstance(r.metrics.get(metric), (int, float))]


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories at or below ``paths`` (a folder with ``config.yaml`` or a started job's log), in
    natural order (``2`` before ``10``); a run's own subfolders are not searched."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory; expected run directories or folders holding them")
        before = len(found)
        pending = [path]
        while pending:
            folder = pending.pop()
            if any((folder / name).is_file() for name in (RUN_CONFIG, *JOB_STARTED)):
                found.append(folder)
                continue
            pending += [child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")]
        if len(found) == before:
            raise ValueError(f"{path} holds no run directory (no {RUN_CONFIG} or {LOG_FILE} at or below it)")
    unique = sorted(set(found), key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])
    return unique


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, Mapping) and node:
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: json.dumps(node, sort_keys=True)}


def _read_run(run_dir: Path) -> RunRecord:
    replaced_by = moved_aside_from(run_dir)
    if replaced_by is not None:
        return RunRecord(run_dir, "replaced", f"moved aside by overwrite=true when `{replaced_by}` was run again")
    if not (run_dir / RUN_CONFIG).is_file():
        return RunRecord(
            run_dir, "failed", f"Hydra started the job but it wrote no {RUN_CONFIG} (failed before training)"
        )
    try:
        config = read_config(run_dir)
        metrics = read_metrics(run_dir)
    except ValueError as error:
        return RunRecord(run_dir, "failed", str(error).splitlines()[0])
    flat = _flatten(config)
    if "adapter_path" in config:
        return RunRecord(run_dir, "evaluation", f"an fftprompt-eval output (of {config['adapter_path']})", flat)
    if metrics is None:
        checkpoints = sorted(p.name for p in (run_dir / CHECKPOINT_DIR).glob("*.ckpt"))
        reason = f"no {METRICS_FILE}: " + (
            f"training stopped or is still running (checkpoints {', '.join(checkpoints)}; resume with ckpt_path=last)"
            if checkpoints
            else "it failed or stopped before its first checkpoint"
        )
        return RunRecord(run_dir, "unfinished", reason, flat)
    if not any(key.startswith("test/") for key in metrics):
        return RunRecord(run_dir, "failed", f"{METRICS_FILE} holds no test metric", flat)
    return RunRecord(run_dir, "finished", "", flat, metrics)


def collect_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """Every run directory at or below ``paths``, read (see :class:`RunRecord` for the statuses); a finished run
    with the same defining config, seed and ``metrics.json`` as one found before it is a ``"duplicate"`` (a copied
    run directory: a new run would differ at least in its training time)."""
    runs = [_read_run(run_dir) for run_dir in find_run_dirs(paths)]
    first: dict[str, RunRecord] = {}
    for index, run in enumerate(runs):
        if run.status != "finished":
            continue
        identity = json.dumps([run.seed, run.defining, run.metrics], sort_keys=True)
        if identity in first:
            reason = f"a copy of `{first[identity].run_dir}` (same config and {METRICS_FILE}): counted once"
            runs[index] = RunRecord(run.run_dir, "duplicate", reason, run.config, run.metrics)
        else:
            first[identity] = run
    return runs


def _locates_run(run: RunRecord, key: str) -> bool:
    """Whether the entry ``key`` of ``run`` holds its own output directory (checkpoint and logger folders)."""
    output_dir = json.loads(run.config.get("paths.output_dir", "null"))
    value = run.config.get(key)
    return bool(output_dir) and value is not None and str(output_dir) in value


def _names_path(run: RunRecord, key: str) -> bool:
    """Whether the entry ``key`` of ``run`` names a file or folder (by its key or an absolute path as its value)."""
    return bool(_PATH_KEY.search(key)) or bool(_ABSOLUTE_PATH.match(run.config.get(key, "")))


def differing_paths(runs: Sequence[RunRecord]) -> list[str]:
    """The entries of the finished ``runs`` that name files or folders and differ between them (not grouped by
    default, see :func:`group_runs`)."""
    finished = [r for r in runs if r.status == "finished"]
    keys = sorted({k for r in finished for k in r.defining})
    missing = json.dumps(None)
    return [
        k
        for k in keys
        if len({r.config.get(k, missing) for r in finished}) > 1 and any(_names_path(r, k) for r in finished)
    ]


def _chosen_columns(finished: Sequence[RunRecord], by: Sequence[str]) -> list[str]:
    """``--by``'s keys as grouping columns (``method``, a dotted config key, or a group whose ``_target_`` is meant)."""
    keys = {k for r in finished for k in r.config}
    columns = []
    for key in by:
        column = key if key == "method" or key in keys else f"{key}._target_"
        if column != "method" and column not in keys:
            near = sorted(k for k in keys if k.startswith(key.split(".")[0]))[:8]
            expected = near or sorted(keys)[:8]
            raise ValueError(
                f"--by {key!r} is neither 'method' nor a config entry of these runs; expected e.g. {expected}"
            )
        columns.append(column)
    return columns


def group_runs(runs: Sequence[RunRecord], by: Sequence[str] | None = None) -> tuple[list[str], list[Group]]:
    """Groups the finished runs by the settings that differ between them (see the module docstring), or by ``by``.

    Args:
        runs: Read runs; only the finished ones are grouped.
        by: The grouping columns (``"method"`` and dotted config keys) instead of the differing settings.

    Returns:
        The grouping columns (``"method"`` and dotted config keys) and the groups, sorted by their values (methods
        in the order of :data:`~fftprompt.methods.TRAINED_METHODS`, numbers by value).
    """
    finished = [r for r in runs if r.status == "finished"]
    keys = sorted({k for r in finished for k in r.config})
    missing = json.dumps(None)
    if by is not None:
        return _grouped(finished, _chosen_columns(finished, by))

    def differs(key: str, within: Sequence[RunRecord]) -> bool:
        return len({r.config.get(key, missing) for r in within}) > 1

    candidates = [
        k
        for k in keys
        if not covering(k, NOT_GROUPED)
        and differs(k, finished)
        and not any(_locates_run(r, k) or _names_path(r, k) for r in finished)
    ]
    by_method: dict[str, list[RunRecord]] = {}
    for run in finished:
        by_method.setdefault(run.method, []).append(run)
    columns = ["method"] if len(by_method) > 1 else []
    columns += [
        k for k in candidates if not _METHOD_PART.match(k) or any(differs(k, same) for same in by_method.values())
    ]
    return _grouped(finished, columns)


def _grouped(finished: Sequence[RunRecord], columns: list[str]) -> tuple[list[str], list[Group]]:
    missing = json.dumps(None)
    groups: dict[tuple[str, ...], Group] = {}
    for run in finished:
        key = tuple(json.dumps(run.method) if c == "method" else run.config.get(c, missing) for c in columns)
        groups.setdefault(key, Group(key, [])).runs.append(run)
    return columns, sorted(groups.values(), key=lambda group: [_order(value) for value in group.exact])


def _order(value: Any) -> tuple[int, float, str]:
    """Sort key of a value: methods in the order of the project's tables, numbers by value, then text."""
    labels = list(METHOD_LABELS.values())
    if value in labels:
        return (0, labels.index(value), "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0.0, json.dumps(value))


def _decoded(value: str) -> Any:
    return json.loads(value)


def _shown(value: str) -> str:
    """A config value as table text: class paths by their last name, strings without quotes, numbers to 6 digits."""
    decoded = json.loads(value)
    if isinstance(decoded, str):
        return decoded.rsplit(".", 1)[-1] if decoded.startswith("fftprompt.") else decoded
    if isinstance(decoded, float):
        return f"{decoded:.6g}"
    return "—" if decoded is None else json.dumps(decoded)


def _column_name(key: str) -> str:
    return key.removesuffix("._target_")


def _metrics(groups: Sequence[Group]) -> list[str]:
    """Test metrics (without the loss), then best validation scores (``val/acc_best``: what searches optimise)."""
    found = {k for g in groups for r in g.runs for k in r.metrics if k.startswith("test/") and k != "test/loss"}
    order = ["test/acc", "test/f1_macro", "test/auroc", "test/miou", "test/dice"]
    best = sorted(
        {k for g in groups for r in g.runs for k in r.metrics if k.startswith("val/") and k.endswith("_best")}
    )
    return [m for m in order if m in found] + sorted(found - set(order)) + best


def _params_text(group: Group) -> str:
    values = sorted({int(r.metrics["trainable_params"]) for r in group.runs if "trainable_params" in r.metrics})
    if not values:
        return "—"
    return f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}–{values[-1]:,}"


def compare(
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    metric: str | None = None,
    overwrite: bool = False,
    by: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Collects, groups and aggregates the runs under ``paths`` and writes ``comparison.{md,csv,png}``.

    Args:
        paths: Run directories or folders holding them.
        output: Folder for the three files.
        metric: Metric of the plot (default ``test/acc``, else ``test/miou``, else the first test metric).
        overwrite: Replace an earlier comparison's files in ``output``.
        by: Grouping columns (``"method"``, dotted config keys) instead of the settings that differ.

    Returns:
        ``{"columns", "groups", "runs", "metric", "files", "markdown"}``.
    """
    output = Path(output)
    existing = [output / name for name in COMPARISON_FILES if (output / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists (an earlier comparison); choose another --output or pass --overwrite")
    runs = collect_runs(paths)
    columns, groups = group_runs(runs, by)
    metrics = _metrics(groups)
    if not groups:
        problems = "; ".join(f"{r.run_dir}: {r.status}, {r.reason}" for r in runs[:3])
        raise ValueError(f"none of the {len(runs)} run directories holds a finished training run ({problems})")
    if metric is None:
        metric = next((m for m in ("test/acc", "test/miou") if m in metrics), metrics[0])
    elif metric not in metrics:
        raise ValueError(f"--metric {metric!r} is not a metric of these runs; they have {metrics}")
    markdown = _markdown(paths, runs, columns, groups, metrics, metric, chosen=by is not None)
    output.mkdir(parents=True, exist_ok=True)
    files = [
        atomic_write(output / COMPARISON_FILES[0], lambda t: t.write_text(markdown, encoding="utf-8")),
        atomic_write(
            output / COMPARISON_FILES[1], lambda t: t.write_text(_csv(columns, groups, metrics), encoding="utf-8")
        ),
        _plot(columns, groups, metric, output / COMPARISON_FILES[2]),
    ]
    return {"columns": columns, "groups": groups, "runs": runs, "metric": metric, "files": files, "markdown": markdown}


def _label(columns: Sequence[str], group: Group) -> str:
    if not columns:
        return "all runs"
    return ", ".join(
        value if c == "method" else f"{_column_name(c)}={value}" for c, value in zip(columns, group.key, strict=True)
    )


def _markdown(
    paths: Sequence[str | Path],
    runs: Sequence[RunRecord],
    columns: Sequence[str],
    groups: Sequence[Group],
    metrics: Sequence[str],
    metric: str,
    *,
    chosen: bool = False,
) -> str:
    finished = sum(len(g.runs) for g in groups)
    others = [r for r in runs if r.status != "finished"]
    skipped = {status: sum(r.status == status for r in runs) for status in ("replaced", "duplicate")}
    shown_columns = [_column_name(c) for c in columns]
    paths_differ = [k for k in differing_paths(runs) if k not in columns]
    if chosen:
        grouping = f"Grouped by `--by`: {', '.join(f'`{c}`' for c in shown_columns)}." if columns else "One group."
        unshown = [k for k, _ in _differing_within(groups).items() if k not in paths_differ]
        if unshown:
            grouping += f" Runs of one group also differ in {', '.join(f'`{_column_name(k)}`' for k in unshown)}."
    elif columns:
        grouping = (
            f"Grouped by the settings that differ: {', '.join(f'`{c}`' for c in shown_columns)}; the runs share every "
            "other setting but the seed, `paths` and `report` (`method` stands for the prompt and adapter settings)."
        )
    else:
        grouping = "The runs differ only in their seeds."
    if paths_differ:
        named = ", ".join(f"`{k}`" for k in paths_differ)
        grouping += f" Entries naming files or folders differ but are not grouped by: {named} (`--by` groups by them)."
    lines = [
        f"# Comparison of {len(runs)} runs",
        "",
        f"From {', '.join(f'`{p}`' for p in paths)}: {finished} finished runs in {len(groups)} groups"
        + (f", {len(others)} not compared (listed below)" if others else "")
        + (f"; skipped {skipped['replaced']} runs moved aside by `overwrite=true`" if skipped["replaced"] else "")
        + (f"; {skipped['duplicate']} copies of a compared run counted once" if skipped["duplicate"] else "")
        + ". Metrics: mean ± sample standard deviation over the n runs (seeds) of a group.",
        "",
        grouping,
        "",
    ]
    header = [*shown_columns, "n", "seeds", *metrics, "trainable params", "train time (s)"]
    rows = []
    for group in groups:
        cells: list[Any] = [*group.key, len(group.runs), ", ".join(r.seed for r in group.runs)]
        cells += [format_mean_std(*mean_std(group.values(m))) if group.values(m) else "—" for m in metrics]
        seconds = group.values("train_seconds")
        cells += [_params_text(group), f"{statistics.fmean(seconds):.1f}" if seconds else "—"]
        rows.append(cells)
    lines += markdown_table(header, rows, ["l"] * len(columns) + ["r"] * (len(header) - len(columns)))
    lines += ["", f"![{metric} against trainable parameters]({COMPARISON_FILES[2]})", ""]
    if others:
        lines += ["## Not compared", ""]
        lines += markdown_table(["run", "status", "why"], [[f"`{r.run_dir}`", r.status, r.reason] for r in others])
        lines.append("")
    lines += ["## Runs", ""]
    run_rows = []
    for group in groups:
        for run in group.runs:
            values = [f"{run.metrics[m]:.4f}" if isinstance(run.metrics.get(m), (int, float)) else "—" for m in metrics]
            run_rows.append([f"`{run.run_dir}`", _label(columns, group), run.seed, *values])
    lines += markdown_table(["run", "group", "seed", *metrics], run_rows, ["l", "l", "r"] + ["r"] * len(metrics))
    lines.append("")
    return "\n".join(lines)


def _differing_within(groups: Sequence[Group]) -> dict[str, None]:
    """The defining entries (but the seed) that differ between the runs of one group, in order of first sight."""
    found: dict[str, None] = {}
    for group in groups:
        keys = sorted({k for r in group.runs for k in r.defining})
        for key in keys:
            if len({r.defining.get(key) for r in group.runs}) > 1:
                found.setdefault(key)
    return found


def _csv(columns: Sequence[str], groups: Sequence[Group], metrics: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [_column_name(c) for c in columns] + ["n", "seeds"]
    header += [f"{m}_{stat}" for m in (*metrics, "train_seconds") for stat in ("mean", "std")]
    writer.writerow([*header, "trainable_params"])
    for group in groups:
        exact = [v if isinstance(v, (str, int, float)) else json.dumps(v) for v in group.exact]
        row: list[Any] = [*exact, len(group.runs), " ".join(r.seed for r in group.runs)]
        for name in (*metrics, "train_seconds"):
            values = group.values(name)
            row += list(mean_std(values)) if values else ["", ""]
        writer.writerow([*row, _params_text(group).replace(",", "")])
    return buffer.getvalue()


def _plot(columns: Sequence[str], groups: Sequence[Group], metric: str, path: Path) -> Path:
    """``metric`` (mean ± std) against trainable parameters, log x, one labelled point per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.0, 4.8))
    for index, group in enumerate(groups):
        params = [float(r.metrics["trainable_params"]) for r in group.runs if "trainable_params" in r.metrics]
        values = group.values(metric)
        if not params or not values:
            continue
        mean, std = mean_std(values)
        axis.errorbar(statistics.fmean(params), mean, yerr=std, fmt="o", capsize=3, color=f"C{index % 10}")
        axis.annotate(
            _label(columns, group),
            (statistics.fmean(params), mean),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    axis.set_xscale("log")
    axis.set(
        xlabel="trainable parameters (log scale)",
        ylabel=f"{metric} (mean ± std over seeds)",
        title=f"{metric} against trainable parameters",
    )
    axis.grid(alpha=0.3, which="both")
    return save_figure(figure, path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    """``fftprompt-compare``: prints the table and the files written; input errors exit with status 2."""
    parser = argparse.ArgumentParser(
        prog="fftprompt-compare",
        description="Group finished runs by the settings that differ, aggregate seeds, write comparison.{md,csv,png}.",
    )
    parser.add_argument("paths", nargs="+", help="run directories, Hydra multirun folders, ablation outputs")
    parser.add_argument("--output", default=".", help="folder of comparison.md/.csv/.png (default: here)")
    parser.add_argument("--metric", default=None, help="metric of the plot (default test/acc, else test/miou)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --output")
    parser.add_argument(
        "--by",
        default=None,
        help="grouping columns, comma-separated: 'method' and config keys such as data.noise_std (default: the "
        "settings that differ, paths excluded)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    by = None if args.by is None else [key.strip() for key in args.by.split(",") if key.strip()]
    try:
        result = compare(args.paths, args.output, metric=args.metric, overwrite=args.overwrite, by=by)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    print(result["markdown"])
    print("written: " + ", ".join(str(p) for p in result["files"]))
    return 0
