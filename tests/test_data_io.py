"""Image/mask reading, transforms and splits of the data layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from fftprompt.data import build_transform, denormalize, read_image, read_mask
from fftprompt.data.io import check_image, image_paths, image_size
from fftprompt.data.splits import check_fractions, evenly_spaced, random_split, split_selection, stratified_split


def _gradient(height: int = 20, width: int = 30) -> np.ndarray:
    """``(H, W, 3)`` uint8 with distinct channels."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 8, y * 12, (x + y) * 4], axis=-1).astype(np.uint8)


def test_rgb_and_converted_modes_read_as_rgb(tmp_path: Path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    image = read_image(tmp_path / "rgb.png")
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), rgb)

    gray = rgb[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (3, 20, 30)
    for channel in image:
        np.testing.assert_array_equal(channel.numpy(), gray)

    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png").permute(1, 2, 0).numpy(), rgb)  # alpha dropped

    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.gif")
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "palette.gif").permute(1, 2, 0).numpy(), expected)

    Image.fromarray(gray > 100).save(tmp_path / "bilevel.png")
    assert set(read_image(tmp_path / "bilevel.png").unique().tolist()) == {0, 255}

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    cmyk = read_image(tmp_path / "cmyk.jpg").permute(1, 2, 0).numpy().astype(int)
    assert np.abs(cmyk - rgb).mean() < 12


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled_to_unit_range(tmp_path: Path, suffix: str):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(3, axis=0)
    Image.fromarray(values).save(tmp_path / f"deep{suffix}")
    image = read_image(tmp_path / f"deep{suffix}")
    assert image.dtype == torch.float32 and image.shape == (3, 3, 4)
    torch.testing.assert_close(image[1, 0], torch.tensor([0.0, 257 / 65535, 32768 / 65535, 1.0]))
    # A 16-bit image goes through the same transform as an 8-bit one and lands on the same scale.
    transform = build_transform("texture", 4, (0.0,) * 3, (1.0,) * 3, train=False, augment=False)
    out = transform(tv_tensors.Image(image))
    assert out.dtype == torch.float32 and float(out.max()) <= 1.0 + 1e-6 and float(out.max()) > 0.5


def test_unreadable_files_name_the_file(tmp_path: Path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="junk.jpg"):
        read_image(junk)
    with pytest.raises(ValueError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg.*(corrupt|truncated)"):
        read_image(tmp_path / "cut.jpg")
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")
    Image.fromarray(np.ones((4, 4), np.float32), mode="F").save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif.*mode F"):
        read_image(tmp_path / "float.tif")
    # The cheap check used by on_bad_file="skip" catches all of these and passes good files.
    for name in ("junk.jpg", "cut.jpg", "cut.png"):
        assert check_image(tmp_path / name) is not None, name
    for name in ("whole.jpg", "whole.png"):
        assert check_image(tmp_path / name) is None, name
    assert image_size(tmp_path / "whole.png") == (64, 64)


def test_image_paths_resolve_files_folders_and_globs_in_order(tmp_path: Path):
    """One road from an ``images=`` value to files, shared by fftprompt-predict and fftprompt-explain."""
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b.png", "a.jpg", ".hidden.png", "notes.txt"):
        (folder / name).write_bytes(b"")
    single = tmp_path / "single.png"
    single.write_bytes(b"")
    assert image_paths(folder) == [folder / "a.jpg", folder / "b.png"]  # sorted, images only, no hidden files
    assert image_paths([str(single), str(folder / "*.png")]) == [single, folder / "b.png"]
    with pytest.raises(ValueError, match=r"'.*missing\.png' names no image file"):
        image_paths([str(single), str(tmp_path / "missing.png")])


def test_binary_masks_threshold_jpeg_noise_and_accept_0_1_coding(tmp_path: Path):
    truth = np.zeros((32, 32), bool)
    truth[8:24, 10:20] = True
    rgb = np.repeat((truth * 255).astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "mask.jpg", quality=75)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "mask.jpg")))) > 2  # compression noise present
    mask = read_mask(tmp_path / "mask.jpg")
    assert mask.shape == (32, 32) and mask.dtype == torch.uint8
    assert set(mask.unique().tolist()) == {0, 1}
    assert (mask.numpy().astype(bool) != truth).mean() < 0.02

    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "zero_one.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "zero_one.png").numpy(), truth)
    Image.fromarray(truth.astype(np.uint8) * 255).convert("P").save(tmp_path / "mask.gif")
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.gif").numpy(), truth)
    Image.fromarray(truth.astype(np.uint16) * 65535).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "deep.png").numpy(), truth)


def test_index_masks_keep_class_indices(tmp_path: Path):
    labels = (np.arange(16 * 16).reshape(16, 16) % 4).astype(np.uint8)
    Image.fromarray(labels, mode="L").save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.png", mode="index").numpy(), labels)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour\.png.*single-channel"):
        read_mask(tmp_path / "colour.png", mode="index")


def test_joint_transform_resizes_masks_with_nearest_and_keeps_alignment():
    torch.manual_seed(0)  # the augmentation draws crops and rotations
    mask = torch.zeros(40, 60, dtype=torch.uint8)
    mask[10:30, 20:50] = 3
    image = mask.float().div(3).mul(255).to(torch.uint8).expand(3, -1, -1).contiguous()
    for train in (False, True):
        transform = build_transform("segmentation", 24, (0.0,) * 3, (1.0,) * 3, train=train, augment=True)
        for _ in range(5):
            out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
            assert out_image.shape == (3, 24, 24) and out_image.dtype == torch.float32
            assert out_mask.shape == (24, 24) and out_mask.dtype == torch.int64
            assert set(out_mask.unique().tolist()) <= {0, 3}  # nearest: no interpolated labels
            # Same geometry on both: the mask's foreground is where the image is bright.
            bright = out_image[0] > 0.5
            assert (bright == (out_mask == 3)).float().mean() > 0.9


def test_normalisation_and_denormalize_round_trip():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    out = build_transform("symmetry", 16, mean, std, train=False, augment=False)(tv_tensors.Image(image))
    expected = (image.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), expected)
    torch.testing.assert_close(denormalize(out.unsqueeze(0), mean, std)[0], image.float() / 255)
    with pytest.raises(ValueError, match="policy 'video'"):
        build_transform("video", 16, mean, std, train=True, augment=True)  # type: ignore[arg-type]


def test_texture_augmentation_is_random_and_evaluation_is_not():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8))
    evaluation = build_transform("texture", 32, (0.5,) * 3, (0.5,) * 3, train=True, augment=False)
    torch.testing.assert_close(evaluation(image), evaluation(image))
    training = build_transform("texture", 32, (0.5,) * 3, (0.5,) * 3, train=True, augment=True)
    torch.manual_seed(0)
    outputs = [training(image) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outputs)
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])


def test_stratified_split_is_deterministic_stratified_and_a_partition():
    labels = np.repeat(np.arange(3), [10, 20, 5])
    train, val, test = stratified_split(labels, (0.2, 0.2), seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(35))
    assert [np.sum(labels[val] == c) for c in range(3)] == [2, 4, 1]
    assert [np.sum(labels[test] == c) for c in range(3)] == [2, 4, 1]
    again = stratified_split(labels, (0.2, 0.2), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip([train, val, test], again, strict=True))
    other = stratified_split(labels, (0.2, 0.2), seed=1)
    assert not np.array_equal(val, other[1])
    # Tiny groups still give every held-out split an item while keeping one for training.
    parts = random_split(3, (0.1, 0.1), seed=0)
    assert [len(p) for p in parts] == [1, 1, 1]


def test_fractions_are_checked():
    with pytest.raises(ValueError, match="val_fraction=0"):
        check_fractions(0.0, 0.2)
    with pytest.raises(ValueError, match="must be < 1"):
        check_fractions(0.6, 0.5)


def test_split_selection_of_an_images_value(tmp_path, monkeypatch):
    """images= values naming a run's split (predict and explain share this reading of them)."""
    monkeypatch.chdir(tmp_path)
    assert split_selection("test") == ("test", None) and split_selection(" val:8 ") == ("val", 8)
    assert split_selection("train:1") == ("train", 1)
    for other in ("photos/", "test:x", "tests", "*.png", ["test:8"], Path("test")):
        assert split_selection(other) is None
    with pytest.raises(ValueError, match=r"test:0.*at least 1"):
        split_selection("test:0")
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match=r"images=\./val for the files or images=val:N"):
        split_selection("val")
    assert split_selection("val:2") == ("val", 2)
    assert evenly_spaced(12, 4) == [0, 4, 7, 11] and evenly_spaced(3, 8) == [0, 1, 2]
    assert evenly_spaced(5, None) == [0, 1, 2, 3, 4]
