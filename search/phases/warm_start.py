"""Start a new search from an earlier one's completed trials (`--warm-start EXPERIMENT`).

Where it sits: sample, before the first trial. Another budget, or other settings of a search on
the same model, task, data and metric, need not learn again what an earlier search measured. Its
completed trials (not its confirmation runs) are added to the new Optuna study as finished trials
(Optuna `add_trials`: the sampler learns from them) and copied into the new search's MLflow
experiment as runs nested under its search run, tagged `warm_start=<run id>` and shown as "(warm)" in the table. They are never
trained again and never confirmed; one whose placement exceeds the new budget is tagged
`within_budget=false` and never enters the new frontier. The earlier search must be in the same
tracking store, on the same model (by name or path, checked before Ray starts by
`search.runtime.checks.check_warm_start`, and its `space.json` equal to this one's), task and data
source, and on the same metric: its scores go into this search's study and frontier as they are.
"""

from __future__ import annotations

import math

import optuna
from mlflow.entities import Metric, Param

from analysis.mlflow_read import StoreError, read_json_artifact, read_search
from search.runtime.errors import UsageError
from search.sampling.proposal import flag_params
from search.sampling.study import optuna_state
from spaces.baselines import product_flags
from spaces.placement import Placement
from trainables import record as R


def earlier_search(client, experiment: str):
    """The earlier search's parent run and records, or a UsageError naming the fix."""
    try:
        return read_search(client, experiment=experiment)
    except StoreError as e:
        raise UsageError(f"--warm-start {experiment}: {e}") from None


def warm_start(client, run, search, study, pspace) -> int:
    """Add the earlier search's completed trials to `study` and to MLflow; returns how many."""
    name = search.cfg.search.warm_start
    earlier = earlier_search(client, name)
    space_there = read_json_artifact(client, earlier["parent"]["run_id"], "space.json")
    if space_there != search.space.to_dict():
        raise UsageError(f"--warm-start {name}: that search ran on another model (its sites differ from this "
                         f"one's): warm-start only from a search on the same model ({search.cfg.model.name})")
    there = earlier["parent"].get("metric_name", R.SCORE)
    if R.sense(there) != R.sense(search.metric_name):
        raise UsageError(f"--warm-start {name}: that search's metric {there!r} improves the other way from this "
                         f"one's {search.metric_name!r} (higher against lower is better): its scores would teach the "
                         "sampler backwards; warm-start only from a search with a metric of the same direction")
    if there != search.metric_name:  # train.metric "auto" resolved to another metric for this task
        raise UsageError(f"--warm-start {name}: that search's scores are {there!r}, this one's {search.metric_name!r}: "
                         f"its scores would enter this search's frontier as {search.metric_name}; warm-start only from "
                         f"a search on the same metric (--set train.metric={there}), or leave --warm-start out")
    dists = pspace.distributions()
    frozen, copied = [], 0
    for r in earlier["rows"]:
        if r.status != R.COMPLETED or r.confirms is not None or r.warm_start is not None:
            continue
        placement = Placement.from_key(r.key, search.space)
        kinds, layers, rank = product_flags(placement, search.space)
        if rank not in pspace.ranks:
            continue  # a rank this search never proposes: the study could not hold the trial
        lo, hi = pspace.lr_min, pspace.lr_max
        lr = min(hi, max(lo, r.lr or math.sqrt(lo * hi)))  # its own rate, clipped into this search's range
        params = flag_params(search.space, kinds, layers, rank, lr)
        # told as the searcher tells a trial (`optuna_state`): never the measured compute hours
        _, values = optuna_state({R.SCORE: r.score, R.TRAINABLE_PARAMS: r.trainable_params or 0}, False)
        if values is None:
            continue  # a non-finite score: nothing the sampler can learn from
        within = search.budget.fits(placement, search.space)
        frozen.append(optuna.trial.create_trial(
            params=params, distributions=dists, values=values,
            user_attrs={"placement_key": placement.key, R.WARM_START_TAG: r.run_id}))
        _copy_run(client, run, r, placement, search, within)
        copied += 1
    if frozen:
        study.add_trials(frozen)
    return copied


def _copy_run(client, run, r, placement, search, within: bool) -> None:
    tags = {R.PARENT_TAG: run.parent_run_id, R.TRIAL_ID_TAG: f"warm-{r.trial_id}", R.PLACEMENT_KEY: placement.key[:500],
            R.STATUS_TAG: R.COMPLETED, R.WARM_START_TAG: r.run_id, R.WITHIN_BUDGET_TAG: str(within).lower()}
    if r.baseline:
        tags[R.BASELINE_TAG] = r.baseline
    new = client.create_run(run.experiment_id, run_name=f"warm {placement.key}"[:250], tags=tags)
    params = {R.PLACEMENT_KEY: placement.key[:500], "rank": max(placement.rank_values()), "lr": r.lr,
              R.ADAPTER_PARAMS: placement.adapter_params(search.space), R.SEED: r.seed or 0,
              "budget_ratio": round(search.budget.ratio(placement, search.space), 6)}
    metrics = {R.SCORE: r.score, R.TRAINABLE_PARAMS: r.trainable_params, R.ADAPTER_PARAMS: r.adapter_params,
               R.COMPUTE_HOURS: r.compute_hours, R.EPOCH: r.epochs, R.EPOCH_SCORE: r.last_score}
    client.log_batch(new.info.run_id,
                     metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items() if v is not None],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(new.info.run_id, "FINISHED")
