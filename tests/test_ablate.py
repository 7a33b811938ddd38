"""fftprompt-ablate: budget matching, summary statistics, the goal check, and a tiny end-to-end run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from hydra.utils import instantiate

from fftprompt.ablate import ABLATIONS, METHODS, Variant, main, plan_ablation, plan_variants, run_ablation
from fftprompt.ablate.cli import parse_args
from fftprompt.ablate.runner import QUICK_OVERRIDES, RUN_OVERRIDES, worker_command
from fftprompt.ablate.tables import goal_check, summarise
from fftprompt.model import create_model
from fftprompt.prompts import ModelDims
from fftprompt.run import compose

TINY = [*QUICK_OVERRIDES, *RUN_OVERRIDES, "paths.output_dir=/nonexistent/fftprompt-ablate"]


def build_counts(overrides: tuple[str, ...]) -> dict[str, int]:
    """Trainable parameters per group of the model a variant's config builds (no data)."""
    cfg = compose([*TINY, *overrides])
    model = create_model(
        instantiate(cfg.backbone),
        6,
        prompt=instantiate(cfg.prompt),
        features=instantiate(cfg.features),
        head=instantiate(cfg.task.head),
        adapter=instantiate(cfg.adapter) if cfg.get("adapter") else None,
    )
    return {group: sum(p.numel() for p in params) for group, params in model.trainable_parameters().items()}


@pytest.mark.slow
def test_variants_fit_the_parameter_budget():
    variants, budget = plan_ablation(compose(TINY), [*METHODS, *ABLATIONS])
    # the quick backbone: 2 blocks of width 32, q and v blocks adapted in each
    assert budget["budget"] == 10 * 2 * 32 and budget["fourierft_matrices"] == 4
    counts = {v.name: build_counts(v.overrides) for v in variants}
    spent = {name: c["prompt"] + c["adapter"] for name, c in counts.items()}
    assert spent["linear_probe"] == 0
    for name in ("vpt_shallow", "vpt_deep", "vfpt", "fourierft"):
        assert spent[name] == budget["budget"], name
    for name in ("fft_shallow", "fft_deep", "fft_fourierft", *ABLATIONS):
        assert 0.5 * budget["budget"] < spent[name] <= budget["budget"], name
    assert counts["fft_fourierft"]["adapter"] > 0 and counts["fft_fourierft"]["prompt"] > 0
    assert spent["fft_no_spectrum"] < spent["fft_shallow"]  # the spectrum projection is gone
    assert len({c["head"] for c in counts.values()}) == 1  # one head for all
    larger, _ = plan_ablation(compose(TINY), ["vpt_shallow", "fft_shallow"], budget=2 * budget["budget"])
    assert build_counts(larger[0].overrides)["prompt"] == 2 * budget["budget"]
    assert build_counts(larger[1].overrides)["prompt"] > spent["fft_shallow"]
    with pytest.raises(ValueError, match="lora"):
        plan_ablation(compose(TINY), ["lora"])


def test_planning_is_arithmetic_over_the_dims():
    # the quick backbone's dims and its 4 FourierFT matrices, without building anything
    dims = ModelDims(embed_dim=32, num_layers=2, patch_size=8, grid_size=(4, 4), in_chans=3, feature_channels=23)
    variants, budget = plan_variants(dims, 4, ["linear_probe", "vpt_shallow", "vfpt", "fourierft"])
    assert budget["budget"] == 640
    assert {v.name: v.overrides for v in variants} == {
        "linear_probe": ("prompt=none", "adapter=none"),
        "vpt_shallow": ("prompt=vpt", "prompt.num_tokens=20", "adapter=none"),
        "vfpt": ("prompt=vfpt", "prompt.num_tokens=10", "adapter=none"),
        "fourierft": ("prompt=none", "adapter=fourierft", "adapter.n_frequency=160"),
    }
    assert [v.label for v in variants] == ["linear probe", "VPT shallow", "VFPT", "FourierFT"]


def test_summary_and_goal_check():
    variants = [Variant(n, n, (), "method") for n in ("vpt_deep", "vfpt", "fft_shallow", "fft_fourierft")]
    accuracy = {"vpt_deep": [0.3, 0.4, 0.5], "vfpt": [0.5, 0.5, 0.5], "fft_shallow": [0.6, 0.7, 0.5]}
    accuracy["fft_fourierft"] = [0.7, 0.7, 0.7]
    params = {"vpt_deep": 100, "vfpt": 100, "fft_shallow": 90, "fft_fourierft": 120}
    runs = [
        {"variant": n, "seed": s, "test/acc": a, "test/f1_macro": a / 2, "trainable_params": params[n]}
        for n, values in accuracy.items()
        for s, a in enumerate(values)
    ]
    summary = {row["name"]: row for row in summarise(variants, runs)}
    assert summary["vpt_deep"]["acc_mean"] == pytest.approx(0.4)
    assert summary["vpt_deep"]["acc_std"] == pytest.approx(statistics.stdev([0.3, 0.4, 0.5]))
    assert summary["fft_shallow"]["f1_mean"] == pytest.approx(0.3)
    checks = {c["name"]: c for c in goal_check(list(summary.values()))}
    assert checks["fft_shallow"]["best_baseline"] == "vfpt"
    assert checks["fft_shallow"]["margin"] == pytest.approx(0.1)
    assert checks["fft_shallow"]["met"]
    # better by 20 points but with more parameters than the baselines: not the goal
    assert checks["fft_fourierft"]["margin"] == pytest.approx(0.2) and not checks["fft_fourierft"]["met"]


def test_rejects_bad_arguments(capsys):
    for argv in (["--methods", "lora"], ["--seeds", "0,0"], ["--methods", "none", "--ablations", "none"], ["x"]):
        with pytest.raises(SystemExit):
            main(argv)
    assert "expected" in capsys.readouterr().err


def read_row(markdown: str, label: str) -> list[str]:
    # the results row; the overrides table further down names each method again, with its overrides in backticks
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {label} |") and "`" not in line]
    assert len(rows) == 1, (label, rows)
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


@pytest.mark.slow
def test_quick_ablation_end_to_end(tmp_path, capsys):
    output, doc = tmp_path / "out", tmp_path / "docs" / "ablation.md"
    argv = [
        "--quick",
        "--seeds",
        "0,1",
        "--methods",
        "linear_probe,fft_shallow",
        "--ablations",
        "fft_no_spectrum",
        "--output",
        str(output),
        "--doc",
        str(doc),
    ]
    # what two worker processes of --jobs 2 do (here in this process): every second run each, nothing written
    for shard in ("0/2", "1/2"):
        assert main([*argv, "--runs-only", "--shard", shard]) == 0
    assert not (output / "ablation.json").exists()
    trained = frozenset(str(p.parent) for p in (output / "runs").glob("*/seed*/metrics.json"))
    assert len(trained) == 6
    args = parse_args([*argv, "--jobs", "2", "data.noise_std=0.03"])
    worker = worker_command(args, 1)
    assert worker[1:3] == ["-m", "fftprompt.ablate"]
    again = parse_args(worker[3:])
    assert again.shard == (1, 2) and again.runs_only and again.quick and again.overrides == ["data.noise_std=0.03"]
    assert (again.seeds, again.methods, again.ablations) == (args.seeds, args.methods, args.ablations)
    # the collecting process reports the workers' runs as trained in this invocation
    report = run_ablation(parse_args(argv), trained)
    assert not any(r["reused"] for r in report["runs"])
    assert main(argv) == 0
    capsys.readouterr()
    report = json.loads((output / "ablation.json").read_text())
    assert len(report["runs"]) == 6 and all(r["reused"] for r in report["runs"])
    markdown = (output / "ablation.md").read_text()
    assert doc.read_text().replace("ablation.png", "") == markdown.replace("ablation.png", "")
    for path in (output / "ablation.png", doc.with_suffix(".png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = {"linear_probe": "linear probe", "fft_shallow": "fft prompts shallow"}
    labels["fft_no_spectrum"] = "fft shallow without spectrum projection"
    for name, label in labels.items():
        metrics = [json.loads((output / "runs" / name / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        accuracy = [m["test/acc"] for m in metrics]
        f1 = [m["test/f1_macro"] for m in metrics]
        cells = read_row(markdown, label)
        assert cells[1] == f"{metrics[0]['trainable_params']:,}"
        assert cells[2] == f"{statistics.fmean(accuracy):.3f} ± {statistics.stdev(accuracy):.3f}"
        assert cells[3] == f"{statistics.fmean(f1):.3f} ± {statistics.stdev(f1):.3f}"
    assert "## Feature ablations" in markdown
    assert "| VPT" not in markdown and "## Goal" not in markdown  # only the requested rows; no baseline to beat

    # a second call reuses the finished runs instead of training again
    stamp = (output / "runs" / "fft_shallow" / "seed1" / "metrics.json").stat().st_mtime_ns
    assert main([*argv[:-2]]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert (output / "runs" / "fft_shallow" / "seed1" / "metrics.json").stat().st_mtime_ns == stamp
    assert all(r["reused"] for r in json.loads((output / "ablation.json").read_text())["runs"])
    assert Path(doc).is_file()
