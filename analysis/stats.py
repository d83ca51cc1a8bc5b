"""Seed statistics and paired comparisons: when is one placement really better than another?

Where it sits: frontier. A confirmed placement has one score per training seed. `seed_stats` gives
its mean, sample standard deviation and a 95% t-interval of the mean; `paired` compares two
placements on the seeds both have (the same seed: same head init, same data order), and calls the
difference real only when the 95% t-interval of the paired differences excludes zero
(docs/methods.md, "Confirmation"). Pure Python, no numpy or scipy.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t (0.975 quantile), by degrees of freedom; standard tables.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
         26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}

BETTER, WORSE, WITHIN_NOISE = "better", "worse", "within noise"


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1); between table
    rows the next smaller df is used (a slightly wider, conservative interval); 1.96 past 120."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 120:
        return 1.960
    return _T975[max(k for k in _T975 if k <= df)]


@dataclass(frozen=True)
class SeedStats:
    """Mean over seeds, sample sd, and the 95% t-interval of the mean (None with one seed)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    def describe(self, digits: int = 3) -> str:
        if self.sd is None:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f} (95% CI {self.low:.{digits}f} to {self.high:.{digits}f}, {self.n} seeds)"


def seed_stats(values: list[float]) -> SeedStats:
    if not values:
        raise ValueError("seed_stats needs at least one value")
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return SeedStats(1, mean, None, None, None)
    sd = statistics.stdev(values)
    half = t975(n - 1) * sd / math.sqrt(n)
    return SeedStats(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    """a - b over the seeds both have: mean difference, its 95% t-interval and the verdict."""

    seeds: tuple[int, ...]
    diff: float
    low: float | None
    high: float | None
    verdict: str  # better | worse | within noise (a relative to b)

    def describe(self, digits: int = 3) -> str:
        if self.low is None:
            return f"{self.verdict} (difference {self.diff:+.{digits}f}, too few common seeds for an interval)"
        return (f"{self.verdict} (difference {self.diff:+.{digits}f}, 95% CI {self.low:+.{digits}f} to "
                f"{self.high:+.{digits}f}, {len(self.seeds)} paired seeds)")


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """Compare score-by-seed maps on their common seeds. Fewer than 2 common seeds: within noise."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        raise ValueError("the two placements share no seed: nothing to pair")
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Paired(seeds, mean, None, None, WITHIN_NOISE)
    half = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    low, high = mean - half, mean + half
    verdict = BETTER if low > 0 else WORSE if high < 0 else WITHIN_NOISE
    return Paired(seeds, mean, low, high, verdict)
