"""One road from a finished run to its outputs: eval, predict, the loaded run and export see the same input pipeline
(preprocessing filter included), and a moved run (or a re-made clone) still finds its backbone weights."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import QUIET, TINY_SYMMETRY, eval_test_logits, tiny_config
from fftprompt.export import export
from fftprompt.predict import predict
from fftprompt.run import compose, evaluate, train
from fftprompt.rundir import load_run
from fftprompt.weights import DEMO_WEIGHTS, WEIGHTS_DIR, file_sha256, locate_weights

pytestmark = pytest.mark.slow
LOWPASS = ["augment=band", "augment.preprocess=true", "augment.p=1.0", "augment.kind=lowpass", "augment.high=0.2"]


def write_test_images(run: Path, folder: Path) -> list[Path]:
    """The run's generated test images as lossless PNG files (in test-split order)."""
    datamodule = load_run(run).datamodule
    batch = datamodule.generator.generate("test", np.arange(datamodule.split_sizes["test"]))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"test_{index:03d}.png" for index in range(len(batch.images))]
    for path, image in zip(paths, batch.images, strict=True):
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(path)
    return paths


def predicted_probabilities(written: dict, num_classes: int) -> np.ndarray:
    """``(N, K)`` class probabilities from predictions.csv written with ``top_k=K`` and ``class_names=index``."""
    with written["predictions"].open(newline="") as file:
        rows = list(csv.DictReader(file))
    out = np.zeros((len(rows), num_classes))
    for row_index, row in enumerate(rows):
        for rank in range(1, num_classes + 1):
            out[row_index, int(row[f"class_{rank}"])] = float(row[f"probability_{rank}"])
    return out


def test_a_preprocessed_run_gives_the_same_logits_in_eval_predict_the_loaded_run_and_torchscript(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config(run, "trainer.max_epochs=1", *LOWPASS))
    write_test_images(run, tmp_path / "images")
    metrics, eval_logits = eval_test_logits(
        tiny_config(tmp_path / "eval", f"adapter_path={run}", name="eval"), monkeypatch
    )

    loaded = load_run(run)
    assert loaded.pipeline.preprocess is not None and loaded.pipeline.describe()["preprocess"].startswith("BandFilter")
    test_images = torch.stack([image for image, _ in loaded.datamodule.dataset("test")])
    with torch.no_grad():
        loaded_logits, unfiltered = loaded.logits(test_images), loaded.model(test_images)
    torch.testing.assert_close(loaded_logits, eval_logits, rtol=1e-4, atol=1e-5)
    assert float((unfiltered - eval_logits).abs().max()) > 1e-3  # the filter matters: skipping it is visible

    written = predict(run, tmp_path / "images", tmp_path / "out", top_k=6, class_names="index", progress=False)
    np.testing.assert_allclose(
        predicted_probabilities(written, 6), eval_logits.softmax(dim=1).numpy(), rtol=1e-4, atol=1e-6
    )
    assert json.loads(written["summary"].read_text())["pipeline"]["preprocess"].startswith("BandFilter")

    # TorchScript holds the filter; timm (a plain classifier) refuses it with the reason
    exported = export(run, "torchscript", tmp_path / "ts")
    scripted = torch.jit.load(str(exported["model.torchscript.pt"]))
    with torch.no_grad():
        torch.testing.assert_close(scripted(test_images), eval_logits, rtol=1e-4, atol=1e-5)
    info = json.loads(exported["info"].read_text())
    assert info["pipeline"]["preprocess"].startswith("BandFilter") and info["pipeline"]["interpolation"] == "bilinear"
    with pytest.raises(ValueError, match=r"preprocessed by BandFilter.*augment.preprocess=true"):
        export(run, "timm", tmp_path / "timm")


def test_a_filter_that_mixes_images_is_refused_by_torchscript(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, "trainer.max_epochs=1", "augment=amp_mix", "augment.preprocess=true", "augment.p=1.0"))
    with pytest.raises(ValueError, match="format=torchscript cannot include the run's preprocessing AmplitudeMix"):
        export(run, "torchscript")


def test_a_moved_run_of_another_clone_works_unchanged(tmp_path, monkeypatch):
    # trained on the shipped demo weights as another clone held them
    clone_weights = tmp_path / "clone" / "src" / "fftprompt" / "weights" / DEMO_WEIGHTS
    clone_weights.parent.mkdir(parents=True)
    shutil.copyfile(WEIGHTS_DIR / DEMO_WEIGHTS, clone_weights)
    run = tmp_path / "runs" / "a"
    overrides = [
        "prompt=none",
        "adapter.n_frequency=20",
        "trainer.max_epochs=1",
        f"backbone.checkpoint_path={clone_weights}",
    ]
    train(compose([*QUIET, *TINY_SYMMETRY, *overrides, f"paths.output_dir={run}"]))
    assert json.loads((run / "adapter.json").read_text())["backbone"]["config"]["checkpoint_sha256"] == file_sha256(
        WEIGHTS_DIR / DEMO_WEIGHTS
    )
    write_test_images(run, tmp_path / "images")
    before = predict(run, tmp_path / "images", tmp_path / "p0", top_k=6, class_names="index", progress=False)

    # the clone is gone and the run copied elsewhere: its recorded absolute paths are stale
    moved = tmp_path / "elsewhere" / "a"
    shutil.copytree(run, moved)
    shutil.rmtree(tmp_path / "clone")
    shutil.rmtree(run)
    assert str(clone_weights) in (moved / "config.yaml").read_text()

    after = predict(moved, tmp_path / "images", tmp_path / "p1", top_k=6, class_names="index", progress=False)
    np.testing.assert_allclose(predicted_probabilities(after, 6), predicted_probabilities(before, 6), atol=1e-6)
    exported = export(moved, "torchscript", tmp_path / "ts")
    assert json.loads(exported["info"].read_text())["max_abs_difference"] < 1e-5
    eval_config = compose([f"adapter_path={moved}", f"paths.output_dir={tmp_path / 'e'}", *QUIET], "eval")
    _, eval_logits = eval_test_logits(eval_config, monkeypatch)
    np.testing.assert_allclose(predicted_probabilities(after, 6), eval_logits.softmax(dim=1).numpy(), atol=1e-5)

    # the same file at a path of the user's choice is accepted by predict and eval; other bytes are another model
    elsewhere = tmp_path / "mine.safetensors"
    shutil.copyfile(WEIGHTS_DIR / DEMO_WEIGHTS, elsewhere)
    given = {"checkpoint_path": str(elsewhere)}
    again = predict(
        moved, tmp_path / "images", tmp_path / "p2", top_k=6, class_names="index", progress=False, backbone=given
    )
    np.testing.assert_allclose(predicted_probabilities(again, 6), predicted_probabilities(before, 6), atol=1e-6)
    evaluate(
        compose(
            [f"adapter_path={moved}", f"backbone.checkpoint_path={elsewhere}", f"paths.output_dir={tmp_path / 'e2'}"],
            "eval",
        )
    )
    other = tmp_path / "other.safetensors"
    other.write_bytes(elsewhere.read_bytes()[:-1] + b" ")
    with pytest.raises(ValueError, match="holds other weights.*another model"):
        predict(moved, tmp_path / "images", tmp_path / "p3", progress=False, backbone={"checkpoint_path": str(other)})
    with pytest.raises(ValueError, match="another model"):
        evaluate(
            compose(
                [f"adapter_path={moved}", f"backbone.checkpoint_path={other}", f"paths.output_dir={tmp_path / 'e3'}"],
                "eval",
            )
        )


def test_locate_weights_takes_the_recorded_file_then_the_shipped_one_by_sha256(tmp_path):
    shipped = WEIGHTS_DIR / DEMO_WEIGHTS
    sha = file_sha256(shipped)
    assert sha == (WEIGHTS_DIR / DEMO_WEIGHTS).with_suffix(".sha256").read_text().split()[0]  # the model card's
    gone = tmp_path / "old-clone" / DEMO_WEIGHTS
    assert locate_weights(gone, sha) == shipped
    assert locate_weights(gone, None) == shipped  # runs written before SHA256s were recorded
    with pytest.raises(ValueError, match="does not exist.*backbone.checkpoint_path="):
        locate_weights(tmp_path / "user.safetensors", sha)
    changed = tmp_path / DEMO_WEIGHTS
    changed.write_bytes(b"other bytes")
    assert locate_weights(changed, sha) == shipped  # the recorded path holds other bytes: the shipped file has them
    with pytest.raises(ValueError, match="holds other weights"):
        locate_weights(tmp_path / "x.safetensors", sha, given=changed)
