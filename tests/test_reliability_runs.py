"""Runs and their records (docs/reliability.md, "Runs and records"): overwrite moves the earlier run aside, resuming
refuses a changed training config, learning rates are checked, every experiment takes every method, the run
directory is the one record of how it was launched, fftprompt-eval starts from the run's config and checks the
classes, sweeps finish every job, an offline hub fails fast with a hint, and the documented config keys exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from PIL import Image

import fftprompt
from conftest import QUIET, REPO_ROOT, TINY_MODEL, TINY_SYMMETRY, tiny_config
from fftprompt import rundir
from fftprompt.backbone import create_backbone
from fftprompt.run import build, build_backbone, compose, evaluate, train

CONFIG_DIR = Path(fftprompt.__file__).parent / "configs"
TEST_KEYS = ("test/acc", "test/auroc", "test/f1_macro", "test/loss")
# one short epoch: 2 training batches of the tiny symmetry data, one validation batch
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def write_classes(root: Path, names: list[str], per_class: int = 8) -> Path:
    """``root/<name>/<k>.png``: random 40x40 RGB images, one folder per class name."""
    for c, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(per_class):
            pixels = np.random.default_rng(100 * c + k).integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.png")
    return root


def run_cli(*argument_lists: list[str], cwd: Path, timeout: int = 400) -> list[subprocess.CompletedProcess]:
    """``fftprompt-train`` (``fftprompt-eval`` when the list starts with ``"eval"``) once per argument list, all at
    once (start-up dominates)."""
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"}
    entry_points = {"eval": ["-c", "from fftprompt.cli import eval_main; eval_main()"]}
    processes = [
        subprocess.Popen(
            [sys.executable, *entry_points.get(args[0], ["-m", "fftprompt.cli", args[0]]), *args[1:]],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in argument_lists
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


# ---------------------------------------------------------------------------------------------------- overwrite


@pytest.mark.slow
def test_overwrite_moves_the_earlier_run_aside_and_resuming_allows_only_harmless_changes(tmp_path, capsys):
    run = tmp_path / "run"
    earlier = {  # what a finished run leaves: the new run must not mix with any of it
        "metrics.json": b'{"test/acc": 0.25}',
        "config.yaml": b"seed: 1\n",
        "checkpoints/last.ckpt": b"old checkpoint",
        "checkpoints/best-000.ckpt": b"old best",
        "csv/version_0/metrics.csv": b"epoch,step\n0,1\n",
        "explain/explain.md": b"# old explanations\n",
    }
    for name, content in earlier.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(content)

    metrics, _ = train(tiny_config(run, *SHORT, "overwrite=true"))
    (aside,) = tmp_path.glob("run.replaced-*")
    assert snapshot(aside) == earlier  # moved, byte for byte, never deleted
    assert f"moved the earlier run {run} aside to {aside}" in capsys.readouterr().out
    # the new run starts from an empty directory: no -v1 checkpoints, one CSV version, no stale explanations
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-000.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["version_0"]
    assert not (run / "explain").exists()
    assert json.loads((run / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    assert rundir.check_checkpoint(run / "checkpoints" / "last.ckpt", "last")["epoch"] == 0

    # resuming with a changed batch size is refused before anything is written
    before = snapshot(run)
    with pytest.raises(ValueError, match=r"data\.batch_size: 8 in the run, 4 now") as refused:
        train(tiny_config(run, *SHORT, "trainer.max_epochs=2", "data.batch_size=4", "ckpt_path=last"))
    assert "trainer.max_epochs:" not in str(refused.value) and snapshot(run) == before
    # more epochs, other progress/logging/report settings and loader workers may change
    harmless = ["trainer.max_epochs=2", "trainer.log_every_n_steps=1", "report.num_samples=1", "data.num_workers=0"]
    resumed, objects = train(tiny_config(run, *SHORT, *harmless, "ckpt_path=last"))
    assert resumed["epochs"] == 2 and objects["trainer"].global_step == 4
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["version_0", "version_1"]
    assert list(tmp_path.glob("run.replaced-*")) == [aside]


def test_overwrite_never_moves_the_working_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    monkeypatch.chdir(run)
    with pytest.raises(ValueError, match=r"holds the working directory"):
        train(tiny_config(Path("."), *SHORT, "overwrite=true"))
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]
    assert not list(tmp_path.glob("*.replaced-*"))


# ---------------------------------------------------------------------------------------------------- resuming


@pytest.mark.parametrize(
    "override, difference",
    [
        ("data.batch_size=4", "data.batch_size: 8 in the run, 4 now"),
        ("data.num_train=24", "data.num_train: 16 in the run, 24 now"),
        ("task.module.head_lr=0.5", "task.module.head_lr: 0.005 in the run, 0.5 now"),
        ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches: 1 in the run, 2 now"),
        ("trainer.max_epochs=1", "trainer.max_epochs: 3 in the run, 1 now (it may only grow when resuming)"),
        ("seed=3", "seed: 42 in the run, 3 now"),
        ("prompt.num_tokens=3", "prompt.num_tokens: 2 in the run, 3 now"),
        ("+callbacks.early_stopping.monitor=val/acc", "callbacks.early_stopping: absent in the run"),
    ],
)
def test_resuming_with_a_changed_training_config_is_refused(tmp_path, override, difference):
    run = tmp_path / "run"
    rundir.write_config(run, OmegaConf.to_container(tiny_config(run, "trainer.max_epochs=3"), resolve=True))
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": {}}, run / "checkpoints" / "last.ckpt")
    before = snapshot(run)
    with pytest.raises(ValueError) as refused:
        train(tiny_config(run, "trainer.max_epochs=3", override, "ckpt_path=last"))
    message = str(refused.value)
    assert message.startswith(f"resuming {run}: the config differs from the run's ({run / 'config.yaml'})")
    assert difference in message and "overwrite=true" in message and "paths.output_dir" in message
    assert snapshot(run) == before  # refused before anything was built or written


# ---------------------------------------------------------------------------------------------------- learning rates


@pytest.mark.parametrize(
    "override, shown",
    [
        ("task.module.prompt_lr=-0.005", "task.module.prompt_lr=-0.005"),
        ("task.module.head_lr=-5e-3", "task.module.head_lr=-0.005"),
        ("task.module.adapter_lr=-0.1", "task.module.adapter_lr=-0.1"),
        ("task.module.optimizer.lr=-0.001", "task.module.optimizer.lr=-0.001"),
        ("task.module.optimizer.weight_decay=-0.1", "task.module.optimizer.weight_decay=-0.1"),
        ("task.module.adapter_weight_decay=-1.0", "task.module.adapter_weight_decay=-1.0"),
        ("task.module.head_lr=nan", "task.module.head_lr=nan"),
        ("task.module.prompt_lr=fast", "task.module.prompt_lr='fast'"),
    ],
)
def test_negative_learning_rates_are_refused_naming_the_config_key(tmp_path, override, shown):
    with pytest.raises((ValueError, InstantiationException)) as refused:
        build(tiny_config(tmp_path, override))
    assert f"{shown}: expected a finite number >= 0" in str(refused.value)


def test_a_zero_learning_rate_freezes_its_group(tmp_path):
    module = build(tiny_config(tmp_path, "task.module.prompt_lr=0"))["module"]
    assert {g["name"]: g["lr"] for g in module.param_groups()}["prompt"] == 0.0


# ---------------------------------------------------------------------------------------------------- every method


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


# a 1-block ViT of width 64 on 32 px images: every experiment keeps its data, task, head and optimiser settings
TINY_BACKBONE = [
    "backbone=vit_demo",
    "backbone.pretrained=false",
    "backbone.checkpoint_path=null",
    "backbone.depth=1",
    "backbone.embed_dim=64",  # the ViT-B FourierFT settings (n_frequency=3000) need 64x64 q/v blocks
    "backbone.num_heads=2",
    "data.image_size=32",
]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_builds_with_every_prompt_and_adapter(tmp_path, experiment):
    from hydra.utils import instantiate

    from fftprompt.model import create_model

    failures = []
    combinations = [(prompt, adapter) for prompt in options("prompt") for adapter in options("adapter")]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):  # once: composing is what takes the time
        for prompt, adapter in combinations:
            overrides = [f"experiment={experiment}", f"prompt={prompt}", f"adapter={adapter}", *TINY_BACKBONE]
            try:
                cfg = hydra_compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path}"])
                backbone, features = build_backbone(cfg)
                model = create_model(
                    backbone,
                    3,
                    task=cfg.task.name,
                    prompt=instantiate(cfg.prompt),
                    features=features,
                    head=instantiate(cfg.task.head),
                    adapter=instantiate(cfg.adapter) if cfg.adapter else None,
                    pooling=cfg.task.pooling,
                )
                module = instantiate(cfg.task.module, model=model, num_classes=3)
                with torch.no_grad():
                    assert tuple(module(torch.randn(1, 3, 32, 32)).shape[:2]) == (1, 3)
                assert {g["name"] for g in module.param_groups()} >= {"head"}
                root = {"root": str(tmp_path / "data")} if OmegaConf.is_missing(cfg.data, "root") else {}
                instantiate(cfg.data, mean=list(backbone.mean), std=list(backbone.std), **root)
            except Exception as error:  # collect every failing combination, not only the first
                failures.append(f"{' '.join(overrides[:3])}: {type(error).__name__}: {str(error).splitlines()[0]}")
    assert len(combinations) == 9 * 3 and not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------------- fftprompt-eval


RUN_MODEL = [
    "backbone=vit_micro",
    "prompt=vpt",
    "prompt.num_tokens=3",
]
RUN_DATA = ["data=image_folder", "data.image_size=32", "data.batch_size=4", "data.num_workers=0", "data.augment=false"]
RUN_SPLIT = ["data.val_fraction=0.25", "data.test_fraction=0.25"]


@pytest.fixture(scope="module")
def animal_run(tmp_path_factory) -> tuple[Path, dict, Path]:
    """A finished run on an image folder with classes cat and dog (VPT, FourierFT n=50): run dir, metrics, root."""
    base = tmp_path_factory.mktemp("animals")
    root = write_classes(base / "cat_dog", ["cat", "dog"])
    overrides = [*RUN_MODEL, "adapter.n_frequency=50", *RUN_DATA, *RUN_SPLIT, f"data.root={root}", "logger=none"]
    run = base / "run"
    metrics, _ = train(compose([*overrides, *QUIET, *SHORT, f"paths.output_dir={run}"]))
    return run, metrics, base


def eval_config(output_dir: Path, *overrides: str) -> DictConfig:
    return compose([*QUIET, f"paths.output_dir={output_dir}", *overrides], config_name="eval")


@pytest.mark.slow
def test_eval_starts_from_the_run_config_and_checks_the_class_names(animal_run, tmp_path):
    run, trained, base = animal_run
    assert rundir.read_class_names(run) == ["cat", "dog"]
    assert json.loads((run / "adapter.json").read_text())["class_names"] == ["cat", "dog"]

    # no training overrides: model, data and seed come from the run's config.yaml
    cfg = eval_config(tmp_path / "e1", f"adapter_path={run}")
    assert cfg.prompt.num_tokens == 3 and cfg.adapter.n_frequency == 50 and cfg.data.root == str(base / "cat_dog")
    metrics = evaluate(cfg)
    for key in TEST_KEYS:
        assert metrics[key] == pytest.approx(trained[key], abs=1e-6), key
    # overrides go on top of the run's config; the eval config's own entries (trainer, callbacks) stay
    cfg = eval_config(tmp_path / "e2", f"adapter_path={run}", "data.batch_size=2", "trainer.limit_test_batches=1")
    assert cfg.data.batch_size == 2 and cfg.prompt.num_tokens == 3 and cfg.trainer.limit_test_batches == 1
    assert list(cfg.callbacks) == [] and cfg.logger is None
    # use_run_config=false composes from the packaged defaults: the model then differs from the run's
    with pytest.raises(ValueError, match=r"prompt\._target_"):
        evaluate(eval_config(tmp_path / "e3", f"adapter_path={run}", "use_run_config=false", *RUN_DATA, "data.root=x"))

    # other class names, other class counts: refused before testing, naming both lists
    other = write_classes(tmp_path / "cat_emu", ["cat", "emu"])
    with pytest.raises(ValueError) as refused:
        evaluate(eval_config(tmp_path / "e4", f"adapter_path={run}", f"data.root={other}"))
    assert str(refused.value) == (
        f"evaluating {run}: the weights were trained on the classes ['cat', 'dog'] ({run / 'adapter.json'}) but "
        f"the data (ImageFolderDataModule, {other}) has ['cat', 'emu']; evaluate on data with the training classes, "
        "in the same order"
    )
    three = write_classes(tmp_path / "three", ["cat", "dog", "emu"])
    with pytest.raises(ValueError, match=r"trained on the classes \['cat', 'dog'\] .* has \['cat', 'dog', 'emu'\]"):
        evaluate(eval_config(tmp_path / "e5", f"adapter_path={run}", f"data.root={three}"))
    with pytest.raises(ValueError, match=r"\['cat', 'dog'\] \(.*last\.ckpt\) but the data .* has \['cat', 'emu'\]"):
        evaluate(eval_config(tmp_path / "e6", f"ckpt_path={run}/checkpoints/last.ckpt", f"data.root={other}"))
    assert not any((tmp_path / name).exists() for name in ("e4", "e5", "e6"))

    # an adapter.json written before class names were recorded still loads; a class count that differs is named
    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    description = json.loads((old / "adapter.json").read_text())
    del description["class_names"]
    (old / "adapter.json").write_text(json.dumps(description))
    assert rundir.read_class_names(old) is None
    again = evaluate(eval_config(tmp_path / "e7", f"adapter_path={old}"))
    assert again["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    with pytest.raises(ValueError, match=r"trained on 2 classes .* has 3: \['cat', 'dog', 'emu'\]"):
        evaluate(eval_config(tmp_path / "e8", f"adapter_path={old}", f"data.root={three}"))


# ---------------------------------------------------------------------------------------------------- the record


@pytest.mark.slow
def test_the_run_directory_records_its_launches_and_a_refused_command_changes_nothing(tmp_path):
    run = tmp_path / "run"
    overrides = [*TINY_MODEL, *QUIET, *TINY_SYMMETRY, *SHORT, f"paths.output_dir={run}"]
    (first,) = run_cli(overrides, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # Hydra's folder and log are the run's: no time-stamped directory elsewhere, no .hydra/ rewritten per command
    assert not (tmp_path / "runs").exists() and not (run / ".hydra").exists()
    assert (run / "cli.log").is_file()
    (launch,) = yaml.safe_load((run / "launches.yaml").read_text())
    assert launch["overrides"] == overrides and launch["resumed_from"] is None and launch["replaced"] is None
    assert launch["command"] == "fftprompt-train " + shlex.join(overrides) and launch["cwd"] == str(tmp_path)

    before = snapshot(run)
    evaluation = ["eval", *QUIET, f"adapter_path={run}", f"paths.output_dir={tmp_path / 'eval'}"]
    refused, failed_resume, evaluated = run_cli(
        overrides, [*overrides, "ckpt_path=last", "data.batch_size=4"], evaluation, cwd=tmp_path
    )
    assert refused.returncode == 2 and error_lines(refused)[0].startswith(f"error: {run} already holds a finished run")
    assert failed_resume.returncode == 2, failed_resume.stderr[-3000:]
    assert "data.batch_size: 8 in the run, 4 now" in failed_resume.stderr
    assert snapshot(run) == before and not (tmp_path / "runs").exists()
    # fftprompt-eval with no training override: the run's own model and data, recorded in its own directory
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    trained, tested = (json.loads((d / "metrics.json").read_text()) for d in (run, tmp_path / "eval"))
    assert tested["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    (launch,) = yaml.safe_load((tmp_path / "eval" / "launches.yaml").read_text())
    assert launch["command"] == "fftprompt-eval " + shlex.join(evaluation[1:]) and launch["weights"] == str(run)
    # Lightning's lines once (Hydra's console and cli.log, not also its own "INFO: ..." handler), without its tips
    printed = evaluated.stdout + evaluated.stderr
    assert printed.count("GPU available") == 1 and "Tip" not in printed and "INFO: " not in printed
    assert "GPU available" in (tmp_path / "eval" / "cli.log").read_text()


def test_a_refused_command_leaves_nothing_new(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "cli.log").write_text("an earlier command's log\n")
    bad = [*TINY_MODEL, *QUIET, *TINY_SYMMETRY, "prompt.num_tokens=-3"]
    refused_eval, refused_new, refused_kept = run_cli(
        ["eval", f"adapter_path={tmp_path / 'nothere'}"],
        [*bad, f"paths.output_dir={tmp_path / 'new' / 'deep'}"],
        [*bad, f"paths.output_dir={kept}"],
        cwd=tmp_path,
    )
    assert error_lines(refused_eval)[0].startswith("error: adapter_path=") and refused_eval.returncode == 2
    for result in (refused_new, refused_kept):
        assert result.returncode == 2 and error_lines(result)[0].startswith("error: num_tokens=-3"), result.stderr
    # no runs/eval/<date>/<time>/ nor new/deep/cli.log; the log of the folder that existed is as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert snapshot(kept) == {"cli.log": b"an earlier command's log\n"}


def test_help_does_not_import_torch():
    code = (
        "import sys; sys.argv = ['fftprompt-train', '--help']\n"
        "from fftprompt.cli import train_main\n"
        "try:\n    train_main()\nexcept SystemExit:\n    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'timm', 'lightning') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "== Config ==" in result.stdout and "heavy: []" in result.stdout, result.stdout[-500:] + result.stderr


# ---------------------------------------------------------------------------------------------------- sweeps


@pytest.mark.slow
def test_a_sweep_finishes_every_job_and_lists_the_failures(tmp_path):
    sweep = tmp_path / "sweep"
    arguments = ["-m", *TINY_MODEL, *QUIET, *TINY_SYMMETRY, "trainer.fast_dev_run=true", f"hydra.sweep.dir={sweep}"]
    (result,) = run_cli([*arguments, "data.batch_size=-1,8,0"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (sweep / "1" / "metrics.json").is_file()  # the job after the failing one ran
    assert not (sweep / "0" / "metrics.json").exists() and not (sweep / "2" / "metrics.json").exists()
    lines = result.stderr.splitlines()
    summary = lines.index("error: 2 of 3 jobs of the sweep failed (the others finished):")
    assert lines[summary + 1].startswith("  job 0 (data.batch_size=-1): batch_size=-1 must be positive")
    assert lines[summary + 2].startswith("  job 2 (data.batch_size=0): batch_size=0 must be positive")


# ---------------------------------------------------------------------------------------------------- offline hub


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty hub cache, and a test failure if anything tries to download from the hub."""
    import huggingface_hub
    import timm.models._hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"the network was used: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", refuse)


HINT = "pass backbone.checkpoint_path=<local weights file> or backbone.pretrained=false"


def test_offline_hub_fails_fast_with_a_hint(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose(["experiment=dtd", f"data.root={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"])
    start = time.perf_counter()
    with pytest.raises((ValueError, InstantiationException)) as refused:
        train(cfg)
    assert time.perf_counter() - start < 20
    message = str(refused.value)
    assert "vit_base_patch16_224.orig_in21k" in message and "HF_HUB_OFFLINE" in message and HINT in message
    assert not (tmp_path / "run").exists()


def test_an_unreachable_hub_fails_within_the_probe_timeout(monkeypatch, no_network):
    import huggingface_hub

    import fftprompt.backbone

    server = socket.socket()  # accepts connections and never answers: a hub behind a dead network
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def accept() -> None:
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:  # the socket was closed
            pass

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(fftprompt.backbone, "HUB_PROBE_SECONDS", 0.5)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"did not answer within 0\.5 s") as refused:
        create_backbone("vit_tiny_patch16_224.augreg_in21k", pretrained=True, img_size=32)
    assert time.perf_counter() - start < 10 and HINT in str(refused.value)
    assert accepted  # the probe did reach the (local) server
    server.close()


# ---------------------------------------------------------------------------------------------------- documentation


PRETRAIN_GROUPS = {"source", "objective", "selection"}  # groups only pretrain.yaml composes


@cache
def _composed(config_name: str, overrides: tuple[str, ...] = ()) -> DictConfig:
    return compose([*overrides, "paths.output_dir=/nonexistent"], config_name=config_name)


def _has_key(cfg: DictConfig, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in list(node):  # `part in node` is False for ??? values
            return False
        node = node._get_node(part)
    return True


def _documented_keys(text: str) -> set[str]:
    """Dotted config keys quoted in ``text``: inside backticks or as ``key=value`` words of code blocks."""
    groups = "|".join(sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra") + ["report"])
    pattern = re.compile(rf"(?<![\w.+~/$-])((?:{groups})\.[A-Za-z_][\w.]*\w)")
    quoted = re.findall(r"`([^`\n]+)`", text) + re.findall(r"```\w*\n(.*?)```", text, flags=re.S)
    files = ("py", "md", "yaml", "json", "safetensors", "ckpt", "csv", "png")
    return {key for span in quoted for key in pattern.findall(span) if key.rsplit(".", 1)[-1] not in files}


@pytest.mark.parametrize("document", ["README.md", "docs/reliability.md"])
def test_every_config_key_quoted_in_the_docs_exists(document):
    keys = _documented_keys((REPO_ROOT / document).read_text(encoding="utf-8"))
    assert "task.module.prompt_lr" in keys or document == "README.md"
    missing = []
    for key in sorted(keys):
        group = key.split(".")[0]
        configs = [_composed(name) for name in ("train", "eval", "pretrain")]
        if (CONFIG_DIR / group).is_dir():
            top = "pretrain" if group in PRETRAIN_GROUPS else "train"
            configs += [_composed(top, (f"{group}={option}",)) for option in options(group)]
        if not any(_has_key(cfg, key) for cfg in configs):
            missing.append(key)
    assert not missing, f"{document} names config keys that no composed config has: {missing}"
