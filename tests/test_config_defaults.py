"""Config values and constructor defaults agree: a YAML key either shows its callable's default or is a listed,
intended difference.

Every option of every group (and every top-level config) is composed; each key a file writes as a plain literal (no
``${...}`` interpolation, no ``???``) under a ``_target_`` is compared with that callable's default: the first
``__init__`` along the MRO that names the key, following ``**kwargs`` to the base classes they are passed to;
dataclass fields for dataclasses. Keys without a default (``root``, ``name``) are not compared. So changing a
constructor default, or a YAML value, fails here until the other side or :data:`DIFFERENCES` follows. Experiments
(``experiment/*.yaml``) and modes (``mode/*.yaml``) are overlays made of differences and are not checked.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

import fftprompt
import fftprompt.run  # noqa: F401  (registers the fftprompt.weights resolver of the backbone configs)
from fftprompt.data import ISIC2018DataModule, KvasirSegDataModule, SymmetryDataModule

CONFIG_DIR = Path(fftprompt.__file__).parent / "configs"
# overlays of differences; Hydra's own settings (the sweeper's, in hparams_search); plain paths
NOT_CHECKED = {"experiment", "mode", "hydra", "hparams_search", "paths"}
GROUP_CONFIG = {"source": "pretrain", "objective": "pretrain", "selection": "pretrain"}  # only pretrain.yaml composes
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_", "defaults"}
FILES = sorted(
    [p for p in CONFIG_DIR.glob("*.yaml")]
    + [p for p in CONFIG_DIR.glob("*/*.yaml") if p.parent.name not in NOT_CHECKED]
)

# Intended differences from the constructor default: file pattern (relative to configs/) -> key -> why. Keys are
# dotted paths below the file's package (``module.optimizer.weight_decay``, ``csv.name``); ``data.`` is never written.
DIFFERENCES: dict[str, dict[str, str]] = {
    "data/*.yaml": {
        "num_workers": "runs decode images in worker processes; the Python default stays in the main process",
    },
    "data/dtd.yaml": {
        "val_fraction": "1/3 to four places (the official splits hold a third each)",
        "test_fraction": "1/3 to four places (the official splits hold a third each)",
    },
    "data/symmetry.yaml": {
        "region_size": "the CPU demo's full-image regions; the benchmark (the default) uses off-centre ones",
    },
    "data/symmetry_seg.yaml": {"task": "the option's purpose: the segmentation variant"},
    "prompt/*_deep.yaml": {"deep": "the option's purpose: prompts at every block"},
    "trainer/cpu.yaml": {
        "accelerator": "the offline demo runs on the CPU",
        "devices": "one device (trainer=ddp takes all)",
        "precision": "Lightning's None (float32), written out",
        "max_epochs": "the demo's length (experiments set their own)",
        "gradient_clip_val": "runs clip gradients (Lightning does not)",
        "log_every_n_steps": "the demo's short epochs (Lightning's None means 50)",
        "num_sanity_val_steps": "no sanity validation before training (Lightning's None means 2)",
        "enable_progress_bar": "Lightning's None (on), written out",
        "enable_model_summary": "Lightning's None (on), written out",
        "deterministic": "Lightning's None (off), written out",
    },
    "trainer/gpu.yaml": {
        "accelerator": "the option's purpose",
        "devices": "one GPU (trainer=ddp takes all)",
        "precision": "bf16 autocast on GPUs",
    },
    "trainer/ddp.yaml": {"strategy": "the option's purpose", "sync_batchnorm": "the option's purpose"},
    "logger/csv.yaml": {"csv.name": "one subfolder per logger in the run directory"},
    "logger/wandb.yaml": {
        "wandb.project": "runs are grouped under one W&B project (Lightning's None: wandb's default)",
        "wandb.offline": "works without an account or server; wandb sync uploads later",
    },
    "logger/mlflow.yaml": {
        "mlflow.experiment_name": "one MLflow experiment for fftprompt runs (Lightning: lightning_logs)"
    },
    "logger/tensorboard.yaml": {
        "tensorboard.name": "one subfolder per logger in the run directory",
        "tensorboard.default_hp_metric": "no placeholder hp_metric",
    },
    "callbacks/default.yaml": {
        "model_checkpoint.filename": "best-<epoch>.ckpt",
        "model_checkpoint.save_last": "last.ckpt for resuming (ckpt_path=last)",
        "model_checkpoint.auto_insert_metric_name": "the metric names hold a slash (val/acc)",
    },
    "callbacks/early_stopping.yaml": {"early_stopping.patience": "10 validations without improvement (Lightning: 3)"},
    "task/*.yaml": {
        "module.optimizer.weight_decay": "the runs' weight decay (AdamW's default is 1e-2)",
        "module.prompt_lr": "the recipe's per-group rate (the module's None means the optimiser's lr)",
        "module.adapter_lr": "FourierFT coefficients need rates around 0.1 (the module's None: the optimiser's lr)",
        "module.head_lr": "the recipe's per-group rate (the module's None means the optimiser's lr)",
        "module.adapter_weight_decay": "no decay of the spectral coefficients (the module's None: the optimiser's)",
        "module.warmup_epochs": "the recipe's one warm-up epoch (the module's default: none)",
        "module.min_lr_ratio": "the recipe's cosine floor (the module's default decays to 0)",
    },
    "prompt/fft.yaml": {
        "num_tokens": "the CPU demo's 8 prompts; FrequencyPrompt keeps VPT's usual 10",
        "use_statistics": "the tuned method; the constructor's False keeps adapters saved before it loadable",
    },
    "prompt/*_vitb.yaml": {"hidden_dim": "a 128-wide generator for ViT-B's 768-wide tokens"},
    "source/mixture.yaml": {"image_size": "the components' side written once, for them to interpolate"},
    "pretrain.yaml": {
        "trainer.max_epochs": "no epoch limit: trainer.max_steps is the run's length (the schedule's)",
        "trainer.max_steps": "the shipped demo recipe's length (up to 20,000 batches of 64)",
        "trainer.log_every_n_steps": "a log line every 50 of the run's thousands of steps",
        "trainer.enable_progress_bar": "pretraining runs for an hour in the background, logging to a file",
        "trainer.enable_model_summary": "pretraining runs for an hour in the background, logging to a file",
        "module.optimizer.weight_decay": "DeiT's 0.05 for training a ViT from scratch (AdamW's default is 1e-2)",
        "module.warmup_steps": "the recipe's 200-step warm-up (the module's default: none)",
        "module.min_lr_ratio": "the recipe's cosine floor (the module's default decays to 0)",
        "callbacks.model_checkpoint.save_top_k": "only last.ckpt (no metric to rank checkpoints by)",
        "callbacks.model_checkpoint.save_last": "last.ckpt for resuming (ckpt_path=last)",
        "callbacks.model_checkpoint.every_n_train_steps": "a checkpoint every 250 steps (one epoch is the whole run)",
    },
    "adapter/fourierft.yaml": {
        "init": "zero deltas at the start: training starts from the pretrained model (PEFT draws them at random)",
        "scaling": "the demo ViT's, chosen on DTD's validation split (docs/ablation.md)",
    },
    "adapter/fourierft_vitb.yaml": {
        "n_frequency": "Gao et al.'s ViT-B setting (fourierft.VIT_B_N_FREQUENCY)",
        "scaling": "Gao et al.'s ViT-B setting",
    },
}


def relative(path: Path) -> str:
    return path.relative_to(CONFIG_DIR).as_posix()


def listed_differences(name: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for pattern, keys in DIFFERENCES.items():
        if fnmatch.fnmatch(name, pattern):
            found.update(keys)
    return found


def constructor_defaults(target: Any) -> dict[str, Any]:
    """Defaults of the named parameters of a callable, following ``**kwargs`` along the MRO of a class."""
    if dataclasses.is_dataclass(target):
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(target)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
    functions = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    defaults: dict[str, Any] = {}
    named: set[str] = set()
    for function in functions:
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            continue
        for parameter in parameters:
            if parameter.name in named or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            named.add(parameter.name)  # the most derived declaration wins, with or without a default
            if parameter.default is not parameter.empty:
                defaults[parameter.name] = parameter.default
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break  # nothing further reaches the base classes
    return defaults


def plain(value: Any) -> Any:
    """Tuples as lists, so that ``(0.4, 0.75)`` equals YAML's ``[0.4, 0.75]``."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def literal(node: Any) -> tuple[bool, Any]:
    """``(True, value)`` for a node holding a plain value, ``(False, None)`` for interpolations and ``???``."""
    if node._is_missing() or node._is_interpolation():
        return False, None
    if isinstance(node, ListConfig):
        items = [literal(node._get_node(i)) for i in range(len(node))]
        return all(ok for ok, _ in items), [value for _, value in items]
    return True, node._value()


def written_values(raw: Any, composed: Any, where: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(key path, value, target)`` for every literal a raw config file writes into a node with a ``_target_``
    (the target read from the composed config, so files that extend another option are checked too)."""
    if not isinstance(raw, DictConfig) or not isinstance(composed, DictConfig):
        return
    target = get_object(composed._target_) if "_target_" in composed else None
    for key in raw:
        if key in HYDRA_KEYS or key not in composed:
            continue
        node = raw._get_node(key)
        if isinstance(node, DictConfig):
            yield from written_values(node, composed._get_node(key), f"{where}{key}.")
            continue
        ok, value = literal(node)
        if target is not None and ok:
            yield f"{where}{key}", value, target


def file_values(path: Path) -> Iterator[tuple[str, Any, Any]]:
    """:func:`written_values` of a config file, keys relative to its group's package (``num_workers``, also in
    ``@package _global_`` files, which write ``data.num_workers``)."""
    raw = OmegaConf.load(path)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        if path.parent == CONFIG_DIR:
            yield from written_values(raw, compose(path.stem))
            return
        group = path.parent.name
        cfg = compose(GROUP_CONFIG.get(group, "train"), overrides=[f"{group}={path.stem}"])
    if re.search(r"^# *@package +_global_", path.read_text(), re.MULTILINE) is None:
        yield from written_values(raw, cfg.get(group))
        return
    for key, value, target in written_values(raw, cfg):
        yield key.removeprefix(f"{group}."), value, target


def differences(path: Path) -> Iterator[tuple[str, Any, Any, Any]]:
    """``(key, value, default, target)`` for every value ``path`` writes that differs from its callable's default."""
    for key, value, target in file_values(path):
        defaults = constructor_defaults(target)
        name = key.rsplit(".", 1)[-1]
        if name in defaults and value != plain(defaults[name]):
            yield key, value, plain(defaults[name]), target


@pytest.mark.parametrize("path", FILES, ids=relative)
def test_config_values_are_the_constructor_defaults_or_listed_differences(path: Path):
    allowed = listed_differences(relative(path))
    problems = [
        f"{key}: {value!r} but {target.__qualname__} defaults to {default!r}"
        for key, value, default, target in differences(path)
        if key not in allowed
    ]
    assert not problems, (
        f"{relative(path)} disagrees with its constructor (align one side, or list the key in DIFFERENCES with the "
        "reason):\n  " + "\n  ".join(problems)
    )


def test_every_listed_difference_is_still_one():
    differing: set[tuple[str, str]] = set()
    for path in FILES:
        for key, *_ in differences(path):
            differing |= {(pattern, key) for pattern in DIFFERENCES if fnmatch.fnmatch(relative(path), pattern)}
    stale = [
        f"{pattern}: {key}" for pattern, keys in DIFFERENCES.items() for key in keys if (pattern, key) not in differing
    ]
    assert not stale, "listed differences that no file has (any more): " + ", ".join(stale)


def test_defaults_follow_keyword_arguments_to_the_base_class():
    kvasir = constructor_defaults(KvasirSegDataModule)
    # Kvasir's own test_fraction, the segmentation base's batch size, FileDataModule's and ImageDataModule's defaults
    expected = {"test_fraction": 0.1, "val_fraction": 0.1, "batch_size": 16, "on_bad_file": "error", "seed": 0}
    assert {key: kvasir[key] for key in expected} == expected
    assert constructor_defaults(ISIC2018DataModule)["test_fraction"] == 0.2
    assert "on_bad_file" not in constructor_defaults(SymmetryDataModule)


def test_the_vit_b_adapter_option_uses_the_papers_entry_count():
    from fftprompt.fourierft import VIT_B_N_FREQUENCY

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["adapter=fourierft_vitb"])
    assert cfg.adapter.n_frequency == VIT_B_N_FREQUENCY
