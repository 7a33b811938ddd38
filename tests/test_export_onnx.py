"""fftprompt-export format=onnx|exported_program: the whole prompted model, run by onnxruntime / torch.export.load,
gives the run's outputs; fftprompt-predict runtime=onnx gives the run's predictions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fftprompt.export import export
from fftprompt.exporters import ONNX_TOLERANCE, default_onnx_file
from fftprompt.run import train
from fftprompt.rundir import load_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    """The demo method at the tiny size: frequency-conditioned prompts + FourierFT on q/v blocks."""
    run = tmp_path_factory.mktemp("onnx") / "run"
    train(tiny_config(run, "trainer.max_epochs=1"))
    return run


def images(batch: int, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(5))


def tuned_outputs(run: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_run(run).model(x)


def onnxruntime_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"images": x.numpy()})
    return torch.from_numpy(output)


def needs_onnx() -> None:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)


def test_onnx_export_of_the_prompted_model_runs_in_onnxruntime(classification_run):
    needs_onnx()
    onnx = pytest.importorskip("onnx")
    written = export(classification_run, "onnx")
    assert written["model.onnx"] == default_onnx_file(classification_run)
    for batch in (1, 7):  # the batch size is dynamic (traced with 2)
        x = images(batch)
        difference = (onnxruntime_outputs(written["model.onnx"], x) - tuned_outputs(classification_run, x)).abs().max()
        assert difference < ONNX_TOLERANCE
    info = json.loads(written["info"].read_text())
    opset = {entry.domain: entry.version for entry in onnx.load(str(written["model.onnx"])).opset_import}[""]
    assert info["onnx"]["opset"] == opset and info["tolerance"] == ONNX_TOLERANCE
    assert info["pipeline"]["image_size"] == 32 and len(info["pipeline"]["mean"]) == 3
    assert info["max_abs_difference"] < ONNX_TOLERANCE and info["versions"]["onnxruntime"]
    # no complex tensors and no FFT operator left in the graph: the DFTs are matrix products
    operators = {node.op_type for node in onnx.load(str(written["model.onnx"])).graph.node}
    assert "MatMul" in operators and "DFT" not in operators


def test_onnx_export_of_a_segmentation_run(tmp_path):
    needs_onnx()
    run = tmp_path / "run"
    train(tiny_config(run, "data=symmetry_seg", "trainer.max_epochs=1", "data.num_test=4"))
    written = export(run, "onnx")
    x = images(3)
    outputs, expected = onnxruntime_outputs(written["model.onnx"], x), tuned_outputs(run, x)
    assert outputs.shape == expected.shape == (3, 2, 32, 32)
    assert (outputs - expected).abs().max() < ONNX_TOLERANCE


def test_exported_program_loads_with_torch_export(classification_run, tmp_path):
    written = export(classification_run, "exported_program", tmp_path / "pt2")
    program = torch.export.load(str(written["model.pt2"]))
    for batch in (1, 6):
        x = images(batch)
        with torch.no_grad():
            assert (program.module()(x) - tuned_outputs(classification_run, x)).abs().max() < 1e-5
    assert json.loads(written["info"].read_text())["format"] == "exported_program"


def class_probabilities(row: dict[str, str]) -> dict[str, float]:
    return {row[f"class_{rank}"]: float(row[f"probability_{rank}"]) for rank in range(1, 7)}


def test_predict_with_runtime_onnx_gives_the_runs_predictions(classification_run, tmp_path):
    needs_onnx()
    from fftprompt.predict import predict
    from test_predict import read_predictions, write_split

    if not default_onnx_file(classification_run).is_file():
        export(classification_run, "onnx")
    paths, _ = write_split(classification_run, "test", tmp_path / "images")
    common = {"images": tmp_path / "images", "top_k": 6, "progress": False, "batch_size": 5}
    by_torch = read_predictions(predict(classification_run, out_dir=tmp_path / "torch", **common)["predictions"])
    written = predict(classification_run, out_dir=tmp_path / "onnx", runtime="onnx", **common)
    by_onnx = read_predictions(written["predictions"])
    assert len(by_onnx) == len(by_torch) == len(paths)
    for torch_row, onnx_row in zip(by_torch, by_onnx, strict=True):
        assert onnx_row["path"] == torch_row["path"] and onnx_row["class_1"] == torch_row["class_1"]
        # every class's probability (top_k = all 6 classes)
        torch_probabilities, onnx_probabilities = class_probabilities(torch_row), class_probabilities(onnx_row)
        assert torch_probabilities.keys() == onnx_probabilities.keys() and len(onnx_probabilities) == 6
        for name, probability in torch_probabilities.items():
            assert abs(onnx_probabilities[name] - probability) < 1e-4
    assert json.loads(written["summary"].read_text())["runtime"].startswith("onnx: ")
    with pytest.raises(ValueError, match="does not exist; write it with fftprompt-export format=onnx"):
        predict(classification_run, out_dir=tmp_path / "x", runtime="onnx", onnx_file=tmp_path / "no.onnx", **common)
    with pytest.raises(ValueError, match="runtime='tflite'"):
        predict(classification_run, out_dir=tmp_path / "x", runtime="tflite", **common)


def test_onnx_without_the_packages_fails_fast_with_the_install_line(classification_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ValueError, match=r"onnxruntime package, not installed: pip install 'fftprompt\[onnx\]'"):
        export(classification_run, "onnx", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
