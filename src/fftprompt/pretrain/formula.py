"""FractalDB-style formula-driven classes: one class per IFS, found by a seeded search, rendered batch by batch.

:class:`FractalDB` only holds the settings and the class parameters; the maths are in :mod:`fftprompt.pretrain.render`.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from fftprompt.pretrain.render import (
    chaos_game,
    contract,
    fit_to_canvas,
    map_probabilities,
    rasterise_counts,
    sample_contractive_maps,
)

__all__ = ["FractalDB"]

# candidate systems rendered per round of the class search
_SEARCH_CHUNK = 256


class FractalDB:
    """FractalDB-style classes (Kataoka et al., ACCV 2020): ``num_classes`` IFS drawn from ``seed``, each kept only
    when its points fill at least ``fill_threshold`` of a ``search_size`` image.

    Instances of a class differ as in FractalDB by parameter weighting (one of the system's ``6 M`` parameters
    multiplied by a weight uniform in ``[1 - weight_range, 1 + weight_range]``; maps that stop being contractions
    are scaled back) and by flips, and further by the colour of each map, the size and the position of the fractal.

    Args:
        num_classes: ``K`` systems.
        seed: Seed of the class search (the classes depend on it, and on nothing else).
        image_size: Side of the rendered images.
        min_maps: Fewest affine maps per system (FractalDB: 2).
        max_maps: Most affine maps per system (FractalDB: 8).
        fill_threshold: Smallest fraction of ``search_size``-pixel image covered by a kept system's points.
        search_size: Side of the images on which the filling rate is measured.
        max_singular: Bound on the spectral norm of every map's linear part (keeps the chaos game bounded).
        num_chains: Chaos-game chains per image.
        num_steps: Points recorded per chain (after the burn-in).
        burn_in: Steps run before recording.
        weight_range: Half-width of the parameter weighting (0: no weighting).
        flip: Flip instances left-right and up-down at random.
        scale_range: ``(low, high)`` size of the fractal's bounding box, as a fraction of the image side.
        max_offset: Largest shift of the fractal's centre, as a fraction of the image side.
        density: Points per pixel that make it half opaque (``alpha = 1 - 2^(-count / density)``).

    Attributes:
        maps: ``(K, max_maps, 6)`` class parameters (zero rows pad systems with fewer maps).
        num_maps: ``(K,)`` maps per class.
        fill_rates: ``(K,)`` filling rate measured in the search.
        candidates_tried: Systems drawn by the search to find the ``K`` classes.
    """

    def __init__(
        self,
        num_classes: int = 300,
        seed: int = 0,
        image_size: int = 64,
        min_maps: int = 2,
        max_maps: int = 8,
        fill_threshold: float = 0.1,
        search_size: int = 64,
        max_singular: float = 0.95,
        num_chains: int = 256,
        num_steps: int = 32,
        burn_in: int = 16,
        weight_range: float = 0.2,
        flip: bool = True,
        scale_range: tuple[float, float] = (0.6, 1.0),
        max_offset: float = 0.15,
        density: float = 1.0,
        max_candidates: int = 1_000_000,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 1 <= min_maps <= max_maps:
            raise ValueError(f"expected 1 <= min_maps <= max_maps, got min_maps={min_maps}, max_maps={max_maps}")
        if not 0.0 <= fill_threshold < 1.0:
            raise ValueError(f"fill_threshold must lie in [0, 1), got {fill_threshold}")
        if not 0.0 < max_singular <= 1.0:
            raise ValueError(f"max_singular must lie in (0, 1], got {max_singular}")
        if not 0.0 <= weight_range < 1.0:
            raise ValueError(f"weight_range must lie in [0, 1), got {weight_range}")
        low, high = scale_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {tuple(scale_range)}")
        if min(image_size, search_size, num_chains, num_steps) < 1 or burn_in < 0 or density <= 0:
            raise ValueError(
                "image_size, search_size, num_chains and num_steps must be >= 1, burn_in >= 0 and density > 0; got "
                f"{image_size}, {search_size}, {num_chains}, {num_steps}, {burn_in}, {density}"
            )
        self.num_classes = num_classes
        self.seed = seed
        self.image_size = image_size
        self.min_maps = min_maps
        self.max_maps = max_maps
        self.fill_threshold = fill_threshold
        self.search_size = search_size
        self.max_singular = max_singular
        self.num_chains = num_chains
        self.num_steps = num_steps
        self.burn_in = burn_in
        self.weight_range = weight_range
        self.flip = flip
        self.scale_range = (float(low), float(high))
        self.max_offset = max_offset
        self.density = density
        self.max_candidates = max_candidates
        self.maps, self.num_maps, self.fill_rates, self.candidates_tried = self._search()
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    # -- class search ------------------------------------------------------------------------------------------------
    def _search(self) -> tuple[Tensor, Tensor, Tensor, int]:
        """Draws candidate systems in chunks on the CPU (the same classes on every machine) and keeps, in order, the
        first ``K`` whose filling rate reaches the threshold."""
        generator = torch.Generator().manual_seed(self.seed)
        kept_maps, kept_counts, kept_rates = [], [], []
        found, tried = 0, 0
        while found < self.num_classes:
            if tried >= self.max_candidates:
                raise ValueError(
                    f"FractalDB: only {found} of {self.num_classes} systems reached fill_threshold="
                    f"{self.fill_threshold} in {tried} candidates; lower fill_threshold or num_classes"
                )
            maps = sample_contractive_maps((_SEARCH_CHUNK, self.max_maps), self.max_singular, generator)
            counts = torch.randint(self.min_maps, self.max_maps + 1, (_SEARCH_CHUNK,), generator=generator)
            maps = maps * (torch.arange(self.max_maps)[None, :] < counts[:, None])[..., None]
            points, _ = chaos_game(
                maps, map_probabilities(maps, counts), self.num_chains, self.num_steps, self.burn_in, generator
            )
            unit = fit_to_canvas(points, torch.ones(_SEARCH_CHUNK), torch.zeros(_SEARCH_CHUNK, 2))
            unit = unit.clamp(0.0, 1.0 - 1e-6)  # the bounding box's far edges land on 1.0
            hits = rasterise_counts(unit, torch.zeros_like(points[..., 0], dtype=torch.long), self.search_size, 1)
            rates = (hits[..., 0] > 0).flatten(1).float().mean(dim=1)
            keep = torch.nonzero(rates >= self.fill_threshold).flatten()[: self.num_classes - found]
            kept_maps.append(maps[keep])
            kept_counts.append(counts[keep])
            kept_rates.append(rates[keep])
            found += len(keep)
            tried += _SEARCH_CHUNK
        return torch.cat(kept_maps), torch.cat(kept_counts), torch.cat(kept_rates), tried

    def fingerprint(self) -> str:
        """SHA256 of the class parameters (float32 bytes): equal fingerprints mean equal classes."""
        return hashlib.sha256(self.maps.float().contiguous().numpy().tobytes()).hexdigest()

    # -- rendering ---------------------------------------------------------------------------------------------------
    def sample(self, batch_size: int, seed: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """A batch of rendered instances with uniformly drawn labels, all drawn from ``seed`` on ``device``.

        Returns:
            ``images (B, 3, H, W)`` in ``[0, 1]`` (black background) and ``labels (B,)``.
        """
        device = torch.device(device)
        generator = torch.Generator(device).manual_seed(seed)
        labels = torch.randint(self.num_classes, (batch_size,), generator=generator, device=device)
        return self.render(labels, generator), labels

    def render(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Renders one random instance of each class in ``labels``: ``(B,) -> (B, 3, H, W)`` in ``[0, 1]``."""
        device = labels.device
        class_maps, class_counts = self._class_tensors(device)
        maps, counts = class_maps[labels], class_counts[labels]
        batch = labels.shape[0]
        if self.weight_range > 0:
            # FractalDB's parameter weighting: one of the 6 * M parameters in use, times a weight near 1
            draw = torch.rand(batch, 2, generator=generator, device=device)
            entry = (draw[:, 0] * counts * 6).long().clamp_max(counts * 6 - 1)
            weight = 1 + (2 * draw[:, 1] - 1) * self.weight_range
            flat = maps.reshape(batch, -1).clone()
            flat[torch.arange(batch, device=device), entry] *= weight
            maps = contract(flat.view_as(maps), self.max_singular)
        points, map_index = chaos_game(
            maps, map_probabilities(maps, counts), self.num_chains, self.num_steps, self.burn_in, generator
        )
        low, high = self.scale_range
        jitter = torch.rand(batch, 5, generator=generator, device=device)
        scale = low + (high - low) * jitter[:, 0]
        offset = (2 * jitter[:, 1:3] - 1) * self.max_offset
        if self.flip:
            sign = torch.where(jitter[:, 3:5] < 0.5, -1.0, 1.0)
            points = points * sign[:, None, :]
        unit = fit_to_canvas(points, scale, offset)
        counts_per_map = rasterise_counts(unit, map_index, self.image_size, self.max_maps).float()
        colours = torch.rand(batch, self.max_maps, 3, generator=generator, device=device) * 0.8 + 0.2
        total = counts_per_map.sum(dim=-1, keepdim=True)
        colour = torch.einsum("bhwm,bmc->bhwc", counts_per_map, colours) / total.clamp_min(1)
        alpha = 1 - torch.exp2(-total / self.density)
        return (colour * alpha).permute(0, 3, 1, 2).contiguous()

    def _class_tensors(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.maps.to(device), self.num_maps.to(device))
        return self._on_device[device]

    def describe(self) -> dict[str, object]:
        """The settings and a summary of the classes, for model cards."""
        return {
            "generator": "FractalDB-style IFS (Kataoka et al., ACCV 2020)",
            "num_classes": self.num_classes,
            "seed": self.seed,
            "image_size": self.image_size,
            "min_maps": self.min_maps,
            "max_maps": self.max_maps,
            "fill_threshold": self.fill_threshold,
            "search_size": self.search_size,
            "max_singular": self.max_singular,
            "num_chains": self.num_chains,
            "num_steps": self.num_steps,
            "burn_in": self.burn_in,
            "weight_range": self.weight_range,
            "flip": self.flip,
            "scale_range": list(self.scale_range),
            "max_offset": self.max_offset,
            "density": self.density,
            "candidates_tried": self.candidates_tried,
            "fill_rate_mean": round(float(self.fill_rates.mean()), 4),
            "maps_per_class_mean": round(float(self.num_maps.float().mean()), 3),
            "classes_sha256": self.fingerprint(),
        }
