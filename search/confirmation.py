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

from trainables import record as R
from trainables.record import TrialRecord


def confirmation_jobs(candidates: list[TrialRecord], space, budget, train_seed: int, extra_seeds: int) -> list[dict]:
    """One trial config per (candidate, extra seed), in candidate order."""
    from spaces.placement import Placement

    jobs = []
    for c in candidates:
        placement = Placement.from_key(c.key, space)
        for k in range(1, extra_seeds + 1):
            jobs.append({"placement": placement.to_json(), "placement_key": placement.key, "lr": c.lr,
                         R.SEED: train_seed + k, R.CONFIRMS_TAG: c.trial_id, "baseline": c.baseline,
                         "repairs": "", "budget_ratio": budget.ratio(placement, space)})
    return jobs


def confirm(search, client, run, trainable, records: list[TrialRecord], spent_hours: float):
    """Run (or, on --resume, continue) the confirmation phase; returns how many jobs it had."""
    from ray import tune

    from analysis.confirmed import pick_candidates
    from search.stopping import CostStopper
    from search.tracking import MlflowTracker, TrialContext
    from trainables.config import lora_scaling

    cfg = search.cfg
    s = cfg.search
    if s.confirm_seeds < 1:
        return 0
    candidates = pick_candidates(records, s.confirm_top, s.confirm_baselines)
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
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        context = TrialContext(search.space, search.metric_name, search.cost_unit, len(jobs), lora_scaling(cfg),
                               cfg.train.lora_dropout, cfg.train.seed, label="confirm")
        tuner = tune.Tuner(
            trainable,
            # One trial per job: a grid over the jobs themselves (each trial's config is {"job": ...}).
            param_space={R.JOB: tune.grid_search(jobs)},
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


def _trial_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}"
