"""Real-dataset loaders: the shared real samples, generated fixtures in the genuine layouts, and bad inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fftprompt.data import (
    DataWarning,
    DTDDataModule,
    ImageFolderDataModule,
    ISIC2018DataModule,
    KTHTips2DataModule,
    KvasirSegDataModule,
    MedMNISTDataModule,
    SegFolderDataModule,
)
from fftprompt.data.base import SPLITS

SMALL = dict(image_size=32, batch_size=4)


# ---------------------------------------------------------------- fixture writers (genuine layouts, tiny images)


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Path:
    """A random smooth image ``size=(width, height)`` in ``mode``, format from the suffix."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path)
    return path


def write_mask(path: Path, seed: int, size: tuple[int, int] = (40, 30), rgb: bool = False) -> Path:
    """A 0/255 rectangle mask (3-channel when ``rgb``, like Kvasir-SEG's JPEG masks)."""
    rng = np.random.default_rng(seed)
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    mask[top : top + height // 2, left : left + width // 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.repeat(mask[..., None], 3, axis=-1) if rgb else mask).save(path)
    return path


def write_dtd(root: Path, classes=("banded", "dotted", "veined"), per_class: int = 6, labels: bool = False) -> Path:
    for c, name in enumerate(classes):
        for k in range(per_class):
            write_image(root / "images" / name / f"{name}_{k:04d}.jpg", seed=10 * c + k)
    if labels:
        (root / "labels").mkdir()
        for s, split in enumerate(SPLITS):
            lines = [f"{name}/{name}_{k:04d}.jpg" for name in classes for k in range(2 * s, 2 * s + 2)]
            (root / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return root


def write_kth(root: Path, materials=("cork", "wool", "linen"), per_sample: int = 3) -> Path:
    for m, material in enumerate(materials):
        for s in "abcd":
            for k in range(per_sample):
                seed = m * 100 + 10 * "abcd".index(s) + k  # distinct images: the same one in two splits warns
                write_image(root / material / f"sample_{s}" / f"{m}{s}-scale_{k}_im_1_col.png", seed=seed)
    return root


def write_npz(path: Path, labels_2d: bool, rgb: bool = False, sizes=(20, 6, 8), classes: int = 3, **extra) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(SPLITS, sizes, strict=True):
        shape = (count, 28, 28, 3) if rgb else (count, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = (np.arange(count) % classes).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if labels_2d else labels
    arrays.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def write_pairs(
    image_dir: Path, mask_dir: Path, names: list[tuple[str, str]], rgb_masks: bool = False, first_seed: int = 0
) -> None:
    for k, (image_name, mask_name) in enumerate(names):
        size = (40 + 4 * k, 30)
        write_image(image_dir / image_name, seed=first_seed + k, size=size)
        write_mask(mask_dir / mask_name, seed=k, size=size, rgb=rgb_masks)


def write_kvasir(root: Path, count: int = 6) -> Path:
    base = root / "Kvasir-SEG"
    write_pairs(base / "images", base / "masks", [(f"cju{k:04d}.jpg", f"cju{k:04d}.jpg") for k in range(count)], True)
    return root


def isic_names(first: int, count: int) -> list[tuple[str, str]]:
    return [(f"ISIC_{k:07d}.jpg", f"ISIC_{k:07d}_segmentation.png") for k in range(first, first + count)]


def split_sizes(dm) -> dict[str, int]:
    return {split: len(dm.dataset(split)) for split in SPLITS}


def first_batch(dm, split: str = "train"):
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return next(iter(loader))


def assert_classification_batch(batch, num_classes: int, size: int = 32) -> None:
    images, labels = batch
    assert images.dtype == torch.float32 and images.shape[1:] == (3, size, size)
    assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
    assert int(labels.min()) >= 0 and int(labels.max()) < num_classes


def assert_segmentation_batch(batch, size: int = 32) -> None:
    images, masks = batch
    assert images.dtype == torch.float32 and images.shape[1:] == (3, size, size)
    assert masks.dtype == torch.int64 and masks.shape == (images.shape[0], size, size)
    assert set(masks.unique().tolist()) <= {0, 1}


# ---------------------------------------------------------------- the shared real samples


def test_dtd_sample_falls_back_to_a_deterministic_stratified_split(sample_data: Path):
    with pytest.warns(DataWarning, match="official split"):
        dm = DTDDataModule(sample_data / "dtd", **SMALL)
        dm.setup()
    assert dm.task == "classification"
    assert dm.class_names == ["banded", "blotchy", "braided", "bubbly", "bumpy"]
    for split in SPLITS:  # every class in every split
        assert sorted(set(dm.dataset(split).labels)) == list(range(5))
    assert sum(split_sizes(dm).values()) == 50
    assert_classification_batch(first_batch(dm), 5)
    with pytest.warns(DataWarning):
        again = DTDDataModule(sample_data / "dtd", **SMALL)
        assert again.dataset("test").files == dm.dataset("test").files
        other = DTDDataModule(sample_data / "dtd", seed=1, **SMALL)
        assert other.dataset("test").files != dm.dataset("test").files


def test_medmnist_sample(sample_data: Path):
    dm = MedMNISTDataModule(sample_data / "medmnist", subset="breastmnist", **SMALL)
    dm.setup()
    assert split_sizes(dm) == {"train": 546, "val": 78, "test": 156}
    assert dm.num_classes == 2 and dm.task == "classification"
    images, labels = first_batch(dm, "test")
    assert_classification_batch((images, labels), 2)
    # Grayscale expanded to three identical channels (normalisation aside).
    raw = dm.denormalize(images)
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)


def test_kvasir_sample_masks_are_binary_and_aligned(sample_data: Path):
    dm = KvasirSegDataModule(sample_data / "kvasir_seg", augment=False, **SMALL)
    dm.setup()
    assert dm.task == "segmentation" and dm.num_classes == 2 and dm.class_names == ["background", "polyp"]
    assert split_sizes(dm) == {"train": 3, "val": 1, "test": 1}
    images, masks = first_batch(dm)
    assert_segmentation_batch((images, masks))
    assert 0.02 < masks.float().mean() < 0.8  # polyps: a visible but partial foreground


# ---------------------------------------------------------------- DTD, KTH-TIPS2-b, image folders, MedMNIST


def test_dtd_official_split_files_are_used(tmp_path: Path):
    root = write_dtd(tmp_path / "dtd", labels=True)
    dm = DTDDataModule(tmp_path, **SMALL)  # the folder containing dtd/ is accepted too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        dm.setup()
    assert dm.class_names == ["banded", "dotted", "veined"]
    test_files = [p.name for p in dm.dataset("test").files]
    assert test_files == [f"{c}_{k:04d}.jpg" for c in dm.class_names for k in (4, 5)]
    assert dm.dataset("test").labels == [0, 0, 1, 1, 2, 2]
    assert_classification_batch(first_batch(dm, "val"), 3)
    with pytest.raises(ValueError, match=r"train2\.txt.*does not exist"):
        DTDDataModule(root, split_index=2, **SMALL).setup()


def test_dtd_without_split_files(tmp_path: Path):
    write_dtd(tmp_path, per_class=9)
    with pytest.warns(DataWarning, match="stratified split by seed=0"):
        dm = DTDDataModule(tmp_path, **SMALL)
        dm.setup()
    assert split_sizes(dm) == {"train": 9, "val": 9, "test": 9}
    assert_classification_batch(first_batch(dm), 3)


def test_dtd_split_file_naming_a_missing_image(tmp_path: Path):
    root = write_dtd(tmp_path, labels=True)
    (root / "images" / "dotted" / "dotted_0003.jpg").unlink()
    with pytest.raises(ValueError, match=r"dotted_0003\.jpg \(listed in val1\.txt\)"):
        DTDDataModule(root, **SMALL).setup()
    with pytest.warns(DataWarning, match="skipped 1 of 18 listed files"):
        dm = DTDDataModule(root, on_bad_file="skip", **SMALL)
        dm.setup()
    assert split_sizes(dm) == {"train": 6, "val": 5, "test": 6}


def test_kth_tips2_holds_out_a_physical_sample(tmp_path: Path):
    write_kth(tmp_path / "KTH-TIPS2-b")
    dm = KTHTips2DataModule(tmp_path, test_sample="b", **SMALL)
    dm.setup()
    assert dm.class_names == ["cork", "linen", "wool"]
    assert {p.parent.name for p in dm.dataset("test").files} == {"sample_b"}
    assert len(dm.dataset("test")) == 9
    train_val = dm.dataset("train").files + dm.dataset("val").files
    assert {p.parent.name for p in train_val} == {"sample_a", "sample_c", "sample_d"} and len(train_val) == 27
    assert_classification_batch(first_batch(dm), 3)
    by_sample = KTHTips2DataModule(tmp_path, test_sample="sample_d", val_sample="c", **SMALL)
    assert {p.parent.name for p in by_sample.dataset("val").files} == {"sample_c"}
    assert {p.parent.name for p in by_sample.dataset("train").files} == {"sample_a", "sample_b"}
    with pytest.raises(ValueError, match=r"cork has no sample_e/ \(test sample\); it has \['sample_a'"):
        KTHTips2DataModule(tmp_path, test_sample="e", **SMALL).setup()


def test_image_folder_with_and_without_split_folders(tmp_path: Path):
    for c, name in enumerate(("cat", "dog")):
        for k in range(10):
            write_image(tmp_path / "flat" / name / ("nested" if k % 2 else "") / f"{k}.png", seed=c * 10 + k)
            for s, split in enumerate(("train", "test")):
                write_image(tmp_path / "split" / split / name / f"{k}.jpg", seed=100 * s + c * 10 + k)
    flat = ImageFolderDataModule(tmp_path / "flat", **SMALL)
    assert flat.class_names == ["cat", "dog"]
    assert split_sizes(flat) == {"train": 14, "val": 2, "test": 4}  # nested images are found
    assert_classification_batch(first_batch(flat), 2)
    split = ImageFolderDataModule(tmp_path / "split", **SMALL)
    assert split_sizes(split) == {"train": 18, "val": 2, "test": 20}  # val carved out of train, test given
    assert all(p.parts[-3] == "test" for p in split.dataset("test").files)
    assert_classification_batch(first_batch(split, "test"), 2)
    write_image(tmp_path / "split" / "test" / "bird" / "0.jpg", seed=0)
    with pytest.raises(ValueError, match=r"bird is not among the training classes"):
        ImageFolderDataModule(tmp_path / "split", **SMALL).setup()


def test_image_folder_converts_grayscale_rgba_and_16_bit(tmp_path: Path):
    for c, name in enumerate(("a", "b")):
        write_image(tmp_path / name / "gray.png", seed=10 * c + 1, mode="L")
        write_image(tmp_path / name / "rgba.png", seed=10 * c + 2, mode="RGBA")
        write_image(tmp_path / name / "palette.gif", seed=10 * c + 3, mode="P")
        deep = (np.random.default_rng(10 * c + 4).integers(0, 65536, (30, 40))).astype(np.uint16)
        Image.fromarray(deep).save(tmp_path / name / "deep.tif")
    dm = ImageFolderDataModule(
        tmp_path, batch_size=8, image_size=16, augment=False, val_fraction=0.25, test_fraction=0.25
    )
    for split in SPLITS:
        images, _ = first_batch(dm, split)
        assert images.shape[1:] == (3, 16, 16) and torch.isfinite(images).all()
        raw = dm.denormalize(images)
        assert raw.min() >= 0 and raw.max() <= 1 and raw.std() > 0.05


@pytest.mark.parametrize("labels_2d", [False, True])
def test_medmnist_npz_with_flat_and_column_labels(tmp_path: Path, labels_2d: bool):
    write_npz(tmp_path / "pathmnist_64.npz", labels_2d=labels_2d, rgb=True)
    write_npz(tmp_path / "pathmnist.npz", labels_2d=labels_2d, sizes=(5, 5, 5))
    dm = MedMNISTDataModule(tmp_path, subset="pathmnist", size=64, **SMALL)
    assert split_sizes(dm) == {"train": 20, "val": 6, "test": 8}
    assert dm.class_names == ["0", "1", "2"]
    images, labels = first_batch(dm, "val")
    assert_classification_batch((images, labels), 3)
    assert labels.tolist() == [0, 1, 2, 0]
    default_size = MedMNISTDataModule(tmp_path, subset="pathmnist", class_names=["a", "b", "c"], **SMALL)
    assert split_sizes(default_size)["train"] == 5 and default_size.class_names == ["a", "b", "c"]


def test_medmnist_bad_files(tmp_path: Path):
    with pytest.raises(ValueError, match=r"dermamnist\.npz.*found there: \[\]"):
        MedMNISTDataModule(tmp_path, subset="dermamnist").setup()
    write_npz(tmp_path / "chestmnist.npz", labels_2d=False, train_labels=np.zeros((20, 14), np.uint8))
    with pytest.raises(ValueError, match=r"chestmnist\.npz.*\(20, 14\).*single-label"):
        MedMNISTDataModule(tmp_path, subset="chestmnist").setup()
    np.savez(tmp_path / "broken.npz", train_images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros(2))
    with pytest.raises(
        ValueError, match=r"broken\.npz lacks the keys \['train_labels', .*found: \['labels', 'train_images'\]"
    ):
        MedMNISTDataModule(tmp_path, subset="broken").setup()
    write_npz(tmp_path / "organmnist3d.npz", labels_2d=True, train_images=np.zeros((20, 28, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"3-D"):
        MedMNISTDataModule(tmp_path, subset="organmnist3d").setup()
    write_npz(tmp_path / "few.npz", labels_2d=False)
    with pytest.raises(ValueError, match=r"label 2 but class_names has only 2"):
        MedMNISTDataModule(tmp_path, subset="few", class_names=["x", "y"]).setup()


# ---------------------------------------------------------------- segmentation layouts


def test_kvasir_layout(tmp_path: Path):
    write_kvasir(tmp_path)
    dm = KvasirSegDataModule(tmp_path, **SMALL)
    assert split_sizes(dm) == {"train": 4, "val": 1, "test": 1}
    assert_segmentation_batch(first_batch(dm))
    for image_path, mask_path in dm.dataset("train").pairs:
        assert image_path.name == mask_path.name and mask_path.parent.name == "masks"
    again = KvasirSegDataModule(tmp_path / "Kvasir-SEG", **SMALL)  # the inner folder works as root too
    assert again.dataset("test").pairs == dm.dataset("test").pairs
    other = KvasirSegDataModule(tmp_path, seed=3, **SMALL)
    assert [other.dataset(s).pairs for s in SPLITS] != [dm.dataset(s).pairs for s in SPLITS]


def test_isic2018_official_folders(tmp_path: Path):
    write_pairs(
        tmp_path / "ISIC2018_Task1-2_Training_Input", tmp_path / "ISIC2018_Task1_Training_GroundTruth", isic_names(0, 8)
    )
    (tmp_path / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC")
    write_pairs(
        tmp_path / "ISIC2018_Task1-2_Validation_Input",
        tmp_path / "ISIC2018_Task1_Validation_GroundTruth",
        isic_names(100, 3),
        first_seed=100,
    )
    with pytest.warns(DataWarning, match=r"no official test pairs; carving test \(0\.20\)"):
        dm = ISIC2018DataModule(tmp_path, **SMALL)
        dm.setup()
    assert split_sizes(dm) == {"train": 6, "val": 3, "test": 2}
    assert all(p[0].name.startswith("ISIC_00001") for p in dm.dataset("val").pairs)
    assert dm.class_names == ["background", "lesion"]
    assert_segmentation_batch(first_batch(dm, "val"))
    write_pairs(
        tmp_path / "ISIC2018_Task1-2_Test_Input",
        tmp_path / "ISIC2018_Task1_Test_GroundTruth",
        isic_names(200, 4),
        first_seed=200,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert split_sizes(ISIC2018DataModule(tmp_path, **SMALL)) == {"train": 8, "val": 3, "test": 4}


def test_isic2018_flat_folder(tmp_path: Path):
    write_pairs(tmp_path, tmp_path, isic_names(0, 6))
    dm = ISIC2018DataModule(tmp_path, **SMALL)
    assert sum(split_sizes(dm).values()) == 6
    for image_path, mask_path in dm.dataset("train").pairs:
        assert mask_path.name == image_path.stem + "_segmentation.png"
    assert_segmentation_batch(first_batch(dm))


def test_seg_folder_with_drive_like_regexes_tif_and_gif(tmp_path: Path):
    names = [(f"{k}_training.tif", f"{k}_manual1.gif") for k in range(21, 27)]
    write_pairs(tmp_path / "training" / "images", tmp_path / "training" / "1st_manual", names)
    write_mask(tmp_path / "training" / "mask" / "21_training_mask.gif", seed=0)  # field-of-view masks: ignored
    dm = SegFolderDataModule(
        tmp_path / "training",
        images_dir="images",
        masks_dir="1st_manual",
        image_pattern=r"(?P<id>\d+)_training\.tif",
        mask_pattern=r"(?P<id>\d+)_manual1\.gif",
        **SMALL,
    )
    assert sum(split_sizes(dm).values()) == 6 and dm.num_classes == 2
    for image_path, mask_path in dm.dataset("train").pairs:
        assert image_path.name.split("_")[0] == mask_path.name.split("_")[0]
    assert_segmentation_batch(first_batch(dm))
    with pytest.raises(ValueError, match=r"image_pattern=.*\.tif' has no named group 'id'"):
        SegFolderDataModule(tmp_path, image_pattern=r"(\d+).tif")
    with pytest.raises(ValueError, match="no file in .*images matches image_pattern"):
        SegFolderDataModule(tmp_path / "training", masks_dir="1st_manual", image_pattern=r"(?P<id>\d+)\.png").setup()


def test_seg_folder_index_masks(tmp_path: Path):
    (tmp_path / "masks").mkdir()
    for k in range(5):
        write_image(tmp_path / "images" / f"{k}.png", seed=k, size=(20, 20))
        # Rows of classes 0, 1, 2 (and 3 in mask 0, one more than the three class names).
        labels = (np.arange(400).reshape(20, 20) // 100 % (3 if k else 4)).astype(np.uint8)
        Image.fromarray(labels).save(tmp_path / "masks" / f"{k}.png")
    with pytest.raises(ValueError, match="needs class_names"):
        SegFolderDataModule(tmp_path, mask_mode="index")
    dm = SegFolderDataModule(tmp_path, mask_mode="index", class_names=["bg", "a", "b"], augment=False, **SMALL)
    with pytest.raises(ValueError, match=r"0\.png holds class index 3 but there are only 3 classes"):
        dm.setup()  # a few masks (here all five) are decoded in setup, before training
    bad = np.asarray(Image.open(tmp_path / "masks" / "0.png"))
    Image.fromarray(bad % 3).save(tmp_path / "masks" / "0.png")
    dm = SegFolderDataModule(tmp_path, mask_mode="index", class_names=["bg", "a", "b"], augment=False, **SMALL)
    dataset = [dm.dataset(s) for s in SPLITS]
    Image.fromarray(bad).save(tmp_path / "masks" / "0.png")  # spoilt after setup: found when it is loaded
    items = [(ds, i) for ds in dataset for i in range(len(ds))]
    good = [ds[i][1] for ds, i in items if not ds.pairs[i][1].name.startswith("0")]
    assert all(set(m.unique().tolist()) <= {0, 1, 2} for m in good) and any(m.max() == 2 for m in good)
    ds, i = next((ds, i) for ds, i in items if ds.pairs[i][1].name == "0.png")
    with pytest.raises(ValueError, match=r"0\.png holds class index 3 but there are only 3 classes"):
        ds[i]


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("module", "layout_hint"),
    [
        (DTDDataModule, "images/<class>"),
        (KTHTips2DataModule, "sample_<x>"),
        (ImageFolderDataModule, "<class>/"),
        (KvasirSegDataModule, "masks/<id>.jpg"),
        (ISIC2018DataModule, "ISIC2018_Task1_Training_GroundTruth"),
        (SegFolderDataModule, "image_pattern"),
    ],
)
def test_missing_root_and_wrong_layout_show_the_expected_layout(tmp_path: Path, module, layout_hint: str):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=r"data root .*nowhere.* does not exist") as info:
        module(missing).setup()
    assert "expected layout" in str(info.value) and layout_hint in str(info.value)
    (tmp_path / "wrong" / "stuff").mkdir(parents=True)
    (tmp_path / "wrong" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="expected layout") as info:
        module(tmp_path / "wrong").setup()
    assert layout_hint in str(info.value) and "wrong" in str(info.value)


def test_corrupt_image_errors_at_load_time_or_is_skipped(tmp_path: Path):
    root = write_dtd(tmp_path, per_class=9)
    (root / "images" / "dotted" / "dotted_0004.jpg").write_bytes(b"\xff\xd8\xff garbage")
    good = root / "images" / "veined" / "veined_0002.jpg"
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # truncated JPEG
    with pytest.warns(DataWarning):
        dm = DTDDataModule(root, **SMALL)
        dm.setup()  # scanning does not decode
    files = {p.name: (ds, i) for ds in map(dm.dataset, SPLITS) for i, p in enumerate(ds.files)}
    for name in ("dotted_0004.jpg", "veined_0002.jpg"):
        ds, i = files[name]
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            ds[i]
    with pytest.warns(DataWarning) as record:
        skipping = DTDDataModule(root, on_bad_file="skip", **SMALL)
        skipping.setup()
    messages = [str(w.message) for w in record]
    assert any("skipped 2 of 27 image files" in m and "dotted_0004.jpg" in m for m in messages), messages
    assert sum(split_sizes(skipping).values()) == 25
    for split in SPLITS:  # every remaining image loads
        ds = skipping.dataset(split)
        assert all(torch.isfinite(ds[i][0]).all() for i in range(len(ds)))


def test_image_mask_size_mismatch_names_both_files(tmp_path: Path):
    write_kvasir(tmp_path, count=6)
    mask = tmp_path / "Kvasir-SEG" / "masks" / "cju0002.jpg"
    write_mask(mask, seed=0, size=(13, 17), rgb=True)
    with pytest.raises(ValueError, match=r"images/cju0002\.jpg is 48x30 but its mask .*masks/cju0002\.jpg is 13x17"):
        KvasirSegDataModule(tmp_path, **SMALL).setup()
    with pytest.warns(DataWarning, match=r"skipped 1 of 6 image/mask pairs"):
        dm = KvasirSegDataModule(tmp_path, on_bad_file="skip", **SMALL)
        dm.setup()
    assert sum(split_sizes(dm).values()) == 5


def test_unpaired_and_corrupt_segmentation_files(tmp_path: Path):
    write_kvasir(tmp_path, count=6)
    (tmp_path / "Kvasir-SEG" / "masks" / "cju0005.jpg").unlink()
    with pytest.raises(ValueError, match=r"images/cju0005\.jpg has no mask"):
        KvasirSegDataModule(tmp_path, **SMALL).setup()
    (tmp_path / "Kvasir-SEG" / "masks" / "cju0001.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "Kvasir-SEG" / "images" / "cju0005.jpg").rename(tmp_path / "cju0005.jpg")
    with pytest.raises(ValueError, match=r"masks/cju0001\.jpg"):
        KvasirSegDataModule(tmp_path, **SMALL).setup()  # headers are read in setup
    (tmp_path / "cju0005.jpg").rename(tmp_path / "Kvasir-SEG" / "images" / "cju0005.jpg")
    with pytest.warns(DataWarning) as record:
        dm = KvasirSegDataModule(tmp_path, on_bad_file="skip", **SMALL)
        dm.setup()
    assert sum(split_sizes(dm).values()) == 4
    messages = " ".join(str(w.message) for w in record)
    assert "cju0005.jpg has no mask" in messages and "cju0001.jpg" in messages


def test_empty_and_single_class_datasets_are_rejected(tmp_path: Path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images in class folders"):
        ImageFolderDataModule(tmp_path / "empty").setup()
    for k in range(6):
        write_image(tmp_path / "single" / "only" / f"{k}.png", seed=k)
    with pytest.raises(ValueError, match=r"found 1 class\(es\) \['only'\]; at least 2"):
        ImageFolderDataModule(tmp_path / "single").setup()
    (tmp_path / "few" / "images").mkdir(parents=True)
    (tmp_path / "few" / "masks").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no image files in .*few/images"):
        KvasirSegDataModule(tmp_path / "few").setup()
    write_pairs(tmp_path / "few" / "images", tmp_path / "few" / "masks", [("a.jpg", "a.png"), ("b.jpg", "b.png")])
    with pytest.raises(ValueError, match=r"the test split is empty"):
        KvasirSegDataModule(tmp_path / "few").setup()


def test_constructor_arguments_are_validated(tmp_path: Path):
    with pytest.raises(ValueError, match=r"on_bad_file='ignore' is not one of \('error', 'skip'\)"):
        DTDDataModule(tmp_path, on_bad_file="ignore")
    with pytest.raises(ValueError, match="val_fraction"):
        KvasirSegDataModule(tmp_path, val_fraction=1.5)
    with pytest.raises(ValueError, match="mask_mode"):
        SegFolderDataModule(tmp_path, mask_mode="rgb")
    with pytest.raises(ValueError, match="val_sample and test_sample"):
        KTHTips2DataModule(tmp_path, test_sample="a", val_sample="sample_a")
    with pytest.raises(ValueError, match="split='training'"):
        DTDDataModule(tmp_path).dataset("training")


def test_file_datasets_work_in_worker_processes(tmp_path: Path):
    write_kvasir(tmp_path)
    dm = KvasirSegDataModule(tmp_path, num_workers=1, augment=False, **SMALL)
    reference = KvasirSegDataModule(tmp_path, augment=False, **SMALL)
    for a, b in zip(first_batch(dm, "val"), first_batch(reference, "val"), strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- few-shot training splits


def test_train_per_class_keeps_k_seeded_nested_images_per_class(tmp_path: Path):
    write_dtd(tmp_path, per_class=15)
    with pytest.warns(DataWarning):
        full = DTDDataModule(tmp_path, **SMALL)
        few = {k: DTDDataModule(tmp_path, train_per_class=k, **SMALL) for k in (2, 4)}
        other_seed = DTDDataModule(tmp_path, train_per_class=2, seed=1, **SMALL)
        for dm in (full, *few.values(), other_seed):
            dm.setup()
    chosen = {k: set(dm.dataset("train").image_files) for k, dm in few.items()}
    for k, files in chosen.items():
        assert sorted(np.bincount(few[k].dataset("train").labels).tolist()) == [k, k, k]
        assert files <= set(full.dataset("train").image_files)
        for split in ("val", "test"):  # held-out splits stay whole
            assert few[k].dataset(split).image_files == full.dataset(split).image_files
    assert chosen[2] <= chosen[4]  # nested: the 2-shot images are among the 4-shot ones
    assert set(other_seed.dataset("train").image_files) != chosen[2]
    images, labels = first_batch(few[2])
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64
    item = few[2].dataset("train")[0]
    index = full.dataset("train").image_files.index(few[2].dataset("train").image_files[0])
    assert item[1] == full.dataset("train")[index][1]


def test_train_per_class_on_arrays_and_its_errors(tmp_path: Path):
    write_npz(tmp_path / "pathmnist.npz", labels_2d=False, sizes=(9, 6, 6))
    dm = MedMNISTDataModule(tmp_path, subset="pathmnist", train_per_class=2, **SMALL)
    assert split_sizes(dm) == {"train": 6, "val": 6, "test": 6}
    with pytest.raises(ValueError, match=r"train_per_class=4 but the training split holds fewer images of"):
        MedMNISTDataModule(tmp_path, subset="pathmnist", train_per_class=4, **SMALL).setup()
    with pytest.raises(ValueError, match=r"train_per_class=0 must be >= 1"):
        MedMNISTDataModule(tmp_path, subset="pathmnist", train_per_class=0)
    write_kvasir(tmp_path / "kvasir")  # segmentation data have no class per image
    with pytest.raises(ValueError, match=r"train_per_class=1 applies to classification data"):
        KvasirSegDataModule(tmp_path / "kvasir", train_per_class=1, **SMALL).setup()


def test_evaluation_dataset_is_the_training_split_without_augmentation(tmp_path: Path):
    for c, name in enumerate(("cat", "dog")):
        for k in range(10):
            write_image(tmp_path / name / f"{k}.png", seed=c * 10 + k, size=(60, 44))
    augmented = ImageFolderDataModule(tmp_path, augment=True, train_per_class=5, **SMALL)
    plain = ImageFolderDataModule(tmp_path, augment=False, train_per_class=5, **SMALL)
    evaluation = augmented.evaluation_dataset("train")
    assert len(evaluation) == len(augmented.dataset("train")) == 10  # through the few-shot subset
    for index in range(len(evaluation)):
        torch.testing.assert_close(evaluation[index][0], plain.dataset("train")[index][0])
        assert int(evaluation[index][1]) == int(plain.dataset("train")[index][1])
    torch.manual_seed(0)
    views = [augmented.dataset("train")[0][0] for _ in range(3)]  # the training split itself stays augmented
    assert not all(torch.equal(views[0], view) for view in views[1:])
    assert augmented.evaluation_dataset("val") is augmented.dataset("val")
