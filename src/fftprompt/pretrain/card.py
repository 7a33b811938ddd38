"""The files of a pretrained backbone: ``<name>.safetensors`` (written by
:func:`fftprompt.backbone.save_backbone_checkpoint`), ``<name>.sha256`` (``sha256sum -c`` format), and its model card
``<name>.json`` + ``<name>.md``."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fftprompt.backbone import save_backbone_checkpoint
from fftprompt.utils import atomic_write, write_json_atomic

__all__ = ["hardware", "sha256_of", "write_pretrained"]

_SUFFIXES = (".safetensors", ".sha256", ".json", ".md")
_CURVE_ROWS = 16  # rows of the learning-curve table in the card


def hardware(device: torch.device | str) -> dict[str, Any]:
    """The machine a run used: CPU model and cores, torch threads, GPU name, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if hasattr(os, "getloadavg"):
        info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return info


def sha256_of(path: str | Path) -> str:
    """Hex SHA256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_pretrained(
    output_dir: str | Path, name: str, model: nn.Module, card: Mapping[str, Any], overwrite: bool = False
) -> dict[str, Path]:
    """Writes the backbone weights (float16, without the classifier), their SHA256 and the model card.

    Args:
        output_dir: Directory of the files.
        name: Stem of the files (``<name>.safetensors`` ...).
        model: The trained timm ViT.
        card: Facts of the run (generator, classes, images seen, steps, seed, hardware, wall time, command...).
        overwrite: Replace existing files of that name (otherwise they are an error, before anything is written).

    Returns:
        ``{"weights", "sha256", "json", "markdown"}`` paths.
    """
    directory = Path(output_dir)
    keys = ("weights", "sha256", "json", "markdown")
    paths = {key: directory / f"{name}{suffix}" for key, suffix in zip(keys, _SUFFIXES, strict=True)}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"pretrained backbone files exist: {existing}; pass overwrite=true to replace them")
    save_backbone_checkpoint(model, paths["weights"], dtype=torch.float16, overwrite=True)
    digest = sha256_of(paths["weights"])
    atomic_write(paths["sha256"], lambda t: t.write_text(f"{digest}  {paths['weights'].name}\n"))
    full = {"weights": paths["weights"].name, "sha256": digest, **card}
    write_json_atomic(paths["json"], full)
    atomic_write(paths["markdown"], lambda t: t.write_text(_markdown(name, full)))
    return paths


def _markdown(name: str, card: Mapping[str, Any]) -> str:
    sections = ("source", "objective", "history", "hardware", "command", "backbone", "selection")
    facts = {k: v for k, v in card.items() if k not in sections}
    start = card.get("initial_weights")
    origin = "from scratch" if not start else f"from `{start.get('file', '?')}`"
    lines = [
        f"# {name}: model card",
        "",
        f"A timm `{card.get('backbone', {}).get('name', '?')}` pretrained {origin} on procedurally rendered "
        "images only (no natural images), by `fftprompt-pretrain`. The file holds the ViT without its pretraining "
        "head, as float16; load it with `backbone.checkpoint_path=<this file>` (or "
        "`fftprompt.create_backbone(name, checkpoint_path=...)`).",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {_cell(value)} |" for key, value in facts.items()),
        "",
        "## Command",
        "",
        "```bash",
        str(card.get("command", "")),
        "```",
        "",
        "## Hardware",
        "",
        *(f"- {key}: {value}" for key, value in card.get("hardware", {}).items()),
        "",
        "## Backbone",
        "",
        "```json",
        json.dumps(card.get("backbone", {}), indent=2),
        "```",
        "",
        "## Source",
        "",
        "```json",
        json.dumps(card.get("source", {}), indent=2),
        "```",
        "",
        "## Objective",
        "",
        "```json",
        json.dumps(card.get("objective", {}), indent=2),
        "```",
        "",
        "## Learning curve (training batches: each image is rendered once, before the step that trains on it; accuracy "
        "is the objective's: the classes, or the positive view found among the batch's)",
        "",
        "| step | images seen | loss | accuracy | lr | seconds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    history = list(card.get("history", []))
    stride = max(1, -(-len(history) // _CURVE_ROWS))
    shown = history[::stride] + ([history[-1]] if history and (len(history) - 1) % stride else [])
    lines += [
        f"| {h['step']} | {h['images_seen']} | {h['loss']:.4f} | {h['acc']:.4f} | {h['lr']:.2e} | {h['seconds']} |"
        for h in shown
    ]
    if card.get("selection"):
        lines += _selection_lines(card["selection"])
    return "\n".join(lines) + "\n"


def _selection_lines(selection: Mapping[str, Any]) -> list[str]:
    """The "Checkpoint selection" section: the data that chose the weights (validation splits) and the probe curve."""
    data = selection.get("data", {})
    names = list(data)
    described = [
        f"- `{name}`: {entry.get('module')} at `{entry.get('root')}`, {entry.get('classes')} classes, "
        f"{entry.get('split_sizes', {}).get('train')} training / {entry.get('split_sizes', {}).get('val')} validation "
        f"images ({entry.get('image_size')} px)"
        for name, entry in data.items()
    ]
    lines = [
        "",
        "## Checkpoint selection",
        "",
        f"The weights are those of step {selection.get('chosen_step')} (score {selection.get('chosen_score')}), not "
        "necessarily the last: every "
        f"{selection.get('every_n_steps')} steps a linear probe ({selection.get('pooling')} pooling, L-BFGS logistic "
        "regression) was fitted on the training split of each dataset below, its weight decay chosen from "
        f"{selection.get('weight_decays')} on the **validation split**, which also gave the accuracy; the score is "
        "the mean validation accuracy over the datasets. No test split was read.",
        "",
        *described,
        "",
        "| step | images seen | " + " | ".join(f"{name} val acc" for name in names) + " | score |",
        "|---:|---:|" + "---:|" * len(names) + "---:|",
    ]
    chosen = selection.get("chosen_step")
    for entry in selection.get("curve", []):
        accuracies = " | ".join(f"{entry['val_accuracy'].get(name, float('nan')):.4f}" for name in names)
        mark = " (chosen)" if entry["step"] == chosen else ""
        lines.append(f"| {entry['step']}{mark} | {entry['images_seen']} | {accuracies} | {entry['score']:.4f} |")
    return lines


def _cell(value: Any) -> str:
    return f"`{value}`" if isinstance(value, str) else json.dumps(value)
