"""fftprompt-robustness: the study's runs, reuse of finished runs, tables and the document."""

from __future__ import annotations

import json

import pytest

from fftprompt.study import main
from fftprompt.study.cli import parse_args
from fftprompt.study.tables import goal_check, summarise

QUICK = ["--quick", "--epochs", "1", "--methods", "vpt_shallow", "--seeds", "0", "--corruptions", "jpeg"]


@pytest.mark.slow
def test_the_study_trains_evaluates_reuses_and_keeps_the_discussion(tmp_path, capsys):
    output, doc = tmp_path / "out", tmp_path / "robustness.md"
    args = [*QUICK, "--datasets", "shift", "--augments", "none,fda", "--severities", "1", "--output", str(output)]
    assert main([*args, "--doc", str(doc)]) == 0
    report = json.loads((output / "robustness.json").read_text())
    runs = report["runs"]
    assert [(r["augment"], r["reused"]) for r in runs] == [("none", False), ("fda", False)]
    for run in runs:
        assert set(run["domains"]) == {"palette", "acquisition", "texture"}
        assert all(0 <= v <= 1 for v in [run["in_domain"], run["corruption_mean"], *run["domains"].values()])
        metrics = json.loads(
            (output / "evals/shift/vpt_shallow" / run["augment"] / "seed0/corruptions/metrics.json").read_text()
        )
        assert metrics["test/corruption/jpeg/1/acc"] == run["corruptions"]["jpeg"]["1"]
    text = doc.read_text()
    assert (
        "Backbone: the randomly initialised demo ViT" in text and "## Goal" in text and "| VPT shallow | FDA |" in text
    )
    doc.write_text(text + "\n## Discussion\n\nhand-written notes\n")
    assert main([*args, "--doc", str(doc)]) == 0  # everything reused, the discussion kept
    again = json.loads((output / "robustness.json").read_text())
    assert all(r["reused"] for r in again["runs"]) and [r["in_domain"] for r in again["runs"]] == [
        r["in_domain"] for r in runs
    ]
    assert doc.read_text().endswith("## Discussion\n\nhand-written notes\n")


def test_summary_and_goal_check_over_seeds():
    def run(augment, seed, in_domain, cross):
        return {
            "dataset": "shift",
            "method": "fft_shallow",
            "augment": augment,
            "seed": seed,
            "in_domain": in_domain,
            "domains": {"a": cross, "b": cross},
            "corruption_mean": 0.5,
            "corruption_drop": 0.1,
            "trainable_params": 10,
        }

    runs = [
        run("none", 0, 0.70, 0.40),
        run("none", 1, 0.72, 0.42),
        run("fda", 0, 0.70, 0.47),
        run("fda", 1, 0.71, 0.47),
    ]
    rows = summarise(runs)
    assert rows[0]["in_domain"][0] == pytest.approx(0.71) and rows[1]["cross_domain"][0] == pytest.approx(0.47)
    (check,) = goal_check(rows)
    assert check["gain"] == pytest.approx(0.06) and check["in_change"] == pytest.approx(-0.005) and check["met"]
    runs[2]["in_domain"] = 0.68  # now loses 1.5 points in-domain
    assert not goal_check(summarise(runs))[0]["met"]


def test_bad_options_are_usage_errors(capsys, monkeypatch):
    for options, message in [
        (["--corruptions", "fog"], "unknown ['fog']"),
        (["--severities", "0"], "0 is not an integer from 1 to 5"),
        (["--datasets", "imagenet"], "--datasets 'imagenet'"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(options)
        assert message in capsys.readouterr().err
    monkeypatch.delenv("FFTPROMPT_SAMPLE_DATA", raising=False)
    assert main(["--datasets", "dtd", "--quick", "--output", "/nonexistent/out"]) == 2
    assert "needs the sample data" in capsys.readouterr().err


def test_no_op_corruptions_are_named_in_the_document():
    from fftprompt.study.tables import _no_op_note

    record = {"dataset": "shift", "corruptions": {"gaussian_blur": {"1": None, "3": 0.4}, "jpeg": {"1": 0.5}}}
    note = _no_op_note([record, {**record, "dataset": "dtd", "corruptions": {"jpeg": {"1": 0.5}}}])
    assert note == (
        " No-ops at the image size, not tested and left out of *corrupted* and *drop* (shift: gaussian_blur 1): "
        "they change no pixel by half an 8-bit level."
    )
    assert _no_op_note([{"dataset": "dtd", "corruptions": {"jpeg": {"1": 0.5}}}]) == ""
