"""Statistics over seeds as table text: mean and sample standard deviation, ``"0.683 ± 0.012"`` and markdown tables.

A library module shared by the commands that tabulate runs (``fftprompt-compare``, ``fftprompt-ablate``), so that no
command imports another.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["format_mean_std", "markdown_table", "mean_std"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``"0.683 ± 0.012"``."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None
) -> list[str]:
    """Markdown table lines; ``align`` per column ``"l"`` or ``"r"`` (default: left)."""
    marks = ["---:" if a == "r" else "---" for a in (align or ["l"] * len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines
