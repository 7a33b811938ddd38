"""Reliability through the user-facing paths: bad input, interrupted runs, safe loading, multi-process training.

Every case goes through ``fftprompt.run.train`` / ``evaluate`` with a composed Hydra config, or through the console
entry point in a subprocess, so that what is checked is what a user sees. docs/reliability.md lists each case with
the message shown and the test here that covers it.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException, MissingConfigException
from PIL import Image
from safetensors.torch import load_file

import fftprompt
from conftest import QUIET, TINY_MODEL, TINY_SYMMETRY, tiny_config
from fftprompt.backbone import create_backbone
from fftprompt.data import DataWarning
from fftprompt.lit import AtomicCheckpointIO, ClassificationModule, NonFiniteLossError
from fftprompt.model import create_model, load_model
from fftprompt.prompts import VPTPrompt
from fftprompt.run import build, evaluate, train

PACKAGE_DIR = Path(fftprompt.__file__).parent
CONFIG_DIR = PACKAGE_DIR / "configs"
TINY = [*TINY_MODEL, *QUIET, "logger=none"]
SYMMETRY = TINY_SYMMETRY
TEST_KEYS = ("test/acc", "test/auroc", "test/f1_macro", "test/loss")


def config(output_dir: Path, *overrides: str, data: list[str] = SYMMETRY, name: str = "train"):
    return tiny_config(output_dir, "logger=none", *overrides, data=data, name=name)


def file_data(name: str, root: Path, *extra: str) -> list[str]:
    """Overrides selecting dataset ``name`` at ``root``: 32 px, every split in one batch, no augmentation."""
    common = ["data.image_size=32", "data.batch_size=64", "data.num_workers=0", "data.augment=false"]
    return [f"data={name}", f"data.root={root}", *common, *extra]


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Path:
    """A random image ``size=(width, height)``; mode ``I;16`` writes a 16-bit grayscale PNG."""
    rng = np.random.default_rng(seed)
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def write_image_folder(root: Path, classes: int = 2, per_class: int = 5, modes: tuple[str, ...] = ("RGB",)) -> Path:
    """``root/class_<c>/<k>.png``, cycling through the PIL ``modes``."""
    for c in range(classes):
        for k in range(per_class):
            write_image(root / f"class_{c}" / f"{k}.png", seed=10 * c + k, mode=modes[(c + k) % len(modes)])
    return root


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def tiny_model(embed_dim: int = 32):
    backbone = create_backbone(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=embed_dim, num_heads=2
    )
    return create_model(backbone, 3, prompt=lambda dims: VPTPrompt(dims, num_tokens=2))


def run_cli(
    *argument_lists: list[str], cwd: Path, full_error: tuple[int, ...] = (), timeout: int = 400, **env: str
) -> list[subprocess.CompletedProcess]:
    """Runs ``python -m fftprompt.cli`` (the ``fftprompt-train`` entry point) once per argument list, all at once.

    Interpreter start-up (importing torch, Lightning, timm, Hydra) dominates these runs, so they overlap. The runs
    whose index is in ``full_error`` get ``HYDRA_FULL_ERROR=1``.
    """
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"} | env
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "fftprompt.cli", *args],
            cwd=cwd,
            env=environment | ({"HYDRA_FULL_ERROR": "1"} if index in full_error else {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index, args in enumerate(argument_lists)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def error_line(result: subprocess.CompletedProcess) -> str:
    """The ``error: ...`` line the CLI printed (log lines such as Lightning's "Seed set to" may come before it)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def assert_nothing_started(run: Path) -> None:
    """The run failed before training: no resolved config, checkpoint or metrics were written."""
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    assert not (run / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------------- bad input


def test_missing_data_root_is_named_with_the_expected_layout(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"data root .*nowhere.* does not exist") as info:
        train(config(run, data=file_data("image_folder", tmp_path / "nowhere")))
    assert "expected layout" in str(info.value) and "train/<class>/<image>" in str(info.value)
    assert_nothing_started(run)


def test_wrong_layout_prints_the_expected_layout(tmp_path):
    write_image(tmp_path / "polyps" / "images" / "a.jpg", seed=0)  # no masks/ folder
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"no images/ and masks/ folders in .*polyps") as info:
        train(config(run, data=file_data("kvasir_seg", tmp_path / "polyps")))
    assert "expected layout" in str(info.value) and "masks/<id>.jpg" in str(info.value)
    assert_nothing_started(run)


def test_corrupt_image_stops_the_run_with_an_error_naming_the_file(tmp_path):
    root = write_image_folder(tmp_path / "images")
    truncate(root / "class_1" / "2.png")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"cannot decode image file .*class_1/2\.png \(corrupt or truncated\?\)"):
        train(config(run, "trainer.fast_dev_run=true", data=file_data("image_folder", root)))
    assert not (run / "metrics.json").exists()


@pytest.mark.slow
def test_corrupt_image_is_skipped_with_a_warning_and_a_count(tmp_path):
    root = write_image_folder(tmp_path / "images")
    truncate(root / "class_1" / "2.png")
    (root / "class_0" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run = tmp_path / "run"
    overrides = file_data("image_folder", root, "data.on_bad_file=skip")
    with pytest.warns(DataWarning, match=r"skipped 2 of 10 image files that do not decode") as record:
        metrics, objects = train(config(run, "trainer.fast_dev_run=true", data=overrides))
    message = next(str(w.message) for w in record if "skipped" in str(w.message))
    assert "class_1/2.png" in message and "class_0/3.png" in message
    assert json.loads((run / "metrics.json").read_text())["config"]["num_classes"] == 2
    datamodule = objects["datamodule"]
    assert sum(len(datamodule.dataset(s)) for s in ("train", "val", "test")) == 8
    assert np.isfinite(metrics["test/loss"])
    assert isinstance(objects["trainer"].strategy.checkpoint_io, AtomicCheckpointIO)


def test_image_mask_size_mismatch_names_both_files(tmp_path):
    root = tmp_path / "seg"
    for k in range(6):
        write_image(root / "images" / f"{k}.png", seed=k)
        write_image(root / "masks" / f"{k}.png", seed=k, mode="L", size=(40, 30) if k != 4 else (20, 15))
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"images/4\.png is 40x30 but its mask .*masks/4\.png is 20x15"):
        train(config(run, data=file_data("seg_folder", root)))
    assert_nothing_started(run)


@pytest.mark.parametrize(
    ("classes", "per_class", "match"),
    [(2, 0, r"no images in class folders under .*data"), (1, 6, r"found 1 class\(es\) \['class_0'\]; at least 2")],
    ids=["empty", "single-class"],
)
def test_empty_or_single_class_dataset(tmp_path, classes, per_class, match):
    root = tmp_path / "data"
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
    write_image_folder(root, classes=classes, per_class=per_class)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train(config(run, data=file_data("image_folder", root)))
    assert_nothing_started(run)


@pytest.mark.slow
def test_grayscale_rgba_palette_and_16_bit_images_are_handled(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=6, modes=("L", "RGBA", "P", "I;16", "LA", "RGB"))
    with Image.open(root / "class_0" / "3.png") as image:
        assert image.mode in ("I;16", "I")  # the file really is 16-bit
    metrics, objects = train(
        config(tmp_path / "run", "trainer.fast_dev_run=true", data=file_data("image_folder", root))
    )
    assert np.isfinite(metrics["test/loss"])
    datamodule = objects["datamodule"]
    for split in ("train", "val", "test"):
        dataset = datamodule.dataset(split)
        for index in range(len(dataset)):
            image, _ = dataset[index]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and torch.isfinite(image).all()


def test_npz_without_the_expected_keys(tmp_path):
    root = tmp_path / "medmnist"
    root.mkdir()
    np.savez(root / "breastmnist.npz", train_images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros(4, np.int64))
    run = tmp_path / "run"
    overrides = ["data=medmnist", f"data.root={root}", "data.image_size=32", "data.num_workers=0"]
    with pytest.raises(ValueError, match=r"breastmnist\.npz lacks the keys \['train_labels', 'val_images'") as info:
        train(config(run, data=overrides))
    assert "keys found: ['labels', 'train_images']" in str(info.value)
    assert_nothing_started(run)


@pytest.mark.parametrize("prompt", ["fft", "vpt"])
def test_image_size_not_a_multiple_of_the_patch_size_fails_before_training(tmp_path, prompt):
    # with VPT no frequency features are computed, so only an up-front check can catch it (timm would crop silently)
    extra = ["prompt=vpt", "prompt.num_tokens=2"] if prompt == "vpt" else []
    run = tmp_path / "run"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        overrides = [o for o in TINY if not (prompt == "vpt" and o.startswith("prompt."))]
        cfg = compose(
            "train", overrides=[*overrides, *SYMMETRY, *extra, "data.image_size=36", f"paths.output_dir={run}"]
        )
    with pytest.raises((ValueError, InstantiationException), match=r"img_size 36x36 is not a multiple of the patch"):
        train(cfg)
    assert_nothing_started(run)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.batch_size=-1", r"batch_size=-1 must be positive"),
        ("data.num_train=0", r"num_train=0 must be positive"),
        ("prompt.num_tokens=-2", r"num_tokens=-2; expected at least 1"),
        ("trainer.max_epochs=-5", r"max_epochs` must be a non-negative integer or -1. You passed in -5"),
        ("adapter.n_frequency=-3", r"n_frequency=-3; expected a positive int"),
        ("adapter.n_frequency=5000", r"n_frequency=5000 must be in \[1, 1024\] for its 32x32"),
        ("adapter.targets=[query]", r"targets \['query'\] match no layer"),
        ("task.module.label_smoothing=1.5", r"label_smoothing must lie in \[0, 1\), got 1.5"),
        ("task.pooling=max", r"pooling='max'; expected one of \['cls', 'mean', 'prompt', 'cls\+prompt'\]"),
    ],
)
def test_invalid_config_values_fail_before_training(tmp_path, override, match):
    run = tmp_path / "run"
    # errors raised inside a Hydra instantiate arrive wrapped; the CLI prints the cause (see the CLI tests below)
    with pytest.raises((ValueError, InstantiationException), match=match):
        train(config(run, override))
    assert_nothing_started(run)


def test_unknown_prompt_kind_lists_the_available_ones(tmp_path):
    with pytest.raises(MissingConfigException, match=r"Could not find 'prompt/fourier'") as info:
        config(tmp_path, "prompt=fourier")
    assert all(name in str(info.value) for name in ("fft", "vpt", "vfpt", "none"))


def test_adapter_from_another_backbone_is_refused(tmp_path):
    parts = build(config(tmp_path / "unused"))
    parts["model"].save_trainable(tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"backbone embed_dim is 32 in the checkpoint but 48 in this model"):
        evaluate(
            config(tmp_path / "eval", "backbone.embed_dim=48", f"adapter_path={tmp_path / 'adapter'}", name="eval")
        )
    with pytest.raises(ValueError, match=r"created without weights .* pass backbone="):
        load_model(tmp_path / "adapter")
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header"])
def test_corrupted_adapter_safetensors_is_refused(tmp_path, damage):
    model = tiny_model()
    model.save_trainable(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter.safetensors"
    if damage == "truncated":
        truncate(weights)
    elif damage == "garbage":
        weights.write_bytes(os.urandom(300))
    else:  # a header length far beyond the file
        weights.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match=r"adapter\.safetensors is not a readable safetensors file"):
        model.load_trainable(tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"adapter\.safetensors is not a readable safetensors file"):
        load_model(tmp_path / "adapter", backbone=tiny_model().backbone)


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    clean_loss = ClassificationModule._loss

    def loss_that_diverges_in_epoch_1(self, logits, target):
        loss = clean_loss(self, logits, target)
        return loss * float("nan") if self.training and self.current_epoch >= 1 else loss

    monkeypatch.setattr(ClassificationModule, "_loss", loss_that_diverges_in_epoch_1)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at epoch 1, global step 2") as info:
        train(config(run, "trainer.max_epochs=3"))
    last = run / "checkpoints" / "last.ckpt"
    assert str(last) in str(info.value) and "ckpt_path=last" in str(info.value)
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 2
    assert checkpoint["state_dict"] and all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    for path in (run / "checkpoints").glob("*.ckpt"):  # the best checkpoint too
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values()), path
    assert not (run / "metrics.json").exists() and not (run / "adapter.safetensors").exists()

    monkeypatch.setattr(ClassificationModule, "_loss", clean_loss)  # e.g. after lowering the learning rate
    metrics, _ = train(config(run, "trainer.max_epochs=3", "ckpt_path=last"))
    assert metrics["steps"] == 6 and np.isfinite(metrics["test/loss"])


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    module = build(config(tmp_path / "run"))["module"]
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(dict(checkpoint))  # finite weights pass
    head_weight = next(name for name in module.state_dict() if name.startswith("model.head."))
    with torch.no_grad():
        module.get_parameter(head_weight).view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=rf"refusing to write a checkpoint: .*{head_weight}"):
        module.on_save_checkpoint({"state_dict": module.state_dict()})


# ---------------------------------------------------------------------------------------------------- nothing lost

KILLER = textwrap.dedent(
    """
    import os
    import signal

    from lightning.pytorch.callbacks import Callback


    class KillAtStep(Callback):
        # SIGKILL this process at the end of a training step: no handler, no clean-up, as with the OOM killer
        def __init__(self, step):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    # 3 batches per epoch, 2 epochs; a checkpoint every 2 steps (the kept checkpoint is the newest: monitor=null)
    common = [
        *TINY,
        *SYMMETRY,
        "data.num_train=24",
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.model_checkpoint.monitor=null",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    kill = "+callbacks.kill={_target_:killer.KillAtStep,step:5}"
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    uninterrupted, interrupted = run_cli(
        [*common, f"paths.output_dir={whole}"],
        [*common, f"paths.output_dir={killed}", kill],
        cwd=tmp_path,
        PYTHONPATH=pythonpath,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert interrupted.returncode == -signal.SIGKILL, interrupted.stderr[-3000:]
    assert not (killed / "metrics.json").exists()
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 4)  # mid-epoch: 1 of epoch 1's 3 batches done

    (resumed,) = run_cli([*common, f"paths.output_dir={killed}", "ckpt_path=last"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((whole / "metrics.json").read_text())
    got = json.loads((killed / "metrics.json").read_text())
    assert (got["steps"], got["epochs"]) == (expected["steps"], expected["epochs"]) == (6, 2)
    for key in TEST_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    expected_tensors = load_file(whole / "adapter.safetensors")
    got_tensors = load_file(killed / "adapter.safetensors")
    assert expected_tensors.keys() == got_tensors.keys()
    for name, tensor in expected_tensors.items():
        torch.testing.assert_close(got_tensors[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    assert io.load_checkpoint(path)["epoch"] == 1

    def failing_save(obj, file, *args, **kwargs):  # the disk fills up half-way through the write
        file.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    checkpoint = io.load_checkpoint(path)
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_adapter_writes_are_atomic(tmp_path, monkeypatch):
    model = tiny_model()
    model.save_trainable(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fftprompt.model.save_file", failing_save_file)
    with pytest.raises(OSError, match="No space left"):
        model.save_trainable(tmp_path, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(FileExistsError, match=r"adapter\.safetensors exists; pass overwrite=True"):
        model.save_trainable(tmp_path)


# ---------------------------------------------------------------------------------------------------- security


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "torch":
                yield node


def test_no_unpickling_in_the_package():
    checked = 0
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        for call in _torch_load_calls(tree):
            checked += 1
            weights_only = {k.arg: k.value for k in call.keywords}.get("weights_only")
            assert isinstance(weights_only, ast.Constant) and weights_only.value is True, (
                f"{path}:{call.lineno}: torch.load without weights_only=True"
            )
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = f"{owner.id}.{node.func.attr}" if isinstance(owner, ast.Name) else node.func.attr
                assert name not in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"), f"{path}:{node.lineno}"
                allow = {k.arg: k.value for k in node.keywords}.get("allow_pickle")
                assert not (isinstance(allow, ast.Constant) and allow.value is True), f"{path}:{node.lineno}"
    assert checked >= 2  # the backbone's checkpoint reader and the run's checkpoint check


class _Exploit:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):  # the exploit really runs when unpickled without weights_only
        torch.load(evil, weights_only=True)
    run = tmp_path / "run"
    with pytest.raises(
        ValueError, match=r"evil\.ckpt cannot be loaded safely \(weights_only=True\): it names the Python"
    ):
        train(config(run, f"ckpt_path={evil}"))
    with pytest.raises(ValueError, match=r"evil\.ckpt cannot be loaded safely"):
        evaluate(config(tmp_path / "eval", f"ckpt_path={evil}", name="eval"))
    assert not marker.exists()
    assert_nothing_started(run)


def test_a_truncated_last_checkpoint_is_named_before_anything_is_built(tmp_path):
    # what a crash during a non-atomic write would leave behind (AtomicCheckpointIO prevents it for fftprompt's runs)
    checkpoints = tmp_path / "run" / "checkpoints"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(100)}, "epoch": 0}, checkpoints / "last.ckpt")
    truncate(checkpoints / "last.ckpt")
    with pytest.raises(ValueError, match=r"ckpt_path=last: .*last\.ckpt cannot be loaded safely .*zip archive"):
        train(config(tmp_path / "run", "ckpt_path=last"))
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(
    ("entry", "value", "match"),
    [
        ("prompt", {"class": "os.system", "config": {"command": "touch pwned"}}, r"prompt class 'os\.system' is not"),
        ("head", {"class": "builtins.eval", "config": {"num_classes": 3}}, r"head class 'builtins\.eval' is not"),
        ("prompt", {"class": "VPTPrompt", "config": {"num_tokens": 2, "__reduce__": "os.system"}}, r"VPTPrompt"),
    ],
    ids=["os.system", "builtins.eval", "extra-argument"],
)
def test_adapter_json_cannot_name_arbitrary_classes(tmp_path, monkeypatch, entry, value, match):
    monkeypatch.chdir(tmp_path)
    model = tiny_model()
    model.save_trainable(tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter.json"
    description = json.loads(config_path.read_text())
    description[entry] = value
    config_path.write_text(json.dumps(description))
    with pytest.raises(ValueError, match=match):
        load_model(tmp_path / "adapter", backbone=model.backbone)
    if value["class"] != "VPTPrompt":  # loading into an existing model compares the class names, instantiates nothing
        with pytest.raises(ValueError, match=rf"{entry} class is '{value['class']}' in the checkpoint but"):
            model.load_trainable(tmp_path / "adapter")
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_reports_input_errors_in_one_line_and_never_overwrites_a_run(tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text('{"test/acc": 0.5}')
    missing_root = ["data=image_folder", f"data.root={tmp_path / 'nowhere'}", f"paths.output_dir={tmp_path / 'r2'}"]
    cases = {  # three interpreters at once: the start-up (imports) dominates
        "bad value": ([*SYMMETRY, "data.batch_size=-1", f"paths.output_dir={tmp_path / 'r1'}"], False),
        "full error": (missing_root, True),
        "finished run": ([*SYMMETRY, f"paths.output_dir={finished}"], False),
    }
    arguments = [[*TINY, *args] for args, _ in cases.values()]
    full_error = tuple(index for index, (_, full) in enumerate(cases.values()) if full)
    results = dict(zip(cases, run_cli(*arguments, cwd=tmp_path, full_error=full_error), strict=True))

    bad_value = results["bad value"]
    assert bad_value.returncode == 2, bad_value.stderr[-3000:]
    assert error_line(bad_value) == (
        "error: batch_size=-1 must be positive (config entry data, fftprompt.data.SymmetryDataModule)"
    )
    assert "Traceback" not in bad_value.stderr + bad_value.stdout

    full_error = results["full error"]  # HYDRA_FULL_ERROR=1: the traceback, for debugging
    assert full_error.returncode != 0 and "Traceback" in full_error.stderr
    assert "nowhere" in full_error.stderr and "expected layout" in full_error.stderr

    refused = results["finished run"]
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert error_line(refused).startswith(f"error: {finished} already holds a finished run (metrics.json)")
    assert "overwrite=true" in error_line(refused) and "Traceback" not in refused.stderr
    assert (finished / "metrics.json").read_text() == '{"test/acc": 0.5}'
    assert sorted(p.name for p in finished.iterdir()) == ["metrics.json"]


# ---------------------------------------------------------------------------------------------------- several processes


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_reduces_metrics_across_ranks(tmp_path):
    run = tmp_path / "ddp"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    (result,) = run_cli([*TINY, *SYMMETRY, *ddp, "trainer.max_epochs=2", f"paths.output_dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    # 16 training images, batch 8, 2 processes: one step per epoch instead of two
    assert metrics["steps"] == 2 and metrics["epochs"] == 2
    # a single process testing the saved weights on the whole test set agrees: the 2 ranks' halves were reduced
    single = evaluate(config(tmp_path / "eval", f"adapter_path={run}", name="eval"))
    for key in TEST_KEYS:
        assert metrics[key] == pytest.approx(single[key], abs=1e-5), key
