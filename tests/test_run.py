"""train(cfg) / evaluate(cfg) on tiny composed configs: outputs, reproduction, resuming, refusing to overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import fftprompt
from conftest import QUIET, TINY_MODEL, TINY_SYMMETRY, tiny_config
from fftprompt.run import build, evaluate, train

CONFIG_DIR = Path(fftprompt.__file__).parent / "configs"
TINY = [*TINY_MODEL, *QUIET]
CLASSIFICATION_KEYS = {"test/acc", "test/f1_macro", "test/auroc", "test/loss"}
SEGMENTATION_KEYS = {"test/miou", "test/dice", "test/loss"}


def config(output_dir: Path, *overrides: str, name: str = "train", data: list[str] = TINY_SYMMETRY):
    return tiny_config(output_dir, *overrides, data=data, name=name)


def file_data(name: str, root: Path) -> list[str]:
    """Overrides selecting a file dataset ``name`` at ``root`` with tiny images and batches."""
    return [f"data={name}", f"data.root={root}", "data.image_size=32", "data.batch_size=4", "data.num_workers=0"]


def assert_scores(metrics: dict, keys: set[str]) -> None:
    assert keys <= set(metrics)
    for key in keys - {"test/loss"}:
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert np.isfinite(metrics["test/loss"]) and metrics["test/loss"] > 0
    assert 0 < metrics["trainable_params"] < metrics["total_params"]


@pytest.mark.slow
def test_train_classification_writes_the_run_directory(tmp_path):
    run = tmp_path / "run"
    metrics, objects = train(
        config(run, "trainer.fast_dev_run=true", "report.frequency_panels=1", "report.explain_images=1")
    )
    assert_scores(metrics, CLASSIFICATION_KEYS)
    saved = json.loads((run / "metrics.json").read_text())
    assert {k: saved[k] for k in CLASSIFICATION_KEYS} == {k: metrics[k] for k in CLASSIFICATION_KEYS}
    assert saved["config"]["data"] == "SymmetryDataModule" and saved["config"]["num_classes"] == 6
    assert saved["train_seconds"] > 0 and saved["test_seconds"] > 0
    for name in ("config.yaml", "report.md", "adapter.safetensors", "adapter.json", "figures/confusion.png"):
        assert (run / name).is_file(), name
    assert (run / "figures/frequency_maps_0.png").is_file()
    assert "figures/explain/explain.md" in (run / "report.md").read_text()
    assert (run / "figures/explain/explain.md").is_file()
    assert objects["trainer"].global_step == 1
    assert sum(p.numel() for p in objects["module"].parameters() if p.requires_grad) == metrics["trainable_params"]


@pytest.mark.slow
def test_train_segmentation_with_overwrite_of_a_finished_run(tmp_path):
    run = tmp_path / "seg"
    run.mkdir()
    (run / "metrics.json").write_text('{"stale": true}')
    metrics, objects = train(config(run, "data=symmetry_seg", "trainer.fast_dev_run=true", "overwrite=true"))
    assert "stale" not in json.loads((run / "metrics.json").read_text())
    assert_scores(metrics, SEGMENTATION_KEYS)
    assert type(objects["module"]).__name__ == "SegmentationModule"
    assert "figures/predictions.png" in (run / "report.md").read_text()
    assert (run / "figures/predictions.png").is_file()


@pytest.mark.slow
def test_evaluate_reproduces_a_finished_run_and_resume_continues_it(tmp_path):
    run = tmp_path / "run"
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "task.module.warmup_epochs=0"]
    metrics, _ = train(config(run, *short))
    assert metrics["tested_weights"] == "best" and metrics["epochs"] == 1
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "csv").is_dir()

    from_adapter = evaluate(config(tmp_path / "eval_adapter", f"adapter_path={run}", name="eval"))
    from_ckpt = evaluate(config(tmp_path / "eval_ckpt", f"ckpt_path={run}/checkpoints/last.ckpt", name="eval"))
    for key in CLASSIFICATION_KEYS:
        assert from_adapter[key] == pytest.approx(metrics[key], abs=1e-6), key
        assert from_ckpt[key] == pytest.approx(metrics[key], abs=1e-6), key
    saved = json.loads((tmp_path / "eval_adapter" / "metrics.json").read_text())
    assert saved["test/acc"] == from_adapter["test/acc"] and saved["weights"] == str(run)
    assert (tmp_path / "eval_adapter" / "report.md").is_file()

    # another model than the run's, or another seed for its random backbone, is refused
    with pytest.raises(ValueError, match="prompt"):
        evaluate(config(tmp_path / "bad1", f"adapter_path={run}", "prompt.num_tokens=3", name="eval"))
    with pytest.raises(ValueError, match="seed"):
        evaluate(config(tmp_path / "bad2", f"adapter_path={run}", "seed=7", name="eval"))

    resumed, objects = train(config(run, *short, "trainer.max_epochs=2", "ckpt_path=last"))
    assert resumed["epochs"] == 2 and objects["trainer"].global_step == 4
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["version_0", "version_1"]


def test_refuses_to_overwrite_an_earlier_run(tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a finished run"):
        train(config(finished))
    (tmp_path / "weights").mkdir()
    with pytest.raises(ValueError, match="already holds a finished run"):
        evaluate(config(finished, f"adapter_path={tmp_path / 'weights'}", name="eval"))
    with pytest.raises(ValueError, match="is the evaluated run's own directory"):
        evaluate(config(finished, f"adapter_path={finished}", "overwrite=true", name="eval"))
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="unfinished run"):
        train(config(unfinished))
    with pytest.raises(ValueError, match="does not exist"):
        train(config(tmp_path / "fresh", "ckpt_path=last"))
    with pytest.raises(ValueError, match="exactly one"):
        evaluate(config(tmp_path / "e", name="eval"))


def write_image_folder(root: Path, classes: int = 2, per_class: int = 10) -> None:
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")


def test_relative_data_root_resolves_against_the_working_directory(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    overrides = file_data("image_folder", Path("images"))
    parts = build(config(tmp_path / "run", data=overrides))
    datamodule = parts["datamodule"]
    assert Path(datamodule.root) == tmp_path / "images" and Path(datamodule.root).is_absolute()
    assert datamodule.class_names == ["class_0", "class_1"] and parts["num_classes"] == 2
    assert parts["model"].backbone.mean == tuple(datamodule.mean)


def test_segmentation_data_with_a_classification_task_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="task=segmentation"):
        build(config(tmp_path, "data.task=segmentation"))


@pytest.mark.slow
def test_train_on_real_sample_data(tmp_path, sample_data):
    medmnist = file_data("medmnist", sample_data / "medmnist")
    metrics, _ = train(config(tmp_path / "medmnist", "trainer.fast_dev_run=true", data=medmnist))
    assert_scores(metrics, CLASSIFICATION_KEYS)
    kvasir = file_data("kvasir_seg", sample_data / "kvasir_seg") + ["data.val_fraction=0.2", "data.test_fraction=0.2"]
    metrics, _ = train(config(tmp_path / "kvasir", "trainer.fast_dev_run=true", data=kvasir))
    assert_scores(metrics, SEGMENTATION_KEYS)


@pytest.mark.slow
def test_console_entry_point_runs_from_any_directory(tmp_path):
    overrides = [*TINY, *TINY_SYMMETRY, "trainer.fast_dev_run=true"]
    command = [sys.executable, "-c", "from fftprompt.cli import train_main; train_main()", *overrides]
    environment = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = (tmp_path / "runs").glob("*/*/metrics.json")
    assert set(json.loads(metrics_file.read_text())) >= CLASSIFICATION_KEYS
    (launch,) = yaml.safe_load((metrics_file.parent / "launches.yaml").read_text())  # the run records its launch
    assert launch["overrides"] == overrides and launch["cwd"] == str(tmp_path)


def test_build_refuses_data_of_another_size_than_the_backbone(tmp_path):
    # as fftprompt-eval data.image_size=48 on a 32 px run (its config.yaml holds the resolved backbone.img_size=32):
    # one line naming both sizes, before timm's assertion in the middle of the first forward pass
    cfg = config(tmp_path / "run", "data.image_size=48", "backbone.img_size=32")
    with pytest.raises(ValueError, match=r"data.image_size=48 but the backbone takes 32x32 images"):
        build(cfg)
