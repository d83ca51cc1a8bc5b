"""Confirm the frontier: retrain its best placements and the best baselines with more seeds.

Where it sits: after the search, before the frontier is published. A single training run is one
draw (docs/methods.md, "Confirmation"), so the candidates (`analysis.confirmed.pick_candidates`)
train again, each at its own trial's learning rate, with `search.confirm_seeds` more training seeds
(train.seed + 1, + 2, ...). Each retraining is a Ray Tune trial on the same resources and through
the same trainable as a search trial, in the same MLflow experiment, nested under the search's run
and tagged `confirms=<trial id>`; its cost counts toward `search.max_compute_hours`. The phase is a
Tune experiment of its own (`<name>-confirm`), so `--resume` continues it; a job whose (trial,
seed) already has a run in MLflow logs into that run, never a second one.
"""

from __future__ import annotations

from ray import tune

from analysis.confirmed import pick_candidates
from search.tuning.stopping import CostStopper
from search.tuning.tracker import MlflowTracker, TrialContext
from search.tuning.tune_state import GRID_STATE, restorable
from spaces.placement import Placement
from trainables import record as R
from trainables.config import lora_scaling
from trainables.record import TrialRecord


def confirmation_jobs(candidates: list[TrialRecord], space, budget, train_seed: int, extra_seeds: int) -> list[dict]:
    """One trial config per (candidate, extra seed), in candidate order."""
    jobs = []
    for c in candidates:
        placement = Placement.from_key(c.key, space)
        for k in range(1, extra_seeds + 1):
            jobs.append({"placement": placement.to_json(), "placement_key": placement.key, "lr": c.lr,
                         R.SEED: train_seed + k, R.CONFIRMS_TAG: c.trial_id, "baseline": c.baseline,
                         "repairs": "", "budget_ratio": budget.ratio(placement, space)})
    return jobs


def confirm(session, trainable) -> int:
    """Run (or, on --resume, continue) the confirmation phase of a running search
    (`search.phases.session.Session`); returns how many jobs it had."""
    search, client, run = session.search, session.client, session.run
    records = session.records()
    spent_hours = sum(r.compute_hours or 0.0 for r in records) + (
        search.calibration.compute_hours if search.calibration else 0.0)
    cfg = search.cfg
    s = cfg.search
    if s.confirm_seeds < 1:
        return 0
    candidates = pick_candidates(records, s.confirm_top, s.confirm_baselines, R.sense(search.metric_name))
    if not candidates:
        print("confirmation: no completed trial to confirm", flush=True)
        return 0
    cap = s.max_compute_hours
    if cap > 0 and spent_hours >= cap:
        print(f"confirmation skipped: the search has spent its cost cap ({spent_hours:.4f} of {cap} "
              f"{search.cost_unit}); the frontier below is unconfirmed", flush=True)
        return 0
    jobs = confirmation_jobs(candidates, search.space, search.budget, cfg.train.seed, s.confirm_seeds)
    path = f"{search.storage_path.rstrip('/')}/{search.name}-confirm"
    print(f"confirming: {len(candidates)} placements x {s.confirm_seeds} more seeds = {len(jobs)} trials "
          f"({', '.join(c.key for c in candidates)})", flush=True)
    if restorable(path, GRID_STATE):
        # The grid again: Tune's tuner.pkl keeps no param space (`search.tuning.tune_state`).
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space={R.JOB: tune.grid_search(jobs)},
                                   resume_unfinished=True, resume_errored=False)
    else:  # a new phase, or one Tune saved no whole state of: the jobs MLflow has no outcome of
        todo = _unsettled(jobs, records)
        if len(todo) < len(jobs):
            print(f"confirmation: {len(jobs) - len(todo)} of {len(jobs)} runs already have an outcome in MLflow; "
                  f"the other {len(todo)} run now", flush=True)
        if not todo:
            return len(jobs)
        context = TrialContext(search.space, search.metric_name, search.cost_unit, len(jobs), lora_scaling(cfg),
                               cfg.train.lora_dropout, cfg.train.seed, label="confirm")
        tuner = tune.Tuner(
            trainable,
            # One trial per job: a grid over the jobs themselves (each trial's config is {"job": ...}).
            param_space={R.JOB: tune.grid_search(todo)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=s.max_concurrent_trials or None, reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=f"{search.name}-confirm", storage_path=search.storage_path, verbose=0,
                callbacks=[MlflowTracker(client, run, context)],
                stop=CostStopper(cap - spent_hours) if cap > 0 else None,
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
            ),
        )
    tuner.fit()
    return len(jobs)


def _unsettled(jobs: list[dict], records: list[TrialRecord]) -> list[dict]:
    """The jobs whose (trial, seed) has no confirmation run with an outcome in MLflow yet."""
    done = {(r.confirms, r.seed) for r in records if r.confirms is not None and r.status in R.TRIAL_STATUSES}
    return [j for j in jobs if (j[R.CONFIRMS_TAG], j[R.SEED]) not in done]


def _trial_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}"
