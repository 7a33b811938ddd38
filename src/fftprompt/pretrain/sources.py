"""Procedural image sources for pretraining besides :class:`~fftprompt.pretrain.FractalDB`: coloured ``1/f^a`` noise,
dead leaves, VisualAtom-style sinusoidal contours, and mixtures of sources.

Every source has ``num_classes`` (``0``: no classes, for self-supervised objectives only), ``image_size``,
``sample(batch_size, seed, device) -> (images (B, 3, H, W) in [0, 1], labels (B,) int64)`` drawn from
``torch.Generator(device).manual_seed(seed)``, ``fingerprint()`` (SHA256 of what defines it) and ``describe()``.
The maths are in :mod:`fftprompt.pretrain.procedural`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fftprompt.pretrain.procedural import (
    DISC,
    RECTANGLE,
    SQUARE,
    power_law_noise,
    power_law_radii,
    render_contours,
    top_shape_windowed,
)

__all__ = ["ColouredNoise", "DeadLeaves", "Mixture", "SinusoidalContours"]

_SHAPES = {"disc": DISC, "square": SQUARE, "rectangle": RECTANGLE}


def _range(
    name: str, value: Sequence[float], low: float, high: float, *, open_low: bool = False
) -> tuple[float, float]:
    """``value`` as a ``(lo, hi)`` float pair with ``low <= lo <= hi <= high`` (``low < lo`` when ``open_low``)."""
    pair = tuple(float(v) for v in value)
    lo_ok = len(pair) == 2 and (pair[0] > low if open_low else pair[0] >= low)
    if not (lo_ok and pair[0] <= pair[1] <= high):
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be a pair lo <= hi within {bracket}{low}, {high}], got {list(value)}")
    return pair  # type: ignore[return-value]


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def _at_least(name: str, value: int, low: int) -> int:
    if int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return int(value)


def _settings_sha256(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _uniform(low_high: tuple[float, float], shape: tuple[int, ...], generator: torch.Generator, device) -> Tensor:
    low, high = low_high
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


class ColouredNoise:
    """Random-phase coloured noise with a ``1/f^a`` amplitude spectrum ("spectrum + color", Baradad et al.,
    NeurIPS 2021). No classes.

    Per image: ``a`` uniform in ``exponent_range``; the spectrum stretched by a factor uniform in ``anisotropy_range``
    along a random orientation; 1 to 3 independent fields (same spectrum) mixed into RGB by a random ``3 x 3`` matrix
    with entries in ``[-1, 1]`` plus a random offset per channel (``colour=False``: one field, grey); with
    probability ``grating_prob`` a sinusoidal grating (amplitude uniform in ``[0, 2]`` against the unit-variance
    fields, 2 to ``size / 4`` cycles per image, random orientation, phase and colour) is added. Each image is then
    min-max normalised to ``[0, 1]`` over its three channels jointly (an affine map: the spectrum's shape is kept).

    Args:
        image_size: Side of the images.
        exponent_range: ``(low, high)`` amplitude exponent ``a`` (power spectrum ``f^-2a``).
        anisotropy_range: ``(low, high)`` stretch factor, ``>= 1`` (1: isotropic).
        colour: Mix 1-3 fields through a random colour matrix (else grey images).
        grating_prob: Probability that an image gets a grating.
    """

    num_classes = 0

    def __init__(
        self,
        image_size: int = 64,
        exponent_range: Sequence[float] = (0.5, 2.5),
        anisotropy_range: Sequence[float] = (1.0, 4.0),
        colour: bool = True,
        grating_prob: float = 0.3,
    ) -> None:
        self.image_size = _at_least("image_size", image_size, 4)
        self.exponent_range = _range("exponent_range", exponent_range, 0.0, 5.0)
        self.anisotropy_range = _range("anisotropy_range", anisotropy_range, 1.0, 100.0)
        self.colour = bool(colour)
        self.grating_prob = _probability("grating_prob", grating_prob)

    def sample(self, batch_size: int, seed: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``batch_size`` images ``(B, 3, H, W)`` in ``[0, 1]`` and zero labels ``(B,)``, drawn from ``seed``."""
        device = torch.device(device)
        generator = torch.Generator(device).manual_seed(seed)
        return self.render(batch_size, generator, device), torch.zeros(batch_size, dtype=torch.long, device=device)

    def render(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """``(B, 3, H, W)`` images in ``[0, 1]``."""
        size, batch = self.image_size, batch_size
        exponent = _uniform(self.exponent_range, (batch,), generator, device)
        anisotropy = _uniform(self.anisotropy_range, (batch,), generator, device)
        orientation = _uniform((0.0, math.pi), (batch,), generator, device)
        fields = power_law_noise(exponent, anisotropy, orientation, size, 3 if self.colour else 1, generator)
        if self.colour:
            matrix = _uniform((-1.0, 1.0), (batch, 3, 3), generator, device)
            used = torch.randint(1, 4, (batch,), generator=generator, device=device)
            matrix = matrix * (torch.arange(3, device=device)[None, None, :] < used[:, None, None])
            offset = _uniform((-1.0, 1.0), (batch, 3), generator, device)
            images = torch.einsum("bcf,bfhw->bchw", matrix, fields) + offset[:, :, None, None]
        else:
            images = fields.expand(batch, 3, size, size)
        if self.grating_prob > 0:
            draw = torch.rand(batch, 5, generator=generator, device=device)
            cycles = 2 + draw[:, 0] * max(size / 4 - 2, 0.0)
            angle, phase = draw[:, 1] * math.pi, draw[:, 2] * 2 * math.pi
            amplitude = 2 * draw[:, 3] * (draw[:, 4] < self.grating_prob)
            tint = _uniform((-1.0, 1.0), (batch, 3), generator, device)
            grid = (torch.arange(size, device=device) + 0.5) / size
            along = grid[None, None, :] * angle.cos()[:, None, None] + grid[None, :, None] * angle.sin()[:, None, None]
            wave = torch.sin(2 * math.pi * cycles[:, None, None] * along + phase[:, None, None])
            images = images + (amplitude[:, None] * tint)[:, :, None, None] * wave[:, None]
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        return ((images - low) / (high - low).clamp_min(1e-12)).contiguous()

    def settings(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "exponent_range": list(self.exponent_range),
            "anisotropy_range": list(self.anisotropy_range),
            "colour": self.colour,
            "grating_prob": self.grating_prob,
        }

    def fingerprint(self) -> str:
        """SHA256 of the settings (the source has no classes)."""
        return _settings_sha256({"source": "ColouredNoise", **self.settings()})

    def describe(self) -> dict[str, Any]:
        """The settings, for model cards."""
        return {
            "generator": "coloured 1/f^a random-phase noise (Baradad et al., NeurIPS 2021, 'spectrum + color')",
            "num_classes": 0,
            **self.settings(),
            "settings_sha256": self.fingerprint(),
        }


class DeadLeaves:
    """Dead-leaves images (Lee, Mumford & Huang, IJCV 2001; Baradad et al., NeurIPS 2021): ``num_shapes`` occluding
    shapes painted back to front over a random background colour. No classes.

    Radii follow ``p(r) ~ r^-alpha`` on ``radius_range`` (fractions of the image side); centres are uniform over the
    image; shapes are drawn uniformly from ``shapes`` (discs; axis-aligned squares; rectangles with a random
    rotation and a side ratio in ``[0.3, 1]``); each has a random colour and, with probability ``textured_prob``, a
    texture: a second colour blended in by one of two per-image ``1/f^a`` noise fields (``a`` uniform in
    ``texture_exponent_range``) normalised to ``[0, 1]``.

    Args:
        image_size: Side of the images.
        num_shapes: Shapes per image.
        alpha: Exponent of the radius distribution.
        radius_range: ``(low, high)`` radius as a fraction of the image side.
        shapes: Shape kinds drawn from: ``"disc"``, ``"square"``, ``"rectangle"``.
        textured_prob: Probability that a shape is textured.
        texture_exponent_range: ``(low, high)`` amplitude exponent of the texture fields.
    """

    num_classes = 0

    def __init__(
        self,
        image_size: int = 64,
        num_shapes: int = 64,
        alpha: float = 3.0,
        radius_range: Sequence[float] = (0.02, 0.5),
        shapes: Sequence[str] = ("disc", "square", "rectangle"),
        textured_prob: float = 0.3,
        texture_exponent_range: Sequence[float] = (1.0, 2.0),
    ) -> None:
        self.image_size = _at_least("image_size", image_size, 4)
        self.num_shapes = _at_least("num_shapes", num_shapes, 1)
        if num_shapes > 32767:
            raise ValueError(f"num_shapes must be <= 32767, got {num_shapes}")
        if not 0.0 <= alpha <= 10.0:
            raise ValueError(f"alpha must lie in [0, 10], got {alpha}")
        self.alpha = float(alpha)
        self.radius_range = _range("radius_range", radius_range, 0.0, 2.0, open_low=True)
        shapes = [str(s) for s in shapes]
        if not shapes or any(s not in _SHAPES for s in shapes):
            raise ValueError(f"shapes must be a non-empty list of {sorted(_SHAPES)}, got {shapes}")
        self.shapes = tuple(shapes)
        self.textured_prob = _probability("textured_prob", textured_prob)
        self.texture_exponent_range = _range("texture_exponent_range", texture_exponent_range, 0.0, 5.0)

    def sample(self, batch_size: int, seed: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``batch_size`` images ``(B, 3, H, W)`` in ``[0, 1]`` and zero labels ``(B,)``, drawn from ``seed``."""
        device = torch.device(device)
        generator = torch.Generator(device).manual_seed(seed)
        return self.render(batch_size, generator, device), torch.zeros(batch_size, dtype=torch.long, device=device)

    def render(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """``(B, 3, H, W)`` images in ``[0, 1]``."""
        size, batch, count = self.image_size, batch_size, self.num_shapes
        low, high = (size * r for r in self.radius_range)
        radii = power_law_radii(torch.rand(batch, count, generator=generator, device=device), self.alpha, low, high)
        centres = torch.rand(batch, count, 2, generator=generator, device=device) * size
        kinds_allowed = torch.tensor([_SHAPES[s] for s in self.shapes], device=device)
        kinds = kinds_allowed[torch.randint(len(kinds_allowed), (batch, count), generator=generator, device=device)]
        angles = torch.rand(batch, count, generator=generator, device=device) * math.pi
        aspects = 0.3 + 0.7 * torch.rand(batch, count, generator=generator, device=device)
        angles = torch.where(kinds == RECTANGLE, angles, 0.0)
        aspects = torch.where(kinds == RECTANGLE, aspects, 1.0)
        top = top_shape_windowed(centres, radii, kinds, angles, aspects, size) + 1  # (B, H, W), 0: background
        colours = torch.rand(batch, count + 1, 2, 3, generator=generator, device=device)  # index 0: background
        textured = torch.rand(batch, count + 1, generator=generator, device=device) < self.textured_prob
        textured[:, 0] = False
        texture_id = torch.randint(2, (batch, count + 1), generator=generator, device=device)
        flat = top.view(batch, -1)
        first = colours[..., 0, :].gather(1, flat[..., None].expand(-1, -1, 3))  # (B, HW, 3)
        if self.textured_prob > 0:
            exponent = _uniform(self.texture_exponent_range, (batch,), generator, device)
            ones = torch.ones(batch, device=device)
            fields = power_law_noise(exponent, ones, ones * 0, size, 2, generator).view(batch, 2, -1)
            low_f, high_f = fields.amin(dim=2, keepdim=True), fields.amax(dim=2, keepdim=True)
            fields = (fields - low_f) / (high_f - low_f).clamp_min(1e-12)
            blend = fields.gather(1, texture_id.gather(1, flat)[:, None]).squeeze(1)  # (B, HW)
            blend = blend * textured.gather(1, flat)
            second = colours[..., 1, :].gather(1, flat[..., None].expand(-1, -1, 3))
            first = first + (second - first) * blend[..., None]
        return first.transpose(1, 2).reshape(batch, 3, size, size).contiguous()

    def settings(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "num_shapes": self.num_shapes,
            "alpha": self.alpha,
            "radius_range": list(self.radius_range),
            "shapes": list(self.shapes),
            "textured_prob": self.textured_prob,
            "texture_exponent_range": list(self.texture_exponent_range),
        }

    def fingerprint(self) -> str:
        """SHA256 of the settings (the source has no classes)."""
        return _settings_sha256({"source": "DeadLeaves", **self.settings()})

    def describe(self) -> dict[str, Any]:
        """The settings, for model cards."""
        return {
            "generator": "dead leaves with power-law radii (Lee et al., IJCV 2001; Baradad et al., NeurIPS 2021)",
            "num_classes": 0,
            **self.settings(),
            "settings_sha256": self.fingerprint(),
        }


class SinusoidalContours:
    """VisualAtom-style classes (Takashima et al., CVPR 2023): each class is a pair of frequencies ``n1, n2``
    (integers in ``frequency_range``) and amplitudes ``lam1, lam2`` (uniform in ``amplitude_range``), drawn from
    ``seed`` on the CPU. An instance draws ``num_contours`` concentric contours
    ``r(theta) = r0 + lam1 sin(n1 theta) + lam2 sin(n2 theta)`` with ``r0`` evenly spaced in ``[0.2, 1]``, each
    contour's ``lam`` times ``1 + jitter * q`` with ``q`` quantised noise (uniform on ``jitter_levels`` steps of
    ``[-1, 1]``, VisualAtom's quantised perturbation), rendered as lines of ``line_width`` pixels at a random
    centre, scale, rotation and colour on a black background.

    Args:
        num_classes: ``K`` classes.
        seed: Seed of the class parameters (the classes depend on it only).
        image_size: Side of the images.
        frequency_range: ``(low, high)`` inclusive range of ``n1, n2``.
        amplitude_range: ``(low, high)`` of ``lam1, lam2`` in units of the outer contour's base radius (radii that
            would turn negative are clamped to 0).
        num_contours: Contours per image (64 px images hold about 10 distinct ones).
        jitter: Relative amplitude perturbation per contour and instance.
        jitter_levels: Quantisation steps of the perturbation (``>= 2``).
        scale_range: ``(low, high)`` outer base radius as a fraction of half the image side.
        max_offset: Largest shift of the centre, as a fraction of the image side.
        line_width: Pixels over which a line fades out.

    Attributes:
        classes: ``(K, 4)`` float32 rows ``(n1, n2, lam1, lam2)``.
    """

    def __init__(
        self,
        num_classes: int = 300,
        seed: int = 0,
        image_size: int = 64,
        frequency_range: Sequence[int] = (0, 20),
        amplitude_range: Sequence[float] = (0.0, 0.1),
        num_contours: int = 10,
        jitter: float = 0.2,
        jitter_levels: int = 5,
        scale_range: Sequence[float] = (0.6, 1.0),
        max_offset: float = 0.1,
        line_width: float = 1.0,
    ) -> None:
        self.num_classes = _at_least("num_classes", num_classes, 2)
        self.seed = int(seed)
        self.image_size = _at_least("image_size", image_size, 4)
        low, high = _range("frequency_range", frequency_range, 0, 1000)
        if low != int(low) or high != int(high):
            raise ValueError(f"frequency_range must hold integers, got {list(frequency_range)}")
        self.frequency_range = (int(low), int(high))
        self.amplitude_range = _range("amplitude_range", amplitude_range, 0.0, 0.5)
        self.num_contours = _at_least("num_contours", num_contours, 1)
        self.jitter = _probability("jitter", jitter)
        self.jitter_levels = _at_least("jitter_levels", jitter_levels, 2)
        self.scale_range = _range("scale_range", scale_range, 0.0, 2.0, open_low=True)
        if not 0.0 <= max_offset <= 0.5:
            raise ValueError(f"max_offset must lie in [0, 0.5], got {max_offset}")
        self.max_offset = float(max_offset)
        if line_width <= 0:
            raise ValueError(f"line_width must be > 0, got {line_width}")
        self.line_width = float(line_width)
        generator = torch.Generator().manual_seed(self.seed)
        lo, hi = self.frequency_range
        frequencies = torch.randint(lo, hi + 1, (self.num_classes, 2), generator=generator).float()
        amplitudes = _uniform(self.amplitude_range, (self.num_classes, 2), generator, "cpu")
        self.classes = torch.cat([frequencies, amplitudes], dim=1)
        self._on_device: dict[torch.device, Tensor] = {}

    def fingerprint(self) -> str:
        """SHA256 of the class parameters (float32 bytes): equal fingerprints mean equal classes."""
        return hashlib.sha256(self.classes.contiguous().numpy().tobytes()).hexdigest()

    def sample(self, batch_size: int, seed: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """A batch of instances ``(B, 3, H, W)`` in ``[0, 1]`` with uniform labels ``(B,)``, drawn from ``seed``."""
        device = torch.device(device)
        generator = torch.Generator(device).manual_seed(seed)
        labels = torch.randint(self.num_classes, (batch_size,), generator=generator, device=device)
        return self.render(labels, generator), labels

    def instances(self, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Contour parameters of one random instance per label: ``base, lam1, lam2`` ``(B, C)``, ``n1, n2`` ``(B,)``."""
        device = labels.device
        if device not in self._on_device:
            self._on_device[device] = self.classes.to(device)
        rows = self._on_device[device][labels]
        batch, count = labels.shape[0], self.num_contours
        steps = torch.randint(self.jitter_levels, (batch, count, 2), generator=generator, device=device)
        factor = 1 + self.jitter * (2 * steps.float() / (self.jitter_levels - 1) - 1)
        base = torch.linspace(0.2, 1.0, count, device=device) if count > 1 else torch.ones(1, device=device)
        return {
            "base": base.expand(batch, count),
            "lam1": rows[:, 2:3] * factor[..., 0],
            "n1": rows[:, 0],
            "lam2": rows[:, 3:4] * factor[..., 1],
            "n2": rows[:, 1],
        }

    def render(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Renders one random instance of each class in ``labels``: ``(B,) -> (B, 3, H, W)`` in ``[0, 1]``."""
        device, batch, size = labels.device, labels.shape[0], self.image_size
        params = self.instances(labels, generator)
        draw = torch.rand(batch, 4, generator=generator, device=device)
        low, high = self.scale_range
        scale = (low + (high - low) * draw[:, 0]) * size / 2
        centre = (0.5 + (2 * draw[:, 1:3] - 1) * self.max_offset) * size
        rotation = draw[:, 3] * 2 * math.pi
        colour = 0.2 + 0.8 * torch.rand(batch, 3, generator=generator, device=device)
        lines = render_contours(
            **params, centre=centre, scale=scale, rotation=rotation, size=size, line_width=self.line_width
        )
        return (lines[:, None] * colour[:, :, None, None]).contiguous()

    def describe(self) -> dict[str, Any]:
        """The settings and a summary of the classes, for model cards."""
        return {
            "generator": "VisualAtom-style sinusoidal contours (Takashima et al., CVPR 2023)",
            "num_classes": self.num_classes,
            "seed": self.seed,
            "image_size": self.image_size,
            "frequency_range": list(self.frequency_range),
            "amplitude_range": list(self.amplitude_range),
            "num_contours": self.num_contours,
            "jitter": self.jitter,
            "jitter_levels": self.jitter_levels,
            "scale_range": list(self.scale_range),
            "max_offset": self.max_offset,
            "line_width": self.line_width,
            "distinct_frequency_pairs": len({tuple(r) for r in self.classes[:, :2].tolist()}),
            "classes_sha256": self.fingerprint(),
        }


class Mixture:
    """Each image drawn from one of ``components``, chosen with probabilities ``weights`` (``None``: equal).

    Labels of component ``j`` are offset by the classes of the components before it, so ``num_classes`` is their
    sum; when any component has no classes (``num_classes == 0``), the mixture has none either and every label is 0.
    Component ``j`` renders only its own images, from a seed derived from ``(seed, j)``.

    Args:
        components: Sources sharing one ``image_size``.
        weights: Non-negative weights, one per component, with a positive sum (normalised here).
        image_size: The components' shared side, checked when given (a pretraining config passes its own).
    """

    def __init__(
        self, components: Sequence[Any], weights: Sequence[float] | None = None, image_size: int | None = None
    ) -> None:
        self.components = list(components)
        if not self.components:
            raise ValueError("components must hold at least one source, got none")
        sizes = {int(c.image_size) for c in self.components}
        if len(sizes) != 1:
            raise ValueError(f"components must share one image_size, got {sorted(sizes)}")
        self.image_size = sizes.pop()
        if image_size is not None and int(image_size) != self.image_size:
            raise ValueError(f"image_size={image_size} differs from the components' image_size={self.image_size}")
        if weights is None:
            weights = [1.0] * len(self.components)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.components) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"weights must be {len(self.components)} non-negative numbers with a positive sum, got {weights}"
            )
        self.weights = [w / sum(weights) for w in weights]
        counts = [int(c.num_classes) for c in self.components]
        self.num_classes = 0 if 0 in counts else sum(counts)
        self.offsets = [sum(counts[:j]) for j in range(len(counts))] if self.num_classes else [0] * len(counts)

    @staticmethod
    def component_seed(seed: int, index: int) -> int:
        """The seed component ``index`` renders its images of a batch from (63 bits of SHA256 of both)."""
        return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1

    def sample(self, batch_size: int, seed: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` images in ``[0, 1]`` and labels ``(B,)`` (offset per component; zeros without classes)."""
        device = torch.device(device)
        generator = torch.Generator(device).manual_seed(seed)
        weights = torch.tensor(self.weights, device=device)
        assignment = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        size = self.image_size
        images = torch.empty(batch_size, 3, size, size, device=device)
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        for index, component in enumerate(self.components):
            chosen = torch.nonzero(assignment == index).flatten()
            if len(chosen) == 0:
                continue
            part, part_labels = component.sample(len(chosen), self.component_seed(seed, index), device)
            images[chosen] = part
            if self.num_classes:
                labels[chosen] = part_labels + self.offsets[index]
        return images, labels

    def fingerprint(self) -> str:
        """SHA256 over the components' fingerprints and the weights."""
        parts = [c.fingerprint() for c in self.components] + [repr(self.weights)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The components' descriptions and the weights, for model cards."""
        return {
            "generator": "mixture of procedural sources (Baradad et al., NeurIPS 2021)",
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "weights": self.weights,
            "label_offsets": self.offsets,
            "components": [c.describe() for c in self.components],
            "sha256": self.fingerprint(),
        }
