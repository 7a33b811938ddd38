"""``fftprompt-bench methods``: every fine-tuning method side by side: parameters, train step, inference, memory.

One row per method, each a :class:`fftprompt.model.PromptedViT` built through fftprompt's own API
(:func:`fftprompt.backbone.create_backbone`, :func:`fftprompt.model.create_model`, :class:`FourierFTConfig`), i.e.
the code users train, on a **fresh** backbone (adapters change a backbone in place) drawn from the same seed, so
every method sees the same frozen weights (built without pretrained weights: speed does not depend on them):

- ``linear_probe``: the classification head only;
- ``vpt_shallow`` / ``vpt_deep``: :class:`VPTPrompt` with ``--num-tokens`` prompts (at the input / in every block);
- ``vfpt``: :class:`VFPTPrompt` (deep, ``alpha`` 0.5);
- ``fft_shallow`` / ``fft_deep``: :class:`FrequencyPrompt` (default settings) with ``FrequencyFeatures`` computed
  every step;
- ``fourierft``: ours, :class:`FourierFTConfig` (``--n-frequency``, ``--fourierft-targets``, ``--adapter-dtype``:
  the coefficients' storage dtype) injected by ``create_model(adapter=...)``;
- ``fourierft_peft``: PEFT's FourierFT (``init_weights=False``) on the same linear layers, same ``n_frequency``,
  scaling and location seed (skipped when peft is not installed, or the targets are ``q``/``k``/``v`` row blocks,
  which PEFT cannot adapt);
- ``lora``: PEFT's LoRA, rank ``--lora-rank`` (``lora_alpha`` = rank), on the same linear layers (skipped likewise);
- ``fft_fourierft``: ``fft_shallow`` prompts plus our FourierFT;
- ``full_finetune``: every backbone parameter trainable (backbone still in ``eval()``: no dropout/drop-path).

PEFT adapters are injected into the timm model inside the backbone (``peft.inject_adapter_in_model``); the
``PromptedViT`` then counts their parameters in its ``"adapter"`` group like ours.

Measurements (random images and labels, ``--batch-size`` at ``--img-size``):

- train step: ``zero_grad(set_to_none=True)``, forward, cross-entropy, backward, ``torch.optim.AdamW`` step, with
  autocast in ``--dtype`` when it is not float32 (parameters and optimiser state stay float32);
- inference: forward under ``torch.no_grad`` in ``eval()`` (autocast likewise), reported per image.

With ``--compile SPEC`` the methods of ``--compile-methods`` get a second row, ``<method>+compiled``: the same model
under ``torch.compile`` (an inductor mode, or ``backend:NAME``), measured in the same rounds; ratios are then given
eager against eager and compiled against compiled.

Steps run round-robin over the methods (alternating order every round) so that load from other processes hits all
methods alike; times are medians of ``--steps`` repetitions after ``--warmup`` untimed ones (CUDA events on GPUs).
Memory: ``trainable_bytes`` (the trainable tensors as stored: half for bfloat16/float16 FourierFT coefficients,
``--adapter-dtype``; their gradients and AdamW moments follow the same dtype, in ``state_mb``) and the peak of a
train step: see :mod:`fftprompt.bench._common` (GPU: ``torch.cuda.max_memory_allocated``; CPU:
``torch.profiler`` allocation events), in both cases the step's own peak plus the bytes the method keeps between
steps (parameters, buffers, optimiser state).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from fftprompt.backbone import Backbone, create_backbone
from fftprompt.bench._common import (
    add_backbone_options,
    add_model_options,
    add_step_options,
    autocast,
    backbone_kwargs,
    check_model_options,
    check_options,
    compile_model,
    cpu_step_peak_bytes,
    cuda_step_peak_bytes,
    machine,
    print_report,
    round_robin,
    split_choices,
    state_bytes,
    time_ms,
    train_step,
)
from fftprompt.fourierft import QKV_BLOCKS, REGEX_PREFIX, VIT_B_N_FREQUENCY, AdapterDtype, FourierFTConfig
from fftprompt.methods import METHOD_LABELS
from fftprompt.model import PromptedViT, create_model
from fftprompt.prompts import FrequencyPrompt, VFPTPrompt, VPTPrompt
from fftprompt.spectral import FrequencyFeatures

Method = Literal[
    "linear_probe",
    "vpt_shallow",
    "vpt_deep",
    "vfpt",
    "fft_shallow",
    "fft_deep",
    "fourierft",
    "fourierft_peft",
    "lora",
    "fft_fourierft",
    "full_finetune",
]
METHODS: tuple[str, ...] = get_args(Method)
# the trained methods' labels, with ours and PEFT's FourierFT told apart
LABELS: dict[str, str] = METHOD_LABELS | {
    "fourierft": "FourierFT (ours)",
    "fourierft_peft": "FourierFT (PEFT)",
    "lora": "LoRA",
    "full_finetune": "full fine-tuning",
}
PEFT_METHODS = ("fourierft_peft", "lora")
# numerator, denominator: the comparisons the project's goals are stated in
RATIOS = (
    ("fourierft", "fourierft_peft"),
    ("fourierft", "lora"),
    ("fft_shallow", "vpt_shallow"),
    ("fft_deep", "vpt_deep"),
)
COMPILED = "+compiled"  # row-name suffix of a method measured under torch.compile (--compile)
FFT_OVER_VPT_GOAL = 1.15  # fft prompts' train step at most 1.15x VPT's (docs/benchmarks.md, "Prompts")


def peft_available() -> bool:
    """Whether the ``peft`` package can be imported."""
    return importlib.util.find_spec("peft") is not None


def adapted_linear_paths(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Paths of the ``nn.Linear`` modules of ``model`` that whole-layer FourierFT ``targets`` select.

    The same rule as :func:`fftprompt.fourierft.inject_fourierft` for whole layers (a plain name matches the last
    component of a module path; ``"re:<regex>"`` matches the whole path), so PEFT adapters get the exact layers ours
    adapts (PEFT's own suffix matching would also pick e.g. the patch embedding's ``proj`` convolution).

    Raises:
        ValueError: when ``targets`` holds ``q``/``k``/``v`` row blocks (PEFT adapts whole layers only) or selects
            no linear layer.
    """
    blocks = [t for t in targets if t in QKV_BLOCKS]
    if blocks:
        raise ValueError(f"targets {blocks} are row blocks of a fused qkv; PEFT adapts whole layers such as 'qkv'")
    paths = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        for target in targets:
            if target.startswith(REGEX_PREFIX):
                matched = re.fullmatch(target[len(REGEX_PREFIX) :], name) is not None
            else:
                matched = name.split(".")[-1] == target
            if matched:
                paths.append(name)
                break
    if not paths:
        raise ValueError(f"targets {list(targets)} select no nn.Linear of the model")
    return paths


def create_method_model(
    method: Method,
    backbone: Backbone,
    num_classes: int,
    *,
    num_tokens: int = 10,
    n_frequency: int = VIT_B_N_FREQUENCY,
    scaling: float = 150.0,
    targets: Sequence[str] = ("qkv",),
    lora_rank: int = 16,
    adapter_dtype: AdapterDtype | None = None,
) -> PromptedViT:
    """Builds the model of one method on ``backbone`` (which adapters change in place: pass a fresh one).

    Args:
        method: One of :data:`METHODS`.
        backbone: A frozen backbone not used by another model.
        num_classes: Classes ``K`` of the head.
        num_tokens: Prompts per prompted layer (VPT, VFPT, fft prompts).
        n_frequency: FourierFT entries per adapted matrix (ours and PEFT's).
        scaling: FourierFT scaling (ours and PEFT's).
        targets: FourierFT targets; PEFT FourierFT and LoRA adapt the same layers (whole layers only).
        lora_rank: LoRA rank (``lora_alpha`` = rank).
        adapter_dtype: Storage dtype of our FourierFT coefficients (``FourierFTConfig.dtype``).

    Returns:
        The model; its trainable parameters are exactly the method's.

    Raises:
        ValueError: for an unknown method, or a PEFT method when peft is not installed or the targets are row
            blocks.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {list(METHODS)}")
    adapter = FourierFTConfig(
        n_frequency=n_frequency, scaling=scaling, seed=777, targets=tuple(targets), dtype=adapter_dtype
    )
    prompt: Callable[..., Any] | None = None
    features = None
    if method in ("vpt_shallow", "vpt_deep"):
        prompt = functools.partial(VPTPrompt, num_tokens=num_tokens, deep=method == "vpt_deep")
    elif method == "vfpt":
        prompt = functools.partial(VFPTPrompt, num_tokens=num_tokens, alpha=0.5, deep=True)
    elif method in ("fft_shallow", "fft_deep", "fft_fourierft"):
        prompt = functools.partial(FrequencyPrompt, num_tokens=num_tokens, deep=method == "fft_deep")
        features = FrequencyFeatures(patch_size=backbone.patch_size)
    elif method in PEFT_METHODS:
        _inject_peft(method, backbone, n_frequency=n_frequency, scaling=scaling, targets=targets, rank=lora_rank)
    uses_ours = method in ("fourierft", "fft_fourierft")
    model = create_model(
        backbone, num_classes, prompt=prompt, features=features, adapter=adapter if uses_ours else None
    )
    if method == "full_finetune":
        backbone.model.requires_grad_(True)
    return model


def _inject_peft(
    method: str, backbone: Backbone, *, n_frequency: int, scaling: float, targets: Sequence[str], rank: int
) -> None:
    if not peft_available():
        raise ValueError(f"method {method!r} needs the peft package (pip install peft)")
    from peft import FourierFTConfig as PeftFourierFTConfig
    from peft import LoraConfig, inject_adapter_in_model

    paths = adapted_linear_paths(backbone.model, targets)
    if method == "lora":
        config: Any = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=paths)
    else:
        config = PeftFourierFTConfig(
            n_frequency=n_frequency, scaling=scaling, random_loc_seed=777, init_weights=False, target_modules=paths
        )
    inject_adapter_in_model(config, backbone.model)


def skip_reason(method: str, targets: Sequence[str]) -> str | None:
    """Why ``method`` cannot run here (a note for its row), or None when it can."""
    if method not in PEFT_METHODS:
        return None
    if not peft_available():
        return "skipped: peft is not installed (pip install peft)"
    blocks = [t for t in targets if t in QKV_BLOCKS]
    if blocks:
        return f"skipped: PEFT cannot adapt the row blocks {blocks} of a fused qkv (use --fourierft-targets qkv)"
    return None


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Builds and measures every requested method; returns machine, settings, per-method rows and ratios."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    extra = backbone_kwargs(args.backbone_arg)

    def fresh_backbone() -> Backbone:
        torch.manual_seed(0)  # the same frozen weights for every method
        return create_backbone(args.backbone, pretrained=False, img_size=args.img_size, **extra)

    models: dict[str, PromptedViT] = {}
    skipped: dict[str, str] = {}
    for method in args.methods:
        reason = skip_reason(method, args.fourierft_targets)
        if reason is not None:
            skipped[method] = reason
            continue
        torch.manual_seed(1)  # the same head (and prompt) initialisation for every method
        model = create_method_model(
            method,
            fresh_backbone(),
            args.num_classes,
            num_tokens=args.num_tokens,
            n_frequency=args.n_frequency,
            scaling=args.scaling,
            targets=args.fourierft_targets,
            lora_rank=args.lora_rank,
            adapter_dtype=args.adapter_dtype,
        )
        models[method] = model.to(device)

    generator = torch.Generator().manual_seed(2)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    # what each row runs: the model itself, or (name + COMPILED) the same model under torch.compile
    runs: dict[str, Callable[..., Any]] = dict(models)
    if args.compile:
        for method in models:
            if method in args.compile_methods:
                runs[method + COMPILED] = compile_model(models[method], args.compile)
    optimizers = {
        name: torch.optim.AdamW(
            [p for group in models[_base(name)].trainable_parameters().values() for p in group], lr=1e-4
        )
        for name in runs
    }

    def train(name: str) -> Callable[[], None]:
        return train_step(runs[name], optimizers[name], images, labels, device, args.dtype)

    def inference_step(name: str) -> Callable[[], None]:
        model = runs[name]

        def step() -> None:
            with torch.no_grad(), autocast(device, args.dtype):
                model(images)

        return step

    for model in models.values():
        model.train()

    def timed(step: Callable[[], None]) -> float:
        return time_ms(step, device)

    train_times = round_robin({name: train(name) for name in runs}, args.warmup, args.steps, timed)
    for model in models.values():
        model.eval()
    infer_times = round_robin({name: inference_step(name) for name in runs}, args.warmup, args.steps, timed)

    rows: list[dict[str, Any]] = []
    for method in [*args.methods, *(name for name in runs if name.endswith(COMPILED))]:
        if method in skipped:
            rows.append({"method": method, "label": _label(method, args), "skipped": skipped[method]})
            continue
        model = models[_base(method)]
        model.train()
        state = state_bytes(model, optimizers[method])
        if device.type == "cuda":
            peak: float = state + cuda_step_peak_bytes(train(method), device)
        elif args.memory:
            peak = state + cpu_step_peak_bytes(train(method))
        else:
            peak = float("nan")
        rows.append(
            {
                "method": method,
                "label": _label(method, args),
                "trainable_params": model.num_trainable_parameters(),
                "trainable_bytes": trainable_bytes(model),
                "total_params": model.num_total_parameters(),
                "train_step_ms": statistics.median(train_times[method]),
                "train_step_ms_min": min(train_times[method]),
                "train_step_ms_all": [round(t, 3) for t in train_times[method]],
                "inference_ms_per_image": statistics.median(infer_times[method]) / args.batch_size,
                "inference_ms_per_image_min": min(infer_times[method]) / args.batch_size,
                "inference_ms_all": [round(t, 3) for t in infer_times[method]],
                "peak_train_mb": peak / 2**20,
                "state_mb": state / 2**20,
            }
        )
    return {
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "out_dir")},
        "results": rows,
        "ratios": ratios(rows),
    }


def trainable_bytes(model: PromptedViT) -> int:
    """Bytes of the trainable tensors as stored (each in its own dtype)."""
    return sum(p.numel() * p.element_size() for group in model.trainable_parameters().values() for p in group)


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The ratios the project's goals are stated in (:data:`RATIOS`), from the per-method rows of a report.

    Train step and inference: ratio of the medians; of the fastest repetitions (load from other processes only ever
    adds time, so the fastest are the least disturbed); and, for the train step, the median of the per-round ratios
    (the two steps of a round ran back to back, under similar load).
    """
    by_method = {r["method"]: r for r in rows if "skipped" not in r}
    result: dict[str, float] = {}
    # eager against eager, compiled against compiled
    pairs = [(n + suffix, d + suffix) for suffix in ("", COMPILED) for n, d in RATIOS]
    for numerator, denominator in pairs:
        if numerator not in by_method or denominator not in by_method:
            continue
        top, bottom = by_method[numerator], by_method[denominator]
        key = f"{numerator}/{denominator}"
        result[f"train step {key}"] = top["train_step_ms"] / bottom["train_step_ms"]
        result[f"train step {key} (fastest steps)"] = min(top["train_step_ms_all"]) / min(bottom["train_step_ms_all"])
        paired = [a / b for a, b in zip(top["train_step_ms_all"], bottom["train_step_ms_all"], strict=True)]
        result[f"train step {key} (median of per-round ratios)"] = statistics.median(paired)
        result[f"inference {key}"] = top["inference_ms_per_image"] / bottom["inference_ms_per_image"]
        result[f"inference {key} (fastest)"] = min(top["inference_ms_all"]) / min(bottom["inference_ms_all"])
        result[f"peak memory {key}"] = top["peak_train_mb"] / bottom["peak_train_mb"]
        result[f"trainable params {key}"] = top["trainable_params"] / bottom["trainable_params"]
    return result


def _base(name: str) -> str:
    """The method of a row name (``fourierft+compiled`` -> ``fourierft``)."""
    return name.removesuffix(COMPILED)


def _label(method: str, args: argparse.Namespace) -> str:
    suffix = f" (compiled, {args.compile})" if method.endswith(COMPILED) else ""
    method = _base(method)
    if method == "lora":
        return f"LoRA r{args.lora_rank} (PEFT){suffix}"
    return LABELS[method] + suffix


def format_table(report: dict[str, Any]) -> str:
    """Markdown table (with a settings line and the ratios) of a :func:`run_benchmark` report."""
    s, m = report["settings"], report["machine"]
    extra = "".join(f", {item}" for item in s["backbone_arg"])
    load = "" if m["load_average"] is None else f", load average {m['load_average']}"
    lines = [
        f"{s['backbone']} ({s['img_size']} px{extra}, no weights), batch {s['batch_size']}, {s['dtype']}, "
        f"{s['device']} ({m['device']}, {m['threads']} threads of {m['cpu_count']} cores{load}), torch {m['torch']}; "
        f"{s['num_tokens']} prompts, FourierFT n={s['n_frequency']} on {','.join(s['fourierft_targets'])}"
        f"{'' if s['adapter_dtype'] is None else ' in ' + s['adapter_dtype']}; "
        f"median of {s['steps']} steps after {s['warmup']} warm-up",
        "",
        "| method | trainable params | trainable (KiB) | train step, median (fastest) (ms) "
        "| inference, median (fastest) (ms/image) | peak train memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"| {r['label']} | - | - | - | - | - ({r['skipped']}) |")
            continue
        memory = "not measured" if math.isnan(r["peak_train_mb"]) else f"{r['peak_train_mb']:.1f}"
        lines.append(
            f"| {r['label']} | {r['trainable_params']:,} | {r['trainable_bytes'] / 1024:,.1f} "
            f"| {r['train_step_ms']:.1f} ({r['train_step_ms_min']:.1f}) "
            f"| {r['inference_ms_per_image']:.2f} ({r['inference_ms_per_image_min']:.2f}) | {memory} |"
        )
    if report["ratios"]:
        lines += ["", "Ratios (numerator / denominator; < 1 means the numerator is faster or smaller):", ""]
        lines += [f"- {key}: {value:.3f}" for key, value in report["ratios"].items()]
        fft_vpt = report["ratios"].get("train step fft_shallow/vpt_shallow")
        if fft_vpt is not None:
            verdict = "met" if fft_vpt <= FFT_OVER_VPT_GOAL else "missed"
            lines.append(f"- goal fft_shallow/vpt_shallow train step <= {FFT_OVER_VPT_GOAL}: {verdict}")
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fftprompt-bench methods", description=__doc__.split("\n\n")[0])
    add_backbone_options(parser, batch_size=32)
    add_step_options(parser)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--num-tokens", type=int, default=10, help="prompts per prompted layer")
    parser.add_argument(
        "--n-frequency", type=int, default=VIT_B_N_FREQUENCY, help="FourierFT entries per adapted matrix"
    )
    parser.add_argument("--scaling", type=float, default=150.0, help="FourierFT scaling")
    parser.add_argument(
        "--fourierft-targets",
        default="qkv",
        help="comma-separated FourierFT targets; LoRA and PEFT FourierFT adapt the same (whole) layers",
    )
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument(
        "--adapter-dtype",
        choices=get_args(AdapterDtype),
        default=None,
        help="storage dtype of our FourierFT coefficients (default: float32; FFTs stay float32)",
    )
    add_model_options(parser)
    parser.add_argument(
        "--compile-methods",
        default="fourierft,fourierft_peft,lora,vpt_shallow,fft_shallow,full_finetune",
        help="comma-separated methods that also get a compiled row (with --compile)",
    )
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the CPU memory profile")
    parser.add_argument("--out-dir", default=None, help="also write methods.json and methods.md into this folder")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON (to stdout: -)")
    args = parser.parse_args(list(argv))
    args.methods = split_choices(parser, "--methods", args.methods, list(METHODS))
    args.compile_methods = split_choices(parser, "--compile-methods", args.compile_methods, list(METHODS))
    check_model_options(parser, args)
    args.fourierft_targets = [t for t in args.fourierft_targets.split(",") if t]
    if not args.fourierft_targets:
        parser.error("--fourierft-targets is empty; expected e.g. qkv or q,v")
    positive = ("batch_size", "img_size", "steps", "threads", "num_tokens", "n_frequency", "lora_rank")
    check_options(parser, args, positive)
    if args.num_classes < 2:
        parser.error("--num-classes must be >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; prints a markdown table (or JSON with ``--json -``); ``--out-dir`` also writes files."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    report = run_benchmark(args)
    table = format_table(report)
    if args.out_dir is not None:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "methods.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (out_dir / "methods.md").write_text(table + "\n", encoding="utf-8")
    print_report(report, table, args.json)
    return 0
