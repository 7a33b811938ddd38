"""Checkpoint selection by a linear probe (``fftprompt.pretrain.ProbeSelection``, ``fftprompt-pretrain
selection=probe``): only the train and validation splits are read, the best step's weights are the ones written (not
the last), the curve and the best weights survive a resume, and the model card shows the selection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import Subset

from fftprompt.backbone import create_pretraining_vit, normalisation
from fftprompt.data import ImageFolderDataModule
from fftprompt.data.datasets import FileClassificationDataset
from fftprompt.pretrain import ProbeSelection
from test_pretrain import TINY_PRETRAIN, TINY_VIT

NAME = "vit_demo_patch8_fractaldb_supervised"


def write_folder(root: Path, per_class: int = 6, unreadable_test: bool = True) -> Path:
    """``root/{train,val,test}/{dark,bright}/*.png`` of 32 px; the test images are not images at all."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for label, base in (("dark", 40), ("bright", 200)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                path = folder / f"{i}.png"
                if split == "test" and unreadable_test:
                    path.write_bytes(b"not an image " + bytes([i]))
                    continue
                pixels = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(path)
    return root


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_pretraining_vit("vit_demo_patch8", num_classes=4, **TINY_VIT)


def folder_data(root: Path, model, module=ImageFolderDataModule, **kwargs):
    mean, std = normalisation(model)
    return module(root, image_size=32, mean=mean, std=std, augment=False, **kwargs)


def test_the_probe_reads_train_and_val_only_and_leaves_the_model_as_it_was(tmp_path, monkeypatch):
    model = tiny_vit()
    data = folder_data(write_folder(tmp_path / "images"), model)
    read: list[str] = []
    get_item = FileClassificationDataset.__getitem__

    def spy(self, index):
        read.append(self.image_files[index].parent.parent.name)  # images/<split>/<class>/<file>
        return get_item(self, index)

    monkeypatch.setattr(FileClassificationDataset, "__getitem__", spy)
    selection = ProbeSelection({"tiny": data}, every_n_steps=2, batch_size=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entry = selection.evaluate(model, 0, images_seen=0)
    assert sorted(set(read)) == ["train", "val"] and len(read) == 24
    with pytest.raises(Exception, match="cannot identify image"):  # the test images do not decode
        data.dataset("test")[0]
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(entry) == {"step", "images_seen", "val_accuracy", "weight_decay", "score", "seconds"}
    assert 0 <= entry["val_accuracy"]["tiny"] <= 1 and entry["score"] == entry["val_accuracy"]["tiny"]
    assert entry["weight_decay"]["tiny"] in selection.weight_decays
    assert selection.best is entry and selection.describe()["data"]["tiny"]["split_sizes"] == {"train": 12, "val": 12}


class WithoutValidation(ImageFolderDataModule):
    def _build(self):
        datasets, class_names = super()._build()
        return {**datasets, "val": Subset(datasets["val"], [])}, class_names


def test_bad_selection_data_is_a_one_line_error_naming_the_entry(tmp_path):
    model = tiny_vit()
    root = write_folder(tmp_path / "images")
    no_val = folder_data(root, model, module=WithoutValidation)
    with pytest.raises(ValueError, match=r"^selection\.data\.flat: .*val split is empty$"):
        ProbeSelection({"flat": no_val}).prepare()
    with pytest.raises(ValueError, match=r"selection\.data\.flat: augment=true"):
        ProbeSelection({"flat": ImageFolderDataModule(root, augment=True)})
    with pytest.raises(ValueError, match=r"selection\.data\.flat: images normalised with mean"):
        ProbeSelection({"flat": ImageFolderDataModule(root, augment=False)}).prepare(*normalisation(model))


def test_equal_scores_keep_the_earlier_step_and_the_state_round_trips_weights_only(tmp_path, monkeypatch):
    model = tiny_vit()
    selection = ProbeSelection({"tiny": folder_data(write_folder(tmp_path / "images"), model)})
    scores = iter([0.5, 0.7, 0.7, 0.6])
    monkeypatch.setattr(
        ProbeSelection, "measure", lambda self, m, d: {"val_accuracy": {"tiny": next(scores)}, "weight_decay": {}}
    )
    kept = {}
    for step in range(4):
        with torch.no_grad():
            model.head.bias.fill_(step)
        kept[step] = model.head.bias.clone()
        selection.evaluate(model, step)
    assert selection.best["step"] == 1 and torch.equal(selection.best_state_dict["head.bias"], kept[1])
    torch.save(selection.state_dict(), tmp_path / "state.pt")
    restored = ProbeSelection({"tiny": folder_data(tmp_path / "images", model)})
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.curve == selection.curve and restored.best == selection.best
    assert restored.load_best(model)["step"] == 1 and torch.equal(model.head.bias, kept[1])


# -- fftprompt-pretrain selection=... --------------------------------------------------------------------------------


def fake_measure(scores: list[float], seen: dict[int, dict[str, torch.Tensor]]):
    """A scripted probe: the i-th evaluation of a run (resumed runs included) scores ``scores[i]``; records weights."""

    def measure(self, model, device="cpu"):
        index = len(self.curve)
        seen[index] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"val_accuracy": {"tiny": scores[index]}, "weight_decay": {"tiny": 0.01}}

    return measure


def selection_config(output_dir: Path, images: Path, *overrides: str):
    from fftprompt.run import compose

    data = f"{{_target_:fftprompt.data.ImageFolderDataModule,root:{images},image_size:32}}"
    selection = ["selection=probe", "~selection.data", f"+selection.data={{tiny:{data}}}", "selection.every_n_steps=2"]
    return compose([*TINY_PRETRAIN, *selection, f"paths.output_dir={output_dir}", *overrides], config_name="pretrain")


@pytest.mark.slow
def test_pretraining_writes_the_chosen_steps_weights_and_the_card_section(tmp_path, monkeypatch):
    from fftprompt.run import pretrain

    seen: dict[int, dict[str, torch.Tensor]] = {}
    monkeypatch.setattr(ProbeSelection, "measure", fake_measure([0.3, 0.9, 0.6], seen))  # steps 0, 2, 3
    images = write_folder(tmp_path / "images")
    card, objects = pretrain(selection_config(tmp_path / "run", images))
    assert [e["step"] for e in card["selection"]["curve"]] == [0, 2, 3] and card["steps"] == 3
    assert [e["images_seen"] for e in card["selection"]["curve"]] == [0, 16, 24]
    written = load_file(objects["paths"]["weights"])
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(written[key], seen[1][key].half()) and not torch.equal(written[key], seen[2][key].half())
    saved = json.loads(objects["paths"]["json"].read_text())["selection"]
    assert saved["chosen_step"] == 2 and saved["chosen_score"] == 0.9 and saved["chosen_on"] == "val"
    assert saved["data"]["tiny"] == {
        "module": "ImageFolderDataModule",
        "root": str(images),
        "image_size": 32,
        "classes": 2,
        "split_sizes": {"train": 12, "val": 12},
    }
    markdown = objects["paths"]["markdown"].read_text()
    assert "## Checkpoint selection" in markdown and "**validation split**" in markdown
    assert (
        "| step | images seen | tiny val acc | score |" in markdown
        and "| 2 (chosen) | 16 | 0.9000 | 0.9000 |" in markdown
    )


@pytest.mark.slow
def test_a_resumed_run_keeps_the_curve_and_the_best_weights(tmp_path, monkeypatch):
    from fftprompt.run import pretrain

    images = write_folder(tmp_path / "images")
    seen: dict[int, dict[str, torch.Tensor]] = {}
    monkeypatch.setattr(ProbeSelection, "measure", fake_measure([0.3, 0.9, 0.6], seen))
    every_2 = "callbacks.model_checkpoint.every_n_train_steps=2"
    whole, _ = pretrain(selection_config(tmp_path / "a", images, every_2))
    checkpoint = tmp_path / "c" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "last.ckpt", checkpoint)  # after step 2: curve [0, 2], best step 2
    stored = torch.load(checkpoint, weights_only=True)
    assert stored["global_step"] == 2 and [e["step"] for e in stored["callbacks"]["ProbeSelection"]["curve"]] == [0, 2]
    seen.clear()
    resumed, objects = pretrain(selection_config(tmp_path / "c", images, "ckpt_path=last"))
    assert list(seen) == [2]  # only step 3 was probed again
    assert resumed["selection"]["curve"] == [
        {**entry, "seconds": resumed["selection"]["curve"][i]["seconds"]}
        for i, entry in enumerate(whole["selection"]["curve"])
    ]
    digest = {run: (tmp_path / run / f"{NAME}.sha256").read_text().split()[0] for run in ("a", "c")}
    assert resumed["selection"]["chosen_step"] == 2 and digest["a"] == digest["c"]


@pytest.mark.slow
def test_the_shipped_probe_option_on_the_sample_data(tmp_path, sample_data):
    from fftprompt.run import compose, pretrain

    base = [*TINY_PRETRAIN, "selection=probe", f"paths.output_dir={tmp_path / 'run'}"]
    with pytest.raises(ValueError, match=r"selection\.data\.dtd: root missing; pass selection\.data\.dtd\.root="):
        pretrain(compose(base, config_name="pretrain"))
    roots = [
        f"selection.data.dtd.root={sample_data / 'dtd_300'}",
        f"selection.data.breastmnist.root={sample_data / 'medmnist'}",
    ]
    card, objects = pretrain(compose([*base, *roots, "selection.max_images_per_split=24"], config_name="pretrain"))
    selection = card["selection"]
    assert [e["step"] for e in selection["curve"]] == [0, 3] and set(selection["curve"][0]["val_accuracy"]) == {
        "dtd",
        "breastmnist",
    }
    assert selection["data"]["dtd"]["split_sizes"] == {"train": 24, "val": 24}
    assert "## Checkpoint selection" in objects["paths"]["markdown"].read_text()
