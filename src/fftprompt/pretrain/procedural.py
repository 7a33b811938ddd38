"""Procedural image models as plain tensor functions, batched on the device the tensors live on: power-law
(``1/f^a``) noise, dead-leaves occlusion and VisualAtom-style sinusoidal contours.

Pixel ``(row y, column x)`` has its centre at ``(x + 0.5, y + 0.5)`` in pixel units. All randomness comes from the
``torch.Generator`` passed in; the classes of :mod:`fftprompt.pretrain.sources` hold the settings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "contour_radius",
    "power_law_noise",
    "power_law_radii",
    "render_contours",
    "shape_masks",
    "top_shape",
    "top_shape_windowed",
]

DISC, SQUARE, RECTANGLE = 0, 1, 2
# half-widths of the pixel windows shapes are rasterised in by top_shape_windowed (larger shapes: the whole image)
_WINDOW_HALVES = (2, 4, 8, 16)


def power_law_noise(
    exponent: Tensor, anisotropy: Tensor, orientation: Tensor, size: int, num_fields: int, generator: torch.Generator
) -> Tensor:
    """Random-phase noise fields whose amplitude spectrum is ``|f'|^-a``: white Gaussian noise filtered in the Fourier
    domain, ``f' = (s u, v)`` the frequency ``f`` rotated by ``orientation`` and stretched by ``s = anisotropy`` along
    ``u`` (so the texture is elongated across it); the DC term is removed.

    Args:
        exponent: ``(B,)`` amplitude exponents ``a`` (the power spectrum falls as ``f^-2a``).
        anisotropy: ``(B,)`` stretch factors ``s > 0`` (1: isotropic).
        orientation: ``(B,)`` angles of ``u`` in radians.
        size: Side ``H = W`` of the fields.
        num_fields: ``F`` independent fields per image (sharing the spectrum's parameters).

    Returns:
        ``(B, F, H, W)`` float32 fields of zero mean and unit standard deviation per field.
    """
    device = exponent.device
    batch = exponent.shape[0]
    white = torch.randn(batch, num_fields, size, size, generator=generator, device=device)
    fy = torch.fft.fftfreq(size, device=device)[:, None]
    fx = torch.fft.rfftfreq(size, device=device)[None, :]
    cos, sin = orientation.cos()[:, None, None], orientation.sin()[:, None, None]
    u = (fx * cos + fy * sin) * anisotropy[:, None, None]
    v = fy * cos - fx * sin
    frequency = (u * u + v * v).sqrt()
    amplitude = torch.where(frequency > 0, frequency, 1.0).pow(-exponent[:, None, None])
    amplitude[:, 0, 0] = 0.0
    fields = torch.fft.irfft2(torch.fft.rfft2(white) * amplitude[:, None], s=(size, size))
    fields = fields - fields.mean(dim=(2, 3), keepdim=True)
    return fields / fields.std(dim=(2, 3), keepdim=True).clamp_min(1e-12)


def power_law_radii(uniform: Tensor, alpha: float, low: float, high: float) -> Tensor:
    """Inverse-CDF samples of ``p(r) ~ r^-alpha`` on ``[low, high]`` from uniform draws in ``[0, 1)`` (same shape)."""
    if abs(alpha - 1.0) < 1e-9:
        return low * (high / low) ** uniform
    power = 1.0 - alpha
    return (low**power + uniform * (high**power - low**power)) ** (1.0 / power)


def _inside(dx: Tensor, dy: Tensor, radius: Tensor, kind: Tensor, angle: Tensor, aspect: Tensor) -> Tensor:
    """Whether offsets ``(dx, dy)`` from a shape's centre lie in it; shape parameters broadcast against the offsets.
    Discs have radius ``r``; squares and rectangles half-sides ``r`` and ``r * aspect`` along their ``angle``."""
    cos, sin = angle.cos(), angle.sin()
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    disc = u * u + v * v <= radius * radius
    box = (u.abs() <= radius) & (v.abs() <= radius * aspect)
    return torch.where(kind == DISC, disc, box)


def shape_masks(centres: Tensor, radii: Tensor, kinds: Tensor, angles: Tensor, aspects: Tensor, size: int) -> Tensor:
    """Rasterised shapes (reference path: every shape over the whole image).

    Args:
        centres: ``(B, S, 2)`` ``(x, y)`` in pixel units.
        radii: ``(B, S)`` radii (discs) or half-sides (boxes) in pixels.
        kinds: ``(B, S)`` ``0`` disc, ``1`` square, ``2`` rectangle.
        angles: ``(B, S)`` rotations in radians (ignored by discs).
        aspects: ``(B, S)`` ratio of the boxes' second half-side to ``radii``.
        size: Side of the image.

    Returns:
        ``(B, S, H, W)`` bool, pixel centres inside each shape.
    """
    grid = torch.arange(size, device=centres.device, dtype=centres.dtype) + 0.5
    dx = grid[None, None, None, :] - centres[..., 0, None, None]
    dy = grid[None, None, :, None] - centres[..., 1, None, None]
    params = [t[..., None, None] for t in (radii, kinds, angles, aspects)]
    return _inside(dx, dy, *params)


def top_shape(masks: Tensor) -> Tensor:
    """Index of the last (front-most) shape covering each pixel, shapes painted in order ``0 .. S-1``:
    ``(B, S, H, W)`` bool ``-> (B, H, W)`` int64, ``-1`` where no shape covers the pixel."""
    order = torch.arange(1, masks.shape[1] + 1, device=masks.device, dtype=torch.int16)
    return (masks * order[None, :, None, None]).amax(dim=1).long() - 1


def top_shape_windowed(
    centres: Tensor, radii: Tensor, kinds: Tensor, angles: Tensor, aspects: Tensor, size: int
) -> Tensor:
    """:func:`top_shape` of :func:`shape_masks` without the ``(B, S, H, W)`` masks: each shape is tested only in a
    pixel window around its centre that holds it (a few window sizes, shapes grouped by their bounding radius), and
    the front-most index kept per pixel by a scatter-max. Same arguments and result as the reference path."""
    batch, count = radii.shape
    device = centres.device
    bound = radii * torch.where(kinds == DISC, 1.0, math.sqrt(2.0) * aspects.clamp_min(1.0))
    group = torch.full_like(kinds, len(_WINDOW_HALVES))
    for index, half in reversed(list(enumerate(_WINDOW_HALVES))):
        group = torch.where(bound <= half - 0.5, index, group)
    image = torch.arange(batch, device=device)[:, None].expand(batch, count)
    order = torch.arange(count, device=device)[None, :].expand(batch, count)
    canvas = torch.zeros(batch * size * size + 1, dtype=torch.long, device=device)  # last slot: outside the image
    for index in range(len(_WINDOW_HALVES) + 1):
        chosen = group == index
        if not bool(chosen.any()):
            continue
        c, r, k, a, s = (t[chosen] for t in (centres, radii, kinds, angles, aspects))
        if index < len(_WINDOW_HALVES):
            half = _WINDOW_HALVES[index]
            offsets = torch.arange(-half, half + 1, device=device)
            columns = c[:, 0].floor().long()[:, None] + offsets  # (N, w)
            rows = c[:, 1].floor().long()[:, None] + offsets
        else:
            columns = rows = torch.arange(size, device=device)[None, :].expand(len(r), size)
        dx = (columns[:, None, :] + 0.5) - c[:, 0, None, None]
        dy = (rows[:, :, None] + 0.5) - c[:, 1, None, None]
        inside = _inside(dx, dy, *(t[:, None, None] for t in (r, k, a, s)))
        inside &= (columns[:, None, :] >= 0) & (columns[:, None, :] < size)
        inside &= (rows[:, :, None] >= 0) & (rows[:, :, None] < size)
        flat = (image[chosen][:, None, None] * size + rows[:, :, None]) * size + columns[:, None, :]
        flat = torch.where(inside, flat, batch * size * size)
        value = (order[chosen] + 1)[:, None, None].expand_as(flat)
        canvas.scatter_reduce_(0, flat.reshape(-1), value.reshape(-1), reduce="amax")
    return canvas[:-1].view(batch, size, size) - 1


def contour_radius(theta: Tensor, base: Tensor, lam1: Tensor, n1: Tensor, lam2: Tensor, n2: Tensor) -> Tensor:
    """VisualAtom's contour ``r(theta) = r0 + lam1 sin(n1 theta) + lam2 sin(n2 theta)``; all arguments broadcast."""
    return base + lam1 * torch.sin(n1 * theta) + lam2 * torch.sin(n2 * theta)


def render_contours(
    base: Tensor,
    lam1: Tensor,
    n1: Tensor,
    lam2: Tensor,
    n2: Tensor,
    centre: Tensor,
    scale: Tensor,
    rotation: Tensor,
    size: int,
    line_width: float,
) -> Tensor:
    """Line images of concentric contours ``r_c(theta) = scale * contour_radius(theta - rotation)``.

    The distance of a pixel at polar ``(rho, theta)`` to contour ``c`` is approximated to first order by
    ``|rho - r_c| / sqrt(1 + (r' / rho)^2)``, the slope ``r'`` taken with the contours' mean amplitudes (one per
    image, so that only the radial gaps are computed per contour); the intensity falls linearly from 1 on the curve
    to 0 at ``line_width`` pixels from it. A radius ``r_c < 0`` leaves contour ``c`` out where it is negative.

    Args:
        base, lam1, lam2: ``(B, C)`` contour parameters in units of ``scale``.
        n1, n2: ``(B,)`` integer frequencies (as floats).
        centre: ``(B, 2)`` ``(x, y)`` in pixels.
        scale: ``(B,)`` pixels per unit.
        rotation: ``(B,)`` radians.
        size: Side of the image.
        line_width: Distance in pixels at which a line fades out.

    Returns:
        ``(B, H, W)`` intensities in ``[0, 1]`` (the nearest contour's).
    """
    grid = torch.arange(size, device=base.device, dtype=base.dtype) + 0.5
    px = scale[:, None, None]
    dx = (grid[None, None, :] - centre[:, 0, None, None]) / px
    dy = (grid[None, :, None] - centre[:, 1, None, None]) / px
    rho = (dx * dx + dy * dy).sqrt()  # (B, H, W) in units of scale
    theta = torch.atan2(dy, dx) - rotation[:, None, None]
    k1, k2 = n1[:, None, None], n2[:, None, None]
    sin1, sin2 = torch.sin(k1 * theta), torch.sin(k2 * theta)
    radius = torch.addcmul(base[..., None, None], lam1[..., None, None], sin1[:, None])
    radius = torch.addcmul(radius, lam2[..., None, None], sin2[:, None])  # (B, C, H, W)
    gap = (radius - rho[:, None]).abs().amin(dim=1)
    mean1, mean2 = lam1.mean(dim=1)[:, None, None], lam2.mean(dim=1)[:, None, None]
    slope = (mean1 * k1 * torch.cos(k1 * theta) + mean2 * k2 * torch.cos(k2 * theta)) / rho.clamp_min(0.5 / px)
    distance = gap * px * torch.rsqrt(1 + slope * slope)
    return (1 - distance / line_width).clamp(0, 1)
