"""Fair tuning (``fftprompt-ablate --tune``): the same grid of trials for every method, the choice on validation.

Pure: names, numbers and overrides, no config, no data. Each method's own learning rates (the optimiser's base
rate and the prompt, adapter and head rates of ``task.module``, as its composed config sets them) are scaled
together by each factor of ``lr_scales``, crossed with each ``weight_decays`` value (``task.module.optimizer.
weight_decay``: the prompt and head groups; FourierFT's coefficients keep ``adapter_weight_decay``). Every method
thus gets ``len(lr_scales) * len(weight_decays)`` trials, whatever its parameter groups: a rate a method does not use
(e.g. ``adapter_lr`` without an adapter) is scaled too and changes nothing, so the budget is equal by construction.

A trial trains on the training split with the validation loop on and keeps the checkpoint of the best validation
score (its epoch is the chosen epoch); it never reads the test split (``test=false``). :func:`choose` picks the
trial with the best validation score; only the chosen setting is trained again with every seed and tested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_LR_SCALES",
    "DEFAULT_WEIGHT_DECAYS",
    "LR_KEYS",
    "TUNED_KEYS",
    "WEIGHT_DECAY_KEY",
    "Trial",
    "choose",
    "plan_trials",
]

# the learning rates of every parameter group (fftprompt.lit's param_groups; null group rates fall back to lr)
LR_KEYS = ("task.module.optimizer.lr", "task.module.prompt_lr", "task.module.adapter_lr", "task.module.head_lr")
WEIGHT_DECAY_KEY = "task.module.optimizer.weight_decay"
TUNED_KEYS = (*LR_KEYS, WEIGHT_DECAY_KEY)
# 3 x 2 = 6 trials per method: a factor of 10 of learning rate around each method's defaults (the rates that matter
# most, and whose defaults differ most between methods: 1e-3 to 0.1), and a weak vs a clear weight decay
DEFAULT_LR_SCALES = (0.3, 1.0, 3.0)
DEFAULT_WEIGHT_DECAYS = (1.0e-4, 1.0e-2)


@dataclass(frozen=True)
class Trial:
    """One point of the grid.

    Attributes:
        name: ``lr<scale>x-wd<decay>``, the trial's folder name.
        lr_scale: Factor applied to every learning rate of the method.
        weight_decay: ``task.module.optimizer.weight_decay``.
        overrides: The Hydra overrides that make it from the method's config.
    """

    name: str
    lr_scale: float
    weight_decay: float
    overrides: tuple[str, ...]


def _check_grid(name: str, values: Sequence[float]) -> None:
    if not values or len(set(values)) != len(values) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{name}={list(values)}: expected distinct finite non-negative numbers, at least one")


def plan_trials(
    learning_rates: Mapping[str, float | None],
    lr_scales: Sequence[float] = DEFAULT_LR_SCALES,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
) -> list[Trial]:
    """The grid ``lr_scales x weight_decays`` for a method with these learning rates.

    Args:
        learning_rates: ``{key of LR_KEYS: the method's value}`` (None: the group uses the base rate; left as is).
        lr_scales: Factors of every learning rate (positive).
        weight_decays: Values of :data:`WEIGHT_DECAY_KEY`.

    Returns:
        ``len(lr_scales) * len(weight_decays)`` trials, scales outer, weight decays inner.
    """
    _check_grid("lr_scales", lr_scales)
    _check_grid("weight_decays", weight_decays)
    if min(lr_scales) <= 0:
        raise ValueError(f"lr_scales={list(lr_scales)}: expected positive factors")
    unknown = sorted(set(learning_rates) - set(LR_KEYS))
    if unknown:
        raise ValueError(f"learning rates {unknown}: expected keys of {list(LR_KEYS)}")
    trials = []
    for scale in lr_scales:
        rates = tuple(f"{key}={value * scale:.6g}" for key, value in learning_rates.items() if value is not None)
        for decay in weight_decays:
            name = f"lr{scale:g}x-wd{decay:g}"
            trials.append(Trial(name, float(scale), float(decay), (*rates, f"{WEIGHT_DECAY_KEY}={decay:g}")))
    return trials


def choose(val_scores: Sequence[float | None]) -> int:
    """Index of the trial with the best validation score (higher is better); the first of equal scores, so the
    grid's order breaks ties. A missing or NaN score (a trial without a validation score) never wins.

    Raises:
        ValueError: when no trial has a score.
    """
    usable = [(score, -i) for i, score in enumerate(val_scores) if score is not None and math.isfinite(score)]
    if not usable:
        raise ValueError(f"no trial has a validation score ({list(val_scores)}): is the validation split empty?")
    return -max(usable)[1]
