"""Propose placements with Optuna under Ray Tune, always within budget.

Where it sits: score -> **sample** -> train. The define-by-run space asks Optuna for one include
flag per module kind and per layer, a rank and a learning rate; the proposal (kinds x layers at
that rank) is repaired to the budget before the trial exists, and the repaired placement travels
in the trial config as JSON. A placement over budget is never trained.

`PlacementOptunaSearch` fixes how trial outcomes reach Optuna (ray's wrapper would mark an
ASHA-stopped trial COMPLETE with missing values in multi-objective mode, and crash on per-epoch
results that lack the final objective in single-objective mode):
- final result has every objective, all finite -> COMPLETE with those values;
- the trial errored -> FAIL;
- otherwise (stopped early by ASHA) -> PRUNED.
"""

from __future__ import annotations

import logging
import math

from ray.tune.search.optuna import OptunaSearch

from spaces.budget import Budget, repair
from spaces.placement import Placement
from spaces.space import ModelSpace

log = logging.getLogger(__name__)

# Objectives reported only in a trial's last result (ASHA watches `epoch_score` instead).
OBJECTIVES = ["final_metric", "trainable_params", "gpu_hours"]
MODES = ["max", "min", "min"]


def propose(
    space: ModelSpace,
    budget: Budget,
    ranks: list[int],
    kinds_on: list[bool],
    layers_on: list[bool],
    rank: int,
) -> tuple[Placement, list[str]]:
    """Kinds x layers at one rank, repaired to the budget."""
    sites = [
        (k, l) for k in range(len(space.kinds)) for l in range(space.n_layers)
        if kinds_on[k] and layers_on[l] and space.has_site(k, l)
    ]
    raw = Placement.from_sites(space, sites, rank) if sites else Placement(
        space.aliases, tuple((0,) * space.n_layers for _ in space.kinds)
    )
    return repair(raw, space, budget, ranks)


class PlacementSpace:
    """The Optuna define-by-run function: sampled values plus the repaired placement.

    A class rather than a closure so Tune can pickle the searcher into its experiment checkpoint.
    """

    def __init__(self, space: ModelSpace, budget: Budget, ranks: list[int], lr_min: float, lr_max: float):
        self.space, self.budget, self.ranks = space, budget, list(ranks)
        self.lr_min, self.lr_max = lr_min, lr_max

    def __call__(self, trial) -> dict:
        space = self.space
        kinds_on = [trial.suggest_categorical(f"kind_{a}", [True, False]) for a in space.aliases]
        layers_on = [trial.suggest_categorical(f"layer_{l}", [True, False]) for l in range(space.n_layers)]
        rank = trial.suggest_categorical("rank", self.ranks)
        trial.suggest_float("lr", self.lr_min, self.lr_max, log=True)
        placement, steps = propose(space, self.budget, self.ranks, kinds_on, layers_on, rank)
        assert self.budget.fits(placement, space), "repair left a placement over budget"
        trial.set_user_attr("placement_key", placement.key)
        return {
            "placement": placement.to_json(),
            "placement_key": placement.key,
            "repairs": "; ".join(steps),
            "budget_ratio": self.budget.ratio(placement, space),
        }


def optuna_state(result: dict | None, error: bool, metrics: list[str]):
    """The Optuna trial state and values for a finished Tune trial (see module docstring)."""
    from optuna.trial import TrialState

    values = None
    if result and all(m in result for m in metrics):
        values = [float(result[m]) for m in metrics]
        if not all(math.isfinite(v) for v in values):
            values = None
    if values is not None:
        return TrialState.COMPLETE, values
    return (TrialState.FAIL if error else TrialState.PRUNED), None


class PlacementOptunaSearch(OptunaSearch):
    """OptunaSearch that reports COMPLETE only for trials that finished their schedule.

    `metric` is None towards Tune: the objectives arrive only in a trial's final result, so Tune's
    strict per-result check must not ask for them (it still checks ASHA's `epoch_score`, so a
    misspelt scheduler metric fails loudly). The objectives live in `objectives`.
    """

    @property
    def metric(self):
        return None

    @property
    def objectives(self) -> list[str]:
        return self._metric if isinstance(self._metric, list) else [self._metric]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Early stopping is ASHA's job; Optuna only sees final outcomes.
        return

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state, values = optuna_state(result, error, self.objectives)
        if values is not None and not isinstance(self._metric, list):
            values = values[0]
        self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        self._completed_trials.add(trial_id)


def make_searcher(space: ModelSpace, budget: Budget, cfg, seed: int) -> PlacementOptunaSearch:
    import optuna

    s = cfg.search
    if s.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(5, s.trials // 3)))
    return PlacementOptunaSearch(
        space=PlacementSpace(space, budget, list(s.ranks), s.lr_min, s.lr_max),
        metric=list(OBJECTIVES),
        mode=list(MODES),
        sampler=sampler,
    )
