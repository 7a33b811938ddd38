"""``fftprompt-bench prompts``: train-step time of frequency-conditioned prompts vs VPT prompts on a frozen ViT.

Methods, all shallow with the same number of prompts, the same frozen backbone (one shared instance, built without
weights), the same linear head and the same batch:

- ``vpt``: static prompts (:class:`fftprompt.prompts.VPTPrompt`);
- ``fft``: frequency-conditioned prompts (:class:`fftprompt.prompts.FrequencyPrompt`, default settings), including
  the frequency features computed every step;
- ``fft_full``: ``fft`` projecting the whole patch spectrum (``spectrum_crop=None``);
- ``fft_maps``: ``fft`` without the spectrum projection (compact maps only, ``use_spectrum=False``);
- ``fft_tokens``: ``fft`` also reading the frozen patch embeddings (``use_patch_tokens=True``).

A train step is ``zero_grad(set_to_none=True)``, forward, cross-entropy, backward and an AdamW step. Steps run
round-robin over the methods (in alternating order) so that load from other processes hits all methods alike; the
report gives medians after warm-up, the fastest step (load only ever adds time), the process's CPU time per step
(time spent waiting for a core does not count) and the median of the per-round ratios. After the timed steps, the
parts specific to ``fft`` (feature extraction, and generator forward plus backward on fixed maps) are timed on their
own, to show where its extra time goes.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from fftprompt.backbone import create_backbone
from fftprompt.bench._common import (
    check_options,
    machine,
    round_robin,
    run_command,
    split_choices,
    time_ms,
    train_step,
    wall_and_cpu_ms,
)
from fftprompt.model import PromptedViT, create_model
from fftprompt.prompts import FrequencyPrompt, VPTPrompt
from fftprompt.spectral import FrequencyFeatures

METHODS = ("vpt", "fft", "fft_full", "fft_maps", "fft_tokens")
_FFT_OPTIONS: dict[str, dict[str, Any]] = {
    "fft": {},
    "fft_full": {"spectrum_crop": None},
    "fft_maps": {"use_spectrum": False},
    "fft_tokens": {"use_patch_tokens": True},
}


def _build(args: argparse.Namespace) -> dict[str, PromptedViT]:
    torch.manual_seed(0)
    backbone = create_backbone(args.model, pretrained=False, img_size=args.img_size)
    models = {}
    for method in args.methods:
        if method == "vpt":
            prompt = functools.partial(VPTPrompt, num_tokens=args.num_tokens)
            features = None
        else:
            prompt = functools.partial(FrequencyPrompt, num_tokens=args.num_tokens, **_FFT_OPTIONS[method])
            features = FrequencyFeatures(patch_size=backbone.patch_size)
        models[method] = create_model(backbone, args.num_classes, prompt=prompt, features=features).train()
    return models


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Measures every method; returns the machine, settings, per-method results and ratios to ``vpt``."""
    torch.set_num_threads(args.threads)
    models = _build(args)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator)
    optimizers = {
        name: torch.optim.AdamW([p for group in m.trainable_parameters().values() for p in group], lr=1e-4)
        for name, m in models.items()
    }
    steps = {name: train_step(models[name], optimizers[name], images, labels) for name in models}
    measured = round_robin(steps, args.warmup, args.steps, wall_and_cpu_ms)
    times = {name: [wall for wall, _ in pairs] for name, pairs in measured.items()}
    cpu_times = {name: [cpu for _, cpu in pairs] for name, pairs in measured.items()}

    results = []
    for name, model in models.items():
        result: dict[str, Any] = {
            "method": name,
            "prompt_params": model.prompt.num_parameters(),
            "step_ms": statistics.median(times[name]),
            "step_ms_min": min(times[name]),
            "step_cpu_ms": statistics.median(cpu_times[name]),
            "step_ms_all": [round(t, 1) for t in times[name]],
        }
        if model.features is not None:
            result.update(_fft_parts(model, images, args.steps))
        results.append(result)
    by_name = {r["method"]: r for r in results}
    ratios = {}
    if "vpt" in by_name:
        for name, result in by_name.items():
            if name != "vpt":
                ratios[f"{name}/vpt"] = result["step_ms"] / by_name["vpt"]["step_ms"]
                # load from other processes only adds time: the fastest steps are the least disturbed
                ratios[f"{name}/vpt (fastest steps)"] = result["step_ms_min"] / by_name["vpt"]["step_ms_min"]
                # CPU time of this process: waiting for a core shared with other processes does not count
                ratios[f"{name}/vpt (CPU time)"] = result["step_cpu_ms"] / by_name["vpt"]["step_cpu_ms"]
                # steps of one round ran back to back, under similar load: their ratio is less noisy
                paired = [t / v for t, v in zip(times[name], times["vpt"], strict=True)]
                ratios[f"{name}/vpt (median of per-round ratios)"] = statistics.median(paired)
                if "features_ms" in result:
                    extra = result["features_ms"] + result["generator_fwd_bwd_ms"]
                    ratios[f"{name}: (features + generator) / vpt step"] = extra / by_name["vpt"]["step_ms"]
    return {
        "machine": machine("cpu"),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "results": results,
        "ratios": ratios,
    }


def _fft_parts(model: PromptedViT, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median times of the frequency features and of the generator's forward + backward on fixed maps."""
    features_ms = statistics.median(time_ms(lambda: model.compute_maps(images)) for _ in range(repeats))
    maps = model.compute_maps(images)
    patch_tokens = model.backbone.embed(images)[0][:, model.backbone.num_prefix_tokens :].detach()

    def generator_step() -> None:
        model.prompt.zero_grad(set_to_none=True)
        model.prompt(images, maps, patch_tokens).square().mean().backward()

    generator_ms = statistics.median(time_ms(generator_step) for _ in range(repeats))
    return {"features_ms": features_ms, "generator_fwd_bwd_ms": generator_ms}


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a :func:`run_benchmark` report."""
    s, m = report["settings"], report["machine"]
    lines = [
        f"{s['model']} (no weights), {s['num_tokens']} shallow prompts, batch {s['batch_size']}, {s['img_size']}px, "
        f"float32, CPU ({m['device']}, {m['threads']} threads), torch {m['torch']}; "
        f"median of {s['steps']} steps after {s['warmup']} warm-up",
        "",
        "| method | prompt params | train step, median (ms) | fastest (ms) | CPU time, median (ms) | features (ms) "
        "| generator fwd+bwd (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        features = f"{r['features_ms']:.0f}" if "features_ms" in r else "-"
        generator = f"{r['generator_fwd_bwd_ms']:.0f}" if "generator_fwd_bwd_ms" in r else "-"
        lines.append(
            f"| {r['method']} | {r['prompt_params']:,} | {r['step_ms']:.0f} | {r['step_ms_min']:.0f} "
            f"| {r['step_cpu_ms']:.0f} | {features} | {generator} |"
        )
    if report["ratios"]:
        lines.append("")
        lines += [f"- {key}: {value:.3f}" for key, value in report["ratios"].items()]
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fftprompt-bench prompts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm ViT name (built without weights)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-tokens", type=int, default=10, help="shallow prompts per method")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--methods", default="vpt,fft", help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON (to stdout: -)")
    args = parser.parse_args(list(argv))
    args.methods = split_choices(parser, "--methods", args.methods, METHODS)
    check_options(parser, args, positive=("batch_size", "img_size", "steps", "threads", "num_tokens", "num_classes"))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints a markdown table (or JSON with ``--json``)."""
    return run_command(argv, _parse, run_benchmark, format_table)
