"""Every ``experiment=*.yaml`` trains, validates and tests for one step (``trainer.fast_dev_run``), as
lightning-hydra-template's tests do, on the micro backbone: the experiment's own data module, task, prompt, adapter
and optimisation, at test scale. Real datasets come from the shared sample data, else from tiny generated folders in
their layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import fftprompt
from conftest import QUIET, TINY_MODEL, sample_data_root
from fftprompt.run import compose, train
from fftprompt.rundir import METRICS_FILE
from test_data_loaders import write_dtd, write_kvasir, write_npz

EXPERIMENTS = sorted(p.stem for p in (Path(fftprompt.__file__).parent / "configs" / "experiment").glob("*.yaml"))
SMALL = ["trainer=cpu", "backbone.pretrained=false", "data.image_size=32", "data.batch_size=4", "data.num_workers=0"]
SMALL += ["data.pin_memory=false", "trainer.fast_dev_run=true", "logger=none"]
GENERATED = ["data.num_train=8", "data.num_val=4", "data.num_test=4"]


def data_overrides(experiment: str, tmp_path: Path) -> list[str]:
    """The data root of an experiment on a real dataset: the shared sample, else a generated stand-in."""
    sample = sample_data_root()
    if experiment == "dtd":
        root = sample / "dtd" if sample else write_dtd(tmp_path / "dtd")
    elif experiment == "kvasir_seg":
        root = sample / "kvasir_seg" if sample else write_kvasir(tmp_path / "kvasir")
    elif experiment == "medmnist":
        root = sample / "medmnist" if sample else write_npz(tmp_path / "medmnist" / "breastmnist.npz", True).parent
    else:
        return GENERATED
    return [f"data.root={root}"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_one_step(tmp_path, experiment):
    run = tmp_path / "run"
    overrides = [f"experiment={experiment}", *TINY_MODEL, *QUIET, *SMALL, *data_overrides(experiment, tmp_path)]
    cfg = compose([*overrides, f"paths.output_dir={run}"])
    reference = compose([f"experiment={experiment}", "paths.output_dir=/nonexistent"])
    # only the scale changed: the experiment's data module, task and methods are kept
    for key in ("data._target_", "task.name", "task.module._target_", "prompt._target_", "adapter._target_"):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(reference, key), key
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1  # one optimiser step, then one validation and one test batch
    score = metrics[str(cfg.task.monitor).replace("val/", "test/", 1)]
    assert math.isfinite(score) and 0.0 <= score <= 1.0
    assert json.loads((run / METRICS_FILE).read_text())["trainable_params"] == metrics["trainable_params"] > 0
