"""A finished run as a model file other tools load: ``fftprompt-export run_dir=RUN format=timm|peft|torchscript|onnx``.

Formats (each into ``out_dir``, default ``RUN/export/<format>``, with ``export.json`` describing the export):

- ``timm``: ``model.safetensors`` + ``config.json`` in timm's hub format: a plain timm classifier with the FourierFT
  deltas folded into the weights and the trained head as timm's ``head``. ``timm.create_model("local-dir:<out_dir>",
  pretrained=True)`` loads it (timm versions that read ``model_args``), as does ``timm.create_model(architecture,
  num_classes=K, **model_args)`` + ``load_state_dict``, in a process that never imports fftprompt (the demo ViT,
  registered with timm by fftprompt, is written as timm's own entry plus its sizes). Only for classification runs
  without prompts: a timm classifier has no prompt tokens, frequency maps or segmentation decoder, nor a run's
  preprocessing filter (``augment.preprocess=true``: refused). ``pretrained_cfg`` gives the resize and interpolation
  the run used.
- ``peft``: ``adapter_config.json`` + ``adapter_model.safetensors``, a PEFT FourierFT adapter (the head as a module to
  save) that ``peft.PeftModel.from_pretrained`` loads onto the same timm classifier with the base weights. Unless the
  run's base weights are timm's own pretrained ones, they are written beside it (``base_model.safetensors``, the
  timm model without head): a random backbone drawn from the run's seed, or a local checkpoint, cannot be rebuilt by
  timm alone (README gives the recipe; a test runs it as written). PEFT adapts whole ``nn.Linear`` modules only, so
  runs whose targets are ``q``/``k``/``v`` row blocks of timm's fused ``qkv`` are refused (PEFT's entries would be
  drawn over the whole ``3d x d`` matrix), as are runs with prompts or a preprocessing filter.
- ``torchscript``: ``model.torchscript.pt``, the whole prompted model (FFT feature maps, prompts, FourierFT merged,
  head) traced with ``torch.jit.trace``, the run's preprocessing filter in front when it has one (refused for a
  filter that is not a function of each image alone); ``torch.jit.load`` runs it without fftprompt. Inputs are
  normalised ``(B, 3, S, S)`` images at the run's size (``export.json``'s ``pipeline`` gives ``S``, the resize,
  interpolation, mean and std).
- ``onnx``: ``model.onnx``, the whole prompted model through torch's ONNX exporter (FFTs as real matrix products,
  FourierFT merged), checked in onnxruntime within ``1e-4``; dynamic batch size; runs with a preprocessing filter
  are refused (its whole-image FFT has no real-DFT form here: TorchScript includes it); ``export.json`` records the
  opset. Needs ``pip install 'fftprompt[onnx]'``.
  ``exported_program``: ``model.pt2`` from ``torch.export``, checked with ``torch.export.load``. Both in
  :mod:`fftprompt.exporters`.

Every export is checked before it is written: the exported model is loaded back (timm, PEFT, TorchScript) and its
outputs are compared with the tuned model's on random inputs; a difference above ``1e-5`` (ONNX: ``1e-4``) is an error.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fftprompt.backbone import classifier_config, create_classifier
from fftprompt.exporters import export_onnx, export_program, require_onnx
from fftprompt.fourierft import FourierFTLinear, merge_fourierft, unload_fourierft
from fftprompt.fourierft.layer import FULL_LAYER
from fftprompt.model import PromptedViT
from fftprompt.pretrain import sha256_of
from fftprompt.rundir import LoadedRun, load_run, read_class_names
from fftprompt.runfiles import (
    EXPORT_DIR,
    EXPORT_INFO,
    EXPORTED_PROGRAM_FILE,
    ONNX_FILE,
    PEFT_BASE,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    TIMM_CONFIG,
    TIMM_WEIGHTS,
    TORCHSCRIPT_FILE,
)
from fftprompt.utils import atomic_write, write_json_atomic

__all__ = ["ExportFormat", "TOLERANCE", "export"]

ExportFormat = Literal["timm", "peft", "torchscript", "onnx", "exported_program"]
TOLERANCE = 1e-5  # largest |logit difference| between the export and the tuned model (float32)
_FILES: dict[str, tuple[str, ...]] = {
    "timm": (TIMM_WEIGHTS, TIMM_CONFIG),
    "peft": (PEFT_WEIGHTS, PEFT_CONFIG, PEFT_BASE),
    "torchscript": (TORCHSCRIPT_FILE,),
    "onnx": (ONNX_FILE,),
    "exported_program": (EXPORTED_PROGRAM_FILE,),
}


def export(
    run_dir: str | Path,
    format: ExportFormat,  # noqa: A002 -- the command's key (format=timm)
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    data_root: str | Path | None = None,
    backbone: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Exports a finished run's tuned model (see the module docstring for the formats and what each refuses).

    Args:
        run_dir: Directory written by ``fftprompt-train``.
        format: ``"timm"``, ``"peft"``, ``"torchscript"``, ``"onnx"`` or ``"exported_program"``.
        out_dir: Output folder; default ``run_dir/export/<format>``.
        overwrite: Replace the files of an earlier export in ``out_dir`` (other files there are never touched).
        data_root: The run's data root, to read class names from the data when the run records none (they are
            optional metadata of the export: without them the export carries none).
        backbone: ``{"checkpoint_path": file}``: the run's backbone weights file, moved (same SHA256).

    Returns:
        Name -> written file (``export.json`` under ``"info"``).
    """
    if format not in get_args(ExportFormat):
        raise ValueError(f"format={format!r}; expected one of {get_args(ExportFormat)}")
    if format == "onnx":
        require_onnx()  # before the run loads: fail fast with the install line
    run = load_run(run_dir, data_root=data_root, backbone=backbone)
    out = Path(out_dir) if out_dir is not None else run.run_dir / EXPORT_DIR / format
    names = [*_FILES[format], EXPORT_INFO]
    existing = [out / name for name in names if (out / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists (an earlier export); choose another out_dir or pass overwrite=true")
    class_names = _class_names(run)
    info: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "format": format,
        "task": run.model.task,
        "class_names": class_names,
        "pipeline": run.pipeline.describe(),
        "base_weights": _base_weights(run),
        "tolerance": TOLERANCE,
    }
    with tempfile.TemporaryDirectory(prefix="fftprompt-export-") as staging:
        staged = Path(staging)
        if format == "timm":
            info.update(_export_timm(run, staged, class_names))
        elif format == "peft":
            info.update(_export_peft(run, staged))
        elif format in ("onnx", "exported_program"):
            _refuse_filter(run, format)
            write = export_onnx if format == "onnx" else export_program
            info.update(write(run.model, run.datamodule.image_size, staged))
        else:
            info.update(_export_torchscript(run, staged))
        written = {}
        for name in _FILES[format]:  # each file moved into place atomically, after every check passed
            if not (staged / name).exists():  # an optional file (PEFT's base weights): none left from an earlier one
                (out / name).unlink(missing_ok=True)
                continue
            written[name] = atomic_write(
                out / name, lambda temporary, name=name: shutil.copyfile(staged / name, temporary)
            )
    written["info"] = write_json_atomic(out / EXPORT_INFO, info)
    return written


def _refuse_filter(run: LoadedRun, format: str) -> None:  # noqa: A002 -- the export's key
    if run.pipeline.preprocess is not None:
        raise ValueError(
            f"format={format} cannot include the run's preprocessing filter {run.pipeline.preprocess!r} (its FFT over "
            "the whole image is not exported in real arithmetic); export it with format=torchscript, which does"
        )


def _class_names(run: LoadedRun) -> list[str] | None:
    names = read_class_names(run.run_dir)
    if names is not None:
        return names
    try:  # file datasets scan their root for them; without the data the export carries no names
        return run.datamodule.class_names
    except ValueError:
        return None


def _base_weights(run: LoadedRun) -> str:
    config = run.model.backbone.config
    if config.get("checkpoint_path"):
        return f"checkpoint {config['checkpoint_path']}"
    if config.get("pretrained"):
        return f"timm pretrained {run.model.backbone.name}"
    return f"random, drawn by torch.manual_seed({run.config.get('seed')}) before create_backbone (see fftprompt.rundir)"


def _plain_classifier(run: LoadedRun, what: str) -> None:
    """Raises unless the run's model is a classifier that a timm model computes: no prompts, a linear head, no
    preprocessing filter."""
    model, problems = run.model, []
    if run.pipeline.preprocess is not None:
        problems.append(
            f"its images are preprocessed by {run.pipeline.preprocess!r} (augment.preprocess=true), which a timm "
            "model does not compute"
        )
    if model.task != "classification":
        problems.append(f"it is a {model.task} run (a timm classifier has no segmentation decoder)")
    if model.prompt.num_tokens > 0:
        problems.append(
            f"it has {model.prompt.num_tokens} {type(model.prompt).__name__} prompt tokens per image (a timm model has "
            "no prompt tokens)"
        )
    head = model.head
    if model.task == "classification" and not isinstance(getattr(head, "norm", None), nn.Identity):
        problems.append(f"its head ({type(head).__name__} with norm=true) is more than timm's one linear layer")
    if problems:
        raise ValueError(
            f"format={what} cannot hold this run: " + "; ".join(problems) + ". Use format=torchscript for the whole "
            "prompted model"
        )


def _head_state(model: PromptedViT) -> dict[str, Tensor]:
    classifier = model.head.classifier
    return {"head.weight": classifier.weight.detach().clone(), "head.bias": classifier.bias.detach().clone()}


def _probe(model: nn.Module, run: LoadedRun, batch: int = 3) -> tuple[Tensor, Tensor]:
    """Random normalised images at the run's size and the tuned model's outputs on them."""
    size = run.datamodule.image_size
    images = torch.randn(batch, run.model.backbone.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return images, model(images).float()


def _check_close(exported: Tensor, expected: Tensor, what: str) -> float:
    difference = float((exported.float() - expected).abs().max())
    if not difference <= TOLERANCE:
        raise RuntimeError(f"the {what} export differs from the tuned model by {difference:.3g} (> {TOLERANCE})")
    return difference


def _export_timm(run: LoadedRun, out: Path, class_names: list[str] | None) -> dict[str, Any]:
    model = run.model
    _plain_classifier(run, "timm")
    images, expected = _probe(model, run)
    config = classifier_config(model.backbone, model.head.num_classes, model.pooling)
    config["pretrained_cfg"].update(run.pipeline.timm_data_config(model.backbone.in_chans))  # as the run resized
    if class_names is not None:
        config["label_names"] = class_names
    merge_fourierft(model.backbone.model)  # the run's model is a fresh copy: folding in place loses nothing
    state = {**model.backbone.model.state_dict(), **_head_state(model)}
    classifier = create_classifier(config, state)
    with torch.no_grad():
        difference = _check_close(classifier(images), expected, "timm")
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, out / TIMM_WEIGHTS)
    (out / TIMM_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {"timm": _timm_call(config), "max_abs_difference": difference}


def _timm_call(config: dict[str, Any]) -> dict[str, Any]:
    """``timm.create_model(architecture, num_classes=num_classes, **model_args)``'s arguments."""
    return {key: config[key] for key in ("architecture", "num_classes", "model_args")}


def _write_peft_base(run: LoadedRun, base: nn.Module, out: Path) -> dict[str, Any]:
    """Writes the base model's weights (no head) to ``out/PEFT_BASE`` unless timm's own pretrained weights are the
    base; returns where the base weights come from (``export.json``'s ``base_model``)."""
    config = run.model.backbone.config
    if config.get("pretrained") and not config.get("checkpoint_path"):
        return {"timm_pretrained": run.model.backbone.name}
    save_file({k: v.detach().contiguous() for k, v in base.state_dict().items()}, out / PEFT_BASE)
    return {"file": PEFT_BASE, "sha256": sha256_of(out / PEFT_BASE)}


def _export_peft(run: LoadedRun, out: Path) -> dict[str, Any]:
    try:
        import peft
    except ImportError as error:
        raise ValueError("format=peft needs the peft package, which is not installed: pip install peft") from error
    model = run.model
    _plain_classifier(run, "peft")
    layers = {n: m for n, m in model.backbone.model.named_modules() if isinstance(m, FourierFTLinear)}
    if not layers:
        raise ValueError(f"format=peft: the run {run.run_dir} has no FourierFT layers (use format=timm)")
    blocks = sorted({b for layer in layers.values() for b in layer.block_names if b != FULL_LAYER})
    if blocks:
        raise ValueError(
            f"format=peft cannot hold this run: its FourierFT targets {list(model.adapter_config.targets)} adapt the "
            f"{'/'.join(blocks)} row blocks of timm's fused qkv layers, each with its own entries drawn over a d x d "
            "block; a PEFT FourierFT adapter adapts whole nn.Linear modules, with entries drawn over the whole "
            "3d x d matrix, so it cannot express them. Train with whole layers (adapter.targets=[qkv], proj, fc1, "
            "fc2) to export to PEFT, or use format=timm or format=torchscript"
        )
    images, expected = _probe(model, run)
    adapter = model.adapter_config
    config = peft.FourierFTConfig(
        n_frequency=adapter.n_frequency,
        scaling=adapter.scaling,
        random_loc_seed=adapter.seed,
        target_modules="^(" + "|".join(re.escape(name) for name in layers) + ")$",
        modules_to_save=["head"],
        base_model_name_or_path=model.backbone.name,
    )
    prefix = "base_model.model."
    state = {
        f"{prefix}{name}.fourierft_spectrum": layer.fourierft_spectrum[FULL_LAYER].detach()
        for name, layer in layers.items()
    }
    state.update({f"{prefix}{key}": value for key, value in _head_state(model).items()})
    config.save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in state.items()}, out / PEFT_WEIGHTS)
    base = unload_fourierft(copy.deepcopy(model.backbone.model))
    base_model = _write_peft_base(run, base, out)
    # the check: PEFT's own loader on a timm classifier with the base weights (read back from the file written) and
    # a fresh head
    timm_config = classifier_config(model.backbone, model.head.num_classes, model.pooling)
    base_weights = load_file(out / PEFT_BASE) if "file" in base_model else base.state_dict()
    fresh_head = nn.Linear(model.backbone.embed_dim, model.head.num_classes)
    base_state = {**base_weights, "head.weight": fresh_head.weight.detach(), "head.bias": fresh_head.bias.detach()}
    loaded = peft.PeftModel.from_pretrained(create_classifier(timm_config, base_state), str(out)).eval()
    with torch.no_grad():
        difference = _check_close(loaded(images), expected, "peft")
    return {
        "peft_version": peft.__version__,
        "timm": _timm_call(timm_config),
        "base_model": base_model,
        "max_abs_difference": difference,
    }


def _export_torchscript(run: LoadedRun, out: Path) -> dict[str, Any]:
    run.pipeline.exportable_filter("torchscript")
    model = run.pipeline.wrap(run.model)  # the preprocessing filter (if any) in front: normalised images in
    _, expected = _probe(model, run)
    if run.model.adapted_modules:
        merge_fourierft(run.model.backbone.model)
    size = run.datamodule.image_size
    example = torch.zeros(2, run.model.backbone.in_chans, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        # shape-dependent Python branches become constants: checked below on another batch size
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, str(out / TORCHSCRIPT_FILE))
    loaded = torch.jit.load(str(out / TORCHSCRIPT_FILE))
    images, _ = _probe(model, run)  # another batch size than the trace's example
    with torch.no_grad():
        difference = _check_close(loaded(images), expected, "torchscript")
    return {
        "torch_version": torch.__version__,
        "input": "normalised (B, 3, S, S) images"
        + ("" if run.pipeline.preprocess is None else "; the run's preprocessing filter is part of the model"),
        "max_abs_difference": difference,
    }
