"""fftprompt-predict: the run's predictions on image files, against fftprompt-eval on the same images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from conftest import eval_test_logits, tiny_config
from fftprompt.predict import predict
from fftprompt.run import train
from fftprompt.rundir import load_run, read_class_names

pytestmark = pytest.mark.slow
NUM_TEST = 12


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    """A finished tiny run: fft prompts + FourierFT on q/v, 12 generated test images."""
    run = tmp_path_factory.mktemp("predict") / "run"
    train(tiny_config(run, "trainer.max_epochs=1"))
    return run


def write_split(run: Path, split: str, folder: Path) -> tuple[list[Path], np.ndarray]:
    """The generated ``split`` images of the run's data as lossless PNG files, and their labels."""
    datamodule = load_run(run).datamodule
    batch = datamodule.generator.generate(split, np.arange(datamodule.split_sizes[split]))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(batch.images):
        paths.append(folder / f"{split}_{index:03d}.png")
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(paths[-1])
    return paths, batch.labels


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_predict_reproduces_the_test_predictions_of_eval(classification_run, tmp_path, monkeypatch):
    paths, labels = write_split(classification_run, "test", tmp_path / "images")
    # what fftprompt-eval computes: the test logits of every batch, in order
    config = tiny_config(tmp_path / "eval", f"adapter_path={classification_run}", name="eval")
    metrics, eval_logits = eval_test_logits(config, monkeypatch)
    assert eval_logits.shape == (NUM_TEST, 6)

    written = predict(classification_run, tmp_path / "images", tmp_path / "out", top_k=3, progress=False)
    rows = read_predictions(written["predictions"])
    names = load_run(classification_run).datamodule.class_names
    assert [Path(r["path"]).name for r in rows] == [p.name for p in paths]
    assert [r["class_1"] for r in rows] == [names[i] for i in eval_logits.argmax(dim=1).tolist()]
    top = eval_logits.softmax(dim=1).topk(3, dim=1)
    assert [[r[f"class_{k}"] for k in (1, 2, 3)] for r in rows] == [
        [names[i] for i in row] for row in top.indices.tolist()
    ]
    probabilities = np.array([[float(r[f"probability_{k}"]) for k in (1, 2, 3)] for r in rows])
    np.testing.assert_allclose(probabilities, top.values.numpy(), rtol=1e-5, atol=1e-7)
    accuracy = np.mean([r["class_1"] == names[label] for r, label in zip(rows, labels, strict=True)])
    assert accuracy == pytest.approx(metrics["test/acc"], abs=1e-6)
    summary = json.loads(written["summary"].read_text())
    assert summary["predicted"] == NUM_TEST and summary["skipped"] == [] and summary["class_names"] == names
    # an earlier prediction is not overwritten silently
    with pytest.raises(ValueError, match="earlier prediction"):
        predict(classification_run, tmp_path / "images", tmp_path / "out", progress=False)


def test_merged_fourierft_gives_the_same_predictions(classification_run, tmp_path):
    write_split(classification_run, "test", tmp_path / "images")
    plain = read_predictions(
        predict(classification_run, tmp_path / "images", tmp_path / "a", progress=False)["predictions"]
    )
    merged = predict(classification_run, tmp_path / "images", tmp_path / "b", merge=True, progress=False)
    merged_rows = read_predictions(merged["predictions"])
    assert [r["class_1"] for r in merged_rows] == [r["class_1"] for r in plain]
    for a, b in zip(plain, merged_rows, strict=True):
        assert float(a["probability_1"]) == pytest.approx(float(b["probability_1"]), abs=1e-5)
    assert json.loads(merged["summary"].read_text())["merged_fourierft"] is True


def test_class_names_from_the_run_indices_or_a_clear_error(classification_run, tmp_path):
    paths, _ = write_split(classification_run, "val", tmp_path / "images")
    indices = read_predictions(
        predict(classification_run, paths[:3], tmp_path / "i", class_names="index", top_k=6, progress=False)[
            "predictions"
        ]
    )
    assert {r[f"class_{k}"] for r in indices for k in range(1, 7)} == {str(i) for i in range(6)}
    # names recorded in adapter.json win over the data module's
    run = tmp_path / "run"
    run.mkdir()
    for name in ("adapter.json", "adapter.safetensors", "config.yaml"):
        (run / name).write_bytes((classification_run / name).read_bytes())
    description = json.loads((run / "adapter.json").read_text())
    description["class_names"] = [f"class-{i}" for i in range(6)]
    (run / "adapter.json").write_text(json.dumps(description))
    assert read_class_names(run) == description["class_names"]
    named = read_predictions(predict(run, paths[:2], tmp_path / "n", progress=False)["predictions"])
    assert all(r["class_1"].startswith("class-") for r in named)
    # no recorded names and no readable data: an error that says what to pass, not indices in silence
    description.pop("class_names")
    (run / "adapter.json").write_text(json.dumps(description))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = {
        "_target_": "fftprompt.data.ImageFolderDataModule",
        "root": str(tmp_path / "gone"),
        "image_size": 32,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="records no class names.*class_names=index"):
        predict(run, paths[:2], tmp_path / "e", progress=False)
    with pytest.raises(ValueError, match="gives 2 class names but the model has 6"):
        predict(run, paths[:2], tmp_path / "e", class_names=["a", "b"], progress=False)


def test_unreadable_files_stop_or_are_skipped_and_counted(classification_run, tmp_path):
    paths, _ = write_split(classification_run, "val", tmp_path / "images")
    bad = tmp_path / "images" / "val_004_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    with pytest.raises(ValueError, match="val_004_broken.png"):
        predict(classification_run, tmp_path / "images", tmp_path / "a", progress=False)
    with pytest.warns(UserWarning, match="skipped 1 of 9"):
        written = predict(
            classification_run, tmp_path / "images", tmp_path / "b", on_bad_file="skip", batch_size=4, progress=False
        )
    rows = read_predictions(written["predictions"])
    assert written["skipped"] == 1 and written["predicted"] == len(rows) == len(paths)
    assert bad.name not in {Path(r["path"]).name for r in rows}
    assert json.loads(written["summary"].read_text())["skipped"][0]["path"] == str(bad)


def test_segmentation_masks_in_the_original_size(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, "data=symmetry_seg", "trainer.max_epochs=1", "data.num_test=4"))
    paths, _ = write_split(run, "test", tmp_path / "images")
    wide = tmp_path / "images" / "sub" / "wide.png"  # another size and a subfolder
    wide.parent.mkdir()
    Image.open(paths[0]).resize((56, 40), Image.BILINEAR).save(wide)
    # the folder holds sub/wide.png too (read with its sub-folders): named twice, predicted once
    written = predict(run, [tmp_path / "images", wide], tmp_path / "out", overlays=2, progress=False)
    assert json.loads(written["summary"].read_text())["predicted"] == 5
    loaded = load_run(run)
    with torch.no_grad():
        dataset = loaded.datamodule.dataset("test")
        expected = loaded.model(torch.stack([dataset[i][0] for i in range(4)])).argmax(dim=1)
        transform = loaded.datamodule.transform("test")
        from torchvision import tv_tensors

        from fftprompt.data.io import read_image

        wide_logits = loaded.model(transform(tv_tensors.Image(read_image(wide)))[None])
        wide_expected = F.interpolate(wide_logits, size=(40, 56), mode="bilinear", align_corners=False).argmax(dim=1)[0]
    for index, path in enumerate(paths):
        mask = np.asarray(Image.open(written["masks"] / path.with_suffix(".png").name))
        assert mask.shape == (32, 32)
        np.testing.assert_array_equal(mask, expected[index].numpy())
    wide_mask = np.asarray(Image.open(written["masks"] / "sub" / "wide.png"))
    assert wide_mask.shape == (40, 56)
    np.testing.assert_array_equal(wide_mask, wide_expected.numpy())
    assert written["overlays"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(written["summary"].read_text())["class_names"] == ["background", "symmetric"]
    # a split of the run's data: its items at the size the run sees them, named by split and index
    split = predict(run, "test:2", tmp_path / "split", overlays=2, progress=False)
    assert sorted(p.name for p in split["masks"].iterdir()) == ["test_00000.png", "test_00003.png"]
    for index in (0, 3):
        mask = np.asarray(Image.open(split["masks"] / f"test_{index:05d}.png"))
        np.testing.assert_array_equal(mask, expected[index].numpy())
    assert split["overlays"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fftprompt_predict_command(classification_run, tmp_path, monkeypatch, capsys):
    from fftprompt.cli import predict_main

    paths, _ = write_split(classification_run, "val", tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cli"
    argv = ["fftprompt-predict", f"run_dir={classification_run}", f"images={tmp_path / 'images'}", f"out_dir={out}"]
    monkeypatch.setattr("sys.argv", [*argv, "progress=false"])
    predict_main()
    assert f"predicted {len(paths)} images: {out / 'predictions.csv'}" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", [*argv, "top_k=0"])
    with pytest.raises(SystemExit) as exit_info:
        predict_main()
    assert exit_info.value.code == 2
    assert "error: top_k=0; expected an integer >= 1" in capsys.readouterr().err


def test_a_split_of_the_run_is_predicted_as_its_files_are(classification_run, tmp_path, monkeypatch, capsys):
    """images=test / test:N / val:N (as fftprompt-explain takes them, and as the error message suggests)."""
    write_split(classification_run, "test", tmp_path / "images")
    files = read_predictions(
        predict(classification_run, tmp_path / "images", tmp_path / "files", progress=False)["predictions"]
    )
    written = predict(classification_run, "test", tmp_path / "split", progress=False)
    rows = read_predictions(written["predictions"])
    assert [r["path"] for r in rows] == [f"test #{i}" for i in range(NUM_TEST)]
    assert [r["class_1"] for r in rows] == [r["class_1"] for r in files]
    np.testing.assert_allclose(
        [float(r["probability_1"]) for r in rows], [float(r["probability_1"]) for r in files], atol=1e-6
    )
    assert json.loads(written["summary"].read_text())["source"] == "test"
    spaced = read_predictions(predict(classification_run, "test:4", tmp_path / "four", progress=False)["predictions"])
    assert [r["path"] for r in spaced] == ["test #0", "test #4", "test #7", "test #11"]
    assert [r["class_1"] for r in spaced] == [files[i]["class_1"] for i in (0, 4, 7, 11)]
    # through the command, as the suggestion is written
    from fftprompt.cli import predict_main

    argv = ["fftprompt-predict", f"run_dir={classification_run}", "images=val:3", f"out_dir={tmp_path / 'cli'}"]
    monkeypatch.setattr("sys.argv", [*argv, "progress=false"])
    predict_main()
    assert "predicted 3 images" in capsys.readouterr().out
    # a bare split name that is also a folder here is ambiguous: said so, with both spellings
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match=r"names both the run's test split and the path \./test.*images=\./test"):
        predict(classification_run, "test", tmp_path / "ambiguous", progress=False)


def test_a_folder_of_class_folders_is_read_with_its_sub_folders(classification_run, tmp_path):
    """Sub-folders used to be left out silently (only the top folder's files were predicted)."""
    paths, _ = write_split(classification_run, "test", tmp_path / "flat")
    tree = tmp_path / "tree"
    for index, path in enumerate(paths):  # one file at the top, the others in two class folders
        target = tree / ("" if index == 0 else "banded" if index % 2 else "dotted") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    flat = {
        Path(r["path"]).name: r
        for r in read_predictions(
            predict(classification_run, tmp_path / "flat", tmp_path / "a", progress=False)["predictions"]
        )
    }
    written = predict(classification_run, tree, tmp_path / "b", progress=False)
    rows = read_predictions(written["predictions"])
    assert len(rows) == NUM_TEST and json.loads(written["summary"].read_text())["predicted"] == NUM_TEST
    relative = sorted(str(Path(r["path"]).relative_to(tree)) for r in rows)
    assert relative == sorted(str(p.relative_to(tree)) for p in tree.rglob("*.png"))
    assert any(name.startswith("banded/") for name in relative) and any(name.startswith("dotted/") for name in relative)
    for row in rows:
        assert row["class_1"] == flat[Path(row["path"]).name]["class_1"]
