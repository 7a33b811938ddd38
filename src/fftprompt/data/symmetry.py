"""The generated symmetry benchmark: the offline default dataset, built on the fly from (seed, split, index).

Each image is a random background texture with one square or disc region pasted at a random position and size. The
region holds a second texture which, depending on the class, is made invariant under a symmetry about the region's
centre (``mirror_lr``: vertical axis, ``mirror_ud``: horizontal axis, ``mirror_diag``: main diagonal (transpose),
``mirror_antidiag``: anti-diagonal, ``rot180``: point symmetry, ``rot90``: four-fold rotation) or left as it is
(``none``). Everything else is a nuisance drawn independently of the class: texture family (smooth anisotropic noise,
narrow-band gratings, blobs), texture scale and orientation, region size, shape and position (so the axis or centre
moves), colour, contrast and additive pixel noise. Domain parameters (:mod:`fftprompt.data.domains`: texture
families, colour palette, noise colour, blur) change how images are rendered; the data module can test on another
domain than it trains on (``test_domain``).

The symmetric texture is the orbit sum ``sum_g f(g x)`` of a stationary random field ``f`` over the symmetry group,
divided pixel-wise by its exact standard deviation ``sqrt(sum_{g,h} rho(g x - h x))`` (``rho``: the field's known
autocorrelation). So a symmetric region is as smooth as the plain texture, without seams along the axis, and has the
same pointwise variance as the ``none`` region, which goes through the same code with the trivial group: only the
symmetry tells the classes apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from fftprompt.data.base import ImageDataModule, Split
from fftprompt.data.datasets import Transform
from fftprompt.data.domains import (
    NoiseColour,
    Palette,
    apply_palette,
    blur_images,
    check_domain,
    colour_noise,
)
from fftprompt.utils import Task, check_choice

SymmetryClass = Literal["none", "mirror_lr", "mirror_ud", "mirror_diag", "mirror_antidiag", "rot180", "rot90"]
SYMMETRY_CLASSES: tuple[str, ...] = get_args(SymmetryClass)
DEFAULT_SYMMETRY_CLASSES = ("none", "mirror_lr", "mirror_ud", "mirror_diag", "rot180", "rot90")
Texture = Literal["noise", "grating", "blobs"]
TEXTURES: tuple[str, ...] = get_args(Texture)
SegLabels = Literal["binary", "per_class"]
# Defaults shared by the generator and the data module (whose YAML shows the demo's full-image regions instead).
NOISE_STD = 0.03
REGION_SIZE = (0.4, 0.75)

# Group elements as maps of patch coordinates (i, j) -> source coordinates, for an L x L patch (r = L - 1).
_ELEMENTS = {
    "identity": lambda i, j, r: (i, j),
    "mirror_lr": lambda i, j, r: (i, r - j),
    "mirror_ud": lambda i, j, r: (r - i, j),
    "mirror_diag": lambda i, j, r: (j, i),
    "mirror_antidiag": lambda i, j, r: (r - j, r - i),
    "rot180": lambda i, j, r: (r - i, r - j),
    "rot90": lambda i, j, r: (j, r - i),
    "rot270": lambda i, j, r: (r - j, i),
}
SYMMETRY_GROUPS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "mirror_lr": ("identity", "mirror_lr"),
    "mirror_ud": ("identity", "mirror_ud"),
    "mirror_diag": ("identity", "mirror_diag"),
    "mirror_antidiag": ("identity", "mirror_antidiag"),
    "rot180": ("identity", "rot180"),
    "rot90": ("identity", "rot90", "rot180", "rot270"),
}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_MIN_VARIANCE = 0.25  # floor of the orbit-sum variance, where the texture nearly cancels with its own mirror image


def transform_patch(patch: np.ndarray, element: str) -> np.ndarray:
    """Apply a symmetry group element to the last two axes of a square ``(..., L, L)`` array."""
    size = patch.shape[-1]
    i, j = np.indices((size, size))
    rows, cols = _ELEMENTS[element](i, j, size - 1)
    return patch[..., rows, cols]


@lru_cache(maxsize=256)
def _orbit_tables(name: str, size: int, field_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source offsets ``(G, 2, L, L)`` of each group element and flat autocorrelation indices ``(G*G, L, L)``."""
    i, j = np.indices((size, size))
    coords = np.stack([np.stack(_ELEMENTS[e](i, j, size - 1)) for e in SYMMETRY_GROUPS[name]])
    diffs = coords[:, None] - coords[None, :]  # (G, G, 2, L, L): g x - h x
    flat = (diffs[:, :, 0] % field_size) * field_size + diffs[:, :, 1] % field_size
    return coords, flat.reshape(-1, size, size)


def symmetrize(field: np.ndarray, autocorrelation: np.ndarray, top: int, left: int, size: int, name: str) -> np.ndarray:
    """Symmetric patch from a periodic stationary field.

    Args:
        field: ``(C, S, S)`` periodic fields sharing one autocorrelation, unit variance.
        autocorrelation: ``(S, S)`` normalised circular autocorrelation (``1`` at zero shift).
        top: patch row offset in the (periodic) field.
        left: patch column offset in the field.
        size: patch side ``L``.
        name: symmetry class (a key of ``SYMMETRY_GROUPS``).

    Returns:
        ``(C, L, L)`` patch invariant under the class's group (about the patch centre), unit pointwise variance.
    """
    field_size = field.shape[-1]
    coords, flat = _orbit_tables(name, size, field_size)
    rows = (coords[:, 0] + top) % field_size
    cols = (coords[:, 1] + left) % field_size
    orbit_sum = field[:, rows, cols].sum(axis=1)
    variance = autocorrelation.reshape(-1)[flat].sum(axis=0)
    return orbit_sum / np.sqrt(np.maximum(variance, _MIN_VARIANCE))


@lru_cache(maxsize=256)
def _disc(side: int) -> np.ndarray:
    """``(L, L)`` bool disc inscribed in the square, invariant under all the square's symmetries."""
    i, j = np.indices((side, side))
    centre = (side - 1) / 2
    return (i - centre) ** 2 + (j - centre) ** 2 <= (side / 2) ** 2


def _white(rng: np.random.Generator, size: int, channels: int = 2) -> np.ndarray:
    """Uniform white noise in ``[-0.5, 0.5)``, ``(channels, size, size)``.

    Uniform draws cost a quarter of Gaussian ones; the filtered textures are Gaussian anyway (each pixel sums many
    independent draws) and the pixel noise only needs its standard deviation.
    """
    return rng.random((channels, size, size), dtype=np.float32) - np.float32(0.5)


@dataclass
class SymmetryBatch:
    """Generated images with their ground truth.

    Attributes:
        images: ``(B, 3, S, S)`` uint8.
        labels: ``(B,)`` int64 index into the generator's ``classes``.
        regions: ``(B, S, S)`` bool, the pasted region (also for ``none``, where it is not symmetric).
        boxes: ``(B, 3)`` int64 ``(top, left, side)`` of the region's bounding square; the symmetry centre is the
            square's centre.
    """

    images: np.ndarray
    labels: np.ndarray
    regions: np.ndarray
    boxes: np.ndarray


class SymmetryGenerator:
    """Deterministic generator of symmetry-benchmark images from ``(seed, split, index)``.

    Args:
        image_size: side ``S`` of the images.
        classes: symmetry classes in label order (a subset of ``SYMMETRY_CLASSES``); image ``index`` has label
            ``index % len(classes)``, so the classes are balanced.
        textures: texture families to draw from.
        noise_std: standard deviation of the additive (uniform, independent) pixel noise on the ``[0, 1]``
            intensity scale (difficulty).
        region_size: range of the region side as a fraction of ``S``.
        contrast: range of the texture amplitude on the ``[0, 1]`` scale.
        seed: base seed.
        palette: colour palette (:mod:`fftprompt.data.domains`; ``natural``: random colours).
        noise_colour: spectrum of the pixel noise, ``white``, ``pink`` or ``brown`` (same standard deviation).
        blur: Gaussian blur before the noise, standard deviation as a fraction of ``S`` (0: none).
    """

    def __init__(
        self,
        image_size: int = 64,
        classes: Sequence[str] = DEFAULT_SYMMETRY_CLASSES,
        textures: Sequence[str] = TEXTURES,
        noise_std: float = NOISE_STD,
        region_size: Sequence[float] = REGION_SIZE,
        contrast: Sequence[float] = (0.06, 0.16),
        seed: int = 0,
        palette: Palette = "natural",
        noise_colour: NoiseColour = "white",
        blur: float = 0.0,
    ) -> None:
        check_choice("palette", palette, Palette)
        check_choice("noise_colour", noise_colour, NoiseColour)
        if not 0.0 <= blur <= 0.5:
            raise ValueError(f"blur={blur} must lie in [0, 0.5] (Gaussian standard deviation / image side)")
        self.palette, self.noise_colour, self.blur = str(palette), str(noise_colour), float(blur)
        self.classes = tuple(str(c) for c in classes)
        self.textures = tuple(str(t) for t in textures)
        for name in self.classes:
            check_choice("symmetry class", name, SymmetryClass)
        for name in self.textures:
            check_choice("texture", name, Texture)
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"classes={list(self.classes)} must hold at least 2 distinct symmetry classes")
        if not self.textures:
            raise ValueError("textures must name at least one of " + str(TEXTURES))
        self.region_size = (float(region_size[0]), float(region_size[1]))
        if not 0.0 < self.region_size[0] <= self.region_size[1] <= 1.0:
            raise ValueError(f"region_size={list(region_size)} must satisfy 0 < low <= high <= 1")
        self.contrast = (float(contrast[0]), float(contrast[1]))
        if not 0.0 < self.contrast[0] <= self.contrast[1]:
            raise ValueError(f"contrast={list(contrast)} must satisfy 0 < low <= high")
        if noise_std < 0:
            raise ValueError(f"noise_std={noise_std} must be >= 0")
        if image_size < 8:
            raise ValueError(f"image_size={image_size} must be at least 8")
        self.image_size = int(image_size)
        self.noise_std = float(noise_std)
        self.seed = int(seed)
        freq_y = np.fft.fftfreq(self.image_size)[:, None]
        freq_x = np.fft.rfftfreq(self.image_size)[None, :]
        self._freqs = (freq_y.astype(np.float32), freq_x.astype(np.float32))

    def _texture(self, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Random input noise ``(2, S, S)`` and spectral filter ``(S, S // 2 + 1)`` of one texture."""
        size = self.image_size
        fy, fx = self._freqs
        angle = rng.uniform(0.0, np.pi)
        if kind == "grating":
            # A few narrow bands around nearby orientations: stripes whose phase wanders, never a single sinusoid
            # (one or two sinusoids are themselves mirror and point symmetric).
            response = np.zeros_like(fy * fx)
            for _ in range(3):
                theta = angle + rng.normal(0.0, 0.35)
                radius = 1.0 / max(3.0, rng.uniform(0.06, 0.2) * size)
                width = 0.12 * radius + 0.5 / size
                cy, cx = radius * np.sin(theta), radius * np.cos(theta)
                for sign in (1.0, -1.0):
                    response += np.exp(-((fy - sign * cy) ** 2 + (fx - sign * cx) ** 2) / (2 * width**2))
            source = _white(rng, size)
        elif kind == "noise":
            length = max(0.8, rng.uniform(0.015, 0.06) * size)
            stretch = rng.uniform(1.0, 3.0)
            u = fx * np.cos(angle) + fy * np.sin(angle)
            v = -fx * np.sin(angle) + fy * np.cos(angle)
            response = np.exp(-2 * np.pi**2 * length**2 * (stretch**2 * u**2 + v**2))
            source = _white(rng, size)
        else:  # blobs: sparse impulses blurred by a Gaussian
            length = max(1.0, rng.uniform(0.02, 0.06) * size)
            response = np.exp(-2 * np.pi**2 * length**2 * (fx**2 + fy**2))
            density = min(0.3, 0.3 / length**2)
            uniform = rng.random((2, size, size), dtype=np.float32)
            source = np.where(uniform < density, uniform / density - 0.5, 0.0).astype(np.float32)
        response = response.astype(np.float32)
        response[0, 0] = 0.0  # no DC: zero-mean fields
        return source, response

    def _colours(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Mean colour ``(3,)`` and mixing matrix ``(3, 2)`` from two texture fields to RGB."""
        mean = rng.uniform(0.25, 0.75, 3)
        mixing = rng.normal(size=(3, 2))
        mixing /= np.linalg.norm(mixing, axis=0, keepdims=True)
        return apply_palette(mean, mixing * rng.uniform(*self.contrast), self.palette)

    def generate(self, split: Split, indices: Sequence[int] | np.ndarray) -> SymmetryBatch:
        """Images ``indices`` of ``split`` (each depends only on ``(seed, split, index)``, not on the batch)."""
        check_choice("split", split, Split)
        size, count = self.image_size, len(indices)
        sources = np.empty((count, 4, size, size), np.float32)  # background fields 0-1, region fields 2-3
        responses = np.empty((count, 2, *self._freqs[0].shape[:1], *self._freqs[1].shape[1:]), np.float32)
        noise = np.empty((count, 3, size, size), np.float32)
        colours = np.empty((2, count, 3, 3), np.float32)  # (background, region), image, channel, (mean, mixing)
        boxes = np.empty((count, 3), np.int64)
        labels = np.asarray(indices, np.int64) % len(self.classes)
        field_offsets, discs = [], []
        for b, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, _SPLIT_CODES[split], int(index)])
            for slot in range(2):
                kind = self.textures[rng.integers(len(self.textures))]
                sources[b, 2 * slot : 2 * slot + 2], responses[b, slot] = self._texture(rng, kind)
            side = int(np.clip(round(rng.uniform(*self.region_size) * size), 4, size))
            boxes[b] = (*rng.integers(0, size - side + 1, 2), side)
            field_offsets.append(tuple(int(v) for v in rng.integers(0, size, 2)))
            discs.append(bool(rng.random() < 0.5))
            background_colour = self._colours(rng)
            region_colour = background_colour if rng.random() < 0.5 else self._colours(rng)
            for k, (mean, mixing) in enumerate((background_colour, region_colour)):
                colours[k, b, :, 0], colours[k, b, :, 1:] = mean, mixing
            noise[b] = _white(rng, size, channels=3) * (self.noise_std * np.sqrt(12.0))

        # torch's batched FFTs are faster than numpy's here.
        filters = torch.from_numpy(responses)
        spectra = torch.fft.rfft2(torch.from_numpy(sources)).view(count, 2, 2, *filters.shape[-2:])
        fields_t = torch.fft.irfft2(spectra * filters[:, :, None], s=(size, size)).view(count, 4, size, size)
        fields_t = fields_t - fields_t.mean(dim=(-2, -1), keepdim=True)
        fields = (fields_t / fields_t.std(dim=(-2, -1), keepdim=True).clamp_min(1e-8)).numpy()
        autocorrelations_t = torch.fft.irfft2(filters[:, 1] ** 2, s=(size, size))
        autocorrelations = (autocorrelations_t / autocorrelations_t[:, :1, :1].clamp_min(1e-12)).numpy()

        # The symmetrised region texture on an otherwise empty canvas, then colouring and compositing as a batch.
        canvas = np.zeros((count, 2, size, size), np.float32)
        regions = np.zeros((count, size, size), bool)
        for b, ((top, left, side), offset, disc) in enumerate(zip(boxes, field_offsets, discs, strict=True)):
            name = self.classes[labels[b]]
            canvas[b, :, top : top + side, left : left + side] = symmetrize(
                fields[b, 2:], autocorrelations[b], offset[0], offset[1], side, name
            )
            regions[b, top : top + side, left : left + side] = _disc(side) if disc else True
        background = colours[0, :, :, 0, None, None] + np.einsum("bcf,bfhw->bchw", colours[0, :, :, 1:], fields[:, :2])
        region = colours[1, :, :, 0, None, None] + np.einsum("bcf,bfhw->bchw", colours[1, :, :, 1:], canvas)
        composed = blur_images(np.where(regions[:, None], region, background), self.blur)
        composed = composed + colour_noise(noise, self.noise_colour)
        images = np.round(np.clip(composed, 0.0, 1.0) * 255.0).astype(np.uint8)
        return SymmetryBatch(images=images, labels=labels, regions=regions, boxes=boxes)


class SymmetryDataset(Dataset):
    """One split of the generated benchmark.

    Items are ``(image (3, S, S) float32, target)``: the class index ``()`` int64 for classification, or the mask
    ``(S, S)`` int64 for segmentation, which is 0 outside the region and for ``none`` regions, and inside symmetric
    regions 1 (``seg_labels="binary"``) or ``1 + `` the class's position among the non-``none`` classes
    (``"per_class"``).

    Args:
        generator: the image generator.
        split: which split (its own random stream).
        size: number of images.
        transform: the (joint) transform.
        task: ``"classification"`` or ``"segmentation"``.
        seg_labels: mask coding for segmentation.
        cache: generate all images once, at construction, in vectorised chunks (else each item on access).
    """

    def __init__(
        self,
        generator: SymmetryGenerator,
        split: Split,
        size: int,
        transform: Transform,
        task: Task = "classification",
        seg_labels: SegLabels = "binary",
        cache: bool = True,
    ) -> None:
        check_choice("task", task, Task)
        check_choice("seg_labels", seg_labels, SegLabels)
        if size < 1:
            raise ValueError(f"size={size} of the {split} split must be positive")
        self.generator, self.split, self.size = generator, split, int(size)
        self.transform, self.task, self.seg_labels = transform, task, seg_labels
        symmetric = [c for c in generator.classes if c != "none"]

        def code(name: str) -> int:
            if name == "none":
                return 0
            return 1 if seg_labels == "binary" else 1 + symmetric.index(name)

        self._mask_codes = np.asarray([code(c) for c in generator.classes], np.uint8)
        self._cache: SymmetryBatch | None = None
        if cache:
            starts = range(0, self.size, 256)
            chunks = [generator.generate(split, np.arange(s, min(s + 256, self.size))) for s in starts]
            self._cache = SymmetryBatch(
                images=np.concatenate([c.images for c in chunks]),
                labels=np.concatenate([c.labels for c in chunks]),
                regions=np.concatenate([c.regions for c in chunks]),
                boxes=np.concatenate([c.boxes for c in chunks]),
            )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for the {self.split} split of {self.size} images")
        if self._cache is not None:
            image, label, region = self._cache.images[index], self._cache.labels[index], self._cache.regions[index]
        else:
            batch = self.generator.generate(self.split, [index])
            image, label, region = batch.images[0], batch.labels[0], batch.regions[0]
        image_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)))
        if self.task == "classification":
            return self.transform(image_t).as_subclass(torch.Tensor), torch.tensor(int(label), dtype=torch.int64)
        mask = torch.from_numpy(region.astype(np.uint8) * self._mask_codes[label])
        image_out, mask_out = self.transform(image_t, tv_tensors.Mask(mask))
        return image_out.as_subclass(torch.Tensor), mask_out.as_subclass(torch.Tensor)


class SymmetryDataModule(ImageDataModule):
    """The generated symmetry benchmark (no files, no download; the offline default).

    Args:
        image_size: side of the generated images (they are generated at this size, not resized).
        batch_size: batch size.
        augment: random square crops with isotropic rescaling (the only label-preserving geometry; off by default).
        classes: symmetry classes in label order, a subset of ``SYMMETRY_CLASSES``.
        task: ``"classification"`` (label = symmetry class) or ``"segmentation"`` (mask of the symmetric region).
        seg_labels: segmentation coding: ``"binary"`` (background / symmetric) or ``"per_class"`` (background and one
            label per non-``none`` class).
        num_train: training images.
        num_val: validation images.
        num_test: test images.
        textures: texture families.
        noise_std: additive pixel noise (difficulty knob).
        region_size: range of the symmetric region's side as a fraction of the image side.
        cache: generate each split once in setup (fast epochs) instead of on every access.
        palette: colour palette of the training domain (:mod:`fftprompt.data.domains`).
        noise_colour: pixel-noise spectrum of the training domain (``white``, ``pink``, ``brown``).
        blur: blur of the training domain (Gaussian standard deviation as a fraction of the image side).
        test_domain: domain parameters (some of ``textures``, ``palette``, ``noise_colour``, ``noise_std``,
            ``blur``) that the test split is rendered with instead of the training domain's (train and val stay in
            the training domain), or None: an in-domain test split.
        **common: see :class:`~fftprompt.data.base.ImageDataModule` (``seed`` also seeds the generator).
    """

    policy = "symmetry"

    def __init__(
        self,
        *,
        image_size: int = 64,
        batch_size: int = 64,
        augment: bool = False,
        classes: Sequence[str] = DEFAULT_SYMMETRY_CLASSES,
        task: Task = "classification",
        seg_labels: SegLabels = "binary",
        num_train: int = 2000,
        num_val: int = 400,
        num_test: int = 600,
        textures: Sequence[str] = TEXTURES,
        noise_std: float = NOISE_STD,
        region_size: Sequence[float] = REGION_SIZE,
        cache: bool = True,
        palette: Palette = "natural",
        noise_colour: NoiseColour = "white",
        blur: float = 0.0,
        test_domain: Mapping[str, Any] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, augment=augment, **common)
        check_choice("task", task, Task)
        check_choice("seg_labels", seg_labels, SegLabels)
        self.task = task
        self.seg_labels: SegLabels = seg_labels
        domain = {"textures": textures, "palette": palette, "noise_colour": noise_colour, "noise_std": noise_std}
        shared = {"image_size": self.image_size, "classes": classes, "region_size": region_size, "seed": self.seed}
        self.generator = SymmetryGenerator(**shared, **domain, blur=blur)
        self.test_domain = None if test_domain is None else check_domain(test_domain)
        self.test_generator = self.generator
        if self.test_domain is not None:
            self.test_generator = SymmetryGenerator(**shared, **{**domain, "blur": blur, **self.test_domain})
        self.split_sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        for split, count in self.split_sizes.items():
            if count < 1:
                raise ValueError(f"num_{split}={count} must be positive")
        self.cache = bool(cache)

    def _build(self) -> tuple[dict[str, Dataset], list[str]]:
        datasets: dict[str, Dataset] = {
            split: SymmetryDataset(
                self.test_generator if split == "test" else self.generator,
                split,
                size,
                self.transform(split),
                self.task,
                self.seg_labels,
                self.cache,
            )
            for split, size in self.split_sizes.items()
        }
        if self.task == "classification":
            return datasets, list(self.generator.classes)
        if self.seg_labels == "binary":
            return datasets, ["background", "symmetric"]
        return datasets, ["background", *(c for c in self.generator.classes if c != "none")]
