"""fftprompt-export: timm and PEFT files load in those libraries and give the tuned model's logits; TorchScript too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import QUIET, TINY_MODEL, TINY_SYMMETRY, tiny_config
from fftprompt.backbone import create_backbone
from fftprompt.export import export
from fftprompt.run import compose, train
from fftprompt.rundir import load_run

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


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_timm_export_loads_in_timm_with_the_same_logits(whole_layer_run, tmp_path, pooling):
    run = whole_layer_run if pooling == "cls" else train_without_prompts(tmp_path / "run", "task.pooling=mean")
    written = export(run, "timm", tmp_path / "timm")
    config = json.loads(written["config.json"].read_text())
    info = json.loads(written["info"].read_text())
    assert config["label_names"] == info["class_names"] == load_run(run).datamodule.class_names
    x, expected = images(), tuned_logits(run, images())
    # the plain way: timm.create_model + load_state_dict (head included: num_classes=6)
    model = timm.create_model(config["architecture"], num_classes=6, **config["model_args"]).eval()
    model.load_state_dict(load_file(written["model.safetensors"]))
    with torch.no_grad():
        assert max_difference(model(x), expected) < TOLERANCE
        # timm's own loader of a local folder
        local = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
        assert max_difference(local(x), expected) < TOLERANCE
    assert not any("fourierft" in key or "base_layer" in key for key in load_file(written["model.safetensors"]))


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
    assert info["preprocessing"]["image_size"] == 32 and info["max_abs_difference"] < TOLERANCE
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
