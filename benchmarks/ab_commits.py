"""Before/after CPU timings in one process: an earlier commit's fftprompt against the working tree's.

    python benchmarks/ab_commits.py 83771fb fourierft --model vit_base_patch16_224 --batch-size 4 --dtype float32
    python benchmarks/ab_commits.py 83771fb features --batch-size 8
    python benchmarks/ab_commits.py 83771fb demo --rounds 12

The earlier commit is exported with ``git archive`` into a temporary folder as a second package, ``fftprompt_before``
(imports and the custom-operator namespace renamed), so both versions run in the same process on the same inputs,
built from the same seeds. Steps alternate between the two, the order reversed every round; the CPU time of the
process per step (time spent waiting for a core does not count) and the wall time are reported, median and fastest.
Run from the repository root with the working tree's ``src`` on ``PYTHONPATH``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

BEFORE = "fftprompt_before"


def export_before(commit: str, folder: Path) -> None:
    """``src/fftprompt`` of ``commit`` as the package ``fftprompt_before`` under ``folder``."""
    archive = folder / "before.tar"
    subprocess.run(["git", "archive", "-o", str(archive), commit, "src/fftprompt"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    package = folder / BEFORE
    (folder / "src" / "fftprompt").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"\bfftprompt\.", f"{BEFORE}.", text)
        text = text.replace('"fftprompt::', f'"{BEFORE}::').replace("from fftprompt import", f"from {BEFORE} import")
        path.write_text(text, encoding="utf-8")


def alternate(steps: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, dict[str, float]]:
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    order = list(steps)
    for index in range(rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            steps[name]()
            times[name].append(((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3))
    return {
        name: {
            "cpu_ms_median": statistics.median(c for _, c in values),
            "cpu_ms_min": min(c for _, c in values),
            "wall_ms_median": statistics.median(w for w, _ in values),
            "wall_ms_min": min(w for w, _ in values),
        }
        for name, values in times.items()
    }


def fourierft_steps(args: argparse.Namespace, packages: dict[str, str]) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    vit = timm.create_model(args.model, pretrained=False, num_classes=10).eval().requires_grad_(False)
    vit.head.requires_grad_(True)
    images = torch.randn(args.batch_size, 3, 224, 224)
    labels = torch.randint(0, 10, (args.batch_size,))
    steps = {}
    for name, package in packages.items():
        fourierft = importlib.import_module(f"{package}.fourierft")
        model = copy.deepcopy(vit)
        torch.manual_seed(1)
        config = fourierft.FourierFTConfig(n_frequency=args.n_frequency, targets=tuple(args.targets.split(",")))
        fourierft.inject_fourierft(model, config)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
                loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()

        steps[name] = step
    return steps


def demo_steps(args: argparse.Namespace, packages: dict[str, str]) -> dict[str, Callable[[], None]]:
    """The default fftprompt-train model (4-block demo ViT, 64 px, fft prompts + FourierFT on q, v), batch 64."""
    images = torch.randn(64, 3, 64, 64)
    labels = torch.randint(0, 6, (64,))
    steps = {}
    for name, package in packages.items():
        modules = {m: importlib.import_module(f"{package}.{m}") for m in ("backbone", "model", "prompts", "spectral")}
        fourierft = importlib.import_module(f"{package}.fourierft")
        torch.manual_seed(0)
        backbone = modules["backbone"].create_backbone("vit_demo_patch8", img_size=64)
        torch.manual_seed(1)
        model = (
            modules["model"]
            .create_model(
                backbone,
                6,
                prompt=functools.partial(modules["prompts"].FrequencyPrompt, num_tokens=8),
                features=modules["spectral"].FrequencyFeatures,
                adapter=fourierft.FourierFTConfig(n_frequency=1000, targets=("q", "v")),
            )
            .train()
        )
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step(model: nn.Module = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

        steps[name] = step
    return steps


def features_steps(args: argparse.Namespace, packages: dict[str, str]) -> dict[str, Callable[[], None]]:
    images = torch.randn(args.batch_size, 3, 224, 224)
    steps = {}
    for name, package in packages.items():
        features = importlib.import_module(f"{package}.spectral").FrequencyFeatures(16)

        def step(features: nn.Module = features) -> None:
            with torch.no_grad():
                features(images).compact()

        steps[name] = step
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the earlier commit (the 'before')")
    parser.add_argument("what", choices=("fourierft", "features", "demo"))
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm ViT (no weights), fourierft only")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--targets", default="qkv,proj,fc1,fc2")
    parser.add_argument("--n-frequency", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        export_before(args.commit, Path(folder))
        sys.path.insert(0, folder)
        packages = {"before": BEFORE, "after": "fftprompt"}
        build = {"fourierft": fourierft_steps, "features": features_steps, "demo": demo_steps}[args.what]
        steps = build(args, packages)
        results = alternate(steps, args.rounds, args.warmup)
    load = os.getloadavg()
    ratios = {key: results["after"][key] / results["before"][key] for key in results["after"]}
    print(json.dumps({"settings": vars(args), "load_average_end": load, "results": results, "after/before": ratios}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
