"""The define-by-run space of a placement search: one proposal = kinds x layers at one rank, an
lr, repaired to the budget before the trial exists.

Where it sits: score -> **sample** -> train. Optuna asks `PlacementSpace` for one include flag per
module kind (`kind_<alias>`) and per layer (`layer_<l>`), a `rank` and an `lr`; the product of the
flags at that rank is repaired to the budget (`spaces.budget.repair`, with the priors' priorities
when the prior sampler runs) and travels in the trial config as JSON. A placement over budget is
never trained.

A trial can also carry a fixed placement: the hand-crafted baselines (`spaces.baselines`) are
enqueued with the flags of their kinds x layers product and, in the trial's user attrs, their name
(`BASELINE_ATTR`) and placement (`BASELINE_PLACEMENT_ATTR`). `PlacementSpace` then trains exactly
that placement, and the trial config says `"baseline": <name>` (None for every other trial).
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution

from spaces.budget import Budget, repair
from spaces.placement import Placement
from spaces.space import ModelSpace

# User attrs of an enqueued trial that carries a fixed (baseline) placement.
BASELINE_ATTR = "baseline"
BASELINE_PLACEMENT_ATTR = "baseline_placement"


def is_baseline(trial) -> bool:
    """An Optuna trial (frozen or live) enqueued as a baseline."""
    return trial.user_attrs.get(BASELINE_ATTR) is not None


def flag_params(space: ModelSpace, kinds_on: list[bool], layers_on: list[bool], rank: int, lr: float) -> dict:
    """The define-by-run params for one proposal, by name."""
    params: dict[str, Any] = {f"kind_{a}": bool(on) for a, on in zip(space.aliases, kinds_on)}
    params.update({f"layer_{l}": bool(on) for l, on in enumerate(layers_on)})
    params.update(rank=int(rank), lr=float(lr))
    return params


def propose(
    space: ModelSpace,
    budget: Budget,
    ranks: list[int],
    kinds_on: list[bool],
    layers_on: list[bool],
    rank: int,
    priorities=None,
) -> tuple[Placement, list[str]]:
    """Kinds x layers at one rank, repaired to the budget. priorities: a
    `spaces.baselines.Priorities` (higher = keep longer), or None for all equal."""
    sites = [
        (k, l) for k in range(len(space.kinds)) for l in range(space.n_layers)
        if kinds_on[k] and layers_on[l] and space.has_site(k, l)
    ]
    raw = Placement.from_sites(space, sites, rank) if sites else Placement(
        space.aliases, tuple((0,) * space.n_layers for _ in space.kinds)
    )
    kind_priority, layer_priority = (priorities.kind, priorities.layer) if priorities else (None, None)
    return repair(raw, space, budget, ranks, kind_priority, layer_priority)


class PlacementSpace:
    """The Optuna define-by-run function: a trial's config = its sampled values (flags, rank, lr)
    plus the repaired placement (JSON), its key, the repair steps, its share of the budget and the
    baseline's name (None for a searched trial).

    A class rather than a closure so Tune can pickle the searcher into its experiment checkpoint.
    priorities go to `repair` (from the priors with the `prior` sampler).
    """
    def __init__(self, space: ModelSpace, budget: Budget, ranks: list[int], lr_range: tuple[float, float],
                 priorities=None):
        self.space, self.budget, self.ranks = space, budget, list(ranks)
        self.lr_min, self.lr_max = lr_range
        self.priorities = priorities

    def distributions(self) -> dict:
        """The distributions `__call__` suggests, by name, in suggestion order."""
        flags = [f"kind_{a}" for a in self.space.aliases] + [f"layer_{l}" for l in range(self.space.n_layers)]
        out = {name: CategoricalDistribution([True, False]) for name in flags}
        out["rank"] = CategoricalDistribution(self.ranks)
        out["lr"] = FloatDistribution(self.lr_min, self.lr_max, log=True)
        return out

    def __call__(self, trial) -> dict:
        space = self.space
        kinds_on = [trial.suggest_categorical(f"kind_{a}", [True, False]) for a in space.aliases]
        layers_on = [trial.suggest_categorical(f"layer_{l}", [True, False]) for l in range(space.n_layers)]
        rank = trial.suggest_categorical("rank", self.ranks)
        trial.suggest_float("lr", self.lr_min, self.lr_max, log=True)
        baseline = trial.user_attrs.get(BASELINE_ATTR)
        if baseline is not None:
            # A fixed placement, already fitted to the budget; the flags above are its product cover.
            placement, steps = Placement.from_json(trial.user_attrs[BASELINE_PLACEMENT_ATTR]).checked(space), []
        else:
            placement, steps = propose(space, self.budget, self.ranks, kinds_on, layers_on, rank, self.priorities)
        assert self.budget.fits(placement, space) and not placement.is_empty(), "placement untrainable"
        trial.set_user_attr("placement_key", placement.key)
        return {
            **trial.params,
            "placement": placement.to_json(),
            "placement_key": placement.key,
            "repairs": "; ".join(steps),
            "budget_ratio": self.budget.ratio(placement, space),
            "baseline": baseline,
        }
