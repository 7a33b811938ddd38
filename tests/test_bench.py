"""fftprompt-bench: shared helpers (timing, memory, machine) and the ``methods`` side-by-side benchmark."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import TINY_MODEL
from fftprompt.backbone import create_backbone
from fftprompt.bench import _COMMANDS
from fftprompt.bench import main as bench_main
from fftprompt.bench._common import (
    autocast,
    compile_kwargs,
    cpu_step_peak_bytes,
    machine,
    state_bytes,
    time_ms,
    wall_and_cpu_ms,
)
from fftprompt.bench.methods import (
    METHODS,
    adapted_linear_paths,
    create_method_model,
    peft_available,
)
from fftprompt.bench.train import write_jpeg_folder
from fftprompt.fourierft import FourierFTConfig, inject_fourierft
from fftprompt.fourierft import functional as fourierft_functional

# a 2-block ViT, img 32, patch 8, width 32
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_ARGS = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--img-size",
    "32",
    *[arg for key, value in TINY.items() for arg in ("--backbone-arg", f"{key}={value}")],
    "--batch-size",
    "2",
    "--steps",
    "1",
    "--warmup",
    "1",
    "--threads",
    "1",
    "--num-classes",
    "5",
    "--num-tokens",
    "3",
    "--n-frequency",
    "200",
]
needs_peft = pytest.mark.skipif(not peft_available(), reason="needs peft")


def tiny_backbone():
    torch.manual_seed(0)
    return create_backbone("vit_tiny_patch16_224", img_size=32, **TINY)


# -- shared helpers ------------------------------------------------------------------------------------------------


def test_state_bytes_counts_parameters_buffers_and_optimizer_state_once():
    model = nn.Linear(10, 4)  # 44 float32 parameters
    model.register_buffer("shared", model.weight.data)  # same storage as the weight: not counted twice
    assert state_bytes(model) == 44 * 4
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 10)).sum().backward()
    optimizer.step()
    # AdamW keeps exp_avg and exp_avg_sq per parameter plus a float32 step counter per parameter tensor
    assert state_bytes(model, optimizer) == 44 * 4 * 3 + 2 * 4


def test_cpu_step_peak_bytes_sees_the_step_allocations():
    def step() -> None:
        big = torch.ones(1024, 1024)  # 4 MiB alive together with the next one
        other = torch.ones(512, 1024)  # 2 MiB
        del big, other

    peak = cpu_step_peak_bytes(step)
    assert 6 * 2**20 <= peak < 7 * 2**20
    assert cpu_step_peak_bytes(lambda: None) == 0


def test_timing_and_machine_description():
    elapsed = time_ms(lambda: torch.randn(256, 256) @ torch.randn(256, 256), "cpu")
    assert 0 < elapsed < 10_000
    wall, cpu = wall_and_cpu_ms(lambda: sum(range(200_000)))
    assert wall > 0 and cpu > 0
    info = machine("cpu")
    assert info["threads"] == torch.get_num_threads() and info["cpu_count"] >= 1 and info["device"]
    with autocast("cpu", "bfloat16"):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16
    with autocast("cpu", "float32"):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="float64"):
        autocast("cpu", "float64")


# -- methods -------------------------------------------------------------------------------------------------------


def test_methods_is_a_bench_command():
    assert "methods" in _COMMANDS


def test_adapted_linear_paths_match_our_injection():
    backbone = tiny_backbone()
    for targets in (("qkv",), ("qkv", "fc2"), ("re:blocks\\.1\\.mlp\\.fc1",)):
        paths = adapted_linear_paths(backbone.model, targets)
        ours = tiny_backbone()
        assert paths == inject_fourierft(ours.model, FourierFTConfig(n_frequency=10, targets=targets)), targets
    assert "patch_embed.proj" not in adapted_linear_paths(backbone.model, ("proj",))
    with pytest.raises(ValueError, match="row blocks"):
        adapted_linear_paths(backbone.model, ("q", "v"))
    with pytest.raises(ValueError, match="select no"):
        adapted_linear_paths(backbone.model, ("nothing",))


def test_create_method_model_trains_only_the_method_parameters():
    model = create_method_model("vpt_deep", tiny_backbone(), 5, num_tokens=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.prompt_embeddings", "head.classifier.weight", "head.classifier.bias"}
    assert model.prompt.prompt_embeddings.shape == (2, 3, 32)
    full = create_method_model("full_finetune", tiny_backbone(), 5)
    assert full.num_trainable_parameters() == full.num_total_parameters()
    with pytest.raises(ValueError, match="method='dora'"):
        create_method_model("dora", tiny_backbone(), 5)  # type: ignore[arg-type]


@pytest.mark.slow
def test_bench_methods_rows_and_parameter_counts(tmp_path, capsys):
    out = tmp_path / "out"
    assert bench_main(["methods", *TINY_ARGS, "--out-dir", str(out), "--json", str(tmp_path / "r.json")]) == 0
    table = capsys.readouterr().out
    report = json.loads((out / "methods.json").read_text())
    assert json.loads((tmp_path / "r.json").read_text())["results"] == report["results"]
    rows = {r["method"]: r for r in report["results"]}
    assert list(rows) == list(METHODS)
    assert (out / "methods.md").read_text().strip() == table.strip()

    embed, blocks, classes, tokens, n = 32, 2, 5, 3, 200
    head = embed * classes + classes
    expected = {
        "linear_probe": head,
        "vpt_shallow": tokens * embed + head,
        "vpt_deep": blocks * tokens * embed + head,
        "vfpt": blocks * tokens * embed + head,
        "fourierft": blocks * n + head,  # one qkv matrix per block
        "fourierft_peft": blocks * n + head,
        "lora": blocks * 16 * (embed + 3 * embed) + head,  # rank 16: A (16 x d_in) and B (d_out x 16)
    }
    for method in METHODS:
        row = rows[method]
        if method in ("fourierft_peft", "lora") and not peft_available():
            assert "peft is not installed" in row["skipped"]
            continue
        # the count of the model users would build for this method
        built = create_method_model(method, tiny_backbone(), classes, num_tokens=tokens, n_frequency=n)
        assert row["trainable_params"] == built.num_trainable_parameters(), method
        if method in expected:
            assert row["trainable_params"] == expected[method], method
        assert row["train_step_ms"] > 0 and row["inference_ms_per_image"] > 0, method
        assert row["peak_train_mb"] >= row["state_mb"] > 0, method
        assert row["trainable_bytes"] == 4 * row["trainable_params"], method  # float32 by default
        assert row["label"] in table
    assert rows["full_finetune"]["trainable_params"] == rows["full_finetune"]["total_params"]
    assert rows["linear_probe"]["total_params"] == rows["full_finetune"]["total_params"]
    fft_part = rows["fft_shallow"]["trainable_params"] - head
    assert rows["fft_fourierft"]["trainable_params"] == fft_part + blocks * n + head
    # full fine-tuning keeps two AdamW moments for every weight: about 3x the linear probe's state
    assert rows["full_finetune"]["state_mb"] > 2.5 * rows["linear_probe"]["state_mb"]
    ratios = report["ratios"]
    assert ratios["trainable params fft_shallow/vpt_shallow"] == pytest.approx(
        rows["fft_shallow"]["trainable_params"] / rows["vpt_shallow"]["trainable_params"]
    )
    fastest = min(rows["fft_shallow"]["train_step_ms_all"]) / min(rows["vpt_shallow"]["train_step_ms_all"])
    assert ratios["train step fft_shallow/vpt_shallow (fastest steps)"] == pytest.approx(fastest)
    assert ("train step fourierft/fourierft_peft" in ratios) == peft_available()
    assert "fft_shallow/vpt_shallow" in table


def test_bench_methods_reports_trainable_bytes_per_adapter_dtype(capsys):
    args = [*TINY_ARGS, "--methods", "linear_probe,fourierft", "--no-memory", "--steps", "1", "--warmup", "0"]
    reports = {}
    for dtype in (None, "bfloat16", "float16"):
        extra = [] if dtype is None else ["--adapter-dtype", dtype]
        assert bench_main(["methods", *args, *extra, "--n-frequency", "200", "--json", "-"]) == 0
        reports[dtype] = {r["method"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    head, coefficients = (32 * 5 + 5) * 4, 2 * 200  # float32 head; one qkv matrix per block
    for dtype, size in ((None, 4), ("bfloat16", 2), ("float16", 2)):
        rows = reports[dtype]
        assert rows["linear_probe"]["trainable_bytes"] == head
        assert rows["fourierft"]["trainable_bytes"] == head + coefficients * size, dtype
        assert rows["fourierft"]["trainable_params"] == reports[None]["fourierft"]["trainable_params"]
    with pytest.raises(SystemExit):
        bench_main(["methods", "--adapter-dtype", "float64"])
    assert "float64" in capsys.readouterr().err


@needs_peft
def test_bench_methods_skips_peft_rows_for_row_block_targets(tmp_path, capsys):
    args = [*TINY_ARGS, "--methods", "linear_probe,lora", "--fourierft-targets", "q,v", "--no-memory"]
    assert bench_main(["methods", *args, "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in report["results"]}
    assert "row blocks" in rows["lora"]["skipped"] and "trainable_params" not in rows["lora"]
    assert rows["linear_probe"]["trainable_params"] == 32 * 5 + 5


def test_bench_methods_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        bench_main(["methods", "--methods", "linear_probe,dora"])
    assert "dora" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["methods", "--backbone-arg", "depth"])
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_methods_on_cuda_bfloat16(tmp_path):
    args = [*TINY_ARGS, "--device", "cuda", "--dtype", "bfloat16", "--out-dir", str(tmp_path)]
    assert bench_main(["methods", *args]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "methods.json").read_text())["results"]}
    for method, row in rows.items():
        if "skipped" in row:
            continue
        assert row["train_step_ms"] > 0 and row["peak_train_mb"] > row["state_mb"] > 0, method


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("features", ["--model", "vit_tiny_patch16_224", "--repeats", "1", "--warmup", "0"]),
        ("prompts", ["--model", "vit_tiny_patch16_224", "--steps", "1", "--warmup", "0"]),
        (
            "fourierft",
            ["--model", "vit_tiny_patch16_224", "--steps", "1", "--warmup", "0", "--n-frequency", "50"],
        ),
    ],
)
def test_other_bench_commands_report_the_shared_machine_description(command, options, tmp_path):
    if command == "fourierft" and not peft_available():
        pytest.skip("needs peft")
    path = tmp_path / f"{command}.json"
    common = ["--img-size", "32", "--batch-size", "2", "--threads", "1", "--json", str(path)]
    assert bench_main([command, *options, *common]) == 0
    report = json.loads(path.read_text())
    assert report["machine"] == report["machine"] | {"cpu_count": machine("cpu")["cpu_count"], "threads": 1}
    assert {"device", "torch", "python", "load_average"} <= set(report["machine"])
    if command == "fourierft":
        rows = {r["method"]: r for r in report["results"]}
        # the profiled step allocates activations and gradients on top of what lives between steps
        assert all(r["peak_mb"] > r["state_mb"] > 0 for r in rows.values())
        assert rows["fourierft"]["trainable_params"] == rows["peft_fourierft"]["trainable_params"]


# -- compiled rows, operator counts, training throughput ---------------------------------------------------------


def test_compile_option_values():
    assert compile_kwargs("reduce-overhead") == {"mode": "reduce-overhead", "dynamic": False}
    assert compile_kwargs("backend:cudagraphs") == {"backend": "cudagraphs", "dynamic": False}
    for bad in ("", "backend:"):
        with pytest.raises(ValueError, match="inductor mode"):
            compile_kwargs(bad)


@pytest.mark.slow
def test_bench_methods_compiled_rows_are_compared_among_themselves(tmp_path):
    path = tmp_path / "r.json"
    args = [*TINY_ARGS, "--methods", "vpt_shallow,fft_shallow", "--no-memory", "--compile", "backend:aot_eager"]
    assert bench_main(["methods", *args, "--compile-methods", "fft_shallow,vpt_shallow", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    rows = {r["method"]: r for r in report["results"]}
    assert list(rows) == ["vpt_shallow", "fft_shallow", "vpt_shallow+compiled", "fft_shallow+compiled"]
    assert rows["fft_shallow+compiled"]["label"] == rows["fft_shallow"]["label"] + " (compiled, backend:aot_eager)"
    assert rows["fft_shallow+compiled"]["trainable_params"] == rows["fft_shallow"]["trainable_params"]
    ratio = rows["fft_shallow+compiled"]["train_step_ms"] / rows["vpt_shallow+compiled"]["train_step_ms"]
    assert report["ratios"]["train step fft_shallow+compiled/vpt_shallow+compiled"] == pytest.approx(ratio)
    assert "train step fft_shallow/vpt_shallow+compiled" not in report["ratios"]


@pytest.mark.slow
def test_bench_ops_counts_one_inverse_fft_per_layer_shape(tmp_path):
    path = tmp_path / "ops.json"
    tiny = [arg for key, value in TINY.items() for arg in ("--backbone-arg", f"{key}={value}")]
    argv = ["ops", "--backbone", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "2", *tiny]
    argv += ["--methods", "fourierft,vpt_shallow,features", "--n-frequency", "50", "--threads", "1", "--warmup", "1"]
    assert bench_main([*argv, "--grad-mode", "dense", "--accelerator-batching", "--json", str(path)]) == 0
    rows = {r["method"]: r for r in json.loads(path.read_text())["results"]}
    # qkv (96x32), proj (32x32), fc1 (128x32), fc2 (32x128): one irfft2 each in the forward, one rfft2 each backward
    assert rows["fourierft"]["phases"]["forward"]["fft"] == 4
    assert rows["fourierft"]["phases"]["backward"]["fft"] == 4
    assert not fourierft_functional._CPU_BATCHES_DENSE_GRADIENT  # restored after the run
    assert rows["vpt_shallow"]["total"]["fft"] == 0
    assert rows["features"]["total"]["fft"] == 2  # fft2 of all patches, irfft2 of the symmetry correlations
    assert set(rows["features"]["phases"]) == {"forward"}
    for row in rows.values():
        assert row["total"]["ops"] > row["total"]["fft"] and row["graph_breaks"] is None


@pytest.mark.slow
def test_bench_train_times_lightning_against_the_raw_step(tmp_path):
    path = tmp_path / "train.json"
    overrides = [f"--override={o}" for o in TINY_MODEL]
    argv = ["train", "--images", "24", "--image-px", "40", "--classes", "3", "--img-size", "32", "--batch-size", "4"]
    argv += ["--workers", "0", "--epochs", "2", "--raw-steps", "2", "--threads", "1", "--data-dir", str(tmp_path)]
    assert bench_main([*argv, *overrides, "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert len(list(tmp_path.glob("class_*/*.jpg"))) == 24
    # 8 images per class, of which 1 (10%) for validation and 2 (20%) for testing: 15 training images, 4 batches
    assert report["epochs"] == 2 and report["batches"] == 8
    for key in ("raw_step_images_per_s", "loop_images_per_s", "end_to_end_images_per_s", "pipeline_images_per_s"):
        assert report[key] > 0, key
    assert report["end_to_end_images_per_s"] < report["loop_images_per_s"]
    assert report["fit_seconds"] == pytest.approx(sum(report["fit_seconds_by_part"].values()))
    assert report["loop_bound"]
    with pytest.raises(ValueError, match="holds 24 generated JPEGs, not 30"):
        write_jpeg_folder(tmp_path, 30, 40, 3)
