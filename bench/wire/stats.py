"""Small statistics helpers shared by the scenarios and the report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def summarize(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    """n, min, median, p90, p99, max and mean of ``values`` (empty dict when none)."""
    if not values:
        return {}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "median": round(quantile(values, 0.5), digits),
        "p90": round(quantile(values, 0.9), digits),
        "p99": round(quantile(values, 0.99), digits),
        "max": round(max(values), digits),
        "mean": round(float(np.mean(values)), digits),
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``xs`` (None with fewer than two distinct xs)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    fit = np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 1)
    return float(fit[0])
