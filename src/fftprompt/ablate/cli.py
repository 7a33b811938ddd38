"""The ``fftprompt-ablate`` command line.

It uses argparse, not a Hydra app: the command is not itself one run config. It drives many runs (methods x seeds,
sharded over worker processes), takes options about that (seeds, variants, budget, jobs, output) and forwards its
trailing Hydra overrides to the config of every run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from fftprompt.ablate.comparison import format_comparison, write_comparison
from fftprompt.ablate.paired import add_outcomes
from fftprompt.ablate.plan import ABLATIONS, METHODS
from fftprompt.ablate.reference import add_references
from fftprompt.ablate.runner import FULL_EPOCHS, QUICK_EPOCHS, load_average, run_ablation, run_settings, run_workers
from fftprompt.ablate.settings import (
    BACKBONES,
    DATASETS,
    FEW_SHOT_DATASETS,
    SEGMENTATION_DATASETS,
    Setting,
    plan_settings,
)
from fftprompt.ablate.tables import format_markdown, write_outputs
from fftprompt.ablate.tuned import run_tuned
from fftprompt.ablate.tuning import (
    DEFAULT_LR_SCALES,
    DEFAULT_WEIGHT_DECAYS,
    TUNED_KEYS,
    WEIGHT_DECAY_KEY,
    plan_trials,
)
from fftprompt.methods import SAMPLE_DATASETS

__all__ = ["main", "parse_args"]

_DESCRIPTION = (
    "``fftprompt-ablate``: methods x seeds at matched trainable-parameter budgets, and frequency-feature ablations."
)


def _names(text: str, allowed: Sequence[str], option: str, parser: argparse.ArgumentParser) -> list[str]:
    if text.strip().lower() == "none":
        return []
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in allowed]
    if bad:
        parser.error(f"{option} {bad}: expected a comma-separated subset of {list(allowed)} (or none)")
    return names


def _command(argv: Sequence[str], data_root: Path | None) -> str:
    """The command line as the reports show it, the data root written ``<data-root>`` (a machine's own folder)."""
    shown = ["<data-root>" if data_root is not None and arg == str(data_root) else arg for arg in argv]
    return shlex.join(["fftprompt-ablate", *shown]).replace("'<data-root>'", "<data-root>")


def is_classic(settings: Sequence[Setting]) -> bool:
    """The classic ablation: one setting, the generated benchmark with all its images (one page; else the
    real-data comparison, a section of its own)."""
    return len(settings) == 1 and settings[0].dataset == "generated" and settings[0].shots is None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed and checked command line (exits with a usage message on errors)."""
    parser = argparse.ArgumentParser(
        prog="fftprompt-ablate",
        description=_DESCRIPTION,
        epilog="Trailing arguments are Hydra overrides of the train config, e.g. trainer.max_epochs=3 "
        "data.num_train=500; they are applied after the variant's own overrides.",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {METHODS}, or none")
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help=f"subset of {ABLATIONS}, or none")
    parser.add_argument(
        "--datasets",
        default="generated",
        help=f"subset of {list(DATASETS)}; more than the generated benchmark (or --shots) makes it the real-data "
        "comparison, written as its own section of --doc",
    )
    parser.add_argument(
        "--backbones",
        default=None,
        help=f"subset of {list(BACKBONES)}: the shipped pretrained weights and/or the random ViT (default "
        "pretrained; random with --quick)",
    )
    parser.add_argument(
        "--shots",
        default="none",
        help=f"few-shot curve: comma-separated training images per class, on {list(FEW_SHOT_DATASETS)} (or none)",
    )
    parser.add_argument(
        "--data-root",
        default=os.environ.get("FFTPROMPT_SAMPLE_DATA"),
        help="folder holding dtd_300/ and medmnist/breastmnist.npz (default: $FFTPROMPT_SAMPLE_DATA)",
    )
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
    parser.add_argument(
        "--tune",
        action="store_true",
        help="the tuned protocol (a comparison): every method gets the same grid --lr-scales x --weight-decays, "
        "trained on the training split with validation, the setting and epoch chosen on validation, then the "
        "chosen setting trained with every seed and its best-validation checkpoint tested once",
    )
    parser.add_argument(
        "--lr-scales",
        default=",".join(f"{v:g}" for v in DEFAULT_LR_SCALES),
        help="--tune: factors applied to every learning rate of each method (its own defaults)",
    )
    parser.add_argument(
        "--weight-decays",
        default=",".join(f"{v:g}" for v in DEFAULT_WEIGHT_DECAYS),
        help=f"--tune: values of {WEIGHT_DECAY_KEY}",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config")
    args = parser.parse_args(list(argv))
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers such as 0,1,2")
    try:
        args.shots = [] if args.shots.strip().lower() == "none" else [int(s) for s in args.shots.split(",") if s]
    except ValueError:
        parser.error(f"--shots {args.shots!r}: expected comma-separated numbers of images per class such as 5,10")
    if any(k < 1 for k in args.shots) or len(set(args.shots)) != len(args.shots):
        parser.error(f"--shots {args.shots}: expected distinct positive numbers of images per class")
    try:
        args.lr_scales = [float(v) for v in args.lr_scales.split(",") if v]
        args.weight_decays = [float(v) for v in args.weight_decays.split(",") if v]
        plan_trials({}, args.lr_scales, args.weight_decays)
    except ValueError as error:
        parser.error(f"--lr-scales/--weight-decays: {error}")
    args.datasets = _names(args.datasets, DATASETS, "--datasets", parser)
    default_backbone = "random" if args.quick else "pretrained"
    args.backbones = _names(args.backbones or default_backbone, BACKBONES, "--backbones", parser)
    args.data_root = None if args.data_root is None else Path(args.data_root)
    try:
        args.settings = plan_settings(args.datasets, args.backbones, args.shots, args.data_root, args.quick)
    except ValueError as error:
        parser.error(str(error))
    if not args.settings:
        parser.error("nothing to run: --datasets and --backbones must name at least one each")
    folders = [{**SAMPLE_DATASETS, **SEGMENTATION_DATASETS}[d] for d in args.datasets if d != "generated"]
    missing = [folder for folder in folders if not (args.data_root / folder).is_dir()]
    if missing:
        parser.error(
            f"--data-root {args.data_root}: no {' or '.join(missing)} folder in it; expected the folder "
            "holding dtd_300/ (DTD's images/<class>/ layout) and medmnist/breastmnist.npz"
        )
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
    tuned = [o for o in args.overrides if o.split("=", 1)[0].lstrip("+~") in TUNED_KEYS]
    if args.tune and tuned:
        parser.error(f"overrides {tuned}: --tune sets these for every trial; drop them (the grid scales the defaults)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``fftprompt-ablate``: runs the ablation and writes the tables and the plot."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    start, load_before = time.perf_counter(), load_average()
    trained: frozenset[str] = frozenset()
    if args.jobs > 1 and not args.runs_only:
        trained = run_workers(args)
        args.rerun = False  # the workers trained what was asked; this process only collects
    if args.tune or not is_classic(args.settings):
        if args.tune:
            reports = [run_tuned(args, setting, trained) for setting in args.settings]
        else:
            reports = run_settings(args, args.settings, trained)
        if args.runs_only:
            return 0
        if args.tune or any(r["settings"]["task"] == "classification" for r in reports):
            add_references(reports, args)
        if args.tune:
            add_outcomes(reports)
        meta = {  # after the references and the paired outcomes: the wall time covers the whole invocation
            "command": _command(argv, args.data_root),
            "wall_seconds": time.perf_counter() - start,
            "load_before": load_before,
            "load_after": load_average(),
            "data_root": None if args.data_root is None else str(args.data_root),
            "protocol": "tuned" if args.tune else "untuned",
            **({"grid": {"lr_scales": args.lr_scales, "weight_decays": args.weight_decays}} if args.tune else {}),
        }
        written = write_comparison(
            reports, meta, Path(args.output).resolve(), None if args.doc is None else Path(args.doc)
        )
        print(format_comparison(reports, meta, figure=None))
        print("written: " + ", ".join(str(p) for p in written))
        return 0
    report = run_ablation(args, trained, args.settings[0])
    if args.runs_only:
        return 0
    report["wall_seconds"] = time.perf_counter() - start
    report["load_average"]["before"] = load_before
    report["command"] = shlex.join(["fftprompt-ablate", *argv])
    written = write_outputs(report, Path(args.output).resolve(), None if args.doc is None else Path(args.doc))
    print(format_markdown(report, figure=None))
    print("written: " + ", ".join(str(p) for p in written))
    return 0
