"""fftprompt-compare: runs grouped by the settings that differ, seeds aggregated, unfinished runs reported."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from conftest import QUIET, TINY_MODEL, TINY_SYMMETRY
from fftprompt.compare import collect_runs, group_runs, main
from fftprompt.rundir import write_config
from fftprompt.utils import write_json_atomic


def fake_run(
    root: Path,
    name: str,
    *,
    prompt: str,
    noise: float,
    seed: int,
    acc: float,
    params: int,
    tokens: int = 4,
    adapter: dict | None = None,
    data: dict | None = None,
) -> Path:
    """A run directory as fftprompt-train leaves it (config.yaml, metrics.json), without training."""
    run = root / name
    config = {
        "seed": seed,
        "data": {"_target_": "fftprompt.data.SymmetryDataModule", "noise_std": noise, "image_size": 32, **(data or {})},
        "prompt": {"_target_": f"fftprompt.prompts.{prompt}", "num_tokens": tokens, "deep": prompt == "VFPTPrompt"},
        "adapter": adapter,
        "paths": {"output_dir": str(run)},
        "callbacks": {"model_checkpoint": {"dirpath": f"{run}/checkpoints", "monitor": "val/acc"}},
    }
    write_config(run, config)
    write_json_atomic(
        run / "metrics.json",
        {"test/acc": acc, "test/f1_macro": acc / 2, "test/loss": 1.0, "trainable_params": params, "train_seconds": 2.0},
    )
    return run


def test_groups_by_the_settings_that_differ_and_aggregates_seeds(tmp_path):
    accuracy = {}
    for prompt, params in (("VPTPrompt", 100), ("VFPTPrompt", 300)):
        for noise in (0.03, 0.1):
            for seed in (0, 1, 2):
                value = 0.1 * seed + (0.5 if prompt == "VFPTPrompt" else 0.2) + noise
                accuracy.setdefault((prompt, noise), []).append(value)
                # VFPT runs carry other prompt sizes: the method stands for them
                tokens = 4 if prompt == "VPTPrompt" else 8
                fake_run(tmp_path, f"{prompt}-{noise}-{seed}", prompt=prompt, noise=noise, seed=seed, acc=value,
                         params=params, tokens=tokens)  # fmt: skip
    columns, groups = group_runs(collect_runs([tmp_path]))
    assert columns == ["method", "data.noise_std"]
    table = {g.key: g for g in groups}
    assert set(table) == {("VPT shallow", "0.03"), ("VPT shallow", "0.1"), ("VFPT", "0.03"), ("VFPT", "0.1")}
    group = table[("VFPT", "0.1")]
    assert [r.seed for r in group.runs] == ["0", "1", "2"]
    assert statistics.fmean(group.values("test/acc")) == pytest.approx(statistics.fmean(accuracy[("VFPTPrompt", 0.1)]))
    # a prompt setting that differs within one method becomes a column of its own
    fake_run(tmp_path, "extra", prompt="VPTPrompt", noise=0.03, seed=0, acc=0.9, params=200, tokens=16)
    columns, groups = group_runs(collect_runs([tmp_path]))
    assert columns == ["method", "data.noise_std", "prompt.num_tokens"] and len(groups) == 5


def test_replaced_and_copied_runs_are_not_extra_seeds(tmp_path, capsys):
    # overwrite=true moved the first try aside; the run was then copied by hand: one run, not three seeds
    fake_run(tmp_path, "run.replaced-20250101-120000", prompt="VPTPrompt", noise=0.1, seed=0, acc=0.467, params=100)
    fake_run(tmp_path, "run", prompt="VPTPrompt", noise=0.1, seed=0, acc=0.2, params=100)
    shutil.copytree(tmp_path / "run", tmp_path / "run-copy")
    fake_run(tmp_path, "other", prompt="VPTPrompt", noise=0.1, seed=1, acc=0.3, params=100)
    runs = collect_runs([tmp_path])
    status = {r.run_dir.name: r.status for r in runs}
    assert status == {"other": "finished", "run": "finished", "run-copy": "duplicate",
                      "run.replaced-20250101-120000": "replaced"}  # fmt: skip
    _, (group,) = group_runs(runs)
    assert sorted(group.values("test/acc")) == [0.2, 0.3]
    assert main([str(tmp_path), "--output", str(tmp_path / "table")]) == 0
    markdown = (tmp_path / "table" / "comparison.md").read_text()
    assert "2 finished runs in 1 groups" in markdown
    assert "skipped 1 runs moved aside by `overwrite=true`; 1 copies of a compared run counted once" in markdown
    assert f"a copy of `{tmp_path / 'run'}`" in markdown
    capsys.readouterr()


def test_labels_come_from_the_methods_and_paths_are_not_grouped(tmp_path):
    fourierft = {"_target_": "fftprompt.fourierft.FourierFTConfig", "n_frequency": 100}
    for index, (prompt, adapter) in enumerate((("FrequencyPrompt", fourierft), ("VPTPrompt", fourierft))):
        # two copies of the data at different absolute paths, and shipped weights at different places
        data = {"root": f"/data/copy{index}"}
        fake_run(tmp_path, f"r{index}", prompt=prompt, noise=0.1, seed=0, acc=0.5, params=10, adapter=adapter,
                 data=data)  # fmt: skip
    columns, groups = group_runs(collect_runs([tmp_path]))
    assert columns == ["method"]
    assert [g.key for g in groups] == [("fft prompts + FourierFT",), ("VPT shallow + FourierFT",)]
    assert main([str(tmp_path), "--output", str(tmp_path / "t")]) == 0
    markdown = (tmp_path / "t" / "comparison.md").read_text()
    assert "differ but are not grouped by: `data.root`" in markdown


def test_by_chooses_the_grouping_columns(tmp_path, capsys):
    for noise in (0.03, 0.1):
        for tokens in (4, 8):
            fake_run(tmp_path, f"{noise}-{tokens}", prompt="VPTPrompt", noise=noise, seed=0, acc=noise + tokens / 100,
                     params=tokens, tokens=tokens)  # fmt: skip
    runs = collect_runs([tmp_path])
    assert group_runs(runs)[0] == ["data.noise_std", "prompt.num_tokens"]
    columns, groups = group_runs(runs, by=["prompt.num_tokens"])
    assert columns == ["prompt.num_tokens"] and [len(g.runs) for g in groups] == [2, 2]
    assert group_runs(runs, by=["method", "data"])[0] == ["method", "data._target_"]
    with pytest.raises(ValueError, match="--by 'prompt.tokens' is neither 'method' nor a config entry"):
        group_runs(runs, by=["prompt.tokens"])
    assert main([str(tmp_path), "--output", str(tmp_path / "t"), "--by", "data.noise_std"]) == 0
    markdown = (tmp_path / "t" / "comparison.md").read_text()
    assert "Grouped by `--by`: `data.noise_std`. Runs of one group also differ in `prompt.num_tokens`." in markdown
    assert main([str(tmp_path), "--output", str(tmp_path / "u"), "--by", "nope"]) == 2
    assert "--by 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_table_of_a_2x2_multirun(tmp_path, monkeypatch, capsys):
    from fftprompt.cli import train_main

    sweep = tmp_path / "multirun"
    monkeypatch.chdir(tmp_path)
    model = [o for o in TINY_MODEL if not o.startswith(("prompt.", "adapter."))]
    overrides = [*model, *QUIET, *TINY_SYMMETRY, "adapter=none", "prompt.num_tokens=2", "trainer.max_epochs=1"]
    argv = ["fftprompt-train", "-m", "prompt=vpt,vfpt", "seed=1,2", *overrides, f"hydra.sweep.dir={sweep}"]
    monkeypatch.setattr("sys.argv", argv)
    train_main()
    metrics = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert sorted(metrics) == [0, 1, 2, 3]  # Hydra's job order: vpt seed 1, vpt seed 2, vfpt seed 1, vfpt seed 2
    # an interrupted run (config, no metrics) and one that failed before writing its config
    shutil.copytree(sweep / "0", sweep / "4", ignore=shutil.ignore_patterns("metrics.json"))
    (sweep / "5").mkdir()
    (sweep / "5" / "cli.log").write_text("[INFO] - Seed set to 1\n")  # the job's log: Hydra started it

    out = tmp_path / "table"
    assert main([str(sweep), "--output", str(out)]) == 0
    capsys.readouterr()
    with (out / "comparison.csv").open(newline="") as file:
        rows = {row["method"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"VPT shallow", "VFPT"}
    for method, jobs in (("VPT shallow", (0, 1)), ("VFPT", (2, 3))):
        row, runs = rows[method], [metrics[j] for j in jobs]
        assert row["n"] == "2" and row["seeds"] == "1 2"
        for key in ("test/acc", "test/f1_macro", "test/auroc"):
            values = [r[key] for r in runs]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert row["trainable_params"] == str(runs[0]["trainable_params"]) == str(runs[1]["trainable_params"])
    assert int(rows["VFPT"]["trainable_params"]) != int(rows["VPT shallow"]["trainable_params"])
    markdown = (out / "comparison.md").read_text()
    vfpt_acc = [metrics[j]["test/acc"] for j in (2, 3)]
    expected = f"{statistics.fmean(vfpt_acc):.3f} ± {statistics.stdev(vfpt_acc):.3f}"
    (line,) = [line for line in markdown.splitlines() if line.startswith("| VFPT |")]
    assert line.split(" | ")[1:4] == ["2", "1, 2", expected]
    assert "Grouped by the settings that differ: `method`;" in markdown
    not_compared = markdown.split("## Not compared")[1].split("## Runs")[0]
    assert f"`{sweep / '4'}` | unfinished" in not_compared and f"`{sweep / '5'}` | failed" in not_compared
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an earlier comparison is not replaced silently
    assert main([str(sweep), "--output", str(out)]) == 2
    assert "earlier comparison" in capsys.readouterr().err
    assert main([str(sweep), "--output", str(out), "--overwrite", "--metric", "test/f1_macro"]) == 0
    assert main([str(tmp_path / "nowhere")]) == 2
