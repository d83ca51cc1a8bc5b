"""Which Optuna sampler proposes the placements: one of `trainables.choices.SAMPLERS` (`prior`, the
default, `tpe` or `random`).

Where it sits: score -> **sample** -> train. `make_sampler` returns the sampler, the define-by-run
space (`search.sampling.proposal.PlacementSpace`) and the trials to enqueue before any other (the
baselines of `spaces.baselines`, for `prior`). The searcher (`search.tuning.searcher`) runs them under
Ray Tune; the benchmarks run them on a plain Optuna study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import optuna

from search.sampling.prior_sampler import PlacementPrior, PriorOptions, PriorSampler
from search.sampling.proposal import BASELINE_ATTR, BASELINE_PLACEMENT_ATTR, PlacementSpace, flag_params
from spaces.baselines import Baseline, make_baselines, priorities, product_flags, select_baselines
from spaces.budget import Budget
from spaces.scores import PriorScores
from spaces.space import ModelSpace
from trainables.choices import SAMPLERS, one_of


@dataclass(frozen=True)
class SamplerInputs:
    """What every sampler needs to know about the search it proposes for."""
    space: ModelSpace
    budget: Budget
    ranks: tuple[int, ...]
    lr_range: tuple[float, float]
    trials: int
    seed: int = 0
    scores: PriorScores | None = None
    calibrated_lr: float | None = None  # the probe's choice (search.phases.calibrate), if one ran

    @classmethod
    def from_config(cls, space: ModelSpace, budget: Budget, cfg, scores: PriorScores | None = None,
                    calibrated_lr: float | None = None) -> "SamplerInputs":
        """With a calibrated rate the sampler draws within a factor search.lr_band of it; without,
        over [search.lr_min, search.lr_max]."""
        s = cfg.search
        lr_range = (s.lr_min, s.lr_max)
        if calibrated_lr is not None:
            lr_range = (calibrated_lr / s.lr_band, calibrated_lr * s.lr_band)
        return cls(space, budget, tuple(s.ranks), lr_range, s.trials, s.seed, scores, calibrated_lr)

    @property
    def baseline_lr(self) -> float:
        """One learning rate for every baseline, so they compare side by side: the calibrated rate,
        else the geometric middle of the sampler's range."""
        if self.calibrated_lr is not None:
            return self.calibrated_lr
        return math.sqrt(self.lr_range[0] * self.lr_range[1])


class SamplerSetup(NamedTuple):
    sampler: Any  # an optuna.samplers.BaseSampler
    space: PlacementSpace  # the define-by-run function
    enqueue: list[tuple[dict, dict]]  # (params, user_attrs) to enqueue first: the baselines
    baselines: list[Baseline]  # in enqueue order


def baseline_cap(trials: int) -> int:
    """How many baselines a search of this many trials trains: a third of them, at least one."""
    return max(1, trials // 3)


def prior_trials(trials: int) -> int:
    """How many prior draws follow the baselines: a sixth of the trials, 1 to 6."""
    return max(1, min(6, trials // 6))


def baseline_trials(inputs: SamplerInputs, baselines: list[Baseline]) -> list[tuple[dict, dict]]:
    """(params, user_attrs) that make an Optuna study train each baseline at the baseline lr."""
    return [
        (flag_params(inputs.space, *product_flags(b.placement, inputs.space), inputs.baseline_lr),
         {BASELINE_ATTR: b.name, BASELINE_PLACEMENT_ATTR: b.placement.to_json(), "baseline_aliases": list(b.aliases)})
        for b in baselines
    ]


def make_sampler(name: str, inputs: SamplerInputs, prior_options: dict | None = None) -> SamplerSetup:
    """The sampler, define-by-run space and enqueued baselines for `name` in prior | tpe | random.

    `prior` without scores uses uniform probabilities (still scaled to the budget) and the three
    structural baselines. `tpe` and `random` enqueue nothing and repair without priorities.
    prior_options (ablations): strength, fills, floor (`PlacementPrior`), n_prior, w0, tau
    (`PriorSampler`); defaults in `search.sampling.prior_sampler`, n_prior from `prior_trials`.
    """

    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not one of {one_of(SAMPLERS)}")
    ranks = list(inputs.ranks)
    if name == "random":
        return SamplerSetup(optuna.samplers.RandomSampler(seed=inputs.seed),
                            PlacementSpace(inputs.space, inputs.budget, ranks, inputs.lr_range), [], [])
    if name == "tpe":
        sampler = optuna.samplers.TPESampler(seed=inputs.seed, n_startup_trials=max(2, min(5, inputs.trials // 3)))
        return SamplerSetup(sampler, PlacementSpace(inputs.space, inputs.budget, ranks, inputs.lr_range), [], [])

    prio = priorities(inputs.scores, inputs.space)
    pspace = PlacementSpace(inputs.space, inputs.budget, ranks, inputs.lr_range, prio)
    baselines = select_baselines(make_baselines(inputs.space, inputs.budget, ranks, inputs.scores),
                                 baseline_cap(inputs.trials))
    options = PriorOptions(n_prior=prior_trials(inputs.trials)).with_overrides(prior_options or {})
    prior = PlacementPrior(inputs.space, inputs.budget, ranks, inputs.lr_range, prio, options)
    sampler = PriorSampler(prior, pspace.distributions(), options, seed=inputs.seed)
    return SamplerSetup(sampler, pspace, baseline_trials(inputs, baselines), baselines)
