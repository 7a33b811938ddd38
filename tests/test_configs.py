"""Hydra configs: every option composes, every ``_target_`` takes its keys, experiments build their models."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

import fftprompt
import fftprompt.run  # noqa: F401  (registers the fftprompt.weights resolver of the backbone configs)
from fftprompt.model import create_model
from fftprompt.weights import DEMO_WEIGHTS, weights_path

CONFIG_DIR = Path(fftprompt.__file__).parent / "configs"
PRETRAIN_GROUPS = {"source", "objective", "selection"}  # composed by pretrain.yaml only
# hparams_search options need Hydra's Optuna sweeper (an optional extra): tests/test_search_and_loggers.py composes them
GROUPS = sorted(
    p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in {"hydra", "hparams_search", *PRETRAIN_GROUPS}
)
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_config(overrides: list[str] = (), name: str = "train") -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=[*overrides, "paths.output_dir=/nonexistent/fftprompt-test"])


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def targets(node, where: str = ""):
    """``(location, node)`` for every mapping with a ``_target_`` in a raw (uncomposed) config."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield where, node
        for key in node:
            yield from targets(node._get_node(key), f"{where}.{key}")
    elif isinstance(node, ListConfig):
        for index, item in enumerate(node):
            yield from targets(item, f"{where}[{index}]")


def accepted_keys(target) -> tuple[set[str], bool]:
    """Named parameters a callable accepts (for classes: over the ``__init__`` of its MRO) and whether it also
    takes arbitrary keywords that do not end in another fftprompt ``__init__``."""
    functions = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    names, open_ended = set(), False
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            continue
        for parameter in parameters:
            if parameter.kind is parameter.VAR_KEYWORD:
                owner = getattr(function, "__module__", "") or ""
                open_ended |= not (inspect.isclass(target) and owner.startswith("fftprompt"))
            elif parameter.kind is not parameter.VAR_POSITIONAL:
                names.add(parameter.name)
    return names, open_ended


def test_the_package_ships_every_group_the_train_config_names():
    assert set(GROUPS) >= {
        "adapter",
        "backbone",
        "callbacks",
        "data",
        "experiment",
        "features",
        "logger",
        "paths",
        "prompt",
        "task",
        "trainer",
    }
    assert set(options("data")) >= {
        "symmetry",
        "symmetry_seg",
        "dtd",
        "kth_tips2",
        "medmnist",
        "kvasir_seg",
        "isic2018",
        "image_folder",
        "seg_folder",
    }
    assert set(options("prompt")) == {
        *("none", "vpt", "vpt_deep", "vfpt", "vapt", "fft", "fft_deep", "fft_vitb", "fft_deep_vitb")
    }
    assert set(options("backbone")) >= {"vit_demo", "vit_tiny", "vit_small", "vit_base"}
    assert set(options("experiment")) >= {"symmetry", "dtd", "medmnist", "kvasir_seg"}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_target_is_a_callable_that_takes_its_keys(path):
    for where, node in targets(OmegaConf.load(path)):
        target = get_object(node._target_)
        assert callable(target), f"{path}{where}: {node._target_} is not callable"
        names, open_ended = accepted_keys(target)
        unknown = {str(k) for k in node if k not in HYDRA_KEYS} - names
        assert open_ended or not unknown, f"{path}{where}: {node._target_} takes no {sorted(unknown)}"


@pytest.mark.parametrize(
    "group, option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v) if isinstance(v, str) else ""
)
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_config([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["task"]["name"] in ("classification", "segmentation")
    if group == "data":
        segmentation = option in ("symmetry_seg", "kvasir_seg", "isic2018", "seg_folder")
        assert resolved["task"]["name"] == ("segmentation" if segmentation else "classification")
    assert resolved["backbone"]["img_size"] == resolved["data"]["image_size"]


def test_default_config_is_the_offline_demo():
    cfg = compose_config()
    assert cfg.data._target_.endswith("SymmetryDataModule") and cfg.task.name == "classification"
    # the demo backbone's shipped weights (fftprompt.weights), found from the package whatever the directory
    assert cfg.backbone.pretrained is False and cfg.backbone.checkpoint_path == weights_path(DEMO_WEIGHTS)
    assert cfg.prompt._target_.endswith("FrequencyPrompt") and cfg.adapter._target_.endswith("FourierFTConfig")
    assert cfg.trainer.accelerator == "cpu" and cfg.get("experiment") is None


def test_one_override_swaps_the_dataset():
    cfg = compose_config(["data=dtd", "data.root=/data/dtd"])
    assert cfg.data._target_.rsplit(".", 1)[-1] == "DTDDataModule" and cfg.data.root == "/data/dtd"
    assert cfg.task.name == "classification" and cfg.backbone.img_size == cfg.data.image_size
    seg = compose_config(["data=kvasir_seg", "data.root=/data/kvasir"])
    assert seg.task.name == "segmentation" and seg.task.module._target_.endswith("SegmentationModule")


def test_eval_config_adds_the_weights_and_drops_training_callbacks():
    cfg = compose_config(["adapter_path=runs/x"], name="eval")
    assert cfg.adapter_path == "runs/x" and cfg.ckpt_path is None
    assert list(cfg.callbacks) == ["rich_progress_bar"] and cfg.logger is None
    assert cfg.data == compose_config().data


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates_its_model_and_module(experiment):
    assert compose_config([f"experiment={experiment}"]).backbone.pretrained is True
    # two blocks instead of twelve keep the test fast; everything else is the experiment's
    cfg = compose_config([f"experiment={experiment}", "backbone.pretrained=false", "+backbone.depth=2"])
    assert cfg.backbone.name.startswith("vit_base_patch16_224") and cfg.trainer.accelerator == "gpu"
    backbone = instantiate(cfg.backbone)
    assert backbone.img_size == (cfg.data.image_size, cfg.data.image_size)
    model = create_model(
        backbone,
        5,
        task=cfg.task.name,
        prompt=instantiate(cfg.prompt),
        features=instantiate(cfg.features),
        head=instantiate(cfg.task.head),
        adapter=instantiate(cfg.adapter) if cfg.adapter else None,
        pooling=cfg.task.pooling,
    )
    module = instantiate(cfg.task.module, model=model, num_classes=5)
    groups = {g["name"]: g for g in module.param_groups()}
    assert "head" in groups and all(g["params"] for g in groups.values())
    root = {"root": "/nonexistent/data"} if OmegaConf.is_missing(cfg.data, "root") else {}
    datamodule = instantiate(cfg.data, mean=list(backbone.mean), std=list(backbone.std), **root)
    assert datamodule.batch_size == cfg.data.batch_size


def test_pretrain_config_starts_from_random_weights_and_shares_the_image_size():
    cfg = compose_config(name="pretrain")
    assert cfg.source._target_ == "fftprompt.pretrain.FractalDB" and cfg.module.batch_size > 0
    assert cfg.backbone.checkpoint_path is None and cfg.backbone.pretrained is False
    assert cfg.backbone.img_size == cfg.source.image_size == cfg.image_size
    assert cfg.name is None and cfg.trainer.max_steps > 0  # named <backbone>_<source>_<objective>
    assert set(options("source")) >= {"fractaldb"} and set(options("objective")) >= {"supervised", "simclr"}
    assert OmegaConf.to_container(cfg.source, resolve=True)["num_classes"] >= 2
    assert cfg.selection is None and set(options("selection")) >= {"none", "probe"}
    probe = compose_config(
        ["selection=probe", "selection.data.dtd.root=/d", "selection.data.breastmnist.root=/m"], "pretrain"
    )
    resolved = OmegaConf.to_container(probe.selection, resolve=True)
    assert {name: entry["image_size"] for name, entry in resolved["data"].items()} == {"dtd": 64, "breastmnist": 64}
