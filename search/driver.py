"""Drive one search: prepare, then Tune + Optuna + ASHA + MLflow; publish and print the frontier.

Where it sits: on top of everything, on the driver (no torch: model work runs in Ray tasks and
trials). `run_search` is the whole story in order: `search.prepared.prepare_search` (checks, Ray,
the model's space, the priors, the budget: one value, new or resumed), the search's MLflow parent
run (`search.tracking`), a Tune run of placement trials (new, or restored on --resume), and the
end: the frontier published from what MLflow holds (`search.frontier`) and a table printed.
"""

from __future__ import annotations

import time
from pathlib import Path

from search.prepared import PreparedSearch, prepare_search
from search.tracking import SearchRun


def run_search(cfg, output_dir: Path, experiment: str | None = None, resume: bool = False) -> int:
    t_start = time.time()
    search = prepare_search(cfg, Path(output_dir), experiment, resume)
    search.output_dir.mkdir(parents=True, exist_ok=True)  # only once every input check has passed
    _print_plan(search)
    client, run = _open_tracking(search)
    tuner = _tuner(search, client, run)
    cap = search.cfg.search.max_compute_hours
    print(f"searching: {search.cfg.search.trials} trials, {search.cfg.train.epochs} epochs each, ASHA on "
          f"epoch_score; MLflow experiment {search.name!r}; Optuna study {search.name!r} in {search.study_url_shown}"
          + (f"; cost cap {cap} {search.cost_unit}" if cap else ""), flush=True)
    status = "FINISHED"
    try:
        tuner.fit()
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: finished trials are kept in MLflow; continue with --resume", flush=True)
    return _finish(search, client, run, status, t_start)


def _print_plan(search: PreparedSearch) -> None:
    task, budget, cfg = search.prep.task, search.budget, search.cfg
    print(f"model: {search.space.describe()}")
    print(f"task: {task['n_train']} train / {task['n_val']} validation examples, {len(task['labels'])} labels; "
          f"metric: {search.metric_name}")
    print(f"budget: {cfg.search.budget} x {budget.full_params:,} adapter params (every site at r={cfg.search.r_ref}) "
          f"= at most {int(budget.max_params):,}")


def _open_tracking(search: PreparedSearch):
    """The MLflow client and the search's parent run; a new search logs what it is made of."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from search.tracking import open_search_run

    uri = search.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    # A SQLite store keeps its artifacts beside it under the output dir (not ./mlruns of the cwd);
    # a tracking server keeps its own artifact location.
    local = (search.output_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    run = open_search_run(client, search.name, artifact_location=local, resume=search.resumed)
    _open_ui(client, run)
    if not search.resumed:
        _log_search(client, run, search)
        search.save_state()
    return client, run


def _open_ui(client, run: SearchRun) -> None:
    """The search's runs views and a description saying it runs, so the UI's links work from the start."""
    from search.notes import publish_running
    from search.ui import open_views

    open_views(client, run.experiment_id, run.parent_run_id)
    publish_running(client, run.experiment_id, run.parent_run_id)


def _log_search(client, run: SearchRun, search: PreparedSearch) -> None:
    from trainables import record as R

    pid, cfg = run.parent_run_id, search.cfg
    client.log_dict(pid, cfg.to_dict(), "config.json")
    client.log_dict(pid, search.space.to_dict(), "space.json")
    client.log_dict(pid, search.prep.task, "task.json")
    params = {"budget": cfg.search.budget, "r_ref": cfg.search.r_ref, "trials": cfg.search.trials,
              "sampler": cfg.search.sampler, "model": cfg.model.name, "data": cfg.data.source,
              R.METRIC_NAME: search.metric_name, R.COST_UNIT: search.cost_unit,
              "full_adapter_params": search.budget.full_params, "study_storage": search.study_url_shown,
              "study_name": search.name}
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


def _tuner(search: PreparedSearch, client, run: SearchRun):
    """A new Tune run of placement trials, or the interrupted one restored (--resume)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from search.errors import UsageError
    from search.samplers import SamplerInputs
    from search.searcher import make_searcher, open_study_storage
    from search.stopping import CostStopper
    from search.tracking import MlflowTracker, TrialContext
    from trainables.record import EPOCH_SCORE
    from trainables.tune_entry import run_trial

    cfg = search.cfg
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg_dict=cfg.to_dict(), space_dict=search.space.to_dict(),
                             metric_name=search.metric_name),
        {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial},
    )
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
                           cfg.train.lora_alpha_over_rank, cfg.train.lora_dropout)
    tracker = MlflowTracker(client, run, context)
    inputs = SamplerInputs.from_config(search.space, search.budget, cfg, search.scores)
    searcher = make_searcher(inputs, cfg.search.sampler, open_study_storage(search.study_url), search.name)
    scheduler = ASHAScheduler(
        time_attr="training_iteration", metric=EPOCH_SCORE, mode="max", max_t=cfg.train.epochs,
        grace_period=min(cfg.search.asha_grace_epochs, cfg.train.epochs),
        reduction_factor=cfg.search.asha_reduction_factor,
    )
    cap = cfg.search.max_compute_hours
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=cfg.search.trials,
            max_concurrent_trials=cfg.search.max_concurrent_trials or None,
            trial_dirname_creator=_trial_dirname,
            # Keep worker processes across trials: imports, model files and tokenised data are
            # loaded once per process (trainables.tune_entry caches them).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=search.name, storage_path=search.storage_path, callbacks=[tracker], verbose=0,
            stop=CostStopper(cap) if cap > 0 else None,
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
        ),
    )


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _finish(search: PreparedSearch, client, run: SearchRun, status: str, t_start: float) -> int:
    """Publish the frontier from what MLflow holds, close the parent run, print the summary."""
    from analysis.mlflow_read import trial_record, trial_runs
    from analysis.report import format_table
    from search.frontier import publish_frontier
    from search.notes import publish_notes, recommended
    from search.ui import ui_lines
    from trainables import record as R

    pid = run.parent_run_id
    parent = client.get_run(pid)
    records = [trial_record(r) for r in trial_runs(client, parent) if R.TRIAL_ID_TAG in r.data.tags]
    records = publish_frontier(client, pid, records, search.metric_name, search.cost_unit, search.output_dir,
                               prefix=f"{search.name}-")
    publish_notes(client, pid, records, search.tracking_uri, status=status, artifact_prefix=f"{search.name}-")
    completed = [r for r in records if r.status == R.COMPLETED]
    if completed:
        best = recommended(records)  # the highest score; ties to fewer params (the notes' recommendation)
        client.log_metric(pid, "best_score", float(best.score))
        client.set_tag(pid, "best_placement", best.key[:5000])
    wall = time.time() - t_start
    client.log_metric(pid, "search_wall_s", wall)
    client.set_terminated(pid, status)

    print()
    print(format_table(records, search.metric_name, search.cost_unit))
    print()
    print(f"{len(completed)} completed, {sum(r.status == R.PRUNED for r in records)} stopped early by ASHA, "
          f"{sum(r.status == R.FAILED for r in records)} failed; search took {wall / 60:.1f} min")
    print(f"results: {search.output_dir / (search.name + '-trials.csv')}")
    for line in ui_lines(search.tracking_uri, run.experiment_id, pid):
        print(line)
    return 0 if status == "FINISHED" else 130
