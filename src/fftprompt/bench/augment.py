"""``fftprompt-bench augment``: what the frequency-domain augmentations add to a training step.

One model (by default the CPU demo's: ``vit_demo_patch8`` at 64 px, batch 64, fft prompts + FourierFT on q/v) trains
on one fixed batch; each step first applies the augmentation to the batch, as the Lightning module does after the
batch transfer (``none``: no augmentation; ``fda``, ``amp_mix``: the config defaults; ``band``: a low-pass filter;
all with ``p=0.5``, so about half of the images are transformed and the FFTs run on the whole batch). Steps take
turns over the augmentations (in alternating order, so that load from other processes hits all alike); the report
gives median and fastest steps, CPU time per step, the augmentation alone, and the overhead relative to ``none`` as
the median of per-round ratios, of wall time and (on the CPU, where waiting for a core shared with other processes
inflates wall times at random) of this process's CPU time, which decides the goal there.
``--device cuda --dtype bfloat16 --model vit_base_patch16_224 --img-size 224`` measures the GPU case (the
augmentation runs in float32, the model under bf16 autocast, as in a ``trainer=gpu`` run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fftprompt.augment import AmplitudeMix, BandFilter, FourierDomainAdaptation, SpectralAugment
from fftprompt.backbone import create_backbone
from fftprompt.bench._common import check_options, machine, round_robin, run_command, split_choices, time_ms
from fftprompt.bench._common import train_step as model_step
from fftprompt.bench.methods import create_method_model

AUGMENTS = ("none", "fda", "amp_mix", "band")
CPU_GOAL, GPU_GOAL = 0.10, 0.05  # the augmentations' allowed overhead on a train step (issue 14)


def make_augment(name: str, seed: int = 0) -> SpectralAugment | None:
    """The augmentation ``name`` with its config defaults (``band``: a low-pass at half the Nyquist frequency)."""
    common = {"p": 0.5, "seed": seed, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    if name == "none":
        return None
    if name == "fda":
        return FourierDomainAdaptation(beta=0.1, **common)
    if name == "amp_mix":
        return AmplitudeMix(**common)
    if name == "band":
        return BandFilter(kind="lowpass", high=0.5, **common)
    raise ValueError(f"augment {name!r} is not one of {list(AUGMENTS)}")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Times the train step with every augmentation; returns machine, settings, results and overheads."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = create_backbone(args.model, pretrained=False, img_size=args.img_size)
    model = create_method_model(
        args.method,
        backbone,
        args.num_classes,
        num_tokens=args.num_tokens,
        n_frequency=args.n_frequency,
        scaling=args.scaling,
        targets=("q", "v"),
    ).to(device)
    model.train()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    optimizer = torch.optim.AdamW([p for group in model.trainable_parameters().values() for p in group], lr=1e-4)
    augments = {name: make_augment(name) for name in args.augments}
    counters = dict.fromkeys(augments, 0)

    def augmented(name: str) -> torch.Tensor:
        augment = augments[name]
        counters[name] += 1
        return images if augment is None else augment(images, (counters[name],))

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            model_step(model, optimizer, augmented(name), labels, device, args.dtype)()

        return run

    steps = {name: step(name) for name in augments}

    def measure(call: Callable[[], None]) -> tuple[float, float]:
        start_cpu = time.process_time()
        wall = time_ms(call, device)
        return wall, (time.process_time() - start_cpu) * 1e3

    measured = round_robin(steps, args.warmup, args.steps, measure)
    results = []
    for name, pairs in measured.items():
        walls = [wall for wall, _ in pairs]
        alone = [time_ms(lambda n=name: augmented(n), device) for _ in range(args.steps)]
        results.append(
            {
                "augment": name,
                "step_ms": statistics.median(walls),
                "step_ms_min": min(walls),
                "step_cpu_ms": statistics.median(cpu for _, cpu in pairs),
                "augment_ms": statistics.median(alone) if augments[name] is not None else 0.0,
                "step_ms_all": [round(w, 2) for w in walls],
            }
        )
    by_name = {r["augment"]: r for r in results}
    overheads = {}
    if "none" in by_name:
        base = measured["none"]
        for name in by_name:
            if name == "none":
                continue
            paired = [a[0] / b[0] for a, b in zip(measured[name], base, strict=True)]
            paired_cpu = [a[1] / b[1] for a, b in zip(measured[name], base, strict=True)]
            overheads[name] = {
                "median_of_round_ratios": statistics.median(paired) - 1.0,
                "cpu_time": statistics.median(paired_cpu) - 1.0,
                "fastest_steps": by_name[name]["step_ms_min"] / by_name["none"]["step_ms_min"] - 1.0,
                "augment_alone_over_step": by_name[name]["augment_ms"] / by_name["none"]["step_ms"],
            }
    return {
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "results": results,
        "overheads": overheads,
        "goal": GPU_GOAL if device.type == "cuda" else CPU_GOAL,
        # on a shared CPU, waiting for a core inflates wall times at random: the process's CPU time is the measure
        "goal_measure": "median_of_round_ratios" if device.type == "cuda" else "cpu_time",
    }


def _heading(settings: dict[str, Any], machine_: dict[str, Any]) -> str:
    s, m = settings, machine_
    where = f"{s['device']} ({m['device']}, {m['threads']} threads, load average {m['load_average']})"
    return (
        f"{s['model']} (no weights), {s['method']}, batch {s['batch_size']}, {s['img_size']} px, {s['dtype']}, "
        f"{where}, torch {m['torch']}; median of {s['steps']} steps after {s['warmup']} warm-up"
    )


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a :func:`run_benchmark` report."""
    lines = [
        _heading(report["settings"], report["machine"]),
        "",
        "| augment | train step, median (ms) | fastest (ms) | CPU time, median (ms) | augmentation alone (ms) "
        "| overhead: wall, median of per-round ratios | wall, fastest steps | CPU time, median of per-round ratios |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        over = report["overheads"].get(r["augment"])
        cells = ["-"] * 3
        if over:
            cells = [f"{over[k]:+.1%}" for k in ("median_of_round_ratios", "fastest_steps", "cpu_time")]
        lines.append(
            f"| {r['augment']} | {r['step_ms']:.1f} | {r['step_ms_min']:.1f} | {r['step_cpu_ms']:.1f} "
            f"| {r['augment_ms']:.2f} | {' | '.join(cells)} |"
        )
    measure = report["goal_measure"]
    worst = max((o[measure] for o in report["overheads"].values()), default=None)
    if worst is not None:
        verdict = "met" if worst <= report["goal"] else "missed"
        what = "CPU time" if measure == "cpu_time" else "wall time"
        lines += [
            "",
            f"Goal: at most {report['goal']:.0%} overhead per step ({what}); largest measured {worst:+.1%}: {verdict}.",
        ]
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fftprompt-bench augment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_demo_patch8", help="timm ViT name (built without weights)")
    parser.add_argument("--method", default="fft_fourierft", help="method of fftprompt-bench methods")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--num-tokens", type=int, default=8, help="prompts (fft / VPT methods)")
    parser.add_argument("--n-frequency", type=int, default=1000, help="FourierFT entries per matrix")
    parser.add_argument("--scaling", type=float, default=150.0, help="FourierFT scaling")
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--augments", default=",".join(AUGMENTS), help=f"comma-separated subset of {AUGMENTS}")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per augmentation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per augmentation first")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (autocast of the model)")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON (to stdout: -)")
    args = parser.parse_args(list(argv))
    args.augments = split_choices(parser, "--augments", args.augments, AUGMENTS)
    check_options(parser, args, positive=("batch_size", "img_size", "steps", "threads", "num_classes"))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints a markdown table (or JSON with ``--json``)."""
    return run_command(argv, _parse, run_benchmark, format_table)
