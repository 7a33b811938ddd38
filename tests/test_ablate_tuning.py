"""fftprompt-ablate --tune: the grid (equal for every method), the choice on validation, the reference rows, the paired
differences, and the segmentation settings on the shared sample."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import yaml

from fftprompt.ablate.cli import main, parse_args
from fftprompt.ablate.comparison import standard_error
from fftprompt.ablate.paired import OUTCOMES_FILE, paired_difference, per_image_outcomes
from fftprompt.ablate.reference import REFERENCES, reference_rows, reference_table_rows
from fftprompt.ablate.runner import describe_data
from fftprompt.ablate.settings import plan_settings
from fftprompt.ablate.tuned import method_learning_rates
from fftprompt.ablate.tuning import LR_KEYS, TUNED_KEYS, WEIGHT_DECAY_KEY, choose, plan_trials
from fftprompt.run import compose


def _value(trial_overrides: tuple[str, ...], key: str) -> float:
    return float(next(o.split("=", 1)[1] for o in trial_overrides if o.startswith(f"{key}=")))


def test_every_method_gets_the_same_grid():
    methods = {
        "linear_probe": compose(["prompt=none", "adapter=none", "paths.output_dir=/nonexistent"]),
        "fft_fourierft": compose(["prompt=fft", "adapter=fourierft", "paths.output_dir=/nonexistent"]),
        "vpt_deep": compose(["prompt=vpt_deep", "adapter=none", "task.module.prompt_lr=null", "paths.output_dir=/x"]),
    }
    grids = {name: plan_trials(method_learning_rates(cfg), (0.3, 1, 3), (1e-4, 1e-2)) for name, cfg in methods.items()}
    assert {len(trials) for trials in grids.values()} == {6}
    assert {tuple(t.name for t in trials) for trials in grids.values()} == {tuple(t.name for t in grids["vpt_deep"])}
    fft = methods["fft_fourierft"]
    for trial in grids["fft_fourierft"]:
        # each of the method's own rates scaled by the trial's factor; the weight decay set
        for key in LR_KEYS:
            expected = float(
                fft.task.module.optimizer.lr if key.endswith("optimizer.lr") else fft.task.module[key.rsplit(".", 1)[1]]
            )
            assert math.isclose(_value(trial.overrides, key), expected * trial.lr_scale, rel_tol=1e-5)
        assert _value(trial.overrides, WEIGHT_DECAY_KEY) == trial.weight_decay
    # a null group rate (falls back to the base rate) is left alone, not set
    assert all(not any(o.startswith("task.module.prompt_lr=") for o in t.overrides) for t in grids["vpt_deep"])
    for bad in [((), (1e-4,)), ((1, 1), (1e-4,)), ((0.0,), (1e-4,)), ((1,), (float("nan"),))]:
        with pytest.raises(ValueError, match="lr_scales|weight_decays"):
            plan_trials({}, *bad)


def test_choice_is_the_validation_argmax():
    assert choose([0.2, 0.5, 0.4]) == 1
    assert choose([0.5, 0.5, 0.1]) == 0  # ties: the grid's order
    assert choose([None, float("nan"), 0.1]) == 2  # no score never wins
    with pytest.raises(ValueError, match="no trial has a validation score"):
        choose([None, float("nan")])


def test_tune_options_are_checked(tmp_path: Path):
    for bad in (["--lr-scales", "1,1"], ["--weight-decays", "x"], ["--lr-scales", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(["--quick", "--tune", *bad])
    for key in TUNED_KEYS:  # the grid owns these keys: a user override would silently flatten it
        with pytest.raises(SystemExit):
            parse_args(["--quick", "--tune", f"{key}=0.1"])
    args = parse_args(["--quick", "--tune", "--lr-scales", "1,3", "--weight-decays", "0.01"])
    assert args.tune and args.lr_scales == [1.0, 3.0] and args.weight_decays == [0.01]


def test_quick_tuned_comparison_end_to_end(tmp_path: Path, capsys):
    output = tmp_path / "ablation"
    argv = ["--quick", "--tune", "--methods", "linear_probe,fft_shallow", "--ablations", "none", "--seeds", "0,1"]
    argv += ["--lr-scales", "1,3", "--weight-decays", "1e-4", "--output", str(output), "--doc", str(tmp_path / "a.md")]
    assert main(argv) == 0
    report = json.loads((output / "comparison_tuned.json").read_text())["settings"][0]
    assert report["settings"]["protocol"] == "tuned"
    for name in ("linear_probe", "fft_shallow"):
        entry = report["tuning"][name]
        scores = [t["val_score"] for t in entry["trials"]]
        assert len(scores) == 2 and all(isinstance(t["epoch"], int) for t in entry["trials"])
        assert entry["chosen"] == int(np.argmax(scores))  # the first of equal scores, as np.argmax
        for trial in entry["trials"]:
            run = Path(trial["run_dir"])
            metrics = json.loads((run / "metrics.json").read_text())
            assert not [k for k in metrics if k.startswith("test/")]  # a trial never reads the test split
            assert not (run / "report.md").exists()  # whose figures would show test images
            assert yaml.safe_load((run / "config.yaml").read_text())["test"] is False
        chosen = entry["trials"][entry["chosen"]]
        finals = [r for r in report["runs"] if r["variant"] == name]
        assert [r["seed"] for r in finals] == [0, 1] and all("test/acc" in r for r in finals)
        for final in finals:  # trained with the chosen trial's overrides, tested
            config = yaml.safe_load((Path(final["run_dir"]) / "config.yaml").read_text())
            assert config["test"] is True
            assert config["task"]["module"]["optimizer"]["weight_decay"] == chosen["weight_decay"]
            lr = compose(["backbone=vit_micro", "paths.output_dir=/x"]).task.module.head_lr * chosen["lr_scale"]
            assert math.isclose(config["task"]["module"]["head_lr"], lr, rel_tol=1e-5)
    assert {r["name"] for r in report["reference"]} == set(REFERENCES)
    doc = (tmp_path / "a.md").read_text()
    assert "tuned on validation" in doc and "*reference:* backbone k-NN" in doc and "standard error" in doc
    # per-image outcomes: reproduce each run's test accuracy; the paired table anchors on the only fft method
    for run in report["runs"]:
        assert len(run["test_correct"]) == report["settings"]["num_test"]
        assert math.isclose(float(np.mean(run["test_correct"])), run["test/acc"], abs_tol=1e-6)
    assert all(len(row["test_correct"]) == report["settings"]["num_test"] for row in report["reference"])
    assert "against **fft prompts shallow**" in doc and "| fft prompts shallow | " in doc.split("Paired on")[1]
    # a run whose recorded accuracy no longer matches its weights is refused, not paired
    final = Path(report["runs"][0]["run_dir"])
    (final / OUTCOMES_FILE).unlink()
    metrics = json.loads((final / "metrics.json").read_text())
    (final / "metrics.json").write_text(json.dumps({**metrics, "test/acc": metrics["test/acc"] + 0.01}))
    with pytest.raises(RuntimeError, match="recorded test/acc"):
        per_image_outcomes(final)
    (final / "metrics.json").write_text(json.dumps(metrics))
    assert per_image_outcomes(final)["correct"] == report["runs"][0]["test_correct"]
    capsys.readouterr()
    # a second invocation reuses every trial and run
    assert main(argv) == 0
    again = json.loads((output / "comparison_tuned.json").read_text())["settings"][0]
    assert all(r["reused"] for r in again["runs"])
    assert all(t["reused"] for entry in again["tuning"].values() for t in entry["trials"])
    # with worker processes, each of which trains (here: reuses) and summarises only its shard of the methods
    assert main([*argv, "--jobs", "2"]) == 0


def test_reference_rows_on_synthetic_features():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)  # 3 classes x 40 images
    fft = torch.nn.functional.one_hot(labels, 3).double() * 3 + torch.randn(120, 3, generator=generator)
    backbone = torch.randn(120, 8, generator=generator, dtype=torch.float64)  # carries nothing
    features = {"fft": fft, "backbone": backbone, "both": torch.cat([fft, backbone], dim=1)}
    index = np.arange(120)
    splits = {"train": index[:60], "val": index[60:90], "test": index[90:]}
    rows = {r["name"]: r for r in reference_table_rows(features, labels, splits, 3, ks=(5, 10))}
    assert rows["ref_fft_linear"]["acc"] > 0.9 and rows["ref_backbone_linear"]["acc"] < 0.7
    assert rows["ref_fft_linear"]["trainable_params"] == 3 * (3 + 1)
    assert (
        rows["ref_both_linear"]["trainable_params"] == 3 * (11 + 1)
        and rows["ref_backbone_knn"]["trainable_params"] == 0
    )
    for row in rows.values():  # chosen on validation: the grid's best validation score
        assert row["val_acc"] == max(row["grid"].values())
    with pytest.raises(ValueError, match="feature sets"):
        reference_table_rows({"fft": fft}, labels, splits, 3)


def test_paired_difference_is_the_paired_t_tests():
    generator = np.random.default_rng(0)
    anchor = (generator.random((3, 200)) < 0.6).astype(float)
    scores = (generator.random((3, 200)) < 0.7).astype(float)
    difference, se = paired_difference(scores, anchor)
    t = scipy.stats.ttest_rel(scores.mean(axis=0), anchor.mean(axis=0)).statistic
    assert math.isclose(difference, scores.mean() - anchor.mean()) and math.isclose(difference / se, t)
    reference = scores[:1]  # a row without seeds against the anchor's three
    assert math.isclose(paired_difference(reference, anchor)[0], reference.mean() - anchor.mean())
    with pytest.raises(ValueError, match="test images"):
        paired_difference(scores[:, :10], anchor)


def test_standard_error():
    assert math.isclose(standard_error(0.5, 100), 0.05)
    assert standard_error(1.0, 10) == 0.0


def test_segmentation_settings_on_the_sample(sample_data: Path):
    if not (sample_data / "isbi2012_em_membrane").is_dir():
        pytest.skip("no ISBI sample")
    isbi, kvasir = plan_settings(["isbi", "kvasir"], ["pretrained"], data_root=sample_data)
    cfg = compose([*isbi.overrides, "paths.output_dir=/nonexistent"])
    assert cfg.task.name == "segmentation" and cfg.data.invert_masks
    data = describe_data(cfg)
    assert (data["num_train"], data["num_val"], data["num_test"]) == (18, 6, 6)
    assert data["classes"] == ["background", "membrane"] and data["image_size"] == 64
    assert 0.6 < data["majority_fraction"] < 0.95  # membranes (class 1) are the thin minority after the inversion
    data = describe_data(compose([*kvasir.overrides, "paths.output_dir=/nonexistent"]))
    assert (data["num_train"], data["num_val"], data["num_test"]) == (3, 1, 1)
    # the split is deterministic: the same test slices every time
    datamodule_pairs = [[p.name for p, _ in compose_test_pairs(isbi.overrides)] for _ in range(2)]
    assert datamodule_pairs[0] == datamodule_pairs[1]


def compose_test_pairs(overrides: tuple[str, ...]) -> list[tuple[Path, Path]]:
    from fftprompt.run import build

    return list(build(compose([*overrides, "paths.output_dir=/nonexistent"]))["datamodule"].dataset("test").pairs)


def test_reference_rows_read_the_frozen_backbone_alone(tmp_path: Path):
    # the shipped pretrained demo backbone: its features must not depend on the seed (a model built with the
    # default adapter=fourierft would carry randomly initialised FourierFT coefficients)
    data = ["data.num_train=30", "data.num_val=15", "data.num_test=15", "data.batch_size=16"]
    rows = [
        reference_rows(compose([*data, f"seed={seed}", "adapter=fourierft", f"paths.output_dir={tmp_path}"]))
        for seed in (0, 1)
    ]
    assert [r["acc"] for r in rows[0]] == [r["acc"] for r in rows[1]]
    assert [r["grid"] for r in rows[0]] == [r["grid"] for r in rows[1]]


def test_the_time_line_covers_the_references_and_the_paired_outcomes(tmp_path: Path, monkeypatch):
    import fftprompt.ablate.cli as cli

    clock = {"now": 0.0}

    class Clock:  # time as the invocation's steps advance it
        @staticmethod
        def perf_counter() -> float:
            return clock["now"]

    def step(seconds: float):
        def advance(*args, **kwargs):
            clock["now"] += seconds
            return {"settings": {"task": "classification"}}

        return advance

    written = {}
    monkeypatch.setattr(cli, "time", Clock)
    monkeypatch.setattr(cli, "run_tuned", step(60.0))  # training: 1 min
    monkeypatch.setattr(cli, "add_references", step(120.0))  # the reference rows: 2 min
    monkeypatch.setattr(cli, "add_outcomes", step(30.0))  # the paired table's reloads: 0.5 min
    monkeypatch.setattr(cli, "write_comparison", lambda reports, meta, *a: written.update(meta) or [])
    monkeypatch.setattr(cli, "format_comparison", lambda *a, **k: "")
    argv = ["--quick", "--tune", "--methods", "linear_probe", "--ablations", "none", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    assert written["wall_seconds"] == 210.0
