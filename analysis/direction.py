"""Which way the task metric improves, for everything after training that compares scores.

The one definition is `trainables.record.sense(metric_name)`: "max" for accuracy-like metrics,
"min" for a lower-is-better one (`nll`). A search knows its metric before its first trial (the
parent run's param `metric_name`); `score` and `epoch_score` are always in that metric's direction.
The analysis functions take the sense itself ("max" | "min", default "max": every classification
metric) and compare scores only through these helpers, so nothing assumes that higher is better.
"""

from __future__ import annotations

import math
from typing import Literal

from trainables import record as R

Sense = Literal["max", "min"]
SENSES: tuple[str, ...] = ("max", "min")


def checked(sense: str) -> Sense:
    """`sense` itself, or a ValueError naming the two senses (a metric name is not a sense)."""
    if sense not in SENSES:
        raise ValueError(f"sense must be 'max' or 'min', got {sense!r} (a metric's: trainables.record.sense(name))")
    return sense  # type: ignore[return-value]


def gain(value: float, sense: str) -> float:
    """`value` turned so that higher is better: itself for "max", negated for "min"."""
    return value if checked(sense) == "max" else -value


def best_first(value: float | None, sense: str) -> float:
    """A sort key that puts the best value first and a missing one (None) last."""
    return math.inf if value is None else -gain(value, sense)


def score_objectives(sense: str = "max") -> tuple[tuple[str, Sense], ...]:
    """The frontier's objectives (`trainables.record.OBJECTIVES`: score, trainable params, compute
    hours) with the score in `sense`."""
    checked(sense)
    return tuple((name, sense if name == R.SCORE else s) for name, s in R.OBJECTIVES)  # type: ignore[misc]


def word(sense: str, higher: str = "higher", lower: str = "lower") -> str:
    """`higher` for a higher-is-better sense, `lower` otherwise: the word a report prints."""
    return higher if checked(sense) == "max" else lower
