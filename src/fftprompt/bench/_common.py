"""Helpers shared by the ``fftprompt-bench`` sub-commands: machine description, timing, memory, autocast, train
steps timed in turns, the report output.

Timing: on CUDA devices a step is timed with CUDA events recorded around it, after a synchronize (so earlier queued
work does not count) and followed by one (so the end event has completed); on CPUs with ``time.perf_counter``.

Peak memory of a training step. GPU: ``torch.cuda.max_memory_allocated`` over the step, minus what was allocated
before it, plus the bytes that the model keeps across steps (:func:`state_bytes`): the step's own peak is then not
inflated by other models living on the same device. CPU: torch has no allocator statistics on the CPU, and the
process RSS mostly reflects malloc's caching, so the step runs once under ``torch.profiler`` with
``profile_memory=True``; the largest running sum of its allocation and free events is the step's own peak
(activations, saved tensors, gradients, temporaries) (:func:`cpu_step_peak_bytes`), to which :func:`state_bytes` is
added likewise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from fftprompt.backbone import Backbone, create_backbone

T = TypeVar("T")

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """JSON-serialisable description of the machine a benchmark ran on.

    Keys: ``device`` (GPU name on CUDA, else the CPU model), ``cpu``, ``cpu_count``, ``threads`` (torch intra-op
    threads), ``load_average`` (1-minute, where the OS reports it: other processes make CPU timings noisy),
    ``torch``, ``cuda`` (CUDA version torch was built with, or None) and ``python``.
    """
    device = torch.device(device)
    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu": cpu_model(),
        "cpu_count": cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": load,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def time_ms(step: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    """Wall time of one call of ``step`` in milliseconds (CUDA events on CUDA devices)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    start_time = time.perf_counter()
    step()
    return (time.perf_counter() - start_time) * 1e3


def wall_and_cpu_ms(step: Callable[[], Any]) -> tuple[float, float]:
    """Wall time and CPU time of this process (all threads) of one call of ``step``, in milliseconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def backbone_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["depth=2", "embed_dim=32"]`` -> ``{"depth": 2, "embed_dim": 32}`` (ints, floats, booleans, else strings)."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--backbone-arg {item!r}; expected KEY=VALUE such as depth=2")
        value: Any = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(text)
                    break
                except ValueError:
                    continue
        kwargs[key] = value
    return kwargs


def benchmark_backbone(args: argparse.Namespace) -> Backbone:
    """The ``--backbone`` ViT at ``--img-size`` with the ``--backbone-arg`` extras, built without weights."""
    return create_backbone(
        args.backbone, pretrained=False, img_size=args.img_size, **backbone_kwargs(args.backbone_arg)
    )


COMPILE_HELP = (
    "also measure every method under torch.compile: an inductor mode (default, reduce-overhead: + CUDA graphs, "
    "max-autotune, ...) or backend:NAME (backend:cudagraphs: CUDA graphs of the eager kernels, compiles in seconds; "
    "backend:aot_eager: tracing only)"
)


def add_backbone_options(parser: argparse.ArgumentParser, *, batch_size: int) -> None:
    """``--backbone`` (a timm ViT built without weights, ViT-B/16 by default), ``--img-size``, ``--batch-size``."""
    parser.add_argument("--backbone", default="vit_base_patch16_224", help="timm ViT name (built without weights)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=batch_size)


def add_step_options(parser: argparse.ArgumentParser, *, steps: bool = True) -> None:
    """The options of every command that runs train steps: ``--num-classes``, ``--device``, ``--dtype`` (autocast:
    float32 or bfloat16), ``--steps`` (timed steps, when ``steps``), ``--warmup`` and ``--threads``."""
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="autocast dtype of a step")
    if steps:
        parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")


def add_model_options(parser: argparse.ArgumentParser, compile_help: str = COMPILE_HELP) -> None:
    """``--backbone-arg KEY=VALUE`` (repeatable) and ``--compile SPEC``; :func:`check_model_options` checks them."""
    parser.add_argument(
        "--backbone-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra timm.create_model argument, repeatable (e.g. --backbone-arg depth=2)",
    )
    parser.add_argument("--compile", default=None, metavar="SPEC", help=compile_help)


def check_model_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors for a malformed ``--backbone-arg`` or ``--compile`` (see :func:`add_model_options`)."""
    try:
        backbone_kwargs(args.backbone_arg)
        if args.compile is not None:
            compile_kwargs(args.compile)
    except ValueError as error:
        parser.error(str(error))


def compile_kwargs(spec: str) -> dict[str, Any]:
    """``torch.compile`` arguments of a ``--compile`` value (see :data:`COMPILE_HELP`); static shapes always.

    Raises:
        ValueError: an empty mode or backend name.
    """
    kind, _, name = spec.partition(":") if spec.startswith("backend:") else ("mode", "", spec)
    if not (name if kind == "backend" else spec):
        raise ValueError(f"--compile {spec!r}; expected an inductor mode such as reduce-overhead or backend:NAME")
    return {"backend": name, "dynamic": False} if kind == "backend" else {"mode": spec, "dynamic": False}


def compile_model(model: Callable[..., T], spec: str) -> Callable[..., T]:
    """``torch.compile(model, **compile_kwargs(spec))``.

    The models of one benchmark share their ``forward`` code (every ``PromptedViT``), and ``torch.compile`` keeps a
    limited number of compiled versions per code object (8 by default) before it silently runs the rest eagerly:
    the limit is raised to 64 so that every compiled row is compiled.
    """
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64 if "accumulated" not in name else 512))
    return torch.compile(model, **compile_kwargs(spec))


def autocast(device: torch.device | str, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in ``dtype`` (a key of :data:`DTYPES`), or a no-op context for float32."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes alive between steps: parameters, buffers and optimiser state, each storage counted once."""
    seen: dict[int, int] = {}
    tensors = list(model.parameters()) + list(model.buffers())
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [value for value in state.values() if isinstance(value, Tensor)]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def cpu_step_peak_bytes(step: Callable[[], Any]) -> int:
    """Largest running sum of the bytes allocated minus freed by torch on the CPU during one call of ``step``.

    Reads the profiler's raw memory events (every allocation and free, with its size and time). The
    ``FunctionEvent`` list of ``prof.events()`` is not enough: it attributes allocations to the operator that made
    them and keeps as ``[memory]`` events only the ones outside any operator (mostly frees), so a running sum over
    those misses nearly every allocation.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        step()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError(f"torch {torch.__version__}: the profiler exposes no raw memory events (kineto_results)")
    events = [
        e for e in results.events() if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def cuda_step_peak_bytes(step: Callable[[], Any], device: torch.device | str) -> int:
    """Peak bytes allocated on a CUDA device during one call of ``step``, above what was allocated before it."""
    device = torch.device(device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
) -> Callable[[], None]:
    """One training step of ``model`` as a call: ``zero_grad(set_to_none=True)``, forward and cross-entropy under
    :func:`autocast` in ``dtype``, backward, optimiser step."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def round_robin(
    steps: Mapping[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    measure: Callable[[Callable[[], Any]], T],
    *,
    alternate: bool = True,
) -> dict[str, list[T]]:
    """Measures every step ``repeats`` times after ``warmup`` untimed calls of each, one of each in turn.

    Taking turns lets load from other processes hit all steps alike; with ``alternate`` the order reverses every
    round, so that no step always runs right after the same other one.

    Args:
        steps: Name -> step.
        warmup: Untimed rounds first.
        repeats: Measured rounds.
        measure: Calls a step and returns its measurement (e.g. :func:`time_ms`, :func:`wall_and_cpu_ms`).
        alternate: Reverse the order every other round.

    Returns:
        Name -> the ``repeats`` measurements, in round order.
    """
    order = list(steps)
    for _ in range(warmup):
        for name in order:
            steps[name]()
    results: dict[str, list[T]] = {name: [] for name in order}
    for repetition in range(repeats):
        for name in order[::-1] if alternate and repetition % 2 else order:
            results[name].append(measure(steps[name]))
    return results


def print_report(report: Mapping[str, Any], table: str, json_target: str | None) -> None:
    """Prints ``table``, or the report as JSON when ``json_target`` is ``-``; any other ``json_target`` is a file
    that the report is written to as well (``--json`` of every sub-command)."""
    text = json.dumps(report, indent=2)
    if json_target == "-":
        print(text)
        return
    if json_target is not None:
        Path(json_target).write_text(text + "\n", encoding="utf-8")
    print(table)


def split_choices(parser: argparse.ArgumentParser, option: str, text: str, allowed: Sequence[str]) -> list[str]:
    """The comma-separated names of ``text``; a usage error unless they are a non-empty subset of ``allowed``."""
    names = [name for name in text.split(",") if name]
    bad = [name for name in names if name not in allowed]
    if bad or not names:
        parser.error(f"{option} {bad or names}: expected a subset of {allowed}")
    return names


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace, positive: Sequence[str]) -> None:
    """Usage errors unless the options named in ``positive`` are >= 1, ``--warmup`` is >= 0 and a CUDA
    ``--device`` (where the command has one) is available."""
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    device = getattr(args, "device", None)
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available")


def run_command(
    argv: Sequence[str] | None,
    parse: Callable[[Sequence[str]], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    format_table: Callable[[dict[str, Any]], str],
) -> int:
    """A sub-command's ``main``: parses ``argv`` (default ``sys.argv[1:]``), runs the benchmark, prints the table
    (or the JSON report, see :func:`print_report`)."""
    args = parse(sys.argv[1:] if argv is None else argv)
    report = run(args)
    print_report(report, format_table(report), args.json)
    return 0
