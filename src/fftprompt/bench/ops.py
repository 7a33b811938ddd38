"""``fftprompt-bench ops``: operator and kernel-launch counts of one train step per method, from ``torch.profiler``.

A step that waits on the CPU to launch its kernels (a small model, a fast GPU) costs what it launches, not what it
computes. This command profiles one train step of each method (after warm-up, so that caches, compilation and CUDA
graphs are in place) and counts, separately for the forward, the backward and the optimiser step:

- ``ops``: compute operators, i.e. ``aten`` operators that call no other compute operator (views, reshapes,
  allocations and metadata queries are not counted): on a GPU each is about one kernel launch;
- ``copy_`` (leaf copies: dtype conversions, ``contiguous``, gathers into place), ``_to_copy`` (dtype or device
  conversions; copies of 0-dim tensors, Python numbers wrapped for an operator, are not counted anywhere) and
  ``fft`` (``_fft_r2c``, ``_fft_c2r``, ``_fft_c2c``: the FFT kernels themselves);
- on CUDA devices also ``launches``: CUDA runtime launch calls on the CPU side (``cudaLaunchKernel``,
  ``cudaGraphLaunch``, ...), and ``kernels``: the kernels that ran on the device.

Methods are those of ``fftprompt-bench methods`` (:func:`fftprompt.bench.methods.create_method_model`), plus two
parts timed alone: ``features`` (``FrequencyFeatures`` + ``compact()`` under ``no_grad``, forward only) and
``generator`` (``FrequencyPrompt`` forward + backward on fixed maps). With ``--compile SPEC`` every model runs under
``torch.compile`` instead (an inductor mode or ``backend:NAME``), and the row also gives the graph breaks that
``torch._dynamo.explain`` finds in its forward. A compiled step's ``aten`` counts on a CPU only cover what the
compiled code calls out to (its fused kernels are not ``aten`` operators); the launch counts on CUDA count everything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function

from fftprompt.bench._common import (
    COMPILE_HELP,
    add_backbone_options,
    add_model_options,
    add_step_options,
    autocast,
    benchmark_backbone,
    check_model_options,
    check_options,
    compile_model,
    machine,
    run_command,
    split_choices,
)
from fftprompt.bench.methods import METHODS as MODEL_METHODS
from fftprompt.bench.methods import create_method_model, skip_reason
from fftprompt.fourierft import VIT_B_N_FREQUENCY, FourierFTLinear
from fftprompt.fourierft import functional as fourierft_functional
from fftprompt.prompts import FrequencyPrompt, ModelDims
from fftprompt.spectral import FrequencyFeatures

PARTS = ("features", "generator")
METHODS: tuple[str, ...] = (*MODEL_METHODS, *PARTS)
PHASES = ("forward", "backward", "optimizer")
FFT_OPS = frozenset({"aten::_fft_r2c", "aten::_fft_c2r", "aten::_fft_c2c"})
# views, reshapes, allocations and metadata: no kernel of their own
_NON_COMPUTE_NAMES = """
empty empty_strided empty_like new_empty new_empty_strided view _unsafe_view as_strided as_strided_
reshape _reshape_alias t transpose permute expand expand_as select slice unsqueeze squeeze flatten
unflatten detach detach_ alias lift_fresh resolve_conj resolve_neg view_as_real view_as_complex
real imag conj _conj unbind split split_with_sizes chunk narrow contiguous to result_type
promote_types resize_ set_ item _local_scalar_dense is_nonzero _has_compatible_shallow_copy_type
numpy_T dropout broadcast_tensors _neg_view _conj_physical_view movedim swapaxes matrix_H mT
"""
NON_COMPUTE = frozenset(f"aten::{name}" for name in _NON_COMPUTE_NAMES.split())


def _scalar_copy(event: Any) -> bool:
    """A copy or conversion of 0-dim tensors (Python numbers wrapped for an operator): no device kernel."""
    shapes = event.input_shapes
    return event.name in ("aten::copy_", "aten::_to_copy") and bool(shapes) and all(s == [] for s in shapes)


def _is_launch(name: str) -> bool:
    return name.startswith(("cudaLaunch", "cuLaunch", "cudaGraphLaunch", "cudaMemcpy", "cudaMemset"))


def count_profile(prof: profile) -> dict[str, dict[str, int]]:
    """Counts per phase (``fftprompt::<phase>`` ranges of the profiled step; see the module docstring)."""
    events = list(prof.events())
    ranges = {
        e.name.split("::", 1)[1]: (e.time_range.start, e.time_range.end)
        for e in events
        if e.name.startswith("fftprompt::") and e.device_type == torch.autograd.DeviceType.CPU
    }
    counts = {phase: dict.fromkeys(("ops", "copy_", "_to_copy", "fft", "launches", "kernels"), 0) for phase in ranges}

    @functools.cache
    def is_compute(index: int) -> bool:
        event = by_id[index]
        if not event.name.startswith("aten::") or event.name in NON_COMPUTE or _scalar_copy(event):
            return False
        return not any(is_compute(id(child)) for child in event.cpu_children)

    by_id = {id(e): e for e in events}

    def phase_of(start: float) -> str | None:
        for phase, (begin, end) in ranges.items():
            if begin <= start <= end:
                return phase
        return None

    for event in events:
        if event.device_type == torch.autograd.DeviceType.CUDA:
            # device-side kernels: attributed to the phase of the launch that queued them
            parent = event.cpu_parent if hasattr(event, "cpu_parent") else None
            phase = phase_of(parent.time_range.start if parent is not None else event.time_range.start)
            if phase is not None:
                counts[phase]["kernels"] += 1
            continue
        phase = phase_of(event.time_range.start)
        if phase is None:
            continue
        entry = counts[phase]
        if is_compute(id(event)):
            entry["ops"] += 1
            entry["copy_"] += event.name == "aten::copy_"
        entry["_to_copy"] += event.name == "aten::_to_copy" and not _scalar_copy(event)
        entry["fft"] += event.name in FFT_OPS
        entry["launches"] += _is_launch(event.name)
    return counts


def profile_step(step: Callable[[], Any], device: torch.device) -> dict[str, dict[str, int]]:
    """Counts of one call of ``step``, whose parts are marked with ``record_function("fftprompt::<phase>")``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with profile(activities=activities, record_shapes=True) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return count_profile(prof)


def _train_step(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device, dtype: str) -> Callable:
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with record_function("fftprompt::forward"), autocast(device, dtype):
            loss = nn.functional.cross_entropy(model(images), labels)
        with record_function("fftprompt::backward"):
            loss.backward()
        with record_function("fftprompt::optimizer"):
            optimizer.step()

    return step


def _part_step(part: str, args: argparse.Namespace, images: Tensor, device: torch.device) -> tuple[Callable, Any]:
    """The step of a part measured alone, and the module whose forward it compiles."""
    backbone = benchmark_backbone(args)
    features = FrequencyFeatures(patch_size=backbone.patch_size).to(device)
    if part == "features":

        def compute(x: Tensor) -> Tensor:
            return features(x).compact()

        compiled = compile_model(compute, args.compile) if args.compile else compute

        def step() -> None:
            with record_function("fftprompt::forward"), torch.no_grad(), autocast(device, args.dtype):
                compiled(images)

        return step, compute
    generator = FrequencyPrompt(ModelDims.of(backbone, features), num_tokens=args.num_tokens).to(device)
    with torch.no_grad():
        maps = features(images)
        tokens = backbone.to(device).embed(images)[0][:, backbone.num_prefix_tokens :]
    run = compile_model(generator, args.compile) if args.compile else generator

    def generator_step() -> None:
        generator.zero_grad(set_to_none=True)
        with record_function("fftprompt::forward"), autocast(device, args.dtype):
            loss = run(images, maps, tokens).float().square().mean()
        with record_function("fftprompt::backward"):
            loss.backward()

    return generator_step, functools.partial(generator, images, maps, tokens)


@contextlib.contextmanager
def _accelerator_batching(enabled: bool) -> Iterator[None]:
    """On a CPU, batch the FourierFT FFTs as accelerators do (see ``--accelerator-batching``)."""
    saved = (fourierft_functional._CPU_FFT_BATCH_BYTES, fourierft_functional._CPU_BATCHES_DENSE_GRADIENT)
    if enabled:
        fourierft_functional._CPU_FFT_BATCH_BYTES = 2**62
        fourierft_functional._CPU_BATCHES_DENSE_GRADIENT = True
    try:
        yield
    finally:
        fourierft_functional._CPU_FFT_BATCH_BYTES, fourierft_functional._CPU_BATCHES_DENSE_GRADIENT = saved


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Counts every requested method; returns machine, settings and per-method counts."""
    with _accelerator_batching(args.accelerator_batching):
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    rows: list[dict[str, Any]] = []
    for method in args.methods:
        reason = skip_reason(method, args.fourierft_targets)
        if reason is not None:
            rows.append({"method": method, "skipped": reason})
            continue
        torch.manual_seed(1)
        graph_breaks = None
        if method in PARTS:
            step, forward = _part_step(method, args, images, device)
            if args.compile:
                explained = torch._dynamo.explain(forward)(*(() if method == "generator" else (images,)))
                graph_breaks = explained.graph_break_count
        else:
            torch.manual_seed(0)
            backbone = benchmark_backbone(args)
            torch.manual_seed(1)
            model = create_method_model(
                method,
                backbone,
                args.num_classes,
                num_tokens=args.num_tokens,
                n_frequency=args.n_frequency,
                targets=args.fourierft_targets,
            ).to(device)
            if args.grad_mode != "auto":
                for module in model.modules():
                    if isinstance(module, FourierFTLinear):
                        module.config = dataclasses.replace(module.config, grad_mode=args.grad_mode)
            model.train()
            if args.compile:
                with autocast(device, args.dtype):
                    graph_breaks = torch._dynamo.explain(model)(images).graph_break_count
                torch._dynamo.reset()
            run = compile_model(model, args.compile) if args.compile else model
            step = _train_step(run, images, labels, device, args.dtype)
        for _ in range(args.warmup):
            step()
        counts = profile_step(step, device)
        total = {key: sum(phase[key] for phase in counts.values()) for key in next(iter(counts.values()))}
        rows.append({"method": method, "phases": counts, "total": total, "graph_breaks": graph_breaks})
    return {
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "results": rows,
    }


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a :func:`run_benchmark` report."""
    s, m = report["settings"], report["machine"]
    cuda = s["device"].startswith("cuda")
    mode = f"torch.compile ({s['compile']})" if s["compile"] else "eager"
    extra = "".join(f", {item}" for item in s["backbone_arg"])
    lines = [
        f"{s['backbone']} ({s['img_size']} px{extra}), batch {s['batch_size']}, {s['dtype']}, {s['device']} "
        f"({m['device']}), torch {m['torch']}, {mode}; FourierFT n={s['n_frequency']} on "
        f"{','.join(s['fourierft_targets'])} (grad_mode {s['grad_mode']}"
        f"{', accelerator batching' if s['accelerator_batching'] else ''}); counts of one train step after "
        f"{s['warmup']} warm-up steps (features: forward only)",
        "",
        "| method | forward ops | backward ops | optimizer ops | copy_ | _to_copy | FFT calls "
        + ("| launches | kernels " if cuda else "")
        + "| graph breaks |",
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if cuda else "") + "---:|",
    ]
    for row in report["results"]:
        if "skipped" in row:
            lines.append(f"| {row['method']} | {row['skipped']} |")
            continue
        phases, total = row["phases"], row["total"]
        cells = [str(phases.get(phase, {}).get("ops", "-")) for phase in PHASES]
        cells += [str(total[key]) for key in ("copy_", "_to_copy", "fft")]
        if cuda:
            cells += [str(total["launches"]), str(total["kernels"])]
        cells.append("-" if row["graph_breaks"] is None else str(row["graph_breaks"]))
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fftprompt-bench ops", description=__doc__.split("\n\n")[0])
    add_backbone_options(parser, batch_size=8)
    add_step_options(parser, steps=False)
    parser.add_argument("--num-tokens", type=int, default=10)
    parser.add_argument("--methods", default="fourierft,fourierft_peft,lora,vpt_shallow,fft_shallow,features")
    parser.add_argument("--n-frequency", type=int, default=VIT_B_N_FREQUENCY)
    parser.add_argument("--fourierft-targets", default="qkv,proj,fc1,fc2")
    parser.add_argument("--grad-mode", choices=("auto", "dense", "fft"), default="auto", help="ours' gradient route")
    add_model_options(parser, COMPILE_HELP.replace("also measure", "measure"))
    parser.add_argument(
        "--accelerator-batching",
        action="store_true",
        help="on a CPU, batch the FourierFT FFTs as accelerators do (deltas of a layer shape in one irfft2 however "
        "large, dense coefficient gradients in one rfft2 per shape): the counts a GPU launches",
    )
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON (to stdout: -)")
    args = parser.parse_args(list(argv))
    args.methods = split_choices(parser, "--methods", args.methods, list(METHODS))
    args.fourierft_targets = [t for t in args.fourierft_targets.split(",") if t]
    check_options(parser, args, ("batch_size", "img_size", "threads", "n_frequency", "num_tokens"))
    check_model_options(parser, args)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the profiled step must not include first-call work)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the counts and prints a markdown table (or JSON with ``--json``)."""
    return run_command(argv, _parse, run_benchmark, format_table)
