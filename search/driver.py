"""Drive one search: prepare, calibrate the learning rate, search, confirm, recommend.

Where it sits: on top of everything, on the driver (no torch: model work runs in Ray tasks and
trials). `run_search` is the whole story in order:
1. `search.prepared.prepare_search`: checks, Ray, the model's space, the priors, the budget (one
   value, new or resumed); then the search's lock, and a new search claims its name and study
   (`search.workspace`);
2. the search's MLflow parent run (`search.tracking`);
3. the learning-rate probe (`search.calibration`), once: baselines train at its choice;
4. a Tune run of placement trials (new, or restored on --resume);
5. the confirmation phase (`search.confirmation`): the frontier's best placements and the best
   baselines retrained with more seeds;
6. the end: the frontier over seed means published from what MLflow holds (`search.frontier`),
   a table, and one plain recommendation (`analysis.confirmed`).
Ctrl-C and SIGTERM stop it in any step (`search.interrupts`): after the first trial, finished
trials are kept, unfinished ones marked KILLED and the --resume command printed; before it, a new
search takes back what it wrote. A resumed search reruns nothing whose outcome is already known.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from search.prepared import PreparedSearch, prepare_search
from search.tracking import SearchRun
from trainables import record as R


def run_search(cfg, output_dir: Path, experiment: str | None = None, resume: bool = False) -> int:
    """The search in order (module docstring). Returns the exit code: 0, 1 when no trial completed,
    128 + the signal's number when Ctrl-C or SIGTERM stopped it (`search.interrupts`)."""
    from search.interrupts import Interrupts
    from search.workspace import SearchLock, Written

    t_start = time.time()
    with Interrupts() as interrupts:
        try:
            search = prepare_search(cfg, Path(output_dir), experiment, resume)
        except KeyboardInterrupt:
            print(f"\n{interrupts.name}: stopped before the search started; nothing was written", flush=True)
            return interrupts.exit_code
        interrupts.install()  # ray.init set a SIGTERM handler of its own
        written = None if search.resumed else Written.before(search)
        with SearchLock(search.output_dir, search.name):
            return _run_locked(search, interrupts, written, t_start)


def _run_locked(search: PreparedSearch, interrupts, written, t_start: float) -> int:
    """The search once its lock is held. A new search stopped before its first trial (a signal, or
    a store that refused it) takes back what it wrote (`search.workspace.Written`)."""
    from search.errors import UsageError

    client = run = None
    try:
        if written is not None:
            _claim(search, written)
        _print_plan(search)
        client, run = _open_tracking(search, written)
        phases = _Phases(client, run.parent_run_id)
        phases.done("prepare_s", time.time() - t_start)
        if search.calibration is None and search.cfg.search.calibrate_lr:
            search = dataclasses.replace(search, calibration=_calibrate(search, client, run))
            search.save_state()
            phases.done("calibration_s")
        _print_lr(search)
        status = _search_phases(search, client, run, interrupts, phases)
    except (KeyboardInterrupt, UsageError) as e:
        if written is not None and not _trials_started(client, run):
            written.remove(client, run.parent_run_id if run else None)
            if isinstance(e, UsageError):
                raise
            print(f"\n{interrupts.name}: stopped before the first trial; removed what this search had written, "
                  "so the same command starts it again", flush=True)
            return interrupts.exit_code
        if isinstance(e, UsageError) or client is None:
            raise
        status = "KILLED"  # a second signal, or one outside a Tune phase: finished trials are kept
    try:
        return _finish(search, client, run, status, t_start, interrupts)
    except KeyboardInterrupt:
        client.set_terminated(run.parent_run_id, "KILLED")
        print(f"\n{interrupts.name}: stopped while publishing the results; {_resume_hint(search)}", flush=True)
        return interrupts.exit_code


def _claim(search: PreparedSearch, written) -> None:
    """A new search takes its name: no state file appeared since the checks (another driver that
    held the lock before), its study created exclusively, its scheduler built; then its state file
    is written, so that --resume can continue it from here on."""
    from search.errors import UsageError
    from search.workspace import claim_study

    if search.state_path.exists():
        raise UsageError(f"a search named {search.name!r} already exists in {search.output_dir}: "
                         "pass --resume to continue it, or another --experiment name")
    _scheduler(search.cfg)
    claim_study(search.study_url, search.name)
    written.study_claimed = True
    search.save_state()


def _trials_started(client, run) -> bool:
    """Whether any trial of the search has a run of its own (a search that has one keeps what it wrote)."""
    if client is None or run is None:
        return False
    from analysis.mlflow_read import trial_runs

    runs = trial_runs(client, client.get_run(run.parent_run_id))
    return any(R.WARM_START_TAG not in r.data.tags for r in runs)  # copies of an earlier search's trials are not


def _search_phases(search: PreparedSearch, client, run: SearchRun, interrupts, phases) -> str:
    """The Tune phases: the search's trials, then the confirmation runs. "KILLED" when a signal
    stopped one (Tune stopped its trials and saved its state), else "FINISHED"."""
    from search.confirmation import confirm

    settled = _settled(search, client, run) if search.resumed else {}
    trainable = _trainable(search, settled)
    cap = search.cfg.search.max_compute_hours
    print(f"searching: {search.cfg.search.trials} trials, {search.cfg.train.epochs} epochs each, ASHA on "
          f"epoch_score{' by size' if search.cfg.search.asha_by_size else ''}; MLflow experiment {search.name!r}; Optuna study {search.name!r} in {search.study_url_shown}"
          + (f"; cost cap {cap} {search.cost_unit}" if cap else ""), flush=True)
    with interrupts.tune_phase():
        _search_tuner(search, client, run, trainable).fit()
    phases.done("search_s")
    if interrupts.stopped:
        return "KILLED"
    _close_study(search)
    records = _records(client, run)
    spent = sum(r.compute_hours or 0.0 for r in records) + (search.calibration.compute_hours if search.calibration else 0.0)
    with interrupts.tune_phase():
        confirm(search, client, run, trainable, records, spent)
    phases.done("confirmation_s")
    return "KILLED" if interrupts.stopped else "FINISHED"


class _Phases:
    """Wall time of each phase of this driver's run, logged on the search's run (where the time goes;
    a resumed driver logs its own part)."""

    def __init__(self, client, parent_run_id: str):
        self.client, self.pid, self.t = client, parent_run_id, time.time()

    def done(self, name: str, seconds: float | None = None) -> None:
        now = time.time()
        self.client.log_metric(self.pid, name, now - self.t if seconds is None else seconds)
        self.t = now


def _settled(search: PreparedSearch, client, run: SearchRun) -> dict[str, dict]:
    """Trial id -> the result to report instead of training again, for every trial whose outcome a
    store already holds (`trainables.record.SETTLED`): MLflow's closed trial runs, and the study's
    finished trials whose run was not closed yet when the driver died. One outcome, in both."""
    import optuna
    from optuna.trial import TrialState

    from search.searcher import TUNE_TRIAL_ATTR, open_study_storage

    records = {r.trial_id: r for r in _records(client, run)}
    settled = {tid: R.settled_result(r) for tid, r in records.items() if r.status in R.TRIAL_STATUSES}
    try:
        study = optuna.load_study(study_name=search.name, storage=open_study_storage(search.study_url))
    except KeyError:
        return settled
    outcome = {TrialState.COMPLETE: R.COMPLETED, TrialState.PRUNED: R.PRUNED, TrialState.FAIL: R.FAILED}
    for t in study.get_trials(deepcopy=False, states=tuple(outcome)):
        tid = t.user_attrs.get(TUNE_TRIAL_ATTR)
        if tid is None or tid in settled or tid not in records:
            continue
        r = records[tid].replace(status=outcome[t.state])
        if t.state == TrialState.COMPLETE:
            r = r.replace(score=t.values[0], trainable_params=int(t.values[1]), compute_hours=t.values[2])
        settled[tid] = R.settled_result(r)
    return settled


def _close_study(search: PreparedSearch) -> None:
    """After the search phase, nothing stays RUNNING in the study (`search.searcher.close_running`)."""
    import optuna

    from search.searcher import close_running, open_study_storage

    close_running(optuna.load_study(study_name=search.name, storage=open_study_storage(search.study_url)))


def _resume_hint(search: PreparedSearch) -> str:
    import shlex

    from search.credentials import has_masked_password

    cmd = shlex.join(["python", "search/run.py", "--resume", "--output-dir", str(search.output_dir),
                      "--experiment", search.name])
    secret = [flag for flag, url in (("--study-storage", search.cfg.search.study_storage),
                                     ("--tracking-uri", search.cfg.tracking.uri)) if has_masked_password(url)]
    return f"continue with: {cmd}" + (f" {' '.join(f'{f} <the URL with its password>' for f in secret)}" if secret else "")


def _print_plan(search: PreparedSearch) -> None:
    task, budget, cfg = search.prep.task, search.budget, search.cfg
    print(f"model: {search.space.describe()}")
    print(f"task: {task['n_train']} train / {task['n_val']} validation examples, {len(task['labels'])} labels; "
          f"metric: {search.metric_name}")
    print(f"budget: {cfg.search.budget} x {budget.full_params:,} adapter params (every site at r={cfg.search.r_ref}) "
          f"= at most {int(budget.max_params):,}")


def _print_lr(search: PreparedSearch) -> None:
    from search.samplers import SamplerInputs

    inputs = SamplerInputs.from_config(search.space, search.budget, search.cfg, calibrated_lr=search.calibrated_lr)
    lo, hi = inputs.lr_range
    how = "calibrated" if search.calibration is not None else "the middle of search.lr_min..lr_max"
    print(f"learning rate: baselines at {inputs.baseline_lr:.3g} ({how}); the sampler draws from {lo:.3g} to {hi:.3g}",
          flush=True)
    if search.calibration is not None and search.calibration.warning():
        print(f"warning: {search.calibration.warning()}", flush=True)


def _open_tracking(search: PreparedSearch, written=None):
    """The MLflow client and the search's parent run; a new search logs what it is made of.
    `written`: a new search's `search.workspace.Written`, told the experiment if this made it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from search.tracking import open_search_run

    from search.credentials import real

    uri = search.tracking_uri  # a database store's password masked (search.credentials)
    mlflow.set_tracking_uri(real(uri))
    client = MlflowClient(real(uri))
    # A SQLite store keeps its artifacts beside it under the output dir (not ./mlruns of the cwd);
    # a tracking server keeps its own artifact location.
    local = (search.output_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    existed = client.get_experiment_by_name(search.name) is not None
    run = open_search_run(client, search.name, artifact_location=local, resume=search.resumed, tracking_uri=uri)
    if written is not None and not existed:
        written.experiment_id = run.experiment_id
    _open_ui(client, run)
    if not search.resumed:
        _log_search(client, run, search)
    return client, run


def _open_ui(client, run: SearchRun) -> None:
    """The search's runs views and a description saying it runs, so the UI's links work from the start."""
    from search.notes import publish_running
    from search.ui import open_views

    open_views(client, run.experiment_id, run.parent_run_id)
    publish_running(client, run.experiment_id, run.parent_run_id)


def _log_search(client, run: SearchRun, search: PreparedSearch) -> None:
    pid, cfg = run.parent_run_id, search.cfg
    client.log_dict(pid, cfg.to_dict(), "config.json")
    client.log_dict(pid, search.space.to_dict(), "space.json")
    client.log_dict(pid, search.prep.task, "task.json")
    params = {"budget": cfg.search.budget, "r_ref": cfg.search.r_ref, "trials": cfg.search.trials,
              "sampler": cfg.search.sampler, "model": cfg.model.name, "data": cfg.data.source,
              R.METRIC_NAME: search.metric_name, R.COST_UNIT: search.cost_unit,
              "full_adapter_params": search.budget.full_params, "max_adapter_params": int(search.budget.max_params),
              "study_storage": search.study_url_shown, "study_name": search.name, "rslora": cfg.train.rslora}
    for k, v in params.items():
        client.log_param(pid, k, v)
    if search.scores is not None:
        from analysis.heatmap import plot_heatmap

        client.log_dict(pid, search.scores.to_dict(), "scores.json")
        heatmap = plot_heatmap(search.scores, search.output_dir / f"{search.name}-scores.png")
        client.log_artifact(pid, str(heatmap), "")
        client.log_metric(pid, "priors_s", search.prep.priors_s)
        print(f"priors: PLoP, CKA and activation scores from {search.scores.n_examples} calibration "
              f"examples in {search.prep.priors_s:.1f}s (heatmap: {heatmap})")


def _calibrate(search: PreparedSearch, client, run: SearchRun):
    """The learning-rate probe on the `all` baseline, logged on the search's run."""
    from search.calibration import calibrate, plot_calibration
    from spaces.baselines import make_baselines

    reference = make_baselines(search.space, search.budget, list(search.cfg.search.ranks), search.scores)[0].placement
    cal = calibrate(search, reference)
    pid = run.parent_run_id
    client.log_param(pid, "lr_calibrated", cal.chosen)
    client.log_dict(pid, cal.to_dict(), "lr_calibration.json")
    client.log_metric(pid, "calibration_compute_hours", cal.compute_hours)
    band = (cal.chosen / search.cfg.search.lr_band, cal.chosen * search.cfg.search.lr_band)
    plot = plot_calibration(cal, search.output_dir / f"{search.name}-lr.png", search.metric_name, band)
    client.log_artifact(pid, str(plot), "")
    return cal


def _trainable(search: PreparedSearch, settled: dict | None = None):
    from ray import tune

    from trainables.tune_entry import trial_entry

    cfg = search.cfg
    return tune.with_resources(
        tune.with_parameters(trial_entry(cfg), cfg_dict=cfg.to_dict(), space_dict=search.space.to_dict(),
                             metric_name=search.metric_name, settled=settled or {}),
        {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial},
    )


def _search_tuner(search: PreparedSearch, client, run: SearchRun, trainable):
    """A new Tune run of placement trials, or the interrupted one restored (--resume)."""
    from ray import tune

    from search.samplers import SamplerInputs
    from search.searcher import make_searcher, open_study_storage
    from search.stopping import CostStopper
    from search.tracking import MlflowTracker, TrialContext
    from trainables.config import lora_scaling

    cfg = search.cfg
    if search.resumed and tune.Tuner.can_restore(search.tune_path):
        print(f"resuming {search.name!r} from {search.tune_path}: finished trials are kept, unfinished ones rerun",
              flush=True)
        return tune.Tuner.restore(search.tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    if search.resumed:
        print(f"resuming {search.name!r}: it stopped before Ray Tune saved its first state, so its trials start "
              "now (trials the study already holds are kept)", flush=True)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    context = TrialContext(search.space, search.metric_name, search.cost_unit, cfg.search.trials,
                           lora_scaling(cfg), cfg.train.lora_dropout, cfg.train.seed)
    tracker = MlflowTracker(client, run, context)
    inputs = SamplerInputs.from_config(search.space, search.budget, cfg, search.scores, search.calibrated_lr)
    searcher = make_searcher(inputs, cfg.search.sampler, open_study_storage(search.study_url), search.name)
    if search.resumed:
        searcher.reconcile()  # trials the dead driver had asked for run first
    if cfg.search.warm_start and not _warm_started(searcher.study):
        from search.warm_start import warm_start

        n = warm_start(client, run, search, searcher.study, searcher.space)
        print(f"warm start: {n} completed trials of {cfg.search.warm_start!r} added to the study (not retrained)",
              flush=True)
    scheduler = _scheduler(cfg)
    cap = cfg.search.max_compute_hours
    spent = search.calibration.compute_hours if search.calibration else 0.0
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=cfg.search.trials,
            max_concurrent_trials=cfg.search.max_concurrent_trials or None,
            trial_dirname_creator=_trial_dirname,
            # Keep worker processes across trials: imports, model files and tokenised data are
            # loaded once per process (trainables.worker caches them).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=search.name, storage_path=search.storage_path, callbacks=[tracker], verbose=0,
            stop=CostStopper(cap - spent) if cap > 0 else None,
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        ),
    )


def _warm_started(study) -> bool:
    """The study already holds an earlier search's trials (a resumed search warm-started before)."""
    return any(R.WARM_START_TAG in t.user_attrs for t in study.get_trials(deepcopy=False))


def _scheduler(cfg):
    """ASHA on the per-epoch score, by size unless `search.asha_by_size` is off (`search.asha`;
    built before anything is written: its settings are checked)."""
    from search.asha import PlacementASHA

    return PlacementASHA(R.EPOCH_SCORE, "max", max_t=cfg.train.epochs,
                         grace=min(cfg.search.asha_grace_epochs, cfg.train.epochs),
                         factor=cfg.search.asha_reduction_factor, by_size=cfg.search.asha_by_size,
                         size_attr=R.TRAINABLE_PARAMS)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _records(client, run: SearchRun):
    """Every trial of the search as MLflow holds it (the search's trials and the confirmations)."""
    from analysis.mlflow_read import trial_record, trial_runs

    parent = client.get_run(run.parent_run_id)
    return [trial_record(r) for r in trial_runs(client, parent) if R.TRIAL_ID_TAG in r.data.tags]


def _finish(search: PreparedSearch, client, run: SearchRun, status: str, t_start: float, interrupts=None) -> int:
    """Publish the frontier from what MLflow holds, close the parent run, print the summary; the
    exit code (`run_search`)."""
    from analysis.confirmed import confirmed_markdown, recommendation_markdown
    from analysis.report import format_table
    from search.frontier import publish_frontier
    from search.notes import publish_notes, recommended
    from search.ui import ui_lines

    pid = run.parent_run_id
    killed = _mark_killed(client, run) if status == "KILLED" else 0
    result = publish_frontier(client, pid, _records(client, run), search.metric_name, search.cost_unit,
                              search.output_dir, prefix=f"{search.name}-", max_adapter_params=search.budget.max_params)
    records = result.records
    searched = [r for r in records if r.confirms is None]
    completed = [r for r in searched if r.status == R.COMPLETED]
    rec = result.recommendation
    publish_notes(client, pid, searched, search.tracking_uri, status=status, artifact_prefix=f"{search.name}-",
                  recommendation=None if rec is None else recommendation_markdown(rec, search.metric_name),
                  confirmed_table=confirmed_markdown(result.confirmed, search.metric_name, search.cost_unit)
                  if result.confirmed else None, recommended_run_id=None if rec is None else rec.pick.run_id)
    if rec is not None:  # the confirmed recommendation
        client.log_metric(pid, "best_score", float(rec.pick.stats.mean))
        client.set_tag(pid, "best_placement", rec.pick.key[:5000])
    elif completed:
        best = recommended(searched)  # the highest single-run score; ties to fewer params
        client.log_metric(pid, "best_score", float(best.score))
        client.set_tag(pid, "best_placement", best.key[:5000])
    wall = time.time() - t_start  # this driver's part
    since_start = time.time() - client.get_run(pid).info.start_time / 1000  # all of it, restarts included
    client.log_metric(pid, "search_wall_s", since_start)
    client.set_terminated(pid, status)

    print()
    print(format_table(searched, search.metric_name, search.cost_unit, confirmed=bool(result.confirmed)))
    print()
    print(f"{len(completed)} completed, {sum(r.status == R.PRUNED for r in searched)} stopped early by ASHA, "
          f"{sum(r.status == R.FAILED for r in searched)} failed; search took "
          + (f"{wall / 60:.1f} min in this run, {since_start / 60:.1f} min since it started" if search.resumed
             else f"{wall / 60:.1f} min"))
    if result.confirmed:
        from analysis.confirmed import format_confirmed

        print()
        print(f"confirmed over seeds ({sum(r.confirms is not None for r in records)} confirmation runs):")
        print(format_confirmed(result.confirmed, search.metric_name, search.cost_unit))
    from search.prior_report import publish_prior_report

    quality = publish_prior_report(client, pid, search, records, search.output_dir, f"{search.name}-")
    if quality:
        print()
        print(quality)
    if result.recommendation is not None:
        print()
        print("\n".join(result.recommendation.lines(search.metric_name)))
        _warn_lr_edge(search, result.recommendation.pick.lr)
    elif completed:
        print("\nno placement was confirmed over seeds (search.confirm_seeds = 0, or the phase did not run): "
              "single runs differ by seed noise; compare before you deploy")
    print(f"results: {search.output_dir / (search.name + '-trials.csv')}")
    for line in ui_lines(search.tracking_uri, run.experiment_id, pid):
        print(line)
    if status == "KILLED":
        name = interrupts.name if interrupts is not None and interrupts.stopped else "interrupted"
        print(f"\n{name}: the search was stopped; {sum(r.status in R.TRIAL_STATUSES for r in searched)} finished "
              f"trials are kept, {killed} unfinished marked KILLED; {_resume_hint(search)}", flush=True)
        return interrupts.exit_code if interrupts is not None else 130
    own = [r for r in searched if r.warm_start is None]  # not the copies of an earlier search's trials
    if not any(r.status == R.COMPLETED for r in own):
        print(f"error: {_why_none_completed(own, search.cfg.search.max_compute_hours)}", file=sys.stderr, flush=True)
        return 1
    return 0


def _mark_killed(client, run: SearchRun) -> int:
    """Close the trial runs a stopped search left RUNNING as KILLED (tag status=killed); --resume
    reruns them into the same runs. Returns how many."""
    from analysis.mlflow_read import trial_runs

    unfinished = [r for r in trial_runs(client, client.get_run(run.parent_run_id)) if r.info.status == "RUNNING"]
    for r in unfinished:
        client.set_tag(r.info.run_id, R.STATUS_TAG, R.KILLED)
        client.set_terminated(r.info.run_id, "KILLED")
    return len(unfinished)


def _why_none_completed(searched: list, cap_hours: float) -> str:
    """One line: why a search that ran to its end has no completed trial, and what to change."""
    from collections import Counter

    failed = [r for r in searched if r.status == R.FAILED]
    if not searched:
        return "no trial ran: check the Ray cluster's resources and the search's settings"
    if failed:
        reason, n = Counter((r.error or "no message").strip() for r in failed).most_common(1)[0]
        return (f"no trial completed ({len(failed)} of {len(searched)} failed; {n} with: {reason[:300]}): fix what "
                "the reason names (the MLflow runs hold every trial's error)")
    if cap_hours > 0:
        return (f"no trial completed: the cost cap ({cap_hours} search.max_compute_hours) stopped every trial before "
                "its last epoch: raise --max-compute-hours")
    return "no trial completed (every trial was stopped early): raise search.asha_grace_epochs or search.trials"


def _warn_lr_edge(search: PreparedSearch, lr: float | None) -> None:
    """The recommended placement's learning rate sits at an edge of the range it was drawn from."""
    from search.samplers import SamplerInputs

    if lr is None:
        return
    lo, hi = SamplerInputs.from_config(search.space, search.budget, search.cfg, calibrated_lr=search.calibrated_lr).lr_range
    if hi > lo and (lr <= lo * 1.25 or lr >= hi / 1.25):
        edge = "bottom" if lr <= lo * 1.25 else "top"
        print(f"warning: the recommended placement's learning rate {lr:.3g} sits at the {edge} of the range the "
              f"sampler drew from ({lo:.3g} to {hi:.3g}): a better rate may lie outside it; widen search.lr_band "
              "(or lr_min / lr_max without calibration)", flush=True)
