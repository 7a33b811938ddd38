"""Run reports: atomic metrics.json, figures from a CSV history, report.md, console summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib import image as mpimg

from fftprompt.report import (
    plot_confusion_matrix,
    plot_learning_curves,
    plot_segmentation_samples,
    print_summary,
    read_metrics_csv,
    write_json_atomic,
    write_report,
)
from fftprompt.utils import write_section

CSV = """epoch,lr/head,step,train/acc,train/loss_epoch,train/loss_step,val/acc,val/loss
0,0.01,0,,,2.0,,
0,,1,,,1.5,,
0,,1,,,,0.5,1.4
0,,1,0.4,1.7,,,
1,0.005,2,,,1.0,,
1,,3,,,0.8,,
1,,3,,,,0.75,0.9
1,,3,0.7,0.9,,,
"""


def history(tmp_path, text: str = CSV):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    return path


def assert_png(path):
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something was drawn


def test_write_json_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"test/acc": torch.tensor(0.5), "bad": float("nan"), "shape": (2, 3)})
    assert json.loads(path.read_text()) == {"test/acc": 0.5, "bad": "nan", "shape": [2, 3]}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_write_json_atomic_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_read_metrics_csv_drops_blank_cells(tmp_path):
    series = read_metrics_csv(history(tmp_path))
    assert series["val/acc"] == [(1, 0, 0.5), (3, 1, 0.75)]
    assert [value for _, _, value in series["train/loss_step"]] == [2.0, 1.5, 1.0, 0.8]


def test_learning_curves_figure(tmp_path):
    path = plot_learning_curves([history(tmp_path)], tmp_path / "curves.png")
    assert_png(path)
    no_training = tmp_path / "test_only.csv"
    no_training.write_text("epoch,step,test/acc\n0,0,0.5\n")
    assert plot_learning_curves([no_training], tmp_path / "none.png") is None


def test_confusion_and_segmentation_figures(tmp_path):
    confusion = torch.tensor([[5, 1, 0], [0, 6, 0], [2, 0, 4]])
    assert_png(plot_confusion_matrix(confusion, ["a", "b", "c"], tmp_path / "confusion.png"))
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(confusion, ["a", "b"], tmp_path / "bad.png")
    images = torch.randn(3, 3, 32, 32)
    targets = torch.zeros(3, 32, 32, dtype=torch.long)
    targets[:, 8:24, 8:24] = 1
    predictions = torch.roll(targets, 4, dims=-1)
    path = plot_segmentation_samples(
        images, targets, predictions, tmp_path / "masks.png", mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=2
    )
    assert_png(path)


def test_write_report_writes_metrics_and_links_existing_figures(tmp_path):
    metrics = {"test/acc": 0.75, "trainable_params": 1234, "train_seconds": 1.5}
    report = write_report(
        tmp_path,
        metrics,
        summary={"data": "SymmetryDataModule", "seed": 1},
        history_csv=[history(tmp_path)],
        confusion=torch.eye(2, dtype=torch.long) * 3,
        class_names=["x", "y"],
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc"] == 0.75 and saved["config"] == {"data": "SymmetryDataModule", "seed": 1}
    text = report.read_text()
    assert "| `test/acc` | 0.7500 |" in text and "| `trainable_params` | 1,234 |" in text
    links = [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert sorted(links) == ["figures/confusion.png", "figures/learning_curves.png"]
    assert all((tmp_path / link).is_file() for link in links)


def test_print_summary(capsys):
    print_summary({"test/acc": 0.123456, "trainable_params": 42, "config": {"x": 1}}, "runs/x/report.md")
    out = capsys.readouterr().out
    assert "test/acc" in out and "0.1235" in out and "42" in out and "runs/x/report.md" in out
    assert "config" not in out


def test_write_section_replaces_only_its_own_section(tmp_path: Path):
    doc = tmp_path / "docs" / "page.md"
    write_section(doc, "a", "# A\n\nfirst\n")
    assert doc.read_text().count("first") == 1
    doc.write_text(doc.read_text() + "\n## Discussion\n\nby hand\n")
    write_section(doc, "b", "## B\n\nother\n")
    write_section(doc, "a", "# A\n\nsecond\n")
    text = doc.read_text()
    assert "first" not in text and text.index("second") < text.index("by hand") < text.index("other")
    assert text.count("<!-- begin generated: a ") == 1 and text.count("<!-- end generated: b -->") == 1
    plain = tmp_path / "plain.md"
    plain.write_text("kept\n")
    write_section(plain, "a", "new")
    assert plain.read_text().startswith("kept\n\n<!-- begin generated: a ")
    plain.write_text("<!-- begin generated: a (x) -->\nno end\n")
    with pytest.raises(ValueError, match=r"plain\.md: the section 'a' has no end marker"):
        write_section(plain, "a", "new")
