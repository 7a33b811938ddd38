"""Helpers shared by the ``fftprompt-bench`` sub-commands: machine description, timing, memory, autocast.

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

import contextlib
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

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
