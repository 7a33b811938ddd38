"""``fftprompt-bench fourierft``: train-step time and peak memory of adapters on a frozen timm ViT.

Methods, all with a trainable linear head on the same frozen backbone and the same batch:

- ``linear_probe``: the head only;
- ``lora``: PEFT's LoRA (rank ``--lora-rank``, ``lora_alpha`` = rank) on the target layers;
- ``peft_fourierft``: PEFT's FourierFT (``init_weights=False``) on the target layers;
- ``fourierft``: ours (:mod:`fftprompt.fourierft`) on the same layers with the same ``n_frequency`` and seed.

The PEFT methods receive the exact module paths our injection adapted, so every method adapts the same layers.
With ``--compile SPEC`` every method is measured a second time under ``torch.compile`` (``<method>+compiled``).
A train step is ``zero_grad(set_to_none=True)``, forward, cross-entropy, backward and an AdamW step. Steps run
round-robin over the methods (one step of each in turn) so that load from other processes hits all methods alike;
times are medians after warm-up (CUDA events on GPUs). On CPUs the CPU time of the process per step is reported too:
unlike wall time it does not count the time other processes hold the cores (it still counts their cache and memory
traffic), so its ratios are the steadier ones on a shared machine.

Peak memory (see :mod:`fftprompt.bench._common`): the bytes alive across steps (parameters, buffers, optimiser
state) plus the step's own peak, from ``torch.cuda.max_memory_allocated`` on GPUs and from the profiler's raw
allocation events on CPUs (activations, saved tensors, gradients, temporaries).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, get_args

import torch
from torch import Tensor, nn

from fftprompt.backbone import create_backbone
from fftprompt.bench._common import (
    add_model_options,
    add_step_options,
    backbone_kwargs,
    check_model_options,
    check_options,
    compile_model,
    cpu_step_peak_bytes,
    cuda_step_peak_bytes,
    machine,
    round_robin,
    run_command,
    split_choices,
    state_bytes,
    time_ms,
    train_step,
    wall_and_cpu_ms,
)
from fftprompt.fourierft import VIT_B_N_FREQUENCY, FourierFTConfig, GradMode, inject_fourierft

METHODS = ("linear_probe", "lora", "peft_fourierft", "fourierft")
COMPILED = "+compiled"  # result-name suffix of a method measured under torch.compile (--compile)


class _Classifier(nn.Module):
    """A backbone returning pooled features ``(B, D)`` and a linear head ``(B, D) -> (B, K)``."""

    def __init__(self, backbone: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


@dataclass
class MethodResult:
    """Measurements of one method."""

    method: str
    trainable_params: int
    step_ms: float
    step_ms_all: list[float]
    step_cpu_ms: float | None
    peak_mb: float
    state_mb: float


def _build_methods(args: argparse.Namespace) -> tuple[dict[str, nn.Module], list[str]]:
    """One model per requested method, all copies of the same frozen backbone and head."""
    from peft import FourierFTConfig as PeftFourierFTConfig
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    backbone = create_backbone(
        args.model, pretrained=False, img_size=args.img_size, **backbone_kwargs(args.backbone_arg)
    ).model
    base = _Classifier(backbone, backbone.embed_dim, args.num_classes)
    base.requires_grad_(False)
    config = FourierFTConfig(
        n_frequency=args.n_frequency, scaling=150.0, seed=777, targets=tuple(args.targets), grad_mode=args.grad_mode
    )
    ours = copy.deepcopy(base)
    adapted = [f"backbone.{name}" for name in inject_fourierft(ours.backbone, config)]
    models: dict[str, nn.Module] = {}
    for method in args.methods:
        if method == "fourierft":
            model = ours
        elif method == "linear_probe":
            model = copy.deepcopy(base)
        elif method == "lora":
            lora = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, lora_dropout=0.0, target_modules=adapted)
            model = inject_adapter_in_model(lora, copy.deepcopy(base))
        else:
            fourier = PeftFourierFTConfig(
                n_frequency=args.n_frequency,
                scaling=150.0,
                random_loc_seed=777,
                init_weights=False,
                target_modules=adapted,
            )
            model = inject_adapter_in_model(fourier, copy.deepcopy(base))
        model.head.requires_grad_(True)
        models[method] = model.to(args.device).eval()  # frozen backbone in eval(), as in training
    return models, adapted


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Measures every method; returns the machine, settings, per-method results and ratios."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models, adapted = _build_methods(args)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    optimizers = {
        name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for name, model in models.items()
    }

    runs: dict[str, Any] = dict(models)
    if args.compile:  # the same models under torch.compile, measured in the same rounds
        runs |= {name + COMPILED: compile_model(model, args.compile) for name, model in models.items()}
        optimizers |= {
            name + COMPILED: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            for name, model in models.items()
        }
    steps = {name: train_step(run, optimizers[name], images, labels, device, args.dtype) for name, run in runs.items()}

    def measure(step: Callable[[], None]) -> tuple[float, float | None]:
        # CPU time only on CPUs: on GPUs the process mostly waits for the device
        return wall_and_cpu_ms(step) if device.type == "cpu" else (time_ms(step, device), None)

    measured = round_robin(steps, args.warmup, args.steps, measure, alternate=False)
    wall = {name: [wall_ms for wall_ms, _ in pairs] for name, pairs in measured.items()}
    cpu = {name: [cpu_ms for _, cpu_ms in pairs if cpu_ms is not None] for name, pairs in measured.items()}

    results = {}
    for name in runs:
        model = models[name.removesuffix(COMPILED)]
        state = state_bytes(model, optimizers[name])
        optimizers[name].zero_grad(set_to_none=True)  # frees inside the profiled step would be of unknown blocks
        if device.type == "cuda":
            peak = state + cuda_step_peak_bytes(steps[name], device)
        elif args.memory:
            peak = state + cpu_step_peak_bytes(steps[name])
        else:
            peak = float("nan")
        results[name] = MethodResult(
            method=name,
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            step_ms=statistics.median(wall[name]),
            step_ms_all=[round(t, 2) for t in wall[name]],
            step_cpu_ms=statistics.median(cpu[name]) if cpu[name] else None,
            peak_mb=peak / 2**20,
            state_mb=state / 2**20,
        )
    ratios = {}
    for suffix in ("", COMPILED):  # eager against eager, compiled against compiled
        if "fourierft" + suffix not in results:
            continue
        ours = results["fourierft" + suffix]
        for other in ("peft_fourierft", "lora"):
            if other + suffix in results:
                theirs = results[other + suffix]
                ratios[f"time_fourierft{suffix}/{other}{suffix}"] = ours.step_ms / theirs.step_ms
                if ours.step_cpu_ms is not None:
                    ratios[f"cpu_time_fourierft{suffix}/{other}{suffix}"] = ours.step_cpu_ms / theirs.step_cpu_ms
                ratios[f"memory_fourierft{suffix}/{other}{suffix}"] = ours.peak_mb / theirs.peak_mb
    return {
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k != "json"} | {"adapted_layers": len(adapted)},
        "results": [asdict(r) for r in results.values()],
        "ratios": ratios,
    }


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a :func:`run_benchmark` report."""
    s = report["settings"]
    m = report["machine"]
    lines = [
        f"{s['model']}, batch {s['batch_size']}, {s['img_size']}px, {s['dtype']}, {s['device']} ({m['device']}, "
        f"{m['threads']} threads), targets {','.join(s['targets'])} ({s['adapted_layers']} layers), "
        f"n_frequency {s['n_frequency']} (ours: grad_mode {s['grad_mode']}), LoRA r{s['lora_rank']}, "
        f"torch {m['torch']}; median of {s['steps']} steps after {s['warmup']} warm-up; "
        f"load average {m.get('load_average')}",
        "",
        "| method | trainable params | train step (ms) | CPU time per step (ms) | peak memory (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        cpu = "-" if r["step_cpu_ms"] is None else f"{r['step_cpu_ms']:.0f}"
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['step_ms']:.0f} | {cpu} | {r['peak_mb']:.0f} |")
    if report["ratios"]:
        lines.append("")
        lines += [f"- {key}: {value:.2f}" for key, value in report["ratios"].items()]
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fftprompt-bench fourierft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm ViT name (built without weights)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    add_step_options(parser)
    parser.add_argument("--n-frequency", type=int, default=VIT_B_N_FREQUENCY)
    parser.add_argument(
        "--targets", default="qkv,proj,fc1,fc2", help="comma-separated whole-layer targets (PEFT adapts whole layers)"
    )
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument(
        "--grad-mode", choices=get_args(GradMode), default="auto", help="coefficient gradient of ours (see fourierft)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    add_model_options(parser)
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the CPU memory profile")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON (to stdout: -)")
    args = parser.parse_args(list(argv))
    args.targets = [t for t in args.targets.split(",") if t]
    args.methods = split_choices(parser, "--methods", args.methods, METHODS)
    blocks = [t for t in args.targets if t in ("q", "k", "v")]
    if blocks:
        parser.error(f"--targets {blocks}: PEFT cannot adapt row blocks of a fused qkv; use whole layers such as qkv")
    positive = ("batch_size", "img_size", "steps", "threads", "n_frequency", "lora_rank", "num_classes")
    check_options(parser, args, positive)
    check_model_options(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints a markdown table (or JSON with ``--json``)."""
    return run_command(argv, _parse, run_benchmark, format_table)
