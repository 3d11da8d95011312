"""Numbers over seeds: mean ± sample standard deviation, and the paired difference of two methods.

Why paired: two methods run with the same seeds share each seed's data order and initial draws,
so the per-seed difference removes much of the seed-to-seed spread that a comparison of two means
keeps (on the bundled low-data digits one network's spread is several points). The t-test and
interval are scipy's; the standard deviation is the sample one (n - 1), as papers' ``± std`` are.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (None for one value) and count of a metric over seeds."""

    mean: float
    std: float | None
    n: int

    def text(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}" if self.std is not None else f"{self.mean:.2f} (n=1)"


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no values")
    return Spread(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass(frozen=True)
class Paired:
    """The per-seed difference a - b over the seeds both have: its spread, a t interval and the
    paired t-test's two-sided p-value (None below two pairs)."""

    difference: Spread
    low: float | None
    high: float | None
    p_value: float | None
    seeds: tuple[int, ...]


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired | None:
    """None when the two have no seed in common."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    differences = [a[s] - b[s] for s in seeds]
    diff = spread(differences)
    if diff.n < 2:
        return Paired(diff, None, None, None, seeds)
    if diff.std == 0:  # every seed gives the same difference: no spread to test against
        return Paired(diff, diff.mean, diff.mean, 0.0 if diff.mean else 1.0, seeds)
    low, high = scipy_stats.t.interval(CONFIDENCE, diff.n - 1, loc=diff.mean,
                                       scale=diff.std / math.sqrt(diff.n))
    p_value = float(scipy_stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return Paired(diff, float(low), float(high), p_value, seeds)
