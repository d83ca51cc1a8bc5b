"""Drive one search: prepare, calibrate the learning rate, search, confirm, recommend.

Where it sits: on top of everything, on the driver (no torch: model work runs in Ray tasks and
trials). `run_search` is the whole story in order:
1. `search.prepared.prepare_search`: checks, Ray, the model's space, the priors, the budget (one
   value, new or resumed);
2. the search's MLflow parent run (`search.tracking`);
3. the learning-rate probe (`search.calibration`), once: baselines train at its choice;
4. a Tune run of placement trials (new, or restored on --resume);
5. the confirmation phase (`search.confirmation`): the frontier's best placements and the best
   baselines retrained with more seeds;
6. the end: the frontier over seed means published from what MLflow holds (`search.frontier`),
   a table, and one plain recommendation (`analysis.confirmed`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from search.prepared import PreparedSearch, prepare_search
from search.tracking import SearchRun
from trainables import record as R


def run_search(cfg, output_dir: Path, experiment: str | None = None, resume: bool = False) -> int:
    t_start = time.time()
    search = prepare_search(cfg, Path(output_dir), experiment, resume)
    search.output_dir.mkdir(parents=True, exist_ok=True)  # only once every input check has passed
    _print_plan(search)
    client, run = _open_tracking(search)
    if search.calibration is None and search.cfg.search.calibrate_lr:
        search = dataclasses.replace(search, calibration=_calibrate(search, client, run))
    if not search.resumed:
        search.save_state()
    _print_lr(search)
    trainable = _trainable(search)
    cap = search.cfg.search.max_compute_hours
    print(f"searching: {search.cfg.search.trials} trials, {search.cfg.train.epochs} epochs each, ASHA on "
          f"epoch_score; MLflow experiment {search.name!r}; Optuna study {search.name!r} in {search.study_url_shown}"
          + (f"; cost cap {cap} {search.cost_unit}" if cap else ""), flush=True)
    status = _fit(lambda: _search_tuner(search, client, run, trainable).fit())
    if status == "FINISHED":
        from search.confirmation import confirm

        records = _records(client, run)
        spent = sum(r.compute_hours or 0.0 for r in records) + (search.calibration.compute_hours if search.calibration else 0.0)
        status = _fit(lambda: confirm(search, client, run, trainable, records, spent))
    return _finish(search, client, run, status, t_start)


def _fit(step) -> str:
    """Run one Tune phase; Ctrl-C ends it as KILLED, with finished trials kept."""
    try:
        step()
    except KeyboardInterrupt:
        print("interrupted: finished trials are kept in MLflow; continue with --resume", flush=True)
        return "KILLED"
    return "FINISHED"


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


def _open_tracking(search: PreparedSearch):
    """The MLflow client and the search's parent run; a new search logs what it is made of."""
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
    run = open_search_run(client, search.name, artifact_location=local, resume=search.resumed, tracking_uri=uri)
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


def _trainable(search: PreparedSearch):
    from ray import tune

    from trainables.tune_entry import run_trial

    cfg = search.cfg
    return tune.with_resources(
        tune.with_parameters(run_trial, cfg_dict=cfg.to_dict(), space_dict=search.space.to_dict(),
                             metric_name=search.metric_name),
        {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial},
    )


def _search_tuner(search: PreparedSearch, client, run: SearchRun, trainable):
    """A new Tune run of placement trials, or the interrupted one restored (--resume)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from search.errors import UsageError
    from search.samplers import SamplerInputs
    from search.searcher import make_searcher, open_study_storage
    from search.stopping import CostStopper
    from search.tracking import MlflowTracker, TrialContext
    from trainables.config import lora_scaling

    cfg = search.cfg
    if search.resumed:
        if not tune.Tuner.can_restore(search.tune_path):
            raise UsageError(f"--resume: no Ray Tune experiment state at {search.tune_path}: the search stopped "
                             "before its first trial; start it again without --resume")
        print(f"resuming {search.name!r} from {search.tune_path}: finished trials are kept, unfinished ones rerun",
              flush=True)
        return tune.Tuner.restore(search.tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    context = TrialContext(search.space, search.metric_name, search.cost_unit, cfg.search.trials,
                           lora_scaling(cfg), cfg.train.lora_dropout, cfg.train.seed)
    tracker = MlflowTracker(client, run, context)
    inputs = SamplerInputs.from_config(search.space, search.budget, cfg, search.scores, search.calibrated_lr)
    searcher = make_searcher(inputs, cfg.search.sampler, open_study_storage(search.study_url), search.name)
    scheduler = ASHAScheduler(
        time_attr="training_iteration", metric=R.EPOCH_SCORE, mode="max", max_t=cfg.train.epochs,
        grace_period=min(cfg.search.asha_grace_epochs, cfg.train.epochs),
        reduction_factor=cfg.search.asha_reduction_factor,
    )
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


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _records(client, run: SearchRun):
    """Every trial of the search as MLflow holds it (the search's trials and the confirmations)."""
    from analysis.mlflow_read import trial_record, trial_runs

    parent = client.get_run(run.parent_run_id)
    return [trial_record(r) for r in trial_runs(client, parent) if R.TRIAL_ID_TAG in r.data.tags]


def _finish(search: PreparedSearch, client, run: SearchRun, status: str, t_start: float) -> int:
    """Publish the frontier from what MLflow holds, close the parent run, print the summary."""
    from analysis.confirmed import confirmed_markdown, recommendation_markdown
    from analysis.report import format_table
    from search.frontier import publish_frontier
    from search.notes import publish_notes, recommended
    from search.ui import ui_lines

    pid = run.parent_run_id
    result = publish_frontier(client, pid, _records(client, run), search.metric_name, search.cost_unit,
                              search.output_dir, prefix=f"{search.name}-", max_adapter_params=search.budget.max_params)
    records = result.records
    searched = [r for r in records if r.confirms is None]
    completed = [r for r in searched if r.status == R.COMPLETED]
    rec = result.recommendation
    publish_notes(client, pid, searched, search.tracking_uri, status=status, artifact_prefix=f"{search.name}-",
                  recommendation=None if rec is None else recommendation_markdown(rec, search.metric_name),
                  confirmed_table=confirmed_markdown(result.confirmed, search.metric_name, search.cost_unit)
                  if result.confirmed else None)
    if rec is not None:  # the confirmed recommendation
        client.log_metric(pid, "best_score", float(rec.pick.stats.mean))
        client.set_tag(pid, "best_placement", rec.pick.key[:5000])
    elif completed:
        best = recommended(searched)  # the highest single-run score; ties to fewer params
        client.log_metric(pid, "best_score", float(best.score))
        client.set_tag(pid, "best_placement", best.key[:5000])
    wall = time.time() - t_start
    client.log_metric(pid, "search_wall_s", wall)
    client.set_terminated(pid, status)

    print()
    print(format_table(searched, search.metric_name, search.cost_unit))
    print()
    print(f"{len(completed)} completed, {sum(r.status == R.PRUNED for r in searched)} stopped early by ASHA, "
          f"{sum(r.status == R.FAILED for r in searched)} failed; search took {wall / 60:.1f} min")
    if result.confirmed:
        from analysis.confirmed import format_confirmed

        print()
        print(f"confirmed over seeds ({sum(r.confirms is not None for r in records)} confirmation runs):")
        print(format_confirmed(result.confirmed, search.metric_name, search.cost_unit))
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
    return 0 if status == "FINISHED" else 130


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
