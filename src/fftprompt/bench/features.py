"""``fftprompt-bench features``: frequency feature extraction next to a frozen ViT forward on the same batch.

Both run under ``torch.no_grad()`` on the same random batch, with autocast in ``--dtype`` when it is not float32:
:class:`fftprompt.spectral.FrequencyFeatures` followed by ``FrequencyMaps.compact()`` (what a prompt generator
consumes), and the frozen backbone's ``forward_features`` (built without weights: speed does not depend on them).
Repetitions alternate between the two so that load from other processes hits both alike; times are medians after
warm-up (CUDA events after a synchronize on GPUs). The figure of merit is the ratio of the two times, measured in one
run: the goal is at most 10% of the backbone's forward on CPUs and 5% on GPUs.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fftprompt.backbone import create_backbone
from fftprompt.bench._common import DTYPES, autocast, check_options, machine, run_command, time_ms
from fftprompt.spectral import FrequencyFeatures

GOALS = {"cpu": 0.10, "cuda": 0.05}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Times both steps and returns a JSON-serialisable report (settings, machine, times, ratio)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = create_backbone(args.model, pretrained=False, img_size=args.img_size).to(device)
    features = FrequencyFeatures(
        patch_size=backbone.patch_size, window=args.window, global_symmetry=args.global_symmetry
    ).to(device)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)

    def features_step() -> None:
        with torch.no_grad(), autocast(device, args.dtype):
            features(images).compact()

    def backbone_step() -> None:
        with torch.no_grad(), autocast(device, args.dtype):
            backbone(images)

    steps: dict[str, Callable[[], None]] = {"features": features_step, "backbone": backbone_step}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repetition in range(args.warmup + args.repeats):
        for name, step in steps.items():
            elapsed = time_ms(step, device)
            if repetition >= args.warmup:
                times[name].append(elapsed)

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["features"] / medians["backbone"]
    goal = GOALS.get(device.type)
    return {
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k != "json"} | {"patch_size": backbone.patch_size},
        "feature_channels": features.num_channels,
        "results": {
            name: {
                "median_ms": medians[name],
                "images_per_s": args.batch_size / medians[name] * 1e3,
                "all_ms": times[name],
            }
            for name in steps
        },
        "ratio": ratio,
        "goal": goal,
        "goal_met": None if goal is None else ratio <= goal,
    }


def format_table(report: dict[str, Any]) -> str:
    """Markdown summary of a :func:`run_benchmark` report."""
    s, m, r = report["settings"], report["machine"], report["results"]
    lines = [
        f"{s['model']} forward_features vs FrequencyFeatures(patch {s['patch_size']}, window {s['window']!r}, "
        f"{report['feature_channels']} compact channels), batch {s['batch_size']}, {s['img_size']} px, {s['dtype']}, "
        f"{s['device']} ({m['device']}, {m['threads']} threads of {m['cpu_count']} cores), torch {m['torch']}; "
        f"median of {s['repeats']} repetitions after {s['warmup']} warm-up",
        "",
        "| step | median (ms) | images/s |",
        "|---|---:|---:|",
    ]
    for name, label in (("backbone", f"frozen {s['model']} forward"), ("features", "frequency features")):
        lines.append(f"| {label} | {r[name]['median_ms']:.1f} | {r[name]['images_per_s']:.1f} |")
    lines.append("")
    verdict = (
        ""
        if report["goal"] is None
        else f" (goal <= {report['goal']:.0%}: {'met' if report['goal_met'] else 'missed'})"
    )
    lines.append(f"features / backbone time: {report['ratio']:.1%}{verdict}")
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fftprompt-bench features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm ViT name (built without weights)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="autocast dtype of both steps")
    parser.add_argument("--window", choices=("hann", "none"), default="hann")
    parser.add_argument("--global-symmetry", action="store_true", help="also compute the whole-image symmetry")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions of each step (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON (to stdout: -)")
    args = parser.parse_args(list(argv))
    check_options(parser, args, positive=("batch_size", "img_size", "repeats", "threads"))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints a markdown summary (or JSON with ``--json -``)."""
    return run_command(argv, _parse, run_benchmark, format_table)
