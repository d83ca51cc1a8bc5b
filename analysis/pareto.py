"""Pareto frontier and hypervolume: the last step of score -> sample -> train -> track -> frontier.

Pure functions over plain lists of objective tuples (no torch, no numpy needed), plus one thin
wrapper, `frontier`, over trial rows (`TrialRecord.as_dict()`). See docs/methods.md, "Objectives and
the frontier": the task metric in its own direction (maximized, or minimized for a lower-is-better
metric such as `nll`: `trainables.record.sense`), minimize trainable parameters, minimize compute hours; the
frontier is the set of completed, within-budget trials that no other such trial dominates; the
hypervolume is measured on normalized objectives against a reference point written down with it.

Conventions
- `senses` is one "max" or "min" per objective, in the order of the tuple entries.
- `normalize` maps every objective to minimization with 0 at the ideal (best) bound and 1 at the
  nadir (worst) bound. Bounds are in the original units, so two searches normalized with the same
  explicit bounds are comparable; bounds taken from the points themselves are not.
- A trial dict carries the objective keys (default `trainables.record.OBJECTIVES`: "score",
  "trainable_params", "compute_hours"), "status" (only "completed" trials count) and optionally
  "within_budget" (False drops the trial). The default scores "max"; a search whose metric is
  lower-is-better passes `analysis.direction.score_objectives("min")`.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

from analysis.direction import Sense
from trainables.record import OBJECTIVES

Point = tuple[float, ...]

DEFAULT_OBJECTIVES: tuple[tuple[str, Sense], ...] = OBJECTIVES
DEFAULT_REFERENCE = 1.1  # per objective, in normalized minimization space


class Bounds(NamedTuple):
    """Per-objective bounds in original units: ideal = best value, nadir = worst value."""

    ideal: Point
    nadir: Point


# --- validation at the boundary -------------------------------------------------------------------


def _check(points: Iterable[Sequence[float]], senses: Sequence[str]) -> list[Point]:
    senses = tuple(senses)
    bad = [s for s in senses if s not in ("max", "min")]
    if not senses or bad:
        raise ValueError(f"senses must be a non-empty tuple of 'max'/'min', got {senses!r}")
    out = []
    for i, p in enumerate(points):
        p = tuple(float(v) for v in p)
        if len(p) != len(senses):
            raise ValueError(f"point {i} {p} has {len(p)} objectives but senses has {len(senses)}")
        if not all(math.isfinite(v) for v in p):
            raise ValueError(f"point {i} {p} has a non-finite objective; drop failed trials first")
        out.append(p)
    return out


# --- dominance ------------------------------------------------------------------------------------


def _to_min(points: list[Point], senses: Sequence[str]) -> list[Point]:
    """Flip max objectives so that smaller is better everywhere."""
    sign = tuple(-1.0 if s == "max" else 1.0 for s in senses)
    return [tuple(v * k for v, k in zip(p, sign)) for p in points]


def _dominates_min(a: Point, b: Point) -> bool:
    """a dominates b in minimization: no worse anywhere, strictly better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[Sense]) -> bool:
    """True when `a` is at least as good as `b` on every objective and strictly better on one."""
    a_, b_ = _to_min(_check([a, b], senses), senses)
    return _dominates_min(a_, b_)


def pareto_mask(points: Sequence[Sequence[float]], senses: Sequence[Sense]) -> list[bool]:
    """mask[i] is True when no other point dominates points[i]. Duplicates all stay on the front.

    O(n^2 * d): fine for the few thousand trials a search produces.
    """
    pts = _to_min(_check(points, senses), senses)
    # In lexicographic order a dominator always comes before what it dominates (exact, unlike a sum
    # of coordinates, which rounds), so each point is checked only against the front kept so far.
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    mask = [False] * len(pts)
    front: list[Point] = []
    for i in order:
        if not any(_dominates_min(q, pts[i]) for q in front):
            mask[i] = True
            front.append(pts[i])
    return mask


# --- normalization --------------------------------------------------------------------------------


def bounds_of(points: Sequence[Sequence[float]], senses: Sequence[Sense]) -> Bounds:
    """Ideal (best) and nadir (worst) value per objective over `points`, in original units."""
    pts = _check(points, senses)
    if not pts:
        raise ValueError("cannot take bounds of zero points; pass ideal= and nadir= explicitly")
    cols = list(zip(*pts))
    ideal = tuple(max(c) if s == "max" else min(c) for c, s in zip(cols, senses))
    nadir = tuple(min(c) if s == "max" else max(c) for c, s in zip(cols, senses))
    return Bounds(ideal, nadir)


def normalize(
    points: Sequence[Sequence[float]],
    senses: Sequence[Sense],
    ideal: Sequence[float] | None = None,
    nadir: Sequence[float] | None = None,
) -> tuple[list[Point], Bounds]:
    """Map points to minimization with 0 = ideal and 1 = nadir per objective; return the bounds used.

    Missing bounds are taken from the points, so the result lies in [0, 1]. With explicit bounds a
    point better than the ideal maps below 0 and one worse than the nadir above 1. An objective whose
    ideal equals its nadir (no spread) maps to 0 at the bound and +-1 per unit away from it.
    """
    pts = _check(points, senses)
    if ideal is None or nadir is None:
        found = bounds_of(pts, senses)
        ideal = found.ideal if ideal is None else ideal
        nadir = found.nadir if nadir is None else nadir
    bounds = Bounds(tuple(float(v) for v in ideal), tuple(float(v) for v in nadir))
    for name, b in zip(("ideal", "nadir"), bounds):
        if len(b) != len(senses) or not all(math.isfinite(v) for v in b):
            raise ValueError(f"{name} {b} must hold {len(senses)} finite values, one per objective")
    scale = []
    for s, lo, hi in zip(senses, bounds.ideal, bounds.nadir):
        span = (hi - lo) if s == "min" else (lo - hi)
        if span < 0:
            raise ValueError(f"ideal {lo} is worse than nadir {hi} for a '{s}' objective; swap them")
        scale.append(span if span > 0 else 1.0)
    out = []
    for p in pts:
        out.append(tuple(
            ((v - lo) if s == "min" else (lo - v)) / k
            for v, s, lo, k in zip(p, senses, bounds.ideal, scale)
        ))
    return out, bounds


# --- hypervolume ----------------------------------------------------------------------------------


def _hv_min(points: list[Point], ref: Point) -> float:
    """Exact hypervolume dominated by `points` (minimization) and bounded by `ref`.

    Points must be strictly better than `ref` on every objective. 1D and 2D are direct sweeps;
    higher dimensions slice along the last axis and add (slab height) x (hypervolume of the points
    below the slab) one dimension down. O(n^(d-1) log n): exact and quick for 3 objectives.
    """
    if not points:
        return 0.0
    d = len(ref)
    if d == 1:
        return ref[0] - min(p[0] for p in points)
    if d == 2:
        area, y_best = 0.0, ref[1]
        for x, y in sorted(points):
            if y < y_best:  # this point adds the strip [y, y_best) from x to the reference
                area += (ref[0] - x) * (y_best - y)
                y_best = y
        return area
    pts = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if top > p[-1]:  # equal last coordinates share one slab, counted at the last of them
            volume += (top - p[-1]) * _hv_min([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return volume


def hypervolume(
    points: Sequence[Sequence[float]],
    senses: Sequence[Sense],
    reference: Sequence[float] | None = None,
    bounds: Bounds | tuple[Sequence[float], Sequence[float]] | None = None,
) -> float:
    """Hypervolume of the region the points dominate, in normalized minimization space.

    Points are normalized with `bounds` (ideal, nadir) in original units, or with the points' own
    bounds when None, then measured against `reference` (default 1.1 per objective). Use the same
    explicit bounds and reference to compare searches; `hypervolume_report` returns both.
    """
    return hypervolume_report(points, senses, reference, bounds)["hypervolume"]


def hypervolume_report(
    points: Sequence[Sequence[float]],
    senses: Sequence[Sense],
    reference: Sequence[float] | None = None,
    bounds: Bounds | tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict:
    """Hypervolume plus everything needed to reproduce it: senses, bounds, reference, counts.

    The dict is JSON-ready. With no points and no bounds, "ideal" and "nadir" are None.
    """
    pts = _check(points, senses)
    senses = tuple(senses)
    ref = tuple(float(v) for v in reference) if reference is not None else (DEFAULT_REFERENCE,) * len(senses)
    if len(ref) != len(senses):
        raise ValueError(f"reference {ref} needs {len(senses)} values, one per objective")
    if not pts and bounds is None:
        norm, used = [], None
    elif bounds is None:
        norm, used = normalize(pts, senses)
    else:
        norm, used = normalize(pts, senses, ideal=bounds[0], nadir=bounds[1])
    inside = [p for p in norm if all(v < r for v, r in zip(p, ref))]
    front = [p for p, on in zip(inside, pareto_mask(inside, ("min",) * len(ref))) if on]
    return {
        "hypervolume": _hv_min(front, ref),
        "senses": list(senses),
        "ideal": list(used.ideal) if used else None,
        "nadir": list(used.nadir) if used else None,
        "reference": list(ref),
        "n_points": len(pts),
        "n_inside_reference": len(inside),
    }


# --- trial dicts ----------------------------------------------------------------------------------


def is_eligible(trial: dict) -> bool:
    """Completed and not marked over budget: the trials the frontier is taken over."""
    return trial.get("status") == "completed" and trial.get("within_budget", True) is not False


def objective_points(
    trials: Sequence[dict], objectives: Sequence[tuple[str, Sense]] = DEFAULT_OBJECTIVES
) -> list[Point]:
    """One tuple of objective values per trial, in the order of `objectives`."""
    out = []
    for t in trials:
        missing = [k for k, _ in objectives if t.get(k) is None]
        if missing:
            raise ValueError(
                f"trial {t.get('run_id', t.get('key', '?'))!r} is missing objective(s) {missing}; "
                f"it has keys {sorted(t)}"
            )
        out.append(tuple(float(t[k]) for k, _ in objectives))
    return out


def frontier(
    trials: Sequence[dict], objectives: Sequence[tuple[str, Sense]] = DEFAULT_OBJECTIVES
) -> list[dict]:
    """Eligible trials (see `is_eligible`) as shallow copies with "pareto": bool added.

    `objectives` pairs each trial key with its sense, e.g. (("score", "max"), ("compute_hours", "min")).
    Input dicts are not modified; ineligible trials are left out of the result.
    """
    kept = [t for t in trials if is_eligible(t)]
    senses = tuple(s for _, s in objectives)
    mask = pareto_mask(objective_points(kept, objectives), senses)
    return [{**t, "pareto": on} for t, on in zip(kept, mask)]
