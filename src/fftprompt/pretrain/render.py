"""Iterated-function-system fractals as plain tensor functions, batched on the device the tensors live on.

An IFS is ``M`` affine maps ``x -> A_m x + t_m`` of the plane, stored as rows ``(a, b, c, d, e, f)`` with
``A = [[a, b], [c, d]]`` and ``t = (e, f)``, and chosen with probabilities ``p_m``. FractalDB (Kataoka et al.,
ACCV 2020) draws the six parameters uniformly in ``[-1, 1]``, sets ``p_m`` proportional to ``|det A_m|`` and keeps a
system as a class when its rendered points cover enough of the image (the filling rate).

The chaos game runs ``P`` chains per image in parallel for a burn-in plus ``T`` recorded steps, so one batch costs
``burn_in + T`` sequential tensor operations on ``(B, P)`` chains whatever ``B``; points are accumulated into the
images with one integer ``index_add_`` (integer sums are exact, so a batch is bit-identical from run to run on the
same device, GPUs included). All randomness comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "chaos_game",
    "contract",
    "fit_to_canvas",
    "map_probabilities",
    "rasterise_counts",
    "sample_contractive_maps",
]


def sample_contractive_maps(
    shape: tuple[int, ...], max_singular: float, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """Affine maps with parameters uniform in ``[-1, 1]``, redrawn until the largest singular value of ``A`` is below
    ``max_singular`` (a contraction: the chaos game stays bounded).

    Args:
        shape: Leading shape, e.g. ``(C, M)`` for ``C`` candidate systems of ``M`` maps.
        max_singular: Bound on the spectral norm of ``A``, in ``(0, 1]``.
        generator: Source of randomness (on ``device``).

    Returns:
        ``(*shape, 6)`` rows ``(a, b, c, d, e, f)``.
    """
    maps = torch.rand(*shape, 6, generator=generator, device=device) * 2 - 1
    while True:
        bad = _spectral_norm(maps) >= max_singular
        count = int(bad.sum())
        if count == 0:
            return maps
        maps[bad] = torch.rand(count, 6, generator=generator, device=device) * 2 - 1


def contract(maps: Tensor, max_singular: float) -> Tensor:
    """Scales the linear part of every map whose spectral norm exceeds ``max_singular`` down to it.

    Args:
        maps: ``(..., 6)`` rows ``(a, b, c, d, e, f)``.

    Returns:
        ``(..., 6)``, translations unchanged.
    """
    norm = _spectral_norm(maps)
    scale = torch.where(norm > max_singular, max_singular / norm.clamp_min(1e-12), torch.ones_like(norm))
    return torch.cat([maps[..., :4] * scale[..., None], maps[..., 4:]], dim=-1)


def map_probabilities(maps: Tensor, num_maps: Tensor) -> Tensor:
    """FractalDB's map probabilities ``p_m = |det A_m| / sum_m |det A_m|`` over the first ``num_maps`` maps.

    Args:
        maps: ``(B, M, 6)``.
        num_maps: ``(B,)`` maps in use per system (the rest are padding and get probability 0).

    Returns:
        ``(B, M)`` rows summing to 1.
    """
    determinant = (maps[..., 0] * maps[..., 3] - maps[..., 1] * maps[..., 2]).abs()
    used = torch.arange(maps.shape[1], device=maps.device)[None, :] < num_maps[:, None]
    weights = torch.where(used, determinant.clamp_min(1e-6), torch.zeros_like(determinant))
    return weights / weights.sum(dim=1, keepdim=True)


def chaos_game(
    maps: Tensor,
    probabilities: Tensor,
    num_chains: int,
    num_steps: int,
    burn_in: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Runs ``P = num_chains`` chaos-game chains per system and records ``T = num_steps`` points of each.

    Args:
        maps: ``(B, M, 6)`` affine maps.
        probabilities: ``(B, M)`` map probabilities (rows summing to 1).
        num_chains: ``P`` chains per system, started uniformly in ``[-1, 1]^2``.
        num_steps: ``T`` recorded steps after the burn-in.
        burn_in: Steps discarded first (the chains converge onto the attractor).
        generator: On the device of ``maps``.

    Returns:
        ``points (B, P * T, 2)`` and ``map_index (B, P * T)``, the map that produced each point.
    """
    batch, num_maps = maps.shape[:2]
    device = maps.device
    total = burn_in + num_steps
    cumulative = probabilities.cumsum(dim=1).contiguous()
    uniform = torch.rand(batch, num_chains * total, generator=generator, device=device)
    # the first map whose cumulative probability reaches u; padded maps repeat the last sum, so they are never first
    choice = torch.searchsorted(cumulative, uniform * cumulative[:, -1:]).clamp_max_(num_maps - 1)
    choice = choice.view(batch, num_chains, total)
    chosen = torch.gather(
        maps[:, None].expand(batch, num_chains, num_maps, 6), 2, choice[..., None].expand(-1, -1, -1, 6)
    )
    x = torch.rand(batch, num_chains, generator=generator, device=device) * 2 - 1
    y = torch.rand(batch, num_chains, generator=generator, device=device) * 2 - 1
    points = maps.new_empty(batch, num_chains, num_steps, 2)
    for step in range(total):
        a, b, c, d, e, f = chosen[:, :, step].unbind(-1)
        x, y = a * x + b * y + e, c * x + d * y + f
        if step >= burn_in:
            points[:, :, step - burn_in, 0] = x
            points[:, :, step - burn_in, 1] = y
    return points.view(batch, num_chains * num_steps, 2), choice[:, :, burn_in:].reshape(batch, -1)


def fit_to_canvas(points: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """Maps each system's point cloud into the unit square: its bounding box, centred and scaled by its longer
    side to ``scale``, then shifted by ``offset``.

    Args:
        points: ``(B, N, 2)``.
        scale: ``(B,)`` side of the fitted box, as a fraction of the canvas (``<= 1``).
        offset: ``(B, 2)`` shift of its centre from the canvas centre, as a fraction of the canvas.

    Returns:
        ``(B, N, 2)`` coordinates, those inside the canvas in ``[0, 1)``.
    """
    low = points.amin(dim=1, keepdim=True)
    high = points.amax(dim=1, keepdim=True)
    extent = (high - low).amax(dim=2, keepdim=True).clamp_min(1e-6)
    centred = (points - (low + high) / 2) / extent
    return centred * scale[:, None, None] + 0.5 + offset[:, None, :]


def rasterise_counts(unit_points: Tensor, map_index: Tensor, size: int, num_maps: int) -> Tensor:
    """Counts, per pixel and map, the points that fall into each pixel of a ``size x size`` image.

    Args:
        unit_points: ``(B, N, 2)`` ``(x, y)`` in ``[0, 1)`` (points outside are dropped).
        map_index: ``(B, N)`` map of each point, in ``[0, num_maps)``.

    Returns:
        ``(B, size, size, num_maps)`` int32 counts (row ``y``, column ``x``).
    """
    batch, count = unit_points.shape[:2]
    pixel = (unit_points * size).floor().long()
    column, row = pixel[..., 0], pixel[..., 1]
    inside = (column >= 0) & (column < size) & (row >= 0) & (row < size)
    image = torch.arange(batch, device=unit_points.device)[:, None].expand(batch, count)
    flat = ((image * size + row) * size + column) * num_maps + map_index
    counts = torch.zeros(batch * size * size * num_maps, dtype=torch.int32, device=unit_points.device)
    counts.index_add_(0, flat[inside], torch.ones_like(flat[inside], dtype=torch.int32))
    return counts.view(batch, size, size, num_maps)


def _spectral_norm(maps: Tensor) -> Tensor:
    """Largest singular value of each ``A`` in closed form: ``(..., 6) -> (...)``."""
    a, b, c, d = maps[..., 0], maps[..., 1], maps[..., 2], maps[..., 3]
    frobenius = a * a + b * b + c * c + d * d
    determinant = a * d - b * c
    discriminant = (frobenius * frobenius - 4 * determinant * determinant).clamp_min(0)
    return ((frobenius + discriminant.sqrt()) / 2).sqrt()
