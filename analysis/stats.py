"""Seed statistics and paired comparisons: when is one placement really better than another?

Where it sits: frontier. A confirmed placement has one score per training seed. `seed_stats` gives
its mean, sample standard deviation and a 95% t-interval of the mean, clipped to the metric's range
when one is given (an accuracy's interval never runs past 1; `SeedStats.clipped` says so), and
flagged when it rests on so few seeds that it is too wide to mean much (`SeedStats.few_seeds`: two
seeds, where t is 12.7); `decide` compares two
placements on the seeds both have (the same seed: same head init, same data order) and answers the
question a user asks, "is this placement as good as the best, within a margin?", with one of four
words (docs/methods.md, "Decisions"): a difference is called real only when the 95% t-interval of
the paired differences excludes zero. "Better" follows the metric's direction (`sense`: "max", or
"min" for a lower-is-better metric such as `nll`, where better means lower; `analysis.direction`).
Pure Python, no numpy or scipy.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from analysis.direction import checked

# Two-sided 95% quantiles of Student's t (0.975 quantile), by degrees of freedom; standard tables.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
         26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}

# One-sided 95% quantiles of Student's t (0.95 quantile), by degrees of freedom; standard tables.
_T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833,
        10: 1.812, 11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753, 16: 1.746, 17: 1.740,
        18: 1.734, 19: 1.729, 20: 1.725, 21: 1.721, 22: 1.717, 23: 1.714, 24: 1.711, 25: 1.708,
        26: 1.706, 27: 1.703, 28: 1.701, 29: 1.699, 30: 1.697, 40: 1.684, 60: 1.671, 120: 1.658}

# Two-sided 99% quantiles of Student's t (0.995 quantile): the per-look level of a race
# (`analysis.confirmed.RACE_LEVEL`); standard tables.
_T995 = {1: 63.657, 2: 9.925, 3: 5.841, 4: 4.604, 5: 4.032, 6: 3.707, 7: 3.499, 8: 3.355, 9: 3.250,
         10: 3.169, 11: 3.106, 12: 3.055, 13: 3.012, 14: 2.977, 15: 2.947, 16: 2.921, 17: 2.898,
         18: 2.878, 19: 2.861, 20: 2.845, 21: 2.831, 22: 2.819, 23: 2.807, 24: 2.797, 25: 2.787,
         26: 2.779, 27: 2.771, 28: 2.763, 29: 2.756, 30: 2.750, 40: 2.704, 60: 2.660, 120: 2.617}
# level -> (table, its value past 120 degrees of freedom)
_TWO_SIDED = {0.05: (_T975, 1.960), 0.01: (_T995, 2.576)}
LEVELS = tuple(_TWO_SIDED)

BETTER, AS_GOOD, WORSE, UNDECIDED = "better", "as good", "worse", "undecided"
DECISIONS = (BETTER, AS_GOOD, WORSE, UNDECIDED)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1); between table
    rows the next smaller df is used (a slightly wider, conservative interval); 1.96 past 120."""
    return t_two_sided(0.05, df)


def t_two_sided(level: float, df: int) -> float:
    """The quantile of Student's t for a two-sided interval at `level` (0.05: 95%, 0.01: 99%;
    `LEVELS`), read from its table as `t975` reads its own."""
    if level not in _TWO_SIDED:
        raise ValueError(f"two-sided level {level} has no t table; use one of {', '.join(map(str, LEVELS))}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    table, limit = _TWO_SIDED[level]
    return limit if df > 120 else table[max(k for k in table if k <= df)]


def t95(df: int) -> float:
    """The 0.95 quantile of Student's t (one-sided 95%), as `t975` reads its table; 1.645 past 120."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 120:
        return 1.645
    return _T95[max(k for k in _T95 if k <= df)]


FEW_SEEDS = 2  # a 95% t-interval from this many seeds or fewer (t = 12.7 at two) is too wide to mean much


@dataclass(frozen=True)
class SeedStats:
    """Mean over seeds, sample sd, and the 95% t-interval of the mean (None with one seed).

    clipped: the interval was cut to the metric's range (`seed_stats(..., bounds=)`, `clip`): a
    t-interval is symmetric about the mean and knows nothing of a metric bounded in [0, 1]."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None
    clipped: bool = False

    @property
    def few_seeds(self) -> bool:
        """An interval from so few seeds (`FEW_SEEDS`) that it is too wide to mean much."""
        return self.low is not None and self.n <= FEW_SEEDS

    def clip(self, lo: float | None = None, hi: float | None = None) -> "SeedStats":
        """The same statistics with the interval cut to [lo, hi] (None: unbounded on that side)."""
        if self.low is None:
            return self
        low = self.low if lo is None else max(self.low, lo)
        high = self.high if hi is None else min(self.high, hi)
        if (low, high) == (self.low, self.high):
            return self
        return SeedStats(self.n, self.mean, self.sd, low, high, True)

    def caveats(self) -> list[str]:
        """What a reader must know about the interval: clipped, too few seeds (empty if nothing)."""
        out = ["clipped to the metric's range"] if self.clipped else []
        if self.few_seeds:
            out.append(f"{self.n} seeds: too wide to mean much")
        return out

    def interval(self, digits: int = 3) -> str:
        """"low to high", its caveats in brackets; "-" with one seed."""
        if self.low is None:
            return "-"
        caveats = self.caveats()
        return f"{self.low:.{digits}f} to {self.high:.{digits}f}" + (f" ({'; '.join(caveats)})" if caveats else "")

    def describe(self, digits: int = 3) -> str:
        if self.sd is None:
            return f"{self.mean:.{digits}f} (1 seed)"
        interval = f"95% CI {self.low:.{digits}f} to {self.high:.{digits}f}"
        caveats = self.caveats() if self.few_seeds else [*self.caveats(), f"{self.n} seeds"]
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f} ({interval}, {'; '.join(caveats)})"


def seed_stats(values: list[float], bounds: tuple[float | None, float | None] = (None, None)) -> SeedStats:
    """Mean, sd and 95% t-interval of one placement's scores over seeds; `bounds`: the metric's
    range (lo, hi; None = unbounded), to which the interval is clipped."""
    if not values:
        raise ValueError("seed_stats needs at least one value")
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return SeedStats(1, mean, None, None, None)
    sd = statistics.stdev(values)
    half = t975(n - 1) * sd / math.sqrt(n)
    return SeedStats(n, mean, sd, mean - half, mean + half).clip(*bounds)


@dataclass(frozen=True)
class Decision:
    """A placement against the best one, on the seeds both have (docs/methods.md, "Decisions").

    diff: mean of the paired gains of a over b in the metric's units, positive when a is better
    (a - b for a "max" metric, b - a for a "min" one); lower_one_sided: its one-sided 95% lower
    bound; low, high: the two-sided interval at `level` (95% unless racing); detectable: the smallest difference these seeds
    could tell from zero (the interval's half-width), None with fewer than 2 common seeds. sense:
    the metric's direction; `describe` prints a - b itself, in the metric's own units."""

    seeds: tuple[int, ...]
    diff: float
    lower_one_sided: float | None
    low: float | None
    high: float | None
    margin: float
    verdict: str  # better | as good | worse | undecided (a relative to b)
    sense: str = "max"
    level: float = 0.05  # the two-sided level of the interval (and of better / worse)

    @property
    def detectable(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def describe(self, digits: int = 3) -> str:
        """The verdict with the difference a - b (its interval, and the one-sided bound against the
        margin) in the metric's own units: for a "min" metric a negative difference is a gain."""
        diff, low, high, bound = self.diff, self.low, self.high, self.lower_one_sided
        side, margin = "lower", f"-{self.margin:g}"
        if self.sense == "min" and low is not None:  # gains back to a - b: the interval flips, the bound is an upper one
            diff, low, high, bound, side, margin = -diff, -high, -low, -bound, "upper", f"+{self.margin:g}"
        elif self.sense == "min":
            diff = -diff
        if low is None:
            return (f"{self.verdict} (difference {diff:+.{digits}f}, {len(self.seeds)} common seed(s): too few "
                    "for an interval)")
        return (f"{self.verdict} (difference {diff:+.{digits}f}, {100 * (1 - self.level):g}% CI {low:+.{digits}f} to "
                f"{high:+.{digits}f}, one-sided 95% {side} bound {bound:+.{digits}f} against a "
                f"margin of {margin}; {len(self.seeds)} paired seeds)")


def decide(a: dict[int, float], b: dict[int, float], margin: float, sense: str = "max",
           level: float = 0.05) -> Decision:
    """Is `a` as good as `b` within `margin` (in the metric's units)? `sense`: "max" when higher is
    better (the default), "min" when lower is (then D below is b - a: a lower `a` is a gain).

    From the paired differences D = a - b on the common seeds (mean m, sd s, n seeds): **better**
    when the two-sided 95% interval of D lies above zero; **as good** when the one-sided 95% lower
    bound m - t95(n-1) s / sqrt(n) is above -margin (non-inferiority; it may still be a little
    worse than `b`, by less than the margin); **worse** when the interval lies below zero and it is
    not as good; otherwise **undecided** (more seeds could decide it). Fewer than 2 common seeds:
    undecided. `level`: the two-sided level of the interval behind better and worse (0.05, or 0.01
    for each look of a race: `analysis.confirmed.RACE_LEVEL`); "as good" keeps its one-sided 95%."""
    if margin < 0:
        raise ValueError(f"the margin must be >= 0, got {margin}")
    sign = 1.0 if checked(sense) == "max" else -1.0
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        raise ValueError("the two placements share no seed: nothing to pair")
    diffs = [sign * (a[s] - b[s]) for s in seeds]  # the gains of a over b: positive = a better
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Decision(seeds, mean, None, None, None, margin, UNDECIDED, sense, level)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    lower = mean - t95(len(diffs) - 1) * se
    half = t_two_sided(level, len(diffs) - 1) * se
    low, high = mean - half, mean + half
    if low > 0:
        verdict = BETTER
    elif lower > -margin:
        verdict = AS_GOOD
    elif high < 0:
        verdict = WORSE
    else:
        verdict = UNDECIDED
    return Decision(seeds, mean, lower, low, high, margin, verdict, sense, level)
