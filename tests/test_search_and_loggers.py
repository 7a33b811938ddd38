"""Hyper-parameter search configs (Hydra's Optuna sweeper, optional) and the optional loggers (wandb, mlflow).

Neither the sweeper nor the logger packages are needed here: the search configs are composed with a stand-in for
the sweeper's config when the plugin is absent (the real one when present), and a missing package must give an error
that names it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import fftprompt
from conftest import tiny_config
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


@pytest.mark.slow
@pytest.mark.parametrize(("logger", "package", "files"), [("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlruns")])
def test_optional_loggers_run_offline_or_name_the_missing_package(logger, package, files, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(run, f"logger={logger}", "trainer.max_epochs=1")
    assert set(cfg.logger) == {"csv", logger}
    if not installed(package):
        with pytest.raises(
            ValueError, match=rf"logger.{logger} .* needs the {package} package.*fftprompt\[{package}\]"
        ):
            train(cfg)
        assert not run.exists()  # stopped before anything was written
        return
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(cfg)
    assert (run / "metrics.json").is_file() and any((run / files).iterdir())
