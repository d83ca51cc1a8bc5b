"""Budget arithmetic and deterministic repair: every placement trained fits the budget.

Where it sits: between sampling and training. The budget `b` in (0, 1] is the largest allowed
ratio of a placement's adapter parameters to the full placement's (every site at `r_ref`).
A proposal over budget is repaired before it trains: lower the rank one step while a lower
allowed rank exists, then drop the lowest-priority unit (a kind or a layer), never silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spaces.placement import Placement
from spaces.space import ModelSpace


class BudgetError(ValueError):
    """No placement can meet the requested budget."""


@dataclass(frozen=True)
class Budget:
    fraction: float
    r_ref: int
    full_params: int

    @property
    def max_params(self) -> float:
        return self.fraction * self.full_params

    def fits(self, placement: Placement, space: ModelSpace) -> bool:
        return placement.adapter_params(space) <= self.max_params

    def ratio(self, placement: Placement, space: ModelSpace) -> float:
        return placement.adapter_params(space) / self.full_params


def make_budget(space: ModelSpace, fraction: float, r_ref: int, min_rank: int) -> Budget:
    """Validate `fraction` and that at least one single site fits at `min_rank`."""
    if not (0.0 < fraction <= 1.0):
        raise BudgetError(f"budget {fraction} is outside (0, 1]: pass e.g. --budget 0.5")
    if r_ref < 1:
        raise BudgetError(f"r_ref {r_ref} must be >= 1: set search.r_ref to a positive rank")
    full = Placement.full(space, r_ref).adapter_params(space)
    budget = Budget(fraction, r_ref, full)
    cheapest = min(min_rank * space.site_width(k, l) for k, l in space.sites())
    if cheapest > budget.max_params:
        # Four significant digits, rounded up, so that the suggestion works when followed.
        step = 10.0 ** (math.floor(math.log10(cheapest / full)) - 3)
        need = math.ceil(cheapest / full / step) * step
        # float round-off, here or in printing four digits (0.0725000001 prints as 0.0725, and
        # 0.0725 x full can fall short of `cheapest`): step up until the printed value fits
        while float(f"{need:.4g}") * full < cheapest:
            need += step
        need = float(f"{need:.4g}")
        raise BudgetError(
            f"budget {fraction} allows {budget.max_params:.0f} adapter parameters, but the cheapest "
            f"single site at rank {min_rank} needs {cheapest}: raise --budget to at least {need:g}"
        )
    return budget


def fill_units(space: ModelSpace, budget: Budget, units: list[list[tuple[int, int]]], rank: int) -> Placement | None:
    """Whole units (lists of (kind, layer) sites), in order, at `rank`, while the placement fits.

    Stops at the first unit that would break the budget. None if not even the first unit fits:
    each caller has its own fallback."""
    chosen: list[tuple[int, int]] = []
    for unit in (u for u in units if u):
        if not budget.fits(Placement.from_sites(space, chosen + unit, rank), space):
            break
        chosen += unit
    return Placement.from_sites(space, chosen, rank) if chosen else None


def repair(
    placement: Placement,
    space: ModelSpace,
    budget: Budget,
    ranks: list[int],
    kind_priority: list[float] | None = None,
    layer_priority: list[float] | None = None,
) -> tuple[Placement, list[str]]:
    """Bring a uniform-rank placement within budget; returns it and a log of each repair step.

    ranks: the allowed ranks, any order. kind_priority / layer_priority: higher = keep longer
    (priors plug in here; default: all equal, ties broken towards dropping the last index).
    An empty placement is given one site (the cheapest) so that nothing untrainable is returned.
    """
    steps: list[str] = []
    allowed = sorted(ranks)
    kp = kind_priority or [0.0] * len(space.kinds)
    lp = layer_priority or [0.0] * space.n_layers
    sites = set(placement.sites())
    rank = max(placement.rank_values()) if sites else allowed[0]
    if not sites:
        k, l = min(space.sites(), key=lambda s: (space.site_width(*s), -kp[s[0]], -lp[s[1]]))
        sites = {(k, l)}
        steps.append(f"empty placement: added {space.aliases[k]}[{l}]")

    def current() -> Placement:
        return Placement.from_sites(space, sites, rank)

    while not budget.fits(current(), space):
        lower = [r for r in allowed if r < rank]
        if lower:
            steps.append(f"rank {rank} -> {lower[-1]}")
            rank = lower[-1]
            continue
        kinds = sorted({k for k, _ in sites})
        layers = sorted({l for _, l in sites})
        # Drop whichever unit has the lowest priority; a kind and a layer compete on a common
        # footing by comparing priorities, ties prefer dropping a layer (finer grained).
        candidates = []
        if len(layers) > 1:
            l = min(layers, key=lambda x: (lp[x], -x))
            candidates.append((lp[l], 0, "layer", l))
        if len(kinds) > 1:
            k = min(kinds, key=lambda x: (kp[x], -x))
            candidates.append((kp[k], 1, "kind", k))
        if not candidates:
            # One site left, at the lowest rank, still over: fall back to the cheapest site,
            # which make_budget guarantees to fit.
            k, l = min(space.sites(), key=lambda s: (space.site_width(*s), -kp[s[0]], -lp[s[1]]))
            sites = {(k, l)}
            steps.append(f"replaced by the cheapest site {space.aliases[k]}[{l}]")
            continue
        _, _, what, idx = min(candidates)
        if what == "layer":
            sites = {s for s in sites if s[1] != idx}
            steps.append(f"dropped layer {idx}")
        else:
            sites = {s for s in sites if s[0] != idx}
            steps.append(f"dropped kind {space.aliases[idx]}")
    return current(), steps
