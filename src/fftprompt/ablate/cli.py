"""The ``fftprompt-ablate`` command line.

It uses argparse, not a Hydra app: the command is not itself one run config. It drives many runs (methods x seeds,
sharded over worker processes), takes options about that (seeds, variants, budget, jobs, output) and forwards its
trailing Hydra overrides to the config of every run.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from fftprompt.ablate.plan import ABLATIONS, METHODS
from fftprompt.ablate.runner import FULL_EPOCHS, QUICK_EPOCHS, load_average, run_ablation, run_workers
from fftprompt.ablate.tables import format_markdown, write_outputs

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
    report = run_ablation(args, trained)
    if args.runs_only:
        return 0
    report["wall_seconds"] = time.perf_counter() - start
    report["load_average"]["before"] = load_before
    report["command"] = shlex.join(["fftprompt-ablate", *argv])
    written = write_outputs(report, Path(args.output).resolve(), None if args.doc is None else Path(args.doc))
    print(format_markdown(report, figure=None))
    print("written: " + ", ".join(str(p) for p in written))
    return 0
