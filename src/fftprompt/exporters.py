"""Deployment formats of the whole prompted model, each checked by its own runtime: ONNX and ``torch.export``.

- :func:`export_onnx`: ``model.onnx`` through torch's ONNX exporter (``torch.onnx.export(dynamo=True)``), with the
  FourierFT deltas merged and the FFTs as real matrix products (:mod:`fftprompt.realdft`: ONNX has no complex
  tensors), loaded back and run by **onnxruntime** before it is written. Input ``images`` ``(B, C, S, S)``
  normalised, output ``logits`` ``(B, K)`` or ``(B, K, S, S)``; the batch size is dynamic. Needs the ``onnx``,
  ``onnxscript`` and ``onnxruntime`` packages (``pip install 'fftprompt[onnx]'``).
- :func:`export_program`: ``model.pt2``, a ``torch.export`` program (``torch.fft`` kept), loaded back with
  ``torch.export.load`` and compared.
- :class:`OnnxModel`: an onnxruntime session on such a file, called like the model (``fftprompt-predict
  runtime=onnx``).

Both checks run the export on a batch size other than the one it was traced with and compare with the tuned
(unmerged, ``torch.fft``) model on the same random images.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fftprompt.fourierft import merge_fourierft
from fftprompt.model import PromptedViT
from fftprompt.realdft import use_real_dft
from fftprompt.runfiles import EXPORT_DIR, EXPORTED_PROGRAM_FILE, ONNX_FILE

__all__ = [
    "ONNX_INSTALL",
    "ONNX_TOLERANCE",
    "OnnxModel",
    "export_onnx",
    "export_program",
    "default_onnx_file",
    "require_onnx",
]

ONNX_INSTALL = "pip install 'fftprompt[onnx]' (or: pip install onnx onnxscript onnxruntime)"
# onnxruntime fuses and reorders float32 arithmetic (and the DFT is a matrix product there): looser than the
# 1e-5 that the other formats meet, far below any logit gap that changes a prediction
ONNX_TOLERANCE = 1e-4
PROGRAM_TOLERANCE = 1e-5
_TRACE_BATCH, _CHECK_BATCHES = 2, (1, 3)


def default_onnx_file(run_dir: str | Path) -> Path:
    """Where ``fftprompt-export run_dir=RUN format=onnx`` writes by default: ``RUN/export/onnx/model.onnx``."""
    return Path(run_dir) / EXPORT_DIR / "onnx" / ONNX_FILE


def require_onnx() -> dict[str, Any]:
    """The ``onnx``, ``onnxscript`` and ``onnxruntime`` modules by name; a ValueError with the install line if any
    is missing."""
    modules = {}
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            modules[name] = __import__(name)
        except ImportError as error:
            raise ValueError(
                f"ONNX export and runtime=onnx need the {name} package, not installed: {ONNX_INSTALL}"
            ) from error
    return modules


def _deployable(model: PromptedViT, real_dft: bool) -> nn.Module:
    """A merged copy of ``model`` in eval mode (the run's model stays as trained), FFTs real when ``real_dft``."""
    deployable = copy.deepcopy(model).eval()
    if deployable.adapted_modules:
        merge_fourierft(deployable.backbone.model)
    return use_real_dft(deployable) if real_dft else deployable


def _probes(model: PromptedViT, image_size: int) -> list[tuple[Tensor, Tensor]]:
    """Random normalised images at the run's size (one per checked batch size) and the tuned model's outputs."""
    generator = torch.Generator().manual_seed(0)
    probes = []
    for batch in _CHECK_BATCHES:
        images = torch.randn(batch, model.backbone.in_chans, image_size, image_size, generator=generator)
        with torch.no_grad():
            probes.append((images, model.eval()(images).float()))
    return probes


def _largest_difference(run: Any, probes: list[tuple[Tensor, Tensor]], tolerance: float, what: str) -> float:
    difference = 0.0
    for images, expected in probes:
        exported = torch.as_tensor(run(images)).float()
        if exported.shape != expected.shape:
            raise RuntimeError(f"the {what} export gives shape {tuple(exported.shape)}, not {tuple(expected.shape)}")
        difference = max(difference, float((exported - expected).abs().max()))
    if not difference <= tolerance:
        raise RuntimeError(f"the {what} export differs from the tuned model by {difference:.3g} (> {tolerance})")
    return difference


def _trace_inputs(model: PromptedViT, image_size: int) -> tuple[tuple[Tensor], tuple[dict[int, Any]]]:
    example = torch.zeros(_TRACE_BATCH, model.backbone.in_chans, image_size, image_size)
    return (example,), ({0: torch.export.Dim("batch", min=1)},)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silences what the exporters say about the model's diagnostic caches (the attention of the last forward,
    position tables): written during the trace, read by ``fftprompt.explain`` only, absent from the graph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The tensor attributes? .* (was|were) assigned during export")
        yield


def export_onnx(model: PromptedViT, image_size: int, out: Path) -> dict[str, Any]:
    """Writes ``out/model.onnx`` and checks it in onnxruntime against ``model``.

    Args:
        model: The tuned model (not changed).
        image_size: ``S`` of the run's ``(B, C, S, S)`` inputs.
        out: Folder to write into.

    Returns:
        What ``export.json`` records: opset, input/output names and axes, versions, the largest difference.
    """
    modules = require_onnx()
    probes = _probes(model, image_size)
    deployable = _deployable(model, real_dft=True)
    example, dynamic_shapes = _trace_inputs(model, image_size)
    with _quiet_export():
        program = torch.onnx.export(
            deployable,
            example,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=["images"],
            output_names=["logits"],
            verbose=False,
        )
    path = out / ONNX_FILE
    program.save(str(path))
    onnx_model = modules["onnx"].load(str(path))
    modules["onnx"].checker.check_model(onnx_model)
    session = OnnxModel(path)
    difference = _largest_difference(session, probes, ONNX_TOLERANCE, "ONNX")
    opset = next(entry.version for entry in onnx_model.opset_import if entry.domain in ("", "ai.onnx"))
    return {
        "onnx": {
            "file": ONNX_FILE,
            "opset": int(opset),
            "input": "images: float32 (batch, C, S, S), normalised",
            "output": "logits: float32 (batch, K)" if model.task == "classification" else "logits: (batch, K, S, S)",
            "dynamic_axes": ["batch"],
            "fft": "real DFT matrix products (fftprompt.realdft)",
            "fourierft": "merged into the weights",
        },
        "versions": {
            "torch": torch.__version__,
            **{name: module.__version__ for name, module in modules.items()},
        },
        "checked_with": "onnxruntime CPUExecutionProvider, batch sizes " + ", ".join(map(str, _CHECK_BATCHES)),
        "max_abs_difference": difference,
        "tolerance": ONNX_TOLERANCE,
    }


def export_program(model: PromptedViT, image_size: int, out: Path) -> dict[str, Any]:
    """Writes ``out/model.pt2`` (``torch.export``) and checks ``torch.export.load`` of it against ``model``.

    Args:
        model: The tuned model (not changed).
        image_size: ``S`` of the run's ``(B, C, S, S)`` inputs.
        out: Folder to write into.

    Returns:
        What ``export.json`` records.
    """
    probes = _probes(model, image_size)
    deployable = _deployable(model, real_dft=False)
    example, dynamic_shapes = _trace_inputs(model, image_size)
    with _quiet_export(), torch.no_grad():
        program = torch.export.export(deployable, example, dynamic_shapes=dynamic_shapes)
    path = out / EXPORTED_PROGRAM_FILE
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        difference = _largest_difference(loaded, probes, PROGRAM_TOLERANCE, "exported_program")
    return {
        "exported_program": {
            "file": EXPORTED_PROGRAM_FILE,
            "load": "torch.export.load(path).module()(images)",
            "input": "images: float32 (batch, C, S, S), normalised",
            "dynamic_axes": ["batch"],
            "fourierft": "merged into the weights",
        },
        "versions": {"torch": torch.__version__},
        "max_abs_difference": difference,
        "tolerance": PROGRAM_TOLERANCE,
    }


class OnnxModel:
    """An onnxruntime session on an exported ``model.onnx``, called like the model: ``(B, C, S, S) -> logits``.

    Args:
        path: The ``.onnx`` file.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (needs the onnxruntime-gpu package).
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        onnxruntime = require_onnx()["onnxruntime"]
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"onnx_file={str(path)!r} does not exist; write it with fftprompt-export format=onnx")
        if device == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
        else:
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise ValueError(
                    f"device={device!r} with runtime=onnx needs onnxruntime's CUDAExecutionProvider "
                    "(pip install onnxruntime-gpu); use device=cpu"
                )
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.input = self.session.get_inputs()[0]
        # (batch, C, S, S) with a symbolic batch
        self.input_shape = tuple(self.input.shape[1:])

    def __call__(self, images: Tensor) -> Tensor:
        """``(B, C, S, S)`` normalised images -> float32 logits (on the CPU)."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.path} takes images of shape (B, {', '.join(map(str, self.input_shape))}); "
                f"got {tuple(images.shape)}"
            )
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input.name: array})[0])
