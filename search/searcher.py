"""Propose placements with Optuna under Ray Tune, always within budget.

Where it sits: score -> **sample** -> train. The define-by-run space asks Optuna for one include
flag per module kind and per layer, a rank and a learning rate; the proposal (kinds x layers at
that rank) is repaired to the budget before the trial exists, and the repaired placement travels
in the trial config as JSON. A placement over budget is never trained.

A trial can also carry a fixed placement: the hand-crafted baselines (`search.baselines`) are
enqueued with the flags of their kinds x layers product and, in the trial's user attrs, their name
and placement. `PlacementSpace` then trains exactly that placement, and the trial config says
`"baseline": <name>` (None for every other trial).

Samplers (`make_sampler`): `prior` (baselines, then prior draws, then TPE with the prior mixed in;
`search.prior_sampler`), `tpe`, `random`.

`PlacementOptunaSearch` fixes how trial outcomes reach Optuna (ray's wrapper would mark an
ASHA-stopped trial COMPLETE with missing values in multi-objective mode, and crash on per-epoch
results that lack the final objective in single-objective mode):
- final result has every objective, all finite -> COMPLETE with those values;
- the trial errored -> FAIL;
- otherwise (stopped early by ASHA) -> PRUNED.

The study can live in an RDB storage (`optuna.storages.RDBStorage`, SQLite by default; see
`open_study_storage`): Tune's searcher checkpoint then holds only a handle to it, so a driver that
restarts (`--resume`, on this machine or another that reaches the database) continues the same
study, including every outcome told after Tune's last snapshot. On restore, trials the dead driver
had asked for but Tune never recorded are marked FAIL, and an enqueued baseline among them is
enqueued again.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

from ray.tune.search.optuna import OptunaSearch

from spaces.budget import Budget, repair
from spaces.placement import Placement
from spaces.space import ModelSpace

log = logging.getLogger(__name__)

# Objectives reported only in a trial's last result (ASHA watches `epoch_score` instead).
OBJECTIVES = ["final_metric", "trainable_params", "gpu_hours"]
MODES = ["max", "min", "min"]
# User attrs of an enqueued trial that carries a fixed (baseline) placement.
BASELINE_ATTR = "baseline"
BASELINE_PLACEMENT_ATTR = "baseline_placement"


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
    kind_priority: list[float] | None = None,
    layer_priority: list[float] | None = None,
) -> tuple[Placement, list[str]]:
    """Kinds x layers at one rank, repaired to the budget (priorities: higher = keep longer)."""
    sites = [
        (k, l) for k in range(len(space.kinds)) for l in range(space.n_layers)
        if kinds_on[k] and layers_on[l] and space.has_site(k, l)
    ]
    raw = Placement.from_sites(space, sites, rank) if sites else Placement(
        space.aliases, tuple((0,) * space.n_layers for _ in space.kinds)
    )
    return repair(raw, space, budget, ranks, kind_priority, layer_priority)


class PlacementSpace:
    """The Optuna define-by-run function: sampled values plus the repaired placement.

    A class rather than a closure so Tune can pickle the searcher into its experiment checkpoint.
    kind_priority / layer_priority go to `repair` (from the priors with the `prior` sampler).
    """

    def __init__(self, space: ModelSpace, budget: Budget, ranks: list[int], lr_min: float, lr_max: float,
                 kind_priority: list[float] | None = None, layer_priority: list[float] | None = None):
        self.space, self.budget, self.ranks = space, budget, list(ranks)
        self.lr_min, self.lr_max = lr_min, lr_max
        self.kind_priority, self.layer_priority = kind_priority, layer_priority

    def distributions(self) -> dict:
        """The distributions `__call__` suggests, by name, in suggestion order."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

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
        attrs = trial.user_attrs
        baseline = attrs.get(BASELINE_ATTR)
        if baseline is not None:
            # A fixed placement, already fitted to the budget; the flags above are its product cover.
            placement, steps = Placement.from_json(attrs[BASELINE_PLACEMENT_ATTR]).checked(space), []
        else:
            placement, steps = propose(space, self.budget, self.ranks, kinds_on, layers_on, rank,
                                       self.kind_priority, self.layer_priority)
        assert self.budget.fits(placement, space) and not placement.is_empty(), "placement untrainable"
        trial.set_user_attr("placement_key", placement.key)
        return {
            "placement": placement.to_json(),
            "placement_key": placement.key,
            "repairs": "; ".join(steps),
            "budget_ratio": self.budget.ratio(placement, space),
            "baseline": baseline,
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
    `enqueue`: (params, user_attrs) pairs enqueued into the study before any trial, in order
    (the baselines; `points_to_evaluate` cannot carry user attrs).
    """

    def __init__(self, *args, enqueue: list[tuple[dict, dict]] | None = None, **kwargs):
        self._enqueue = list(enqueue or [])  # before super().__init__, which sets up the study
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        if self._ot_study.get_trials(deepcopy=False):
            return  # a study loaded from its database has its baselines already
        for params, user_attrs in self._enqueue:
            self._ot_study.enqueue_trial(params, user_attrs=user_attrs)

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
        # skip_if_finished: with an RDB study, a trial told just before the driver died (after
        # Tune's last snapshot) is told again when its rerun completes; the first outcome stays.
        self._ot_study.tell(self._ot_trials[trial_id], values, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._storage is not None:
            self.reconcile()

    def reconcile(self) -> list[int]:
        """Close the study's orphans: trials still RUNNING that no Tune trial owns (asked by a
        driver that died before Tune's next snapshot). Each becomes FAIL; one that carried fixed
        params (an enqueued baseline) is enqueued again so it still runs. Returns their numbers."""
        from optuna.trial import TrialState

        owned = {t.number for t in self._ot_trials.values()}  # Tune reruns these if unfinished
        orphans = []
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in owned:
                continue
            self._ot_study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            fixed = t.system_attrs.get("fixed_params")
            if fixed:
                self._ot_study.enqueue_trial(fixed, user_attrs=dict(t.user_attrs))
            orphans.append(t.number)
        if orphans:
            log.warning("study %s: trials %s were asked for by the previous driver after its last "
                        "snapshot; marked FAIL (baselines among them are enqueued again)",
                        self._study_name, orphans)
        return orphans


class SamplerSetup(NamedTuple):
    sampler: Any  # an optuna.samplers.BaseSampler
    space: PlacementSpace  # the define-by-run function
    enqueue: list[tuple[dict, dict]]  # (params, user_attrs) to enqueue first: the baselines
    baselines: list  # search.baselines.Baseline, in enqueue order


def prior_trials(trials: int) -> int:
    """How many prior draws follow the baselines: a sixth of the trials, 1 to 6."""
    return max(1, min(6, trials // 6))


def make_sampler(name: str, space: ModelSpace, budget: Budget, ranks: list[int], lr_min: float,
                 lr_max: float, trials: int, seed: int, scores: dict | None = None,
                 prior_options: dict | None = None) -> SamplerSetup:
    """The sampler, define-by-run space and enqueued baselines for `name` in prior | tpe | random.

    `prior` without scores uses uniform probabilities (still scaled to the budget) and the three
    structural baselines. `tpe` and `random` enqueue nothing and repair without priorities.
    prior_options (ablations): strength, fills, floor (`PlacementPrior`), n_prior, w0, tau
    (`PriorSampler`); defaults in `search.prior_sampler`, n_prior from `prior_trials`.
    """
    import optuna

    if name == "random":
        return SamplerSetup(optuna.samplers.RandomSampler(seed=seed),
                            PlacementSpace(space, budget, ranks, lr_min, lr_max), [], [])
    if name == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(5, trials // 3)))
        return SamplerSetup(sampler, PlacementSpace(space, budget, ranks, lr_min, lr_max), [], [])
    if name != "prior":
        raise ValueError(f"sampler {name!r} is not one of prior, tpe, random")
    from search.baselines import make_baselines, priorities, product_flags
    from search.prior_sampler import PlacementPrior, PriorSampler

    prio = priorities(scores, space)
    pspace = PlacementSpace(space, budget, ranks, lr_min, lr_max, prio.kind, prio.layer)
    baselines = make_baselines(space, budget, ranks, scores)
    lr_mid = math.sqrt(lr_min * lr_max)  # one fixed lr for every baseline: a fair side-by-side
    enqueue = [
        (flag_params(space, *product_flags(b.placement, space), lr_mid),
         {BASELINE_ATTR: b.name, BASELINE_PLACEMENT_ATTR: b.placement.to_json(),
          "baseline_aliases": list(b.aliases)})
        for b in baselines
    ]
    opts = {"n_prior": prior_trials(trials), **(prior_options or {})}
    prior = PlacementPrior(space, budget, ranks, lr_min, lr_max, prio,
                           **{k: opts.pop(k) for k in ("strength", "fills", "floor") if k in opts})
    sampler = PriorSampler(prior, pspace.distributions(), seed=seed, **opts)
    return SamplerSetup(sampler, pspace, enqueue, baselines)


def make_searcher(
    space: ModelSpace, budget: Budget, cfg, seed: int, scores: dict | None = None,
    storage=None, study_name: str | None = None,
) -> PlacementOptunaSearch:
    """The searcher for `cfg.search.sampler`; `scores` are the priors (`spaces.priors`), if computed.

    With `prior`, the first trials Tune asks for are the baselines, in order. `storage`: an Optuna
    RDB storage for the study (`open_study_storage`), None keeps it in memory; `study_name` names
    the study in it (the search's name).
    """
    s = cfg.search
    setup = make_sampler(s.sampler, space, budget, list(s.ranks), s.lr_min, s.lr_max, s.trials, seed, scores)
    return PlacementOptunaSearch(
        space=setup.space,
        metric=list(OBJECTIVES),
        mode=list(MODES),
        sampler=setup.sampler,
        enqueue=setup.enqueue,
        storage=storage,
        study_name=study_name,
    )


def open_study_storage(url: str):
    """An Optuna RDB storage at a SQLAlchemy URL (sqlite:///path.db, postgresql://..., mysql://...).

    SQLite waits up to 60 s for a lock instead of failing at once (an `optuna-dashboard` or a
    notebook reading the same file holds it briefly)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
