"""Percentiles and medians, the same way everywhere (pure)."""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """``n``, ``p50``, ``p90``, ``p99``, ``max``, ``mean`` of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan}
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are numbers; None when there are none."""
    nums = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(nums) if nums else None
