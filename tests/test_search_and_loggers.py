"""Hyper-parameter search configs (Hydra's Optuna sweeper, optional) and the optional loggers (wandb, mlflow,
tensorboard).

Neither the sweeper nor the logger packages are needed by ``make test``: the search configs are composed with a
stand-in for the sweeper's config when the plugin is absent (the real one when present), and a missing package must
give an error that names it. ``make test-extras`` installs them all and runs a 3-trial search and each logger for
real, reading their files back with the packages' own readers (it fails when a test here skipped).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import fftprompt
from conftest import QUIET, TINY_MODEL, TINY_SYMMETRY, tiny_config
from fftprompt.run import compose, optimized_metric, train

CONFIG_DIR = Path(fftprompt.__file__).parent / "configs"
SEARCHES = sorted(p.stem for p in (CONFIG_DIR / "hparams_search").glob("*.yaml"))
SWEPT = {
    "linear_probe": {"task.module.head_lr", "task.module.optimizer.weight_decay"},
    "prompts": {"task.module.prompt_lr", "task.module.head_lr", "task.module.optimizer.weight_decay"},
    "fourierft": {"task.module.adapter_lr", "task.module.head_lr", "task.module.optimizer.weight_decay"},
    "fft_fourierft": {
        "task.module.prompt_lr",
        "task.module.adapter_lr",
        "task.module.head_lr",
        "task.module.optimizer.weight_decay",
    },
}
# hydra-optuna-sweeper's config (OptunaSweeperConf with its TPE sampler defaults), for composing without the plugin
SWEEPER_STAND_IN = """
_target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
sampler:
  _target_: optuna.samplers.TPESampler
  seed: null
  n_startup_trials: 10
direction: minimize
storage: null
study_name: null
n_trials: 20
n_jobs: 2
max_failure_rate: 0.0
search_space: null
params: null
custom_search_space: null
"""


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


SWEEPER = installed("hydra_plugins.hydra_optuna_sweeper")


def compose_search(name: str, tmp_path: Path):
    """The train config with ``hparams_search=name`` and Hydra's own node (the sweeper's)."""
    overrides = [f"hparams_search={name}", "paths.output_dir=/nonexistent/search"]
    if not SWEEPER:
        stand_in = tmp_path / "hydra" / "sweeper" / "optuna.yaml"
        stand_in.parent.mkdir(parents=True)
        stand_in.write_text(SWEEPER_STAND_IN)
        overrides.append(f"hydra.searchpath=[file://{tmp_path}]")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=True)


def test_one_search_per_method_family():
    assert sorted(SWEPT) == SEARCHES


@pytest.mark.parametrize("name", SEARCHES)
def test_search_config_composes_and_sweeps_keys_of_the_train_config(name, tmp_path):
    cfg = compose_search(name, tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode.name == "MULTIRUN"
    assert sweeper.direction == "maximize" and sweeper.study_name == name and sweeper.sampler.seed == 1234
    assert cfg.optimized_metric == "val/acc_best" and cfg.task.monitor_mode == "max"
    assert set(sweeper.params) == SWEPT[name]
    parser = OverridesParser.create()
    for key, value in sweeper.params.items():
        override = parser.parse_override(f"{key}={value}")
        assert override.is_sweep_override() and override.is_interval_sweep(), (key, value)
        interval = override.value()
        assert "log" in interval.tags and 0 < interval.start < interval.end
        for bound in (interval.start, interval.end):  # both ends are values the run takes for that key
            assert OmegaConf.select(compose([f"{key}={bound}", "paths.output_dir=/x"]), key) == bound
    if "adapter_lr" in " ".join(sweeper.params):  # FourierFT's coefficients need rates around 0.1-0.3
        assert parser.parse_override(f"a={sweeper.params['task.module.adapter_lr']}").value().end >= 0.3


def test_the_optimised_metric_follows_the_task(tmp_path):
    cfg = compose_search("fourierft", tmp_path)
    assert cfg.optimized_metric == "val/acc_best"
    segmentation = compose(["data=symmetry_seg", "+optimized_metric=${task.monitor}_best", "paths.output_dir=/x"])
    assert segmentation.optimized_metric == "val/miou_best"


@pytest.mark.skipif(SWEEPER, reason="hydra-optuna-sweeper is installed")
def test_a_search_without_the_sweeper_is_a_clear_error(monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"hparams_search=fourierft: .*Optuna sweeper.*fftprompt\[search\]"):
        compose(["hparams_search=fourierft"])
    from fftprompt.cli import train_main

    monkeypatch.setattr("sys.argv", ["fftprompt-train", "hparams_search=prompts"])
    with pytest.raises(SystemExit) as exit_info:
        train_main()
    assert exit_info.value.code == 2
    assert (
        "error: hparams_search=prompts: the hyper-parameter search runs on Hydra's Optuna sweeper"
        in capsys.readouterr().err
    )


@pytest.mark.slow
def test_train_records_the_best_validation_score_that_searches_optimise(tmp_path):
    cfg = tiny_config(tmp_path / "run", "trainer.max_epochs=2")
    metrics, objects = train(cfg)
    best = float(objects["trainer"].checkpoint_callback.best_model_score)
    assert metrics["val/acc_best"] == pytest.approx(best)
    assert optimized_metric(cfg, metrics) == metrics["test/acc"]  # without optimized_metric: the test score
    OmegaConf.set_struct(cfg, False)
    cfg.optimized_metric = "${task.monitor}_best"
    assert optimized_metric(cfg, metrics) == pytest.approx(best)
    cfg.optimized_metric = "val/miou_best"
    with pytest.raises(ValueError, match="optimized_metric='val/miou_best' is not among the run's metrics"):
        optimized_metric(cfg, metrics)


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline ``run-*.wandb`` file: W&B's transaction log, LevelDB's log format (a
    7-byte file header, then 32 KiB blocks of chunks ``crc32, length, type`` with types full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, position, block = [], b"", 7, 32768
    while position + 7 <= len(raw):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        if kind == 0:
            break
        pending += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full or last chunk: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_key(item) -> str:
    """A history or summary item's metric name (``key``, or ``nested_key`` parts for names with ``/``)."""
    return item.key or "/".join(item.nested_key)


def read_wandb(run: Path, metrics: dict) -> None:
    """The offline W&B run, read back from its transaction log: closed, a validation curve, the test metrics."""
    import wandb

    assert wandb.run is None  # closed by train: a sweep's next trial gets its own run
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    # W&B's service process writes the log: under load it may land a moment after finish() returned
    for _ in range(120):
        records = wandb_records(log)
        kinds = [record.WhichOneof("record_type") for record in records]
        if kinds and kinds[-1] == "exit":
            break
        time.sleep(0.25)
    assert kinds.count("run") == 1 and kinds[-1] == "exit"
    history = [{wandb_key(item): json.loads(item.value_json) for item in r.history.item} for r in records]
    assert len([row for row in history if "val/acc" in row]) == 2  # one per epoch
    summary = {wandb_key(item): json.loads(item.value_json) for r in records for item in r.summary.update}
    assert summary["test/acc"] == pytest.approx(metrics["test/acc"])


def read_mlflow(run: Path, metrics: dict) -> None:
    """The MLflow run in the local SQLite store (no tracking URI set), finished, with the test metrics."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fftprompt")
    assert experiment.artifact_location.endswith(str(run / "mlartifacts"))
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert "val/acc" in logged.data.metrics and "adapter_lr" in logged.data.params


def read_tensorboard(run: Path, metrics: dict) -> None:
    """TensorBoard's own event reader finds the validation curve and the test metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run / "tensorboard").glob("version_*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"val/acc", "test/acc"} <= set(tags)
    assert len(accumulator.Scalars("val/acc")) == 2  # one per epoch
    assert accumulator.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("logger", "package", "extra", "read"),
    [
        ("wandb", "wandb", "wandb", read_wandb),
        ("mlflow", "mlflow", "mlflow", read_mlflow),
        ("tensorboard", "tensorboard", "tensorboard", read_tensorboard),
    ],
)
def test_optional_loggers_run_offline_or_name_the_missing_package(logger, package, extra, read, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (MLflow's default ./mlruns)
    cfg = tiny_config(run, f"logger={logger}", "trainer.max_epochs=2")
    assert set(cfg.logger) == {"csv", logger}
    if not installed(package):
        with pytest.raises(ValueError, match=rf"logger.{logger} .* needs the {package} package.*fftprompt\[{extra}\]"):
            train(cfg)
        assert not run.exists()  # stopped before anything was written
        pytest.skip(f"{package} is not installed: the missing-package error was checked (make test-extras runs it)")
    metrics, _ = train(cfg)
    read(run, metrics)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
@pytest.mark.skipif(not SWEEPER, reason="hydra-optuna-sweeper is not installed (make test-extras runs this)")
def test_a_three_trial_optuna_search_runs_and_records_the_best_trial(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [*TINY_MODEL, *QUIET, *TINY_SYMMETRY]
    overrides += ["hparams_search=fourierft", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"]
    overrides += ["trainer.max_epochs=1", "hydra.sweeper.sampler.n_startup_trials=2"]
    script = "import sys; from fftprompt.cli import train_main; sys.argv[0] = 'fftprompt-train'; train_main()"
    done = subprocess.run(
        [sys.executable, "-c", script, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1", "2"]
    scores = [json.loads((trial / "metrics.json").read_text())["val/acc_best"] for trial in trials]
    rates = [OmegaConf.load(trial / "config.yaml").task.module.adapter_lr for trial in trials]
    assert len(set(rates)) == 3 and all(1e-3 <= rate <= 1.0 for rate in rates)  # each trial its own draw
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(scores))
    assert set(results.best_params) == SWEPT["fourierft"]
    best_rates = [rate for rate, score in zip(rates, scores, strict=True) if score == max(scores)]  # ties possible
    assert results.best_params["task.module.adapter_lr"] == pytest.approx(best_rates[0]) or any(
        results.best_params["task.module.adapter_lr"] == pytest.approx(rate) for rate in best_rates
    )
