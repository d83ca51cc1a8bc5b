"""Drive one search: prepare on a worker, then Tune + Optuna + ASHA + MLflow; report the frontier.

Where it sits: on top of everything, on the driver (no torch here: model work runs in Ray tasks
and trials). Bad input is caught before any trial starts, as `UsageError`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from search.cli import UsageError
from trainables.config import Config


def _cost_unit(cfg: Config) -> str:
    return "GPU-hours" if cfg.search.gpus_per_trial > 0 else "CPU-core-hours"


def _tracking_uri(cfg: Config, output_dir: Path) -> str:
    return cfg.tracking.uri or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def _study_storage_url(cfg: Config, output_dir: Path) -> str:
    return cfg.search.study_storage or f"sqlite:///{(output_dir / 'optuna.db').resolve()}"


def _open_study_storage(cfg: Config, output_dir: Path, resume: bool):
    """The Optuna RDB storage of the search's study and its URL without password.

    On --resume the storage is None: the searcher comes back from Tune's snapshot with its own
    handle to the database."""
    import optuna
    from sqlalchemy.engine import make_url

    from search.searcher import open_study_storage

    url = _study_storage_url(cfg, output_dir)
    shown = make_url(url).render_as_string(hide_password=True)
    if resume:
        return None, shown
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return open_study_storage(url), shown


def _init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshot Tune's experiment state every 2 s (default: 10 s or more), so that --resume after
    # a killed driver re-runs only trials that finished in the last 2 s before it died.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=True)


def _prepare(cfg: Config) -> dict:
    """Run `trainables.prepare` as a Ray task; turn the user's mistakes into UsageError."""
    import ray

    from trainables.data import DataError
    from trainables.model import ModelError
    from trainables.prepare import prepare

    def guarded(cfg_dict):
        try:
            return prepare(cfg_dict)
        except (DataError, ModelError, ValueError) as e:
            return {"error": str(e)}

    resources = {"num_cpus": cfg.search.cpus_per_trial}
    if cfg.search.gpus_per_trial > 0:
        resources["num_gpus"] = min(1.0, cfg.search.gpus_per_trial)
    out = ray.get(ray.remote(**resources)(guarded).remote(cfg.to_dict()))
    if "error" in out:
        raise UsageError(out["error"])
    return out


def _check_inputs(cfg: Config) -> None:
    """Checks that need no model and no Ray: the tracking store (a server that answers, a SQLite
    file that can be created), the model path and the data (files, columns, labels, split). Data
    loading is torch-free, so the driver does it before starting anything."""
    from search.checks import check_tracking_uri
    from trainables.data import DataError, load_task
    from trainables.model import ModelError, resolve_model_path, vocab_size

    check_tracking_uri(cfg.tracking.uri)
    if cfg.data.source not in ("synthetic", "chatterbot"):
        import datasets

        datasets.disable_progress_bars()  # bad input gets one line on stderr, not progress bars too
    try:
        resolve_model_path(cfg.model)
        load_task(cfg.data, vocab_size(cfg.model) or 128)
    except (ModelError, DataError) as e:
        raise UsageError(str(e)) from None


def _check_gpus(cfg: Config) -> None:
    if cfg.search.gpus_per_trial > 0:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < cfg.search.gpus_per_trial:
            raise UsageError(
                f"--gpus-per-trial {cfg.search.gpus_per_trial} but the Ray cluster has {gpus:g} GPUs: "
                "pass --gpus-per-trial 0 to train on CPU"
            )


def _search_state_path(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}.search.json"


def _latest_search(output_dir: Path) -> str:
    states = sorted(output_dir.glob("*.search.json"), key=lambda p: p.stat().st_mtime) if output_dir.is_dir() else []
    if not states:
        raise UsageError(f"--resume: no earlier search in {output_dir}: run without --resume first, "
                         "or pass the --output-dir of the search to continue")
    return states[-1].name[: -len(".search.json")]


def _load_resume(output_dir: Path, experiment: str | None) -> tuple[str, Config, dict]:
    name = experiment or _latest_search(output_dir)
    path = _search_state_path(output_dir, name)
    if not path.exists():
        raise UsageError(f"--resume: no search named {name!r} in {output_dir}: check --experiment and --output-dir")
    state = json.loads(path.read_text())
    return name, Config.from_dict(state["config"]), state["prepare"]


def _open_tracking(cfg: Config, output_dir: Path, name: str, prep: dict, budget, metric: str, cost_unit: str,
                   resume: bool):
    """The MLflow client, experiment id and the search's parent run (reused on resume)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(cfg, output_dir)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    # A SQLite store keeps its artifacts beside it under the output dir (not ./mlruns of the cwd);
    # a tracking server keeps its own artifact location.
    local = uri.startswith("sqlite:")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=(output_dir / "mlartifacts").resolve().as_uri() if local else None)
    if resume:
        parents = client.search_runs([exp_id], filter_string="tags.role = 'search'", max_results=1)
        if parents:
            client.update_run(parents[0].info.run_id, status="RUNNING")
            return client, exp_id, parents[0].info.run_id, uri
    pid = client.create_run(exp_id, run_name="search", tags={"role": "search"}).info.run_id
    client.log_dict(pid, cfg.to_dict(), "config.json")
    client.log_dict(pid, prep["space"], "space.json")
    client.log_dict(pid, prep["task"], "task.json")
    for k, v in {"budget": cfg.search.budget, "r_ref": cfg.search.r_ref, "trials": cfg.search.trials,
                 "sampler": cfg.search.sampler, "model": cfg.model.name, "data": cfg.data.source,
                 "metric": metric, "cost_unit": cost_unit, "full_adapter_params": budget.full_params}.items():
        client.log_param(pid, k, v)
    if "scores" in prep:
        from analysis.heatmap import plot_heatmap

        client.log_dict(pid, prep["scores"], "scores.json")
        heatmap = plot_heatmap(prep["scores"], output_dir / f"{name}-scores.png")
        client.log_artifact(pid, str(heatmap), "")
        client.log_metric(pid, "priors_s", prep["priors_s"])
        print(f"priors: PLoP, CKA and activation scores from {prep['scores']['n_examples']} calibration "
              f"examples in {prep['priors_s']:.1f}s (heatmap: {heatmap})")
    return client, exp_id, pid, uri


def run_search(cfg: Config, output_dir: Path, experiment: str | None = None, resume: bool = False) -> int:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from search.searcher import make_searcher
    from search.stopping import CostStopper
    from search.tracking import MlflowTracker
    from spaces.budget import BudgetError, make_budget
    from spaces.space import ModelSpace
    from trainables.tune_entry import run_trial

    t_start = time.time()
    if resume:
        name, cfg, prep = _load_resume(output_dir, experiment)
    else:
        name = experiment or f"{cfg.search.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        if _search_state_path(output_dir, name).exists():
            raise UsageError(f"a search named {name!r} already exists in {output_dir}: "
                             "pass --resume to continue it, or another --experiment name")
    _check_inputs(cfg)  # a typo costs no Ray start
    from search.checks import check_study_storage

    check_study_storage(_study_storage_url(cfg, output_dir), None if resume else name)
    _init_ray(cfg)
    _check_gpus(cfg)
    from search.checks import check_output_dir

    check_output_dir(output_dir)  # writable or creatable; made only once every check has passed
    if not resume:
        print(f"preparing: loading {cfg.model.name} and the {cfg.data.source} task on a Ray worker ...", flush=True)
        prep = _prepare(cfg)
    space = ModelSpace.from_dict(prep["space"])
    try:
        budget = make_budget(space, cfg.search.budget, cfg.search.r_ref, min(cfg.search.ranks))
    except BudgetError as e:
        raise UsageError(str(e)) from None
    output_dir.mkdir(parents=True, exist_ok=True)  # only once every input check has passed
    storage = cfg.search.storage or str((output_dir / "ray_results").resolve())
    task, metric, cost_unit = prep["task"], prep["metric"], _cost_unit(cfg)
    print(f"model: {space.describe()}")
    print(f"task: {task['n_train']} train / {task['n_val']} validation examples, {len(task['labels'])} labels; "
          f"metric: {metric}")
    print(f"budget: {cfg.search.budget} x {budget.full_params:,} adapter params (every site at r={cfg.search.r_ref}) "
          f"= at most {int(budget.max_params):,}")
    study_storage, study_url = _open_study_storage(cfg, output_dir, resume)
    client, exp_id, pid, uri = _open_tracking(cfg, output_dir, name, prep, budget, metric, cost_unit, resume)
    if not resume:
        client.log_param(pid, "study_storage", study_url)
        client.log_param(pid, "study_name", name)
        _search_state_path(output_dir, name).write_text(json.dumps({"config": cfg.to_dict(), "prepare": prep}))

    resources = {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg_dict=cfg.to_dict(), space_dict=prep["space"], metric=metric),
        resources,
    )
    if resume:
        path = f"{storage.rstrip('/')}/{name}"
        if not tune.Tuner.can_restore(path):
            raise UsageError(f"--resume: no Ray Tune experiment state at {path}: the search stopped before its "
                             "first trial; start it again without --resume")
        print(f"resuming {name!r} from {path}: finished trials are kept, unfinished ones rerun", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        tracker = MlflowTracker(client, exp_id, pid, space, metric, cost_unit, cfg.search.trials,
                                cfg.train.lora_alpha_over_rank, cfg.train.lora_dropout)
        searcher = make_searcher(space, budget, cfg, cfg.search.seed, scores=prep.get("scores"),
                                 storage=study_storage, study_name=name)
        scheduler = ASHAScheduler(
            time_attr="training_iteration", metric="epoch_score", mode="max", max_t=cfg.train.epochs,
            grace_period=min(cfg.search.asha_grace_epochs, cfg.train.epochs),
            reduction_factor=cfg.search.asha_reduction_factor,
        )
        tuner = tune.Tuner(
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
                name=name, storage_path=storage, callbacks=[tracker], verbose=0,
                stop=CostStopper(cfg.search.gpu_hours) if cfg.search.gpu_hours > 0 else None,
                failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
            ),
        )
    print(f"searching: {cfg.search.trials} trials, {cfg.train.epochs} epochs each, ASHA on epoch_score; "
          f"MLflow experiment {name!r}; Optuna study {name!r} in {study_url}" + (f"; cost cap {cfg.search.gpu_hours} {cost_unit}" if cfg.search.gpu_hours else ""),
          flush=True)
    status = "FINISHED"
    try:
        tuner.fit()
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: finished trials are kept in MLflow; continue with --resume", flush=True)
    if resume:  # the live tracker was restored inside Tune; read the whole search back from MLflow
        tracker = MlflowTracker(client, exp_id, pid, space, metric, cost_unit, cfg.search.trials)
    return _finish(tracker, client, pid, name, output_dir, metric, cost_unit, uri, status, t_start)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _finish(tracker, client, pid: str, name: str, output_dir: Path, metric: str, cost_unit: str, uri: str,
            status: str, t_start: float) -> int:
    """Mark the frontier, write the tables, close the parent run, print the summary."""
    from analysis.report import format_table
    from search.report import publish_frontier

    # The frontier, its tags on the trial runs, the CSVs and the Pareto plots (PNG and HTML).
    rows = publish_frontier(client, pid, tracker.table_rows(), metric, cost_unit, output_dir, prefix=f"{name}-")
    completed = [r for r in rows if r["status"] == "completed"]
    if completed:
        best = max(completed, key=lambda r: r["metric"])
        client.log_metric(pid, "best_metric", float(best["metric"]))
        client.set_tag(pid, "best_placement", best["key"][:5000])
    wall = time.time() - t_start
    client.log_metric(pid, "search_wall_s", wall)
    client.set_terminated(pid, status)

    print()
    print(format_table(rows, metric, cost_unit))
    print()
    print(f"{len(completed)} completed, {sum(r['status'] == 'pruned' for r in rows)} stopped early by ASHA, "
          f"{sum(r['status'] == 'failed' for r in rows)} failed; search took {wall / 60:.1f} min")
    print(f"results: {output_dir / (name + '-trials.csv')}")
    if uri.startswith("sqlite:///"):
        print(f"open the MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    else:
        print(f"MLflow tracking server: {uri}")
    return 0 if status == "FINISHED" else 130
