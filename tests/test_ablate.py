"""fftprompt-ablate: budget matching, summary statistics, the goal check, and a tiny end-to-end run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from hydra.utils import instantiate

from fftprompt.ablate import ABLATIONS, METHODS, Variant, main, plan_ablation, plan_variants, run_ablation
from fftprompt.ablate.cli import parse_args
from fftprompt.ablate.comparison import format_comparison, goals
from fftprompt.ablate.runner import FULL_OVERRIDES, QUICK_OVERRIDES, RUN_OVERRIDES, worker_command
from fftprompt.ablate.settings import plan_settings
from fftprompt.ablate.tables import goal_check, summarise
from fftprompt.model import create_model
from fftprompt.prompts import FrequencyPrompt, ModelDims
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
    runs = output / "generated-random" / "runs"  # --quick: the generated benchmark with a random tiny ViT
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
    trained = frozenset(str(p.parent) for p in (runs).glob("*/seed*/metrics.json"))
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
    assert markdown.strip().replace("ablation.png", "") in doc.read_text().replace("ablation.png", "")
    assert doc.read_text().startswith("<!-- begin generated: ablation ")
    for path in (output / "ablation.png", doc.with_suffix(".png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = {"linear_probe": "linear probe", "fft_shallow": "fft prompts shallow"}
    labels["fft_no_spectrum"] = "fft shallow without spectrum projection"
    for name, label in labels.items():
        metrics = [json.loads((runs / name / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        accuracy = [m["test/acc"] for m in metrics]
        f1 = [m["test/f1_macro"] for m in metrics]
        cells = read_row(markdown, label)
        assert cells[1] == f"{metrics[0]['trainable_params']:,}"
        assert cells[2] == f"{statistics.fmean(accuracy):.3f} ± {statistics.stdev(accuracy):.3f}"
        assert cells[3] == f"{statistics.fmean(f1):.3f} ± {statistics.stdev(f1):.3f}"
    assert "## Feature ablations" in markdown
    assert "| VPT" not in markdown and "## Goal" not in markdown  # only the requested rows; no baseline to beat

    # a second call reuses the finished runs instead of training again
    stamp = (runs / "fft_shallow" / "seed1" / "metrics.json").stat().st_mtime_ns
    assert main([*argv[:-2]]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert (runs / "fft_shallow" / "seed1" / "metrics.json").stat().st_mtime_ns == stamp
    assert all(r["reused"] for r in json.loads((output / "ablation.json").read_text())["runs"])
    assert Path(doc).is_file()


# ---------------------------------------------------------------- the real-data comparison


def test_settings_grid_and_its_errors(tmp_path: Path):
    settings = plan_settings(["generated", "dtd"], ["pretrained", "random"], [5], data_root=tmp_path)
    assert [(s.dataset, s.backbone, s.shots) for s in settings] == [
        ("generated", "pretrained", None),
        ("generated", "random", None),
        ("dtd", "pretrained", None),
        ("dtd", "random", None),
        ("dtd", "pretrained", 5),
        ("dtd", "random", 5),
    ]
    # the classic ablation's runs are the comparison's generated + pretrained ones: same folder, same overrides
    assert settings[0].subdir == "" and settings[0].overrides == FULL_OVERRIDES
    assert [s.subdir for s in settings[1:]] == [
        "generated-random",
        "dtd-pretrained",
        "dtd-random",
        "dtd-pretrained-5shot",
        "dtd-random-5shot",
    ]
    assert f"data.root={tmp_path / 'dtd_300'}" in settings[2].overrides
    assert "backbone.checkpoint_path=null" in settings[3].overrides
    assert "backbone.checkpoint_path=null" not in settings[2].overrides
    assert "data.train_per_class=5" in settings[4].overrides
    for kwargs, message in (
        ({"datasets": ["imagenet"], "backbones": ["random"]}, r"datasets \['imagenet'\]: expected names"),
        ({"datasets": ["dtd"], "backbones": ["random"]}, r"dataset 'dtd' needs the sample data: pass --data-root"),
        ({"datasets": ["generated"], "backbones": ["random"], "shots": [5]}, r"--shots needs one of \['dtd'\]"),
        ({"datasets": ["generated"], "backbones": ["pretrained"], "quick": True}, r"--quick .* --backbones random"),
    ):
        with pytest.raises(ValueError, match=message):
            plan_settings(**kwargs)


def test_comparison_options_reach_the_workers(tmp_path: Path, capsys):
    (tmp_path / "dtd_300").mkdir()
    argv = ["--quick", "--datasets", "generated,dtd", "--shots", "2,4", "--data-root", str(tmp_path), "--jobs", "2"]
    args = parse_args(argv)
    assert args.backbones == ["random"] and args.shots == [2, 4] and len(args.settings) == 4
    again = parse_args(worker_command(args, 0)[3:])
    assert (again.datasets, again.backbones, again.shots) == (args.datasets, args.backbones, args.shots)
    assert again.settings == args.settings
    for bad in (["--shots", "0"], ["--shots", "x"], ["--backbones", "imagenet"], ["--datasets", "generated"]):
        with pytest.raises(SystemExit):
            parse_args(["--quick", "--data-root", str(tmp_path), "--shots", "5", *bad])
    assert "expected" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--datasets", "breastmnist", "--data-root", str(tmp_path)])
    assert "no medmnist folder in it" in capsys.readouterr().err


def _report(dataset: str, backbone: str, shots: int | None, accuracy: dict[str, float], majority: float) -> dict:
    summary = [
        {
            "name": name,
            "label": name,
            "kind": "method",
            "trainable_params": 100,
            "acc_mean": acc,
            "acc_std": 0.01,
            "f1_mean": acc - 0.1,
            "f1_std": 0.02,
            "acc_per_seed": [acc] * 3,
            "seeds": [0, 1, 2],
        }
        for name, acc in accuracy.items()
    ]
    settings = {
        "dataset": dataset,
        "backbone_init": backbone,
        "shots": shots,
        "seeds": [0, 1, 2],
        "backbone": "vit_demo_patch8",
        "backbone_weights": "w.safetensors" if backbone == "pretrained" else None,
        "threads": 1,
        "jobs": 2,
        "overrides": ["data=dtd", "data.root=/data/dtd_300"],
        "num_train": 5 * (shots or 40),
        "num_test": 200,
        "classes": list("abcde"),
        "majority_fraction": majority,
        "image_size": 64,
        "epochs": 30,
    }
    runs = [{"reused": False, "train_seconds": 10.0}] * 3 * len(accuracy)
    budget = {"budget": 3840, "num_layers": 4, "embed_dim": 96}
    return {"settings": settings, "summary": summary, "runs": runs, "budget": budget}


def test_comparison_tables_and_goals():
    methods = {"linear_probe": 0.5, "vpt_shallow": 0.45, "vfpt": 0.4, "fft_shallow": 0.6}
    random = {"linear_probe": 0.34, "vpt_shallow": 0.3, "vfpt": 0.3, "fft_shallow": 0.2}
    reports = [
        _report("dtd", "pretrained", None, methods, 0.2),
        _report("dtd", "random", None, random, 0.2),
        _report("dtd", "pretrained", 5, {**methods, "linear_probe": 0.3}, 0.2),
    ]
    lines = goals(reports)
    assert lines[0].startswith("- Linear probe on DTD, pretrained − random: +16.0 points") and "**met**" in lines[0]
    assert "every method above it" in lines[1]
    assert "fft_shallow beats the best of VPT/VFPT (VPT shallow) by 15.0 points" in lines[2]
    reports[1] = _report("dtd", "random", None, {**random, "linear_probe": 0.36}, 0.2)
    assert "+14.0 points" in goals(reports)[0] and "**missed**" in goals(reports)[0]
    reports[0] = _report("dtd", "pretrained", None, {**methods, "vfpt": 0.2}, 0.2)
    assert "at or below it: VFPT" in goals(reports)[1]
    meta = {"command": "fftprompt-ablate ...", "wall_seconds": 60.0, "load_before": 1.0, "load_after": 2.0}
    markdown = format_comparison(reports, {**meta, "data_root": "/data"}, figure=None)
    assert "`data=dtd data.root=<data-root>/dtd_300`" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| linear probe |")]
    # the dataset table (pretrained, random, lift) and the few-shot table (5 per class, all)
    assert table[0].split("|")[3:8] == [
        " 0.500 ± 0.010 ",
        " 0.400 ± 0.020 ",
        " 0.360 ± 0.010 ",
        " 0.260 ± 0.020 ",
        " +14.0 ",
    ]
    assert table[1].split("|")[2:4] == [" 0.300 ± 0.010 ", " 0.500 ± 0.010 "]
    assert "pretrained, 5 per class (25 images)" in markdown and "pretrained, all per class (200 images)" in markdown


@pytest.mark.slow
def test_quick_comparison_end_to_end(tmp_path: Path, sample_data: Path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "dtd_300").symlink_to(sample_data / "dtd")  # 5 classes x 10 images: 4 per class to train
    output, doc = tmp_path / "out", tmp_path / "docs" / "ablation.md"
    doc.parent.mkdir()
    doc.write_text("# Page\n\nwritten by hand\n")
    argv = ["--quick", "--seeds", "0,1", "--methods", "linear_probe,fft_shallow", "--ablations", "none"]
    argv += ["--datasets", "generated,dtd", "--shots", "2", "--data-root", str(root), "--output", str(output)]
    assert main([*argv, "--doc", str(doc)]) == 0
    capsys.readouterr()
    report = json.loads((output / "comparison.json").read_text())
    by_setting = {(r["settings"]["dataset"], r["settings"]["shots"]): r for r in report["settings"]}
    assert set(by_setting) == {("generated", None), ("dtd", None), ("dtd", 2)}
    assert (
        by_setting[("dtd", 2)]["settings"]["num_train"] == 10
        and by_setting[("dtd", None)]["settings"]["num_train"] == 20
    )
    assert by_setting[("dtd", 2)]["settings"]["epochs"] == 2  # 1 epoch of 20 images = 2 epochs of 10
    metrics = [
        json.loads((output / "dtd-random-2shot" / "runs" / "fft_shallow" / f"seed{s}" / "metrics.json").read_text())
        for s in (0, 1)
    ]
    accuracy = [m["test/acc"] for m in metrics]
    assert all(m["steps"] == 2 for m in metrics)  # 10 images in batches of 16, two epochs
    text = doc.read_text()
    assert text.startswith("# Page\n\nwritten by hand\n") and "<!-- begin generated: real-data comparison" in text
    few_shot_row = [line for line in text.splitlines() if line.startswith("| fft prompts shallow |")][-1]
    assert f"{statistics.fmean(accuracy):.3f} ± {statistics.stdev(accuracy):.3f}" in few_shot_row
    assert (doc.parent / "ablation_comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert main(argv) == 0  # everything reused
    markdown = (output / "comparison.md").read_text()
    assert "trained 0 of 12 runs" in markdown and "--data-root <data-root> --output" in markdown
    assert str(root) not in markdown  # the machine's own folder is written <data-root>


def test_fft_generators_keep_the_map_statistics_where_the_budget_allows():
    demo = ModelDims(embed_dim=96, num_layers=4, patch_size=8, grid_size=(8, 8), in_chans=3, feature_channels=23)
    tiny = ModelDims(embed_dim=32, num_layers=2, patch_size=8, grid_size=(4, 4), in_chans=3, feature_channels=23)
    demo_variants = {v.name: v.overrides for v in plan_variants(demo, 8, ["fft_shallow", "fft_no_statistics"])[0]}
    assert "prompt.use_statistics=true" in demo_variants["fft_shallow"]
    assert demo_variants["fft_no_statistics"][-1] == "prompt.use_statistics=false"
    # budget 600: the smallest generator with statistics (563 parameters) fits, but leaves FourierFT less than a
    # tenth of it beside the combined method's prompts, which then go without statistics (469 parameters)
    tiny_variants = {v.name: v.overrides for v in plan_variants(tiny, 4, ["fft_shallow", "fft_fourierft"], 600)[0]}
    assert "prompt.use_statistics=true" in tiny_variants["fft_shallow"]
    assert "prompt.use_statistics=false" in tiny_variants["fft_fourierft"]
    assert tiny_variants["fft_fourierft"][-1] == f"adapter.n_frequency={(600 - 469) // 4}"


def test_fft_fourierft_holds_fft_shallows_generator_and_fourierft_fills_the_budget():
    demo = ModelDims(embed_dim=96, num_layers=4, patch_size=8, grid_size=(8, 8), in_chans=3, feature_channels=23)
    variants, budget = plan_variants(demo, 8, ["fft_shallow", "fft_fourierft"])
    shallow, combined = (v.overrides for v in variants)
    assert combined[: len(shallow) - 1] == shallow[:-1]  # the same generator; only the adapter differs
    settings = dict(o.removeprefix("prompt.").split("=") for o in shallow if o.startswith("prompt."))
    kwargs = {k: v == "true" if v in ("true", "false") else int(v) for k, v in settings.items()}
    generator = FrequencyPrompt(demo, **kwargs).num_parameters()
    n_frequency = int(combined[-1].split("=")[1])
    assert n_frequency == (budget["budget"] - generator) // 8 and n_frequency * 8 >= 0.1 * budget["budget"]
