"""``fftprompt-bench train``: end-to-end training throughput through Lightning and the data pipeline.

Runs a real ``fftprompt-train`` (:func:`fftprompt.run.train` on the packaged config with Hydra overrides) on a folder
of generated JPEG files (``data=image_folder``, ``--images`` images of ``--image-px`` pixels in ``--classes`` class
folders, written once into ``--data-dir``), with a callback that timestamps every training batch, epoch and
validation. In the same process it then measures:

- the **raw step**: the trained module's forward, loss, backward and optimiser step on one batch already on the
  device, repeated (no Lightning, no data loading): what the loop could reach at best;
- the **data pipeline** alone: one pass over the training loader (decoding, augmentation, collation in the worker
  processes), without the model.

From the timestamps of the fit (the first epoch, which compiles and fills caches, is left out of the loop figures):

- **loop throughput**: images per second of the training batches within epochs (step time plus the wait for the
  next batch), against the raw step (goal: at least 90%);
- **end-to-end throughput**: all images trained over the whole fit (validation, checkpoints, epoch boundaries
  included);
- where the fit's time went: training steps, waiting for batches, validation, epoch boundaries (checkpointing,
  logging, worker start-up), and what bounds the loop: the step, the data pipeline, or per-epoch overhead.

On CUDA devices every batch end synchronises the device, so that a batch's time is its own (Lightning's own loss
logging synchronises each step anyway).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from PIL import Image

from fftprompt.bench._common import autocast, machine, run_command, time_ms

_PRECISION_DTYPES = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}
# the loop is bound by something other than the step when more than this fraction of an epoch goes elsewhere
_BOUND_FRACTION = 0.10


class StepTimer(L.Callback):
    """Timestamps (``time.perf_counter``) of every training batch, epoch and validation of a fit."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float, float, int]] = []  # (epoch, start, end, images)
        self.epochs: list[tuple[float, float]] = []
        self.validations: list[tuple[float, float]] = []
        self.fit: list[float] = []
        self._start = 0.0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit = [time.perf_counter()]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit.append(time.perf_counter())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append((time.perf_counter(), float("nan")))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs[-1] = (self.epochs[-1][0], time.perf_counter())

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sync(pl_module)
        self.batches.append((trainer.current_epoch, self._start, time.perf_counter(), int(batch[0].shape[0])))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validations.append((time.perf_counter(), float("nan")))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self.validations[-1] = (self.validations[-1][0], time.perf_counter())


def write_jpeg_folder(root: Path, images: int, size: int, classes: int, seed: int = 0) -> Path:
    """``root/class_<k>/<i>.jpg``: ``images`` textured RGB JPEG files (stripes of a class-dependent orientation plus
    noise), written by a thread pool, unless ``root`` already holds exactly these. Returns ``root``."""
    existing = sorted(root.glob("class_*/*.jpg"))
    if len(existing) == images:
        return root
    if existing:
        raise ValueError(f"--data-dir {root} holds {len(existing)} generated JPEGs, not {images}; use another folder")
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    noise = np.random.default_rng(seed).normal(0, 25, (4, size, size, 3)).astype(np.float32)
    for label in range(classes):
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)

    def write(index: int) -> None:
        rng = np.random.default_rng((seed, index))
        label = index % classes
        angle = np.pi * label / classes + rng.normal(0, 0.05)
        period = rng.uniform(8, 32) * size / 224
        stripes = np.sin((np.cos(angle) * cols + np.sin(angle) * rows) * np.float32(2 * np.pi / period))
        shift = tuple(int(v) for v in rng.integers(0, size, 2))
        pixels = 128 + 60 * stripes[..., None] + np.roll(noise[index % 4], shift, axis=(0, 1))
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        image.save(root / f"class_{label}" / f"{index:05d}.jpg", quality=90)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(write, range(images)))
    return root


def _raw_step_ms(objects: dict[str, Any], steps: int, warmup: int) -> tuple[float, int, str]:
    """Median time of the trained module's step on one batch on its device; also the batch size and autocast."""
    module, trainer = objects["module"], objects["trainer"]
    device = trainer.strategy.root_device
    module.to(device)  # Lightning moves the module back to the CPU when a fit or test ends
    images, labels = next(iter(objects["datamodule"].train_dataloader()))
    images, labels = images.to(device), labels.to(device)
    dtype = _PRECISION_DTYPES.get(str(trainer.precision), "float32")
    optimizer = module.optimizer_factory(module.param_groups())
    module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = module._loss(module(images), labels)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    return statistics.median(time_ms(step, device) for _ in range(steps)), int(images.shape[0]), dtype


def _pipeline_images_per_s(datamodule: Any) -> float:
    """The second of two passes over the training loader (its workers persist, as in training), without the model."""
    loader = datamodule.train_dataloader()
    for _ in loader:
        pass
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def summarise(
    timer: StepTimer, raw_images_per_s: float, pipeline_images_per_s: float, cpu_workers: int = 0
) -> dict[str, Any]:
    """Loop and end-to-end throughput, the fit's time by part, and what bounds the loop (module docstring).

    Args:
        timer: The fit's timestamps.
        raw_images_per_s: Throughput of the raw step.
        pipeline_images_per_s: Throughput of the training loader alone.
        cpu_workers: Data worker processes that share the cores with a step running on the CPU (0 on GPUs).
    """
    epochs = sorted({epoch for epoch, *_ in timer.batches})
    steady = [b for b in timer.batches if b[0] != epochs[0]] if len(epochs) > 1 else timer.batches
    step_s = sum(end - start for _, start, end, _ in steady)
    by_epoch: dict[int, list[tuple[int, float, float, int]]] = {}
    for batch in steady:
        by_epoch.setdefault(batch[0], []).append(batch)
    # waits: from one batch's end to the next batch's start, inside an epoch
    wait_s = sum(b[1] - a[2] for batches in by_epoch.values() for a, b in zip(batches, batches[1:], strict=False))
    loop_images = sum(b[3] for batches in by_epoch.values() for b in batches[1:])
    loop_s = sum(batches[-1][2] - batches[0][2] for batches in by_epoch.values())
    loop_images_per_s = loop_images / loop_s if loop_s > 0 else float("nan")
    fit_s = timer.fit[-1] - timer.fit[0]
    all_step_s = sum(end - start for _, start, end, _ in timer.batches)
    all_wait_s = 0.0
    for epoch in epochs:
        batches = [b for b in timer.batches if b[0] == epoch]
        all_wait_s += sum(b[1] - a[2] for a, b in zip(batches, batches[1:], strict=False))
    validation_s = sum(end - start for start, end in timer.validations)
    parts = {
        "train steps": all_step_s,
        "waiting for batches": all_wait_s,
        "validation": validation_s,
        "epoch boundaries and other": fit_s - all_step_s - all_wait_s - validation_s,
    }
    ratio = loop_images_per_s / raw_images_per_s
    in_epoch = step_s + wait_s
    step_images_per_s = sum(b[3] for b in steady) / step_s if step_s > 0 else float("nan")
    if in_epoch > 0 and wait_s / in_epoch > _BOUND_FRACTION:
        bound = (
            f"data loading: {wait_s / in_epoch:.0%} of the epochs' time waits for batches; the pipeline alone "
            f"delivers {pipeline_images_per_s:.0f} images/s against the raw step's {raw_images_per_s:.0f}"
        )
    elif ratio < 0.9:
        shared = (
            f"; the {cpu_workers} data workers decode the next batches on the same CPU cores meanwhile"
            if cpu_workers
            else ""
        )
        bound = (
            f"the step inside the loop: batches wait little ({wait_s / max(in_epoch, 1e-9):.0%} of the epochs), but a "
            f"step runs at {step_images_per_s / raw_images_per_s:.0%} of the raw step's speed (Lightning's hooks, "
            f"logging and gradient clipping around it{shared})"
        )
    else:
        bound = "the training step itself"
    outside = (fit_s - in_epoch) / fit_s if fit_s > 0 else 0.0
    return {
        "raw_step_images_per_s": raw_images_per_s,
        "loop_images_per_s": loop_images_per_s,
        "loop_over_raw": ratio,
        "loop_step_images_per_s": step_images_per_s,
        "end_to_end_images_per_s": sum(b[3] for b in timer.batches) / fit_s,
        "pipeline_images_per_s": pipeline_images_per_s,
        "fit_seconds": fit_s,
        "fit_seconds_by_part": parts,
        "epochs": len(epochs),
        "batches": len(timer.batches),
        "loop_bound": bound,
        "outside_steady_epochs_fraction": outside,
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Generates the data (once), trains, times the raw step and the pipeline; returns the report."""
    from fftprompt.run import compose, train  # the run layer: Hydra composition of a real fftprompt-train

    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="fftprompt-bench-jpegs-"))
    started = time.perf_counter()
    write_jpeg_folder(data_dir, args.images, args.image_px, args.classes)
    generate_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="fftprompt-bench-train-") as output_dir:
        overrides = [
            "data=image_folder",
            f"data.root={data_dir}",
            f"data.image_size={args.img_size}",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.workers}",
            f"trainer.max_epochs={args.epochs}",
            "~callbacks.rich_progress_bar",
            "++trainer.enable_progress_bar=false",
            "report.frequency_panels=0",
            "report.explain_images=0",
            "+callbacks.step_timer._target_=fftprompt.bench.train.StepTimer",
            f"paths.output_dir={output_dir}",
            *args.override,
        ]
        _, objects = train(compose(overrides))
        timer = next(c for c in objects["trainer"].callbacks if isinstance(c, StepTimer))
        raw_ms, batch, dtype = _raw_step_ms(objects, args.raw_steps, warmup=3)
        pipeline = _pipeline_images_per_s(objects["datamodule"])
        device = objects["trainer"].strategy.root_device
    summary = summarise(timer, batch / raw_ms * 1e3, pipeline, args.workers if device.type == "cpu" else 0)
    return {
        "machine": machine(device),
        "settings": {k: v for k, v in vars(args).items() if k != "json"}
        | {"overrides": [o for o in overrides if not o.startswith("paths.")], "autocast": dtype, "device": str(device)},
        "data_generation_seconds": generate_s,
        "raw_step_ms": raw_ms,
        **summary,
    }


def format_table(report: dict[str, Any]) -> str:
    """Markdown summary of a :func:`run_benchmark` report."""
    s, m = report["settings"], report["machine"]
    lines = [
        f"fftprompt-train on {s['images']} generated JPEGs ({s['image_px']} px, {s['classes']} classes) at "
        f"{s['img_size']} px, batch {s['batch_size']}, {s['workers']} workers, {s['epochs']} epochs, "
        f"{s['device']} ({m['device']}, {m['cpu_count']} cores, load average {m['load_average']}), autocast "
        f"{s['autocast']}, torch {m['torch']}; overrides: {' '.join(s['override']) or '(none)'}",
        "",
        "| throughput | images/s | / raw step |",
        "|---|---:|---:|",
        f"| raw step (one batch on the device, no Lightning) | {report['raw_step_images_per_s']:.1f} | 1.00 |",
        f"| Lightning loop, epochs after the first | {report['loop_images_per_s']:.1f} | "
        f"{report['loop_over_raw']:.2f} |",
        f"| whole fit (validation, checkpoints, epoch boundaries) | {report['end_to_end_images_per_s']:.1f} | "
        f"{report['end_to_end_images_per_s'] / report['raw_step_images_per_s']:.2f} |",
        f"| data pipeline alone (training loader) | {report['pipeline_images_per_s']:.1f} | "
        f"{report['pipeline_images_per_s'] / report['raw_step_images_per_s']:.2f} |",
        "",
        f"Fit: {report['fit_seconds']:.1f} s = "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["fit_seconds_by_part"].items()),
        f"Loop >= 90% of the raw step: {'met' if report['loop_over_raw'] >= 0.9 else 'missed'}; bound: "
        f"{report['loop_bound']}.",
    ]
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fftprompt-bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="generated JPEG files")
    parser.add_argument("--image-px", type=int, default=512, help="side of the generated JPEGs")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--data-dir", default=None, help="folder of the generated JPEGs (default: a temporary one)")
    parser.add_argument("--img-size", type=int, default=224, help="training resolution (data.image_size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8, help="data.num_workers")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fftprompt-train override, repeatable (e.g. --override trainer=gpu --override backbone=vit_base)",
    )
    parser.add_argument("--epochs", type=int, default=3, help="trainer.max_epochs (the first is warm-up)")
    parser.add_argument("--raw-steps", type=int, default=10, help="timed raw steps (median reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON (to stdout: -)")
    args = parser.parse_args(list(argv))
    for name in ("images", "image_px", "classes", "img_size", "batch_size", "epochs", "raw_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.images < 2 * args.classes:
        parser.error(f"--images {args.images}: need at least 2 per class ({args.classes} classes)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints a markdown summary (or JSON with ``--json``)."""
    return run_command(argv, _parse, run_benchmark, format_table)
