"""Confirm the frontier: retrain its best placements and the best baselines with more seeds.

Where it sits: after the search, before the frontier is published. A single training run is one
draw (docs/methods.md, "Confirmation"), so the candidates (`analysis.confirmed.pick_candidates`)
train again, each at its own trial's learning rate, with `search.confirm_seeds` more training seeds
(train.seed + 1, + 2, ...). Each retraining is a Ray Tune trial on the same resources and through
the same trainable as a search trial, in the same MLflow experiment, nested under the search's run
and tagged `confirms=<trial id>`; its cost counts toward `search.max_compute_hours`. The phase is a
Tune experiment of its own (`<name>-confirm`), so `--resume` continues it; a job whose (trial,
seed) already has a run in MLflow logs into that run, never a second one.

Racing (`search.confirm_max_seeds` > 0; docs/methods.md, "Racing"): then, round after round, the
placements still undecided against the best, and the best, train `search.confirm_seeds` more seeds
(`analysis.confirmed.race_round`), each round a Tune experiment `<name>-race<seeds>` planned from
what MLflow holds, so a resumed search continues where it stopped.
"""

from __future__ import annotations

from ray import tune

from analysis.confirmed import (
    decision_level,
    group_confirmed,
    pick_candidates,
    race_round,
    recommend,
)
from search.tuning.stopping import CostStopper
from search.tuning.tracker import MlflowTracker, TrialContext
from search.tuning.tune_state import GRID_STATE, restorable
from spaces.placement import Placement
from trainables import record as R
from trainables.config import lora_scaling
from trainables.record import TrialRecord


def confirmation_jobs(candidates: list[TrialRecord], space, budget, train_seed: int, extra_seeds: int) -> list[dict]:
    """One trial config per (candidate, extra seed), in candidate order."""
    seeds = [train_seed + k for k in range(1, extra_seeds + 1)]
    return [job for c in candidates for job in seed_jobs(c, space, budget, seeds)]


def confirm(session, trainable) -> int:
    """Run (or, on --resume, continue) the confirmation phase of a running search
    (`search.phases.session.Session`), then its racing rounds; returns how many jobs it had."""
    search = session.search
    cfg = search.cfg
    s = cfg.search
    if s.confirm_seeds < 1:
        return 0
    records = session.records()
    sense = R.sense(search.metric_name)
    candidates = pick_candidates(records, s.confirm_top, s.confirm_baselines, sense)
    if not candidates:
        print("confirmation: no completed trial to confirm", flush=True)
        return 0
    spent = _spent(session, records)
    if s.max_compute_hours > 0 and spent >= s.max_compute_hours:
        print(f"confirmation skipped: the search has spent its cost cap ({spent:.4f} of {s.max_compute_hours} "
              f"{search.cost_unit}); the frontier below is unconfirmed", flush=True)
        return 0
    jobs = confirmation_jobs(candidates, search.space, search.budget, cfg.train.seed, s.confirm_seeds)
    print(f"confirming: {len(candidates)} placements x {s.confirm_seeds} more seeds = {len(jobs)} trials "
          f"({', '.join(c.key for c in candidates)})", flush=True)
    _run_jobs(session, trainable, jobs, records, f"{search.name}-confirm", spent, restore=True)
    return len(jobs) + (race(session, trainable) if s.confirm_max_seeds > 0 else 0)


def race(session, trainable) -> int:
    """Racing (docs/methods.md, "Racing"): rounds of `search.confirm_seeds` more seeds for the
    placements undecided against the best (and for the best), until each is decided, has
    `search.confirm_max_seeds` seeds, or the cost cap is spent. Each round is planned from what
    MLflow holds (`analysis.confirmed.race_round`), so a resumed search plans the same rounds, and a
    (trial, seed) with an outcome is never trained again. Returns how many jobs the rounds had."""
    search = session.search
    s, sense = search.cfg.search, R.sense(search.metric_name)
    total = 0
    while True:
        records = session.records()
        by_id = {r.trial_id: r for r in records if r.confirms is None}
        confirmed = group_confirmed(records, sense)
        plan = race_round(confirmed, s.margin, sense, s.confirm_max_seeds, s.confirm_seeds, search.cfg.train.seed,
                          decision_level(s.confirm_max_seeds))
        if plan is None:
            break
        spent = _spent(session, records)
        if s.max_compute_hours > 0 and spent >= s.max_compute_hours:
            print(f"racing stopped: the search has spent its cost cap ({spent:.4f} of {s.max_compute_hours} "
                  f"{search.cost_unit}); undecided placements stay undecided", flush=True)
            break
        jobs = [job for trial_id, seeds in plan.jobs.items()
                for job in seed_jobs(by_id[trial_id], search.space, search.budget, seeds)]
        todo = _unsettled(jobs, records)
        if not todo:  # every missing seed already ended without a score (it diverged): no round can help
            print("racing stopped: the seeds the undecided placements lack ended without a score", flush=True)
            break
        names = ", ".join(by_id[t].key for t in plan.racing)
        print(f"racing: {len(plan.racing)} undecided against the best, to {plan.target} seeds each: "
              f"{len(todo)} trials ({names})", flush=True)
        # The console counts every confirmation run of the search: those before this round, then these.
        before = sum(1 for r in records if r.confirms is not None and r.status in R.TRIAL_STATUSES)
        _run_jobs(session, trainable, todo, records, f"{search.name}-race{plan.target}", spent, restore=False,
                  total=before + len(todo), label="race")
        total += len(todo)
    if total:
        _print_race_result(session)
    return total


def _print_race_result(session) -> None:
    """How many seeds each confirmed placement got, its decision, and the smallest difference its
    seeds could have detected (the half-width of the paired interval at the race's level)."""
    search = session.search
    s, sense = search.cfg.search, R.sense(search.metric_name)
    confirmed = group_confirmed(session.records(), sense)
    rec = recommend(confirmed, None, s.margin, sense, decision_level(s.confirm_max_seeds))
    if rec is None:
        return
    print(f"racing done (at most {s.confirm_max_seeds} seeds): best {rec.best.key}, {rec.best.stats.n} seeds", flush=True)
    keys = {c.trial_id: c.key for c in confirmed}
    for trial_id, d in rec.decisions.items():
        detect = f"; the smallest difference its seeds could detect: {d.detectable:.3g}" if d.detectable else ""
        print(f"  {keys[trial_id]}: {len(d.seeds)} paired seeds, {d.verdict}{detect}", flush=True)


def seed_jobs(trial: TrialRecord, space, budget, seeds) -> list[dict]:
    """The trial configs that retrain `trial`'s placement at its learning rate with `seeds`."""
    placement = Placement.from_key(trial.key, space)
    return [{"placement": placement.to_json(), "placement_key": placement.key, "lr": trial.lr, R.SEED: seed,
             R.CONFIRMS_TAG: trial.trial_id, "baseline": trial.baseline, "repairs": "",
             "budget_ratio": budget.ratio(placement, space)} for seed in seeds]


def _spent(session, records: list[TrialRecord]) -> float:
    search = session.search
    return sum(r.compute_hours or 0.0 for r in records) + (
        search.calibration.compute_hours if search.calibration else 0.0)


def _run_jobs(session, trainable, jobs: list[dict], records: list[TrialRecord], name: str, spent: float,
              restore: bool, total: int | None = None, label: str = "confirm") -> None:
    """Train `jobs` as one Tune experiment `name` (a grid over the jobs). restore: continue the
    experiment Tune saved whole, if any; else (and for racing rounds, whose jobs are planned anew
    from MLflow) only the jobs MLflow has no outcome of run."""
    search, client, run = session.search, session.client, session.run
    cfg = search.cfg
    s = cfg.search
    cap = s.max_compute_hours
    path = f"{search.storage_path.rstrip('/')}/{name}"
    if restore and restorable(path, GRID_STATE):
        # The grid again: Tune's tuner.pkl keeps no param space (`search.tuning.tune_state`).
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space={R.JOB: tune.grid_search(jobs)},
                                   resume_unfinished=True, resume_errored=False)
    else:  # a new phase, or one Tune saved no whole state of: the jobs MLflow has no outcome of
        todo = _unsettled(jobs, records)
        if len(todo) < len(jobs):
            print(f"confirmation: {len(jobs) - len(todo)} of {len(jobs)} runs already have an outcome in MLflow; "
                  f"the other {len(todo)} run now", flush=True)
        if not todo:
            return
        context = TrialContext(search.space, search.metric_name, search.cost_unit, total or len(jobs),
                               lora_scaling(cfg), cfg.train.lora_dropout, cfg.train.seed, label=label)
        tuner = tune.Tuner(
            trainable,
            # One trial per job: a grid over the jobs themselves (each trial's config is {"job": ...}).
            param_space={R.JOB: tune.grid_search(todo)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=s.max_concurrent_trials or None, reuse_actors=True,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=search.storage_path, verbose=0,
                callbacks=[MlflowTracker(client, run, context)],
                stop=CostStopper(cap - spent) if cap > 0 else None,
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
            ),
        )
    tuner.fit()


def _unsettled(jobs: list[dict], records: list[TrialRecord]) -> list[dict]:
    """The jobs whose (trial, seed) has no confirmation run with an outcome in MLflow yet."""
    done = {(r.confirms, r.seed) for r in records if r.confirms is not None and r.status in R.TRIAL_STATUSES}
    return [j for j in jobs if (j[R.CONFIRMS_TAG], j[R.SEED]) not in done]


def _trial_dirname(trial) -> str:
    return f"confirm_{trial.trial_id}"
