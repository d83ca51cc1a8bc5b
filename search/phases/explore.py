"""Explore: the Tune run of placement trials, new or restored on --resume.

Where it sits: calibrate -> **explore** -> confirm. The study proposes placements
(`search.tuning.searcher` over `search.sampling`), each trial is one real LoRA fine-tune
(`trainables.tune_entry`), ASHA stops weak placements early by size (`search.tuning.asha`), the cost
cap ends the phase (`search.tuning.stopping`) and every trial is recorded in MLflow
(`search.tuning.tracker`). A resumed search first reads what both stores already know (`settled`),
so a trial whose outcome is recorded reports it instead of training again.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from ray import tune

from search.phases.prepare import PreparedSearch
from search.phases.session import Session
from search.phases.warm_start import warm_start
from search.sampling.samplers import SamplerInputs
from search.phases.publish import study_note, study_result
from search.sampling.study import TUNE_TRIAL_ATTR, close_running, note_result, open_study_storage
from search.tuning.asha import PlacementASHA
from search.tuning.searcher import make_searcher
from search.tuning.stopping import CostStopper
from search.tuning.tracker import MlflowTracker, TrialContext
from search.tuning.tune_state import SEARCHER_STATE, restorable
from trainables import record as R
from trainables.config import lora_scaling
from trainables.tune_entry import trial_entry


def scheduler(cfg, metric_name: str) -> PlacementASHA:
    """ASHA on the per-epoch score in its metric's direction (`trainables.record.sense`: "min" for
    `nll`), by size unless `search.asha_by_size` is off (built before anything is written: its
    settings are checked)."""
    return PlacementASHA(R.EPOCH_SCORE, R.sense(metric_name), max_t=cfg.train.epochs,
                         grace=min(cfg.search.asha_grace_epochs, cfg.train.epochs),
                         factor=cfg.search.asha_reduction_factor, by_size=cfg.search.asha_by_size,
                         size_attr=R.TRAINABLE_PARAMS)


def trainable(search: PreparedSearch, settled: dict | None = None):
    """The Tune trainable of this search's trials (and of its confirmation runs)."""
    cfg = search.cfg
    return tune.with_resources(
        tune.with_parameters(trial_entry(cfg), cfg_dict=cfg.to_dict(), space_dict=search.space.to_dict(),
                             metric_name=search.metric_name, settled=settled or {}),
        {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial},
    )


def settled(search: PreparedSearch, client, run) -> dict[str, dict]:
    """Trial id -> the result to report instead of training again, for every trial whose outcome a
    store already holds (`trainables.record.SETTLED`): MLflow's closed trial runs, and the study's
    finished trials whose run was not closed yet when the driver died. One outcome, in both."""
    records = {r.trial_id: r for r in Session.read_records(client, run)}
    known = {tid: R.settled_result(r) for tid, r in records.items() if r.status in R.TRIAL_STATUSES}
    try:
        study = optuna.load_study(study_name=search.name, storage=open_study_storage(search.study_url))
    except KeyError:
        return known
    outcome = {TrialState.COMPLETE: R.COMPLETED, TrialState.PRUNED: R.PRUNED, TrialState.FAIL: R.FAILED}
    for t in study.get_trials(deepcopy=False, states=tuple(outcome)):
        tid = t.user_attrs.get(TUNE_TRIAL_ATTR)
        if tid is None or tid in known or tid not in records or records[tid].status == R.KILLED:
            continue  # KILLED: the tracker closed the run as unfinished (a signal, a full disk): rerun it
        r = records[tid].replace(status=outcome[t.state])
        if t.state == TrialState.COMPLETE:
            # the study's third value is the estimated cost: the measured compute hours stay MLflow's
            r = r.replace(score=t.values[0], trainable_params=int(t.values[1]))
        known[tid] = R.settled_result(r)
    return known


def explore(session: Session, trainable) -> None:
    """Run the search's trials (returns when Tune's run ends, a signal included)."""
    search = session.search
    s = search.cfg.search
    print(f"searching: {s.trials} trials, {search.cfg.train.epochs} epochs each, ASHA on "
          f"epoch_score{' by size' if s.asha_by_size else ''}; MLflow experiment {search.name!r}; "
          f"Optuna study {search.name!r} in {search.study_url_shown}"
          + (f"; cost cap {s.max_compute_hours} {search.cost_unit}" if s.max_compute_hours else ""), flush=True)
    tuner = _tuner(session, trainable)
    if tuner is not None:
        tuner.fit()


def close_study(search: PreparedSearch) -> None:
    """After the phase, nothing stays RUNNING in the study (`search.sampling.study.close_running`)."""
    close_running(optuna.load_study(study_name=search.name, storage=open_study_storage(search.study_url)))


def note_study(session: Session, ending) -> None:
    """The end of the search on its Optuna study, for optuna-dashboard (`note_result`: the
    recommendation and the confirmed placements; objectives named at the study's creation)."""
    search, run_id = session.search, session.parent_run_id
    study = optuna.load_study(study_name=search.name, storage=open_study_storage(search.study_url))
    numbers = {t.user_attrs.get(TUNE_TRIAL_ATTR): t.number for t in study.get_trials(deepcopy=False)}
    result = study_result(ending.result, search.metric_name, numbers)
    note_result(study, {**result, "mlflow_run_id": run_id},
                study_note(ending.result, search.metric_name, search.cost_unit, run_id))


def _tuner(session: Session, trainable):
    """A new Tune run of placement trials, or the interrupted one restored (--resume); None when a
    resumed search's study already holds an outcome for each of its trials."""
    search, cfg = session.search, session.search.cfg
    if search.resumed and restorable(search.tune_path, SEARCHER_STATE):
        print(f"resuming {search.name!r} from {search.tune_path}: finished trials are kept, unfinished ones rerun",
              flush=True)
        return tune.Tuner.restore(search.tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    context = TrialContext(search.space, search.metric_name, search.cost_unit, cfg.search.trials,
                           lora_scaling(cfg), cfg.train.lora_dropout, cfg.train.seed)
    inputs = SamplerInputs.from_config(search.space, search.budget, cfg, search.scores, search.calibrated_lr)
    searcher = make_searcher(inputs, cfg.search.sampler, open_study_storage(search.study_url), search.name,
                             metric_name=search.metric_name)
    n_trials = cfg.search.trials
    if search.resumed:
        # No whole Tune state to restore (`search.tuning.tune_state`): a new Tune run asks for the
        # trials the study has no outcome of, those the dead driver had asked for first.
        searcher.reconcile()
        n_trials -= _finished(searcher.study)
        print(f"resuming {search.name!r}: Ray Tune saved no whole state of it, so its {max(n_trials, 0)} trials "
              f"without an outcome start now (the study's {cfg.search.trials - n_trials} finished trials are kept)",
              flush=True)
        if n_trials <= 0:
            return None
    if cfg.search.warm_start and not _warm_started(searcher.study):
        n = warm_start(session.client, session.run, search, searcher.study, searcher.space)
        print(f"warm start: {n} completed trials of {cfg.search.warm_start!r} added to the study (not retrained)",
              flush=True)
    cap = cfg.search.max_compute_hours
    spent = search.calibration.compute_hours if search.calibration else 0.0
    if search.resumed:  # what the dead drivers' trials cost counts toward the cap too
        spent += sum(r.compute_hours or 0.0 for r in session.records())
    if cap > 0 and spent >= cap:  # nothing left; Tune would start a trial before asking the stopper
        what = "the learning-rate probe" + (" and the trials before --resume" if search.resumed else "")
        print(f"searching skipped: {what} spent the cost cap ({spent:.4g} of {cap} {search.cost_unit})", flush=True)
        return None
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler(cfg, search.metric_name), num_samples=n_trials,
            max_concurrent_trials=cfg.search.max_concurrent_trials or None,
            trial_dirname_creator=_trial_dirname,
            # Keep worker processes across trials: imports, model files and tokenised data are
            # loaded once per process (trainables.worker caches them).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=search.name, storage_path=search.storage_path, callbacks=[MlflowTracker(session.client, session.run, context)],
            verbose=0, stop=CostStopper(cap - spent) if cap > 0 else None,
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        ),
    )


def _finished(study) -> int:
    """How many of this search's own trials (not an earlier search's, added by warm start) the
    study holds an outcome of."""
    return sum(R.WARM_START_TAG not in t.user_attrs
               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


def _warm_started(study) -> bool:
    """The study already holds an earlier search's trials (a resumed search warm-started before)."""
    return any(R.WARM_START_TAG in t.user_attrs for t in study.get_trials(deepcopy=False))


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
