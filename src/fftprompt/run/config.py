"""Composing a run's config: :func:`compose` (the packaged Hydra configs with overrides), :func:`eval_config` (an
evaluation on top of the evaluated run's own config) and the values read from a composed config.

Importing it registers the ``${fftprompt.weights:<file>}`` resolver of the backbone configs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as compose_config
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict

from fftprompt import rundir
from fftprompt.overrides import check_sweeper, eval_overrides
from fftprompt.runfiles import RUN_CONFIG, RUN_ENTRIES
from fftprompt.weights import RESOLVER, weights_path

CONFIG_DIR = Path(__file__).parent.parent / "configs"  # src/fftprompt/configs
# ${fftprompt.weights:<file>} in a config: the absolute path of a file shipped in fftprompt/weights (any directory)
OmegaConf.register_new_resolver(RESOLVER, weights_path, replace=True)


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The packaged config ``config_name`` composed with Hydra ``overrides``, as ``fftprompt-train`` (or
    ``fftprompt-eval`` for ``"eval"``, through :func:`eval_config`) composes it.

    Outside a Hydra app ``paths.output_dir`` has no default: pass it as an override.
    """
    check_sweeper(overrides)
    evaluation = config_name == "eval"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose_config(config_name, overrides=eval_overrides(overrides) if evaluation else list(overrides))
    return eval_config(cfg, overrides) if evaluation else cfg


def eval_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The evaluation config: the evaluated run's own :data:`RUN_ENTRIES` (its ``config.yaml``) with the ``overrides``
    that ``cfg`` was composed with on top; the rest (trainer, callbacks, output) stays ``cfg``'s.

    ``cfg`` is returned unchanged with ``use_run_config=false``, without a run ``config.yaml`` beside the weights
    (a bare adapter: the overrides must describe the model) and when the overrides select an ``experiment``. An
    override of a whole entry (``data=dtd``, ``seed=3``) takes that entry from ``cfg``; one below it
    (``data.root=...``) changes only that key. A data root the run resolved is taken as it resolved it.
    """
    source = cfg.get("adapter_path") or cfg.get("ckpt_path")
    if not cfg.get("use_run_config", False) or source is None:
        return cfg
    run_dir = rundir.run_dir_of(Path(to_absolute_path(str(source))))
    if not (run_dir / RUN_CONFIG).is_file():
        return cfg
    saved = rundir.read_config(run_dir)
    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_hydra_override()]
    keys = [str(override.key_or_group) for override in parsed]
    if "experiment" in keys:
        return cfg
    result = copy.deepcopy(cfg)
    with open_dict(result):
        for entry in RUN_ENTRIES:
            if entry in keys or entry not in saved:
                continue
            result[entry] = copy.deepcopy(saved[entry])
            if entry == "data" and isinstance(saved["data"], Mapping) and "root" in saved["data"]:
                result.data.root = rundir.data_root(run_dir, saved)
            for override, key in zip(parsed, keys, strict=True):
                if not key.startswith(f"{entry}."):
                    continue
                if override.is_delete():
                    parent, _, name = key.rpartition(".")
                    node = OmegaConf.select(result, parent)
                    if isinstance(node, DictConfig) and name in node:
                        del node[name]
                else:
                    value = OmegaConf.select(cfg, key)
                    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                    OmegaConf.update(result, key, value, merge=False, force_add=True)
    return result


def optimized_metric(cfg: DictConfig, metrics: Mapping[str, Any]) -> float | None:
    """The value a Hydra sweeper optimises: ``metrics[cfg.optimized_metric]`` when the config names one (the
    ``hparams_search`` configs name the best validation score, ``val/acc_best``), else the test score of the
    monitored metric (``test/acc``), or None when the run has none.

    Raises:
        ValueError: ``optimized_metric`` names a metric the run did not record.
    """
    key = cfg.get("optimized_metric")
    if key is None:
        return metrics.get(str(cfg.task.monitor).replace("val/", "test/", 1))
    if key not in metrics:
        recorded = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise ValueError(
            f"optimized_metric={key!r} is not among the run's metrics {recorded}; a *_best validation score needs "
            "the validation loop and a checkpoint callback monitoring it (callbacks=default)"
        )
    return float(metrics[key])


def resolve_output_dir(cfg: DictConfig) -> Path:
    """``paths.output_dir`` as an absolute path (relative to the directory the command was started in)."""
    try:
        value = cfg.paths.output_dir
    except Exception as error:  # omegaconf raises several types for missing keys and unresolvable interpolations
        raise ValueError(
            f"paths.output_dir cannot be resolved ({error}); outside a Hydra app set paths.output_dir explicitly"
        ) from error
    if value is None:
        raise ValueError("paths.output_dir is null; expected the run directory")
    return Path(to_absolute_path(str(value)))
