"""A running search, as one value: the prepared search, the MLflow client, the search's parent run
and the phase timer, passed from phase to phase instead of a (search, client, run) triple.

Where it sits: prepare -> **session** -> calibrate -> explore -> confirm -> publish. `open_session`
opens (or, on --resume, reopens) the parent run, writes the UI's views and a "running" description
so the printed links work from the start, and logs what a new search is made of: its config,
model space, task, budget and priors (with their heatmap).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mlflow
from mlflow.tracking import MlflowClient

from analysis.heatmap import plot_heatmap
from analysis.mlflow_read import trial_record, trial_runs
from search.phases.prepare import PreparedSearch
from search.runtime.credentials import real
from search.runtime.workspace import store_creation_lock
from search.tracking.notes import publish_running
from search.tracking.runs import SearchRun, open_search_run
from search.tracking.ui import open_views
from trainables import record as R
from trainables.record import TrialRecord


@dataclass
class Session:
    search: PreparedSearch  # replaced once the learning rate is calibrated
    client: MlflowClient
    run: SearchRun
    _t: float = field(default_factory=time.time)

    @property
    def parent_run_id(self) -> str:
        return self.run.parent_run_id

    def phase_done(self, name: str, seconds: float | None = None) -> None:
        """Log the wall time of the phase that just ended (`<name>` in seconds) on the search's run;
        a resumed driver logs its own part."""
        now = time.time()
        self.client.log_metric(self.parent_run_id, name, now - self._t if seconds is None else seconds)
        self._t = now

    def records(self) -> list[TrialRecord]:
        """Every trial of the search as MLflow holds it (the search's trials and the confirmations)."""
        return self.read_records(self.client, self.run)

    @staticmethod
    def read_records(client, run: SearchRun) -> list[TrialRecord]:
        parent = client.get_run(run.parent_run_id)
        return [trial_record(r) for r in trial_runs(client, parent) if R.TRIAL_ID_TAG in r.data.tags]

    def trials_started(self) -> bool:
        """Whether any trial of the search has a run of its own (copies of an earlier search's
        trials, made by a warm start, do not count)."""
        runs = trial_runs(self.client, self.client.get_run(self.parent_run_id))
        return any(R.WARM_START_TAG not in r.data.tags for r in runs)


def open_session(search: PreparedSearch, written=None) -> Session:
    """The MLflow client and the search's parent run; a new search logs what it is made of.
    `written`: a new search's `search.runtime.workspace.Written`, told the experiment if this made it."""
    uri = search.tracking_uri  # a database store's password masked (search.runtime.credentials)
    mlflow.set_tracking_uri(real(uri))
    client = tracking_client(real(uri))
    # A SQLite store keeps its artifacts beside it under the output dir (not ./mlruns of the cwd);
    # a tracking server keeps its own artifact location.
    local = (search.output_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    existed = client.get_experiment_by_name(search.name) is not None
    run = open_search_run(client, search.name, artifact_location=local, resume=search.resumed, tracking_uri=uri)
    if written is not None and not existed:
        written.experiment_id = run.experiment_id
    open_views(client, run.experiment_id, run.parent_run_id, R.sense(search.metric_name))
    publish_running(client, run.experiment_id, run.parent_run_id)
    # A resumed search whose first driver stopped before it logged these (killed, or a store that
    # failed it then) gets them now: the report and deploy read the metric, the cost unit and the config.
    if not search.resumed or R.METRIC_NAME not in client.get_run(run.parent_run_id).data.params:
        _log_search(client, run, search)
    return Session(search, client, run)


def tracking_client(uri: str) -> MlflowClient:
    """A client of the MLflow store at `uri`. MLflow makes a new store's tables (and migrates an
    older one) as the first client opens it: under `store_creation_lock`, so that searches started
    at once on one new SQLite store do not race each other's migrations."""
    with store_creation_lock(uri):
        return MlflowClient(uri)


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
        client.log_dict(pid, search.scores.to_dict(), "scores.json")
        heatmap = plot_heatmap(search.scores, search.output_dir / f"{search.name}-scores.png")
        client.log_artifact(pid, str(heatmap), "")
        client.log_metric(pid, "priors_s", search.prep.priors_s)
        print(f"priors: PLoP, CKA and activation scores from {search.scores.n_examples} calibration "
              f"examples in {search.prep.priors_s:.1f}s (heatmap: {heatmap})")
