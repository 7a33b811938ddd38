"""Data inputs that used to give silent wrong results or misleading errors (issue 15, data half).

Each case goes through the configs a user selects (``fftprompt.run.compose`` with the overrides of the command line,
then the data module the config names, set up as a run sets it up) or through ``fftprompt.run.train``. The section
"Data inputs" of docs/reliability.md lists each case with its message and the test here that covers it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from conftest import QUIET, REPO_ROOT, TINY_MODEL
from fftprompt.data import DataWarning, read_mask
from fftprompt.data.base import SPLITS
from fftprompt.data.checks import find_cross_split_duplicates
from fftprompt.run import compose, train

DATA_README = REPO_ROOT / "data" / "README.md"


def data_overrides(name: str, root: Path | str, *extra: str) -> list[str]:
    """Overrides selecting ``data=name`` at ``root`` (32 px images, no augmentation, no workers), then ``extra``."""
    common = ["data.image_size=32", "data.num_workers=0", "data.augment=false"]
    return [f"data={name}", f"data.root={root}", *common, *extra]


def setup_from(overrides: list[str]):
    """The data module the config composed from ``overrides`` names, set up as a run does before training."""
    cfg = compose([*overrides, "paths.output_dir=unused"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


def setup_data(name: str, root: Path | str, *extra: str):
    """The data module of ``data=name`` at ``root`` with ``extra`` overrides, set up."""
    return setup_from(data_overrides(name, root, *extra))


def write_image(path: Path, seed: int, size: tuple[int, int] = (32, 32)) -> Path:
    """A random RGB image (distinct for distinct seeds), format from the suffix."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def disc(seed: int, size: int = 64) -> np.ndarray:
    """A boolean ``(size, size)`` disc whose centre and radius depend on ``seed``."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    radius = rng.integers(size // 6, size // 4)
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2


def write_seg_folder(root: Path, values: np.ndarray | None = None, suffix: str = ".png", count: int = 6, **save):
    """``root/images/<k>.png`` with masks ``root/masks/<k><suffix>``: disc ``k`` coded as ``values[truth]``."""
    values = np.array([0, 255], np.uint8) if values is None else values
    truths = {}
    for k in range(count):
        write_image(root / "images" / f"{k}.png", seed=k, size=(64, 64))
        truth = disc(k)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(values[truth.astype(np.int64)]).save(root / "masks" / f"{k}{suffix}", **save)
        truths[k] = truth
    return truths


def masks_by_file(datamodule) -> dict[str, torch.Tensor]:
    """Every mask of every split as training reads it (before resizing), by image file stem."""
    found = {}
    for split in SPLITS:
        dataset = datamodule.dataset(split)
        for image_path, mask_path in dataset.pairs:
            found[image_path.stem] = dataset.read_target(mask_path)
    return found


# ---------------------------------------------------------------------------------------------- mask codings


def test_jpeg_masks_holding_class_indices_stop_the_run_before_training(tmp_path):
    """0/1 masks saved as JPEG read 0/1/2; thresholded at 128 they were all background (Dice 0, no warning)."""
    root = tmp_path / "seg"
    truths = write_seg_folder(root, np.array([0, 1], np.uint8), ".jpg", quality=75)
    noisy = np.asarray(Image.open(root / "masks" / "0.jpg"))
    assert set(np.unique(noisy).tolist()) == {0, 1, 2}  # what the issue found: JPEG noise on 0/1
    run = tmp_path / "run"
    cfg = compose([*TINY_MODEL, *QUIET, "logger=none", *data_overrides("seg_folder", root), f"paths.output_dir={run}"])
    message = (
        r"mask file .*/masks/\d\.jpg is a JPEG holding only small values \(0\.\.2, all below mask_threshold=128\): "
        r"class indices saved with lossy compression .* pass mask_threshold=1 \(data\.mask_threshold=1\)"
    )
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()
    # the fix the message gives reads them: foreground where the value is at least 1
    masks = masks_by_file(setup_data("seg_folder", root, "data.mask_threshold=1"))
    assert len(masks) == 6
    for k, truth in truths.items():
        read = masks[str(k)].numpy().astype(bool)
        # Dice against the drawn disc: the compression has moved the borders (exact masks need lossless files)
        assert 2 * (read & truth).sum() / (read.sum() + truth.sum()) > 0.75
    # Kvasir-SEG's genuine 0/255 JPEG masks keep reading at 128 (the sample data checks them on real files)
    kvasir = tmp_path / "kvasir"
    write_seg_folder(kvasir, np.array([0, 255], np.uint8), ".jpg", quality=75)
    for k, mask in masks_by_file(setup_data("seg_folder", kvasir)).items():
        assert (mask.numpy().astype(bool) != disc(int(k))).mean() < 0.02


def test_lossless_mask_codings_are_read_or_refused_by_what_they_hold(tmp_path):
    truth = disc(3)
    # unambiguous: two values 0/v (any v below the threshold), 8- or 16-bit, lossless
    for name, array in {
        "zero_one.png": truth.astype(np.uint8),
        "zero_hundred.png": truth.astype(np.uint8) * 100,
        "zero_one_16.png": truth.astype(np.uint16),
    }.items():
        Image.fromarray(array).save(tmp_path / name)
        np.testing.assert_array_equal(read_mask(tmp_path / name).numpy(), truth, err_msg=name)
    # several small values are class indices: not a binary mask
    three = np.where(np.arange(64)[None, :] >= 56, 2, truth).astype(np.uint8)  # classes 0, 1, 2
    Image.fromarray(three).save(tmp_path / "three.png")
    with pytest.raises(ValueError, match=r"three\.png holds only small values \[0, 1, 2\] .* data\.mask_mode=index"):
        read_mask(tmp_path / "three.png")
    # index masks must be lossless
    Image.fromarray(three).save(tmp_path / "three.jpg", quality=95)
    with pytest.raises(ValueError, match=r"three\.jpg is a JPEG: lossy compression changes class indices"):
        read_mask(tmp_path / "three.jpg", mode="index")
    root = tmp_path / "index"
    write_seg_folder(root, np.array([0, 1], np.uint8), ".jpg", quality=95)
    with pytest.raises(ValueError, match=r"masks/\d\.jpg is a JPEG: lossy compression"):
        setup_data("seg_folder", root, "data.mask_mode=index", "data.class_names=[bg,fg]")


def test_masks_that_are_all_background_warn_before_training(tmp_path):
    """Masks exported empty, or 0/1 masks so compressed that the foreground is gone, used to train silently."""
    root = tmp_path / "seg"
    write_seg_folder(root, np.array([0, 0], np.uint8), ".jpg", quality=75)
    with pytest.warns(DataWarning, match=r"none of the 6 masks checked \(of 6, e\.g\. .*\.jpg\) has a foreground"):
        setup_data("seg_folder", root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup_data("seg_folder", root, "data.invert_masks=true")  # all foreground: no warning


@pytest.mark.parametrize("name", ["seg_folder", "kvasir_seg", "isic2018"])
def test_invert_masks_swaps_foreground_and_background(tmp_path, name):
    """Masks whose white part is the background (EM membranes drawn black on white cells) can be inverted."""
    root = tmp_path / "data"
    files = {
        "seg_folder": ("images/{k}.png", "masks/{k}.png"),
        "kvasir_seg": ("images/{k}.jpg", "masks/{k}.png"),
        "isic2018": ("ISIC_{k:07d}.jpg", "ISIC_{k:07d}_segmentation.png"),
    }[name]
    for k in range(6):
        write_image(root / files[0].format(k=k), seed=k, size=(64, 64))
        (root / files[1].format(k=k)).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(disc(k), 0, 255).astype(np.uint8)).save(root / files[1].format(k=k))  # white: cells
    assert compose([*data_overrides(name, root), "paths.output_dir=unused"]).data.invert_masks is False
    plain = masks_by_file(setup_data(name, root))
    inverted = masks_by_file(setup_data(name, root, "data.invert_masks=true"))
    for stem, mask in inverted.items():
        k = int(stem.removeprefix("ISIC_"))
        np.testing.assert_array_equal(mask.numpy(), disc(k))
        np.testing.assert_array_equal(plain[stem].numpy(), ~disc(k))
    if name == "seg_folder":
        with pytest.raises(InstantiationException, match=r"invert_masks=True applies to binary masks"):
            setup_data(name, root, "data.invert_masks=true", "data.mask_mode=index", "data.class_names=[a,b]")


# ---------------------------------------------------------------------------------------------- classes


def write_class_folder(root: Path, counts: dict[str, int], first_seed: int = 0) -> Path:
    seed = first_seed
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            write_image(root / name / f"{k}.png", seed=seed)
            seed += 1
    return root


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    """An empty folder used to be a phantom class: num_classes counted it, no image had it."""
    root = write_class_folder(tmp_path / "flat", {"cat": 5, "dog": 5, "empty": 0})
    (root / "empty" / ".DS_Store").write_bytes(b"x")  # hidden files are no images
    message = r"1 of 3 class folders hold no image files: .*flat/empty; an empty folder would still count as a class"
    with pytest.raises(ValueError, match=message):
        setup_data("image_folder", root)
    split = tmp_path / "split"
    write_class_folder(split / "train", {"cat": 5, "dog": 5, "empty": 0})
    write_class_folder(split / "test", {"cat": 2, "dog": 2}, first_seed=100)
    with pytest.raises(ValueError, match=r"class folders hold no image files: .*split/train/empty"):
        setup_data("image_folder", split)
    dtd = tmp_path / "dtd"
    write_class_folder(dtd / "images", {"banded": 3, "dotted": 3, "veined": 0})
    with pytest.raises(ValueError, match=r"1 of 3 class folders hold no image files: .*images/veined"):
        setup_data("dtd", dtd)
    kth = tmp_path / "kth"
    for m, material in enumerate(("cork", "wool", "linen")):
        for s in "abcd":
            folder = kth / material / f"sample_{s}"
            folder.mkdir(parents=True)
            if material != "linen":
                write_image(folder / "1.png", seed=10 * m + ord(s))
    with pytest.raises(ValueError, match=r"1 of 3 class folders hold no image files: .*kth/linen"):
        setup_data("kth_tips2", kth)


def test_a_class_too_small_for_every_split_is_named_with_its_counts(tmp_path):
    """A class of one image went to train only; the test metrics then covered a class with no test image."""
    root = write_class_folder(tmp_path / "flat", {"cat": 10, "dog": 10, "rare": 1})
    message = (
        r"1 class\(es\) missing from a split: 'rare' \(1 image: train 1, val 0, test 0\); the metrics of those "
        r"splits .*\(a split by seed needs at least 3 per class"
    )
    with pytest.warns(DataWarning, match=message):
        datamodule = setup_data("image_folder", root)
    assert datamodule.num_classes == 3
    # a class with no training image at all cannot be learned: an error
    split = tmp_path / "split"
    write_class_folder(split / "train", {"cat": 6, "dog": 6})
    write_class_folder(split / "test", {"cat": 2, "dog": 2}, first_seed=100)
    write_class_folder(split / "val", {"cat": 2, "dog": 2}, first_seed=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup_data("image_folder", split)  # every class in every split: silent
    write_class_folder(split / "test", {"bird": 2}, first_seed=300)  # a class without training images
    with pytest.raises(ValueError, match=r"bird is not among the training classes"):
        setup_data("image_folder", split)
    # MedMNIST: a label with no image (e.g. class_names one too many) would be a phantom class
    npz = tmp_path / "medmnist" / "breastmnist.npz"
    npz.parent.mkdir()
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8) for s in SPLITS}
    arrays.update({f"{s}_labels": np.arange(6) % 2 for s in SPLITS})
    np.savez(npz, **arrays)
    with pytest.raises(ValueError, match=r"1 of 3 classes have no images in any split: 'c' \(label 2\)"):
        setup_data("medmnist", npz.parent, "data.class_names=[a,b,c]")
    arrays["train_labels"] = np.array([0, 0, 0, 1, 1, 1])
    arrays["test_labels"] = np.array([0, 0, 2, 2, 2, 2])
    np.savez(npz, **arrays)
    with pytest.raises(
        ValueError, match=r"1 class\(es\) have no train images, .*'c' \(4 images: train 0, val 0, test 4\)"
    ):
        setup_data("medmnist", npz.parent, "data.class_names=[a,b,c]")


# ---------------------------------------------------------------------------------------------- duplicates


def test_an_image_in_two_splits_warns_with_a_count_and_an_example(tmp_path):
    """A symbolic link or a byte-identical copy in the test split of a training image used to pass unnoticed."""
    root = tmp_path / "split"
    write_class_folder(root / "train", {"cat": 4, "dog": 4})
    write_class_folder(root / "val", {"cat": 2, "dog": 2}, first_seed=100)
    write_class_folder(root / "test", {"cat": 2, "dog": 2}, first_seed=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # distinct images: no warning
        setup_data("image_folder", root)
    (root / "test" / "cat" / "link.png").symlink_to(root / "train" / "cat" / "0.png")
    shutil.copy(root / "train" / "dog" / "1.png", root / "test" / "dog" / "copy.png")
    shutil.copy(root / "val" / "cat" / "0.png", root / "test" / "cat" / "from_val.png")
    message = (
        r"3 image file\(s\) of the val or test split are the same image as a file of an earlier split \(a link to the "
        r"same file or identical bytes\), e\.g\. test .*test/cat/from_val\.png and val .*val/cat/0\.png"
    )
    with pytest.warns(DataWarning, match=message):
        setup_data("image_folder", root)
    # segmentation: the images (not the masks, which often repeat) are compared
    isic = tmp_path / "isic"
    for folder, first in (("Training", 0), ("Validation", 100), ("Test", 200)):
        for k in range(first, first + 4):
            write_image(isic / f"ISIC2018_Task1-2_{folder}_Input" / f"ISIC_{k:07d}.jpg", seed=k, size=(64, 64))
            mask = (disc(0) * 255).astype(np.uint8)  # the same mask everywhere
            path = isic / f"ISIC2018_Task1_{folder}_GroundTruth" / f"ISIC_{k:07d}_segmentation.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup_data("isic2018", isic)
    shutil.copy(
        isic / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000002.jpg",
        isic / "ISIC2018_Task1-2_Test_Input" / "ISIC_0000201.jpg",
    )
    with pytest.warns(
        DataWarning, match=r"1 image file\(s\) .* e\.g\. test .*ISIC_0000201\.jpg and train .*ISIC_0000002\.jpg"
    ):
        setup_data("isic2018", isic)


def test_duplicate_search_reads_only_files_of_equal_size(tmp_path):
    """Equal-size files that differ (e.g. uncompressed images of one size) are not duplicates; large files are
    compared in full, not only by their first bytes."""
    head = bytes(1 << 16)
    files = {
        "a": tmp_path / "a.bin",
        "b": tmp_path / "b.bin",  # same first 64 KiB as a, other tail
        "c": tmp_path / "c.bin",  # identical to a
        "d": tmp_path / "d.bin",  # another size
    }
    files["a"].write_bytes(head + b"tail-1")
    files["b"].write_bytes(head + b"tail-2")
    files["c"].write_bytes(head + b"tail-1")
    files["d"].write_bytes(b"small")
    found = find_cross_split_duplicates({"train": [files["a"], files["d"]], "val": [files["b"]], "test": [files["c"]]})
    assert found == [("train", files["a"], "test", files["c"])]
    assert find_cross_split_duplicates({"train": [files["a"], files["c"]], "val": [], "test": [files["d"]]}) == []


# ---------------------------------------------------------------------------------------------- documented commands


def documented_commands(markdown: Path) -> list[list[str]]:
    """The ``fftprompt-train`` commands of the ``bash`` blocks of ``markdown``, as the shell splits them."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip().startswith("fftprompt-train"):
                line = command.strip().removeprefix("fftprompt-train")
                printed = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, check=True)
                commands.append(printed.stdout.decode().split("\0")[:-1])
    return commands


def write_drive(root: Path, count: int = 6) -> None:
    """DRIVE's training folder: ``images/<n>_training.tif``, ``1st_manual/<n>_manual1.gif``, ``mask/`` (ignored)."""
    for n in range(21, 21 + count):
        write_image(root / "images" / f"{n}_training.tif", seed=n, size=(64, 64))
        (root / "1st_manual").mkdir(parents=True, exist_ok=True)
        Image.fromarray((disc(n) * 255).astype(np.uint8)).convert("P").save(root / "1st_manual" / f"{n}_manual1.gif")
        (root / "mask").mkdir(exist_ok=True)
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "mask" / f"{n}_training_mask.gif")


def test_the_documented_data_commands_compose_and_the_drive_ones_find_every_pair(tmp_path, monkeypatch):
    """data/README.md's DRIVE command used to stop in Hydra's override parser (an unquoted '(')."""
    commands = documented_commands(DATA_README)
    for command in commands:  # Hydra parses every override as the command line would
        cfg = compose([*command, "paths.output_dir=runs/x"])
        assert cfg.data.root == next(a.split("=", 1)[1] for a in command if a.startswith("data.root="))
    drive = [c for c in commands if "data=seg_folder" in c]
    assert len(commands) >= 3 and len(drive) >= 2
    monkeypatch.chdir(tmp_path)  # the documented roots are relative to the launch directory
    write_drive(tmp_path / "data" / "drive" / "training")
    for command in drive:
        datamodule = setup_from(command)
        pairs = [pair for split in SPLITS for pair in datamodule.dataset(split).pairs]
        assert len(pairs) == 6, command
        for image_path, mask_path in pairs:
            assert (
                image_path.name.split("_")[0] == mask_path.name.split("_")[0] and mask_path.parent.name == "1st_manual"
            )
            np.testing.assert_array_equal(read_mask(mask_path).numpy(), disc(int(image_path.name.split("_")[0])))


def test_file_name_templates_pair_like_the_regular_expressions(tmp_path):
    root = tmp_path / "drive"
    write_drive(root)
    regex = ["data.images_dir=images", "data.masks_dir=1st_manual"]
    patterns = [
        (r"'(?P<id>\d+)_training\.tif'", r"'(?P<id>\d+)_manual1\.gif'"),  # Hydra-quoted regular expressions
        ("*_training.tif", "*_manual1.gif"),
        ('"{id}_training.tif"', '"{id}_*.gif"'),  # {id}, and * for any characters
    ]
    found = []
    for image_pattern, mask_pattern in patterns:
        patterns_overrides = [f"data.image_pattern={image_pattern}", f"data.mask_pattern={mask_pattern}"]
        datamodule = setup_data("seg_folder", root, *regex, *patterns_overrides)
        found.append([datamodule.dataset(split).pairs for split in SPLITS])
    assert found[0] == found[1] == found[2] and sum(map(len, found[0])) == 6
    with pytest.raises(InstantiationException, match=r"holds a backslash: a regular expression needs a named group"):
        setup_data("seg_folder", root, r"data.image_pattern=\d+*.tif")
    with pytest.raises(InstantiationException, match=r"holds several '\*' and no \{id\}: mark the id with \{id\}"):
        setup_data("seg_folder", root, "data.image_pattern=*_*.tif")
    with pytest.raises(
        ValueError, match=r"no file in .*images matches image_pattern '\*\.png' \(as a regular expression"
    ):
        setup_data("seg_folder", root, "data.masks_dir=1st_manual", "data.image_pattern=*.png")


# ---------------------------------------------------------------------------------------------- roots and hints


def test_medmnist_root_may_be_the_npz_file(tmp_path):
    """``data.root=<path>/breastmnist.npz`` used to say the existing file 'does not exist'."""
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8) for s in SPLITS}
    arrays.update({f"{s}_labels": np.arange(6) % 2 for s in SPLITS})
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    np.savez(tmp_path / "pathmnist_64.npz", **arrays)
    by_file = setup_data("medmnist", tmp_path / "breastmnist.npz")
    by_folder = setup_data("medmnist", tmp_path)
    assert [len(by_file.dataset(s)) for s in SPLITS] == [len(by_folder.dataset(s)) for s in SPLITS] == [6, 6, 6]
    torch.testing.assert_close(by_file.dataset("test")[3][0], by_folder.dataset("test")[3][0])
    message = (
        r"data root .*pathmnist_64\.npz is a file, but subset='breastmnist' and size=None read breastmnist\.npz: "
        r"set data\.subset=pathmnist data\.size=64 to read this file"
    )
    with pytest.raises(ValueError, match=message):
        setup_data("medmnist", tmp_path / "pathmnist_64.npz")
    assert (
        len(
            setup_data("medmnist", tmp_path / "pathmnist_64.npz", "data.subset=pathmnist", "data.size=64").dataset(
                "train"
            )
        )
        == 6
    )


def test_isic2018_with_other_mask_names_points_to_seg_folder(tmp_path):
    for k in range(4):
        write_image(tmp_path / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{k:07d}.jpg", seed=k)
        write_image(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{k:07d}_mask.png", seed=k)
    message = (
        r"ISIC_0000000\.jpg has no mask \(and 3 more\); ISIC 2018 masks are named ISIC_<id>_segmentation\.png; for "
        r"other file names use data=seg_folder with data\.images_dir, data\.masks_dir, data\.image_pattern"
    )
    with pytest.raises(ValueError, match=message):
        setup_data("isic2018", tmp_path)
    with pytest.raises(ValueError, match=message):
        setup_data("isic2018", tmp_path, "data.on_bad_file=skip")  # nothing pairs: not a warning
    with pytest.raises(ValueError, match=r"other file names: data=seg_folder"):
        setup_data("isic2018", tmp_path / "ISIC2018_Task1_Training_GroundTruth")  # no ISIC_<id>.jpg there
