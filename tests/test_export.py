"""fftprompt-export: timm and PEFT files load in those libraries and give the tuned model's logits; TorchScript too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import QUIET, REPO_ROOT, TINY_MODEL, TINY_SYMMETRY, tiny_config
from fftprompt.backbone import create_backbone
from fftprompt.export import export
from fftprompt.pretrain import sha256_of
from fftprompt.run import compose, train
from fftprompt.rundir import load_run
from fftprompt.runfiles import PEFT_BASE

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5
NO_PROMPT = [o for o in TINY_MODEL if not o.startswith("prompt.")] + ["prompt=none", "trainer.max_epochs=1"]


def train_without_prompts(run: Path, *overrides: str) -> Path:
    train(compose([*NO_PROMPT, *QUIET, *TINY_SYMMETRY, f"paths.output_dir={run}", *overrides]))
    return run


@pytest.fixture(scope="module")
def whole_layer_run(tmp_path_factory) -> Path:
    """FourierFT on whole linear layers (fused qkv and fc1), no prompts: what timm and PEFT can hold."""
    return train_without_prompts(tmp_path_factory.mktemp("export") / "run", "adapter.targets=[qkv,fc1]")


def images(batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def tuned_logits(run: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_run(run).model(x)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def logits_without_fftprompt(code: str, cwd: Path, x: torch.Tensor) -> torch.Tensor:
    """Runs ``code`` in a fresh Python that never imports fftprompt (checked), then ``model(x)``: what a user of the
    exported files gets with timm and PEFT alone. ``code`` must leave the loaded model in ``model``."""
    torch.save(x, cwd / "images.pt")
    use = (
        "\nimport sys\nimport torch\nwith torch.no_grad():\n"
        "    torch.save(model(torch.load('images.pt', weights_only=True)), 'logits.pt')\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'fftprompt'], 'fftprompt was imported'\n"
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code + use], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(cwd / "logits.pt", weights_only=True)


def readme_python_block(containing: str) -> str:
    """The one ```python block of README.md that contains ``containing``, as written there."""
    blocks = re.findall(r"^```python\n(.*?)^```", (REPO_ROOT / "README.md").read_text(encoding="utf-8"), re.M | re.S)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"{len(found)} README python blocks contain {containing!r}"
    return found[0]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_timm_export_loads_in_timm_with_the_same_logits(whole_layer_run, tmp_path, pooling):
    run = whole_layer_run if pooling == "cls" else train_without_prompts(tmp_path / "run", "task.pooling=mean")
    written = export(run, "timm", tmp_path / "timm")
    config = json.loads(written["config.json"].read_text())
    info = json.loads(written["info"].read_text())
    assert config["label_names"] == info["class_names"] == load_run(run).datamodule.class_names
    x, expected = images(), tuned_logits(run, images())
    # in a process without fftprompt (which registers vit_demo_patch8 with timm), the plain way:
    # timm.create_model + load_state_dict (head included)
    plain = """
import json, timm
from safetensors.torch import load_file
config = json.load(open("timm/config.json"))
model = timm.create_model(config["architecture"], pretrained=False, num_classes=6, **config["model_args"]).eval()
model.load_state_dict(load_file("timm/model.safetensors"))
"""
    assert max_difference(logits_without_fftprompt(plain, tmp_path, x), expected) < TOLERANCE
    # and timm's own loader of a local folder
    local = 'import timm\nmodel = timm.create_model("local-dir:timm", pretrained=True).eval()\n'
    assert max_difference(logits_without_fftprompt(local, tmp_path, x), expected) < TOLERANCE
    assert load_run(run).model.backbone.name == "vit_demo_patch8" and config["architecture"] == "vit_tiny_patch16_224"
    assert not any("fourierft" in key or "base_layer" in key for key in load_file(written["model.safetensors"]))


def test_timm_export_resizes_as_the_run_did(whole_layer_run, tmp_path):
    """timm's own eval transform, built from the exported config, prepares an image as the run's test transform."""
    from PIL import Image
    from torchvision import tv_tensors

    written = export(whole_layer_run, "timm", tmp_path / "timm")
    pretrained_cfg = json.loads(written["config.json"].read_text())["pretrained_cfg"]
    assert pretrained_cfg["interpolation"] == "bilinear" and pretrained_cfg["crop_mode"] == "squash"
    assert json.loads(written["info"].read_text())["pipeline"]["interpolation"] == "bilinear"
    pixels = torch.randint(0, 256, (3, 50, 70), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ours = load_run(whole_layer_run).datamodule.transform("test")(tv_tensors.Image(pixels)).as_subclass(torch.Tensor)
    data_config = timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg)
    theirs = timm.data.create_transform(**data_config)(Image.fromarray(pixels.permute(1, 2, 0).numpy()))
    assert theirs.shape == ours.shape == (3, 32, 32)
    # PIL and torchvision round differently by a grey level or two; bicubic differs by far more on noise
    assert max_difference(theirs, ours) < 0.05


def test_peft_export_loads_with_peft_on_the_same_timm_model(whole_layer_run, tmp_path):
    peft = pytest.importorskip("peft")
    written = export(whole_layer_run, "peft", tmp_path / "peft")
    adapter_config = json.loads(written["adapter_config.json"].read_text())
    assert adapter_config["peft_type"] == "FOURIERFT" and adapter_config["n_frequency"] == 50
    assert adapter_config["modules_to_save"] == ["head"]
    # the same timm model: the random backbone drawn as training drew it, with a (fresh) classifier head
    loaded = load_run(whole_layer_run)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(loaded.config["seed"]))
        base = create_backbone(**loaded.model.backbone.config).model
    base.reset_classifier(6)
    model = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    x = images()
    with torch.no_grad():
        assert max_difference(model(x), loaded.model(x)) < TOLERANCE
        model.base_model.model.head.weight.zero_()  # the head comes from the adapter folder: without it, no match
        assert max_difference(model(x), loaded.model(x)) > 1e-3


def test_peft_export_of_a_random_backbone_loads_with_the_readme_recipe(whole_layer_run, tmp_path):
    """The README's block, run as written in a process without fftprompt, gives the run's logits: the random base
    weights travel with the adapter (re-seeding timm draws other weights: logits 1.08 off before)."""
    pytest.importorskip("peft")
    out = tmp_path / "runs" / "fourierft" / "export" / "peft"  # the folder the README names
    written = export(whole_layer_run, "peft", out)
    x = images()
    recipe = readme_python_block("PeftModel.from_pretrained")
    assert max_difference(logits_without_fftprompt(recipe, tmp_path, x), tuned_logits(whole_layer_run, x)) < TOLERANCE
    info = json.loads(written["info"].read_text())
    assert info["base_model"] == {"file": PEFT_BASE, "sha256": sha256_of(out / PEFT_BASE)}
    assert not any(key.startswith("head.") for key in load_file(out / PEFT_BASE))  # the base only: PEFT's head


def test_torchscript_export_of_the_whole_prompted_model(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, "trainer.max_epochs=1"))  # frequency-conditioned prompts + FourierFT on q/v blocks
    written = export(run, "torchscript")
    assert written["model.torchscript.pt"].parent == run / "export" / "torchscript"
    scripted = torch.jit.load(str(written["model.torchscript.pt"]))
    x = images(7)
    with torch.no_grad():
        assert max_difference(scripted(x), tuned_logits(run, x)) < TOLERANCE
    info = json.loads(written["info"].read_text())
    assert info["pipeline"]["image_size"] == 32 and info["max_abs_difference"] < TOLERANCE
    # what timm and PEFT cannot hold is refused with the reason
    with pytest.raises(ValueError, match="prompt tokens.*format=torchscript"):
        export(run, "timm")
    with pytest.raises(ValueError, match="prompt tokens"):
        export(run, "peft")
    with pytest.raises(ValueError, match="earlier export"):
        export(run, "torchscript")
    export(run, "torchscript", overwrite=True)


def test_peft_refuses_q_v_row_blocks(tmp_path):
    pytest.importorskip("peft")
    run = train_without_prompts(tmp_path / "run")  # the default targets: q and v blocks of the fused qkv
    with pytest.raises(ValueError, match=r"q/v row blocks of timm's fused qkv.*adapter.targets=\[qkv\]"):
        export(run, "peft")
    assert not (run / "export" / "peft").exists()  # nothing written
    export(run, "timm")  # the deltas fold into the weights all the same


def test_fftprompt_export_command(whole_layer_run, tmp_path, monkeypatch, capsys):
    from fftprompt.cli import export_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["fftprompt-export", f"run_dir={whole_layer_run}", "format=timm", "out_dir=t"])
    export_main()
    assert "exported: " in capsys.readouterr().out and (tmp_path / "t" / "model.safetensors").is_file()
    monkeypatch.setattr("sys.argv", ["fftprompt-export", f"run_dir={whole_layer_run}", "format=tflite"])
    with pytest.raises(SystemExit) as exit_info:
        export_main()
    assert exit_info.value.code == 2
    assert "error: format='tflite'; expected one of ('timm', 'peft', 'torchscript', 'onnx', 'exported_program')" in (
        capsys.readouterr().err
    )
