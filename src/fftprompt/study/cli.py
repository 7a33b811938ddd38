"""The ``fftprompt-robustness`` command line (argparse: it drives many runs, like ``fftprompt-ablate``)."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from fftprompt.augment import CORRUPTIONS, check_corruptions
from fftprompt.study.runner import (
    AUGMENTS,
    DATASETS,
    METHODS,
    SHIFTED_DOMAINS,
    StudySettings,
    majority_fraction,
    run_study,
)
from fftprompt.study.tables import DISCUSSION, format_markdown, summarise
from fftprompt.utils import write_json_atomic

__all__ = ["main", "parse_args"]


def _names(text: str, allowed: Sequence[str], option: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        parser.error(f"{option} {text!r}: expected a comma-separated subset of {list(allowed)}")
    return names


def _integers(text: str, option: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        parser.error(f"{option} {text!r}: expected comma-separated integers")
    if not values or len(set(values)) != len(values):
        parser.error(f"{option} {text!r}: expected at least one value, without repeats")
    return values


def parse_args(argv: Sequence[str]) -> tuple[StudySettings, argparse.Namespace]:
    """The study's settings from the command line (exits with a usage message on errors)."""
    parser = argparse.ArgumentParser(
        prog="fftprompt-robustness",
        description="In-domain, cross-domain and corruption accuracy of VPT, FourierFT and fft prompts with and "
        "without frequency-domain augmentation, over seeds; writes robustness.{json,md} and optionally a document.",
        epilog="Trailing arguments are Hydra overrides applied to every run after the study's own.",
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"subset of {list(DATASETS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {list(METHODS)}")
    parser.add_argument("--augments", default=",".join(AUGMENTS), help="subset of none,fda,amp_mix,band")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--corruptions", default="gaussian_noise,gaussian_blur,jpeg,contrast", help=str(CORRUPTIONS))
    parser.add_argument("--severities", default="1,3,5", help="comma-separated severities from 1 to 5")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of every run")
    parser.add_argument("--image-size", type=int, default=32, help="image side of every dataset")
    parser.add_argument("--quick", action="store_true", help="tiny ViT, a few dozen images (tests)")
    parser.add_argument(
        "--data-root",
        default=os.environ.get("FFTPROMPT_SAMPLE_DATA"),
        help="folder holding dtd_300/ and medmnist/ (default: $FFTPROMPT_SAMPLE_DATA)",
    )
    parser.add_argument("--output", default="runs/robustness", help="folder of the runs, evaluations and results")
    parser.add_argument("--doc", default=None, help="also write the markdown here (keeping its Discussion section)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rerun", action="store_true", help="train and evaluate again even when results match")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of every run")
    args = parser.parse_args(list(argv))
    corruptions = [c for c in args.corruptions.split(",") if c]
    severities = _integers(args.severities, "--severities", parser)
    try:
        check_corruptions(corruptions, severities)
    except ValueError as error:
        parser.error(str(error))
    if args.epochs < 1 or args.threads < 1 or args.image_size < 8:
        parser.error("--epochs and --threads must be >= 1, --image-size >= 8")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides {bad}: expected Hydra overrides such as trainer.max_epochs=3")
    settings = StudySettings(
        datasets=_names(args.datasets, DATASETS, "--datasets", parser),
        methods=_names(args.methods, METHODS, "--methods", parser),
        augments=_names(args.augments, (*AUGMENTS, "band"), "--augments", parser),
        seeds=_integers(args.seeds, "--seeds", parser),
        corruptions=corruptions,
        severities=severities,
        epochs=args.epochs,
        image_size=args.image_size,
        quick=args.quick,
        data_root=None if args.data_root is None else Path(args.data_root),
        output=Path(args.output),
        overrides=list(args.overrides),
        rerun=args.rerun,
        threads=args.threads,
    )
    return settings, args


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def write_document(markdown: str, doc: Path) -> Path:
    """Writes ``markdown`` to ``doc``, keeping the hand-written ``## Discussion`` section of an existing file."""
    if doc.is_file():
        old = doc.read_text(encoding="utf-8")
        if DISCUSSION in old:
            markdown = markdown.rstrip() + "\n\n" + old[old.index(DISCUSSION) :]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(markdown, encoding="utf-8")
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    """``fftprompt-robustness``: trains and evaluates the study, writes the results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    settings, args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for message in (r".*module\(s\) in eval mode.*", r".*does not have many workers.*", r".*logging interval.*"):
        warnings.filterwarnings("ignore", message=message)
    start, load_before = time.perf_counter(), _load_average()
    try:
        runs = run_study(settings)
        majority = {d: majority_fraction(settings, d) for d in settings.datasets}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    shift_counts = "48 training and 36 test images" if settings.quick else "600 training and 300 test images"
    report = {
        "command": shlex.join(["fftprompt-robustness", *argv]),
        "settings": {
            "datasets": list(settings.datasets),
            "methods": list(settings.methods),
            "augments": list(settings.augments),
            "seeds": list(settings.seeds),
            "corruptions": list(settings.corruptions),
            "severities": list(settings.severities),
            "epochs": settings.epochs,
            "image_size": settings.image_size,
            "quick": settings.quick,
            "threads": settings.threads,
            "overrides": list(settings.overrides),
            "domains": dict(SHIFTED_DOMAINS),
            "shift_counts": shift_counts,
        },
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}, torch {torch.__version__})",
        "load_before": load_before,
        "load_after": _load_average(),
        "wall_seconds": time.perf_counter() - start,
        "majority": majority,
        "runs": runs,
        "summary": summarise(runs),
    }
    output = settings.output.resolve()
    markdown = format_markdown(report)
    written = [write_json_atomic(output / "robustness.json", report)]
    (output / "robustness.md").write_text(markdown, encoding="utf-8")
    written.append(output / "robustness.md")
    if args.doc is not None:
        written.append(write_document(markdown, Path(args.doc)))
    print(markdown)
    print("written: " + ", ".join(str(p) for p in written))
    return 0
