"""Read a finished (or interrupted) search back from an MLflow store alone: no Ray, no torch.

Where it sits: track -> **frontier**. `search.tuning.tracker` writes one parent run per search (tag
role=search, params metric_name and cost_unit, artifacts config.json and space.json) and one
nested child run per trial (names in `trainables.record`). This module turns the trial runs back
into `TrialRecord`s with the same builder the tracker uses (`trainables.record.build_record`), so
`analysis.pareto.frontier`, `analysis.report` and `analysis.plots` work on a store as they do on a
live search.

Store problems (no such file, unreachable server, unknown experiment or run) raise `StoreError`
whose message names the fix.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from trainables import record as R
from trainables.record import TrialRecord

DEFAULT_OUTPUT_DIR = "outputs"


def default_tracking_uri(output_dir: str | Path = DEFAULT_OUTPUT_DIR) -> str:
    """The MLflow store a search keeps under its output folder (the one place this is defined)."""
    return f"sqlite:///{Path(output_dir) / 'mlflow.db'}"


DEFAULT_TRACKING_URI = default_tracking_uri()


class StoreError(LookupError):
    """The MLflow store, experiment or run cannot be used; the message names the fix."""


# --- the store ------------------------------------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative after 3 slashes, absolute after 4)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def open_store(tracking_uri: str) -> MlflowClient:
    """A client for `tracking_uri`, checked to answer. A missing SQLite file is an error here
    (MLflow itself would silently create an empty store)."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise StoreError(f"no MLflow store at {path}: run a search first (python search/run.py) "
                         "or pass --tracking-uri sqlite:///<output-dir>/mlflow.db")
    client = MlflowClient(tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except MlflowException as e:
        text = str(e)
        first = ("not reachable" if "Max retries exceeded" in text or "Connection" in text
                 else text.splitlines()[0][:160])
        hint = ("start the server (mlflow server ...) or fix --tracking-uri"
                if urlparse(tracking_uri).scheme in ("http", "https") else "check --tracking-uri")
        raise StoreError(f"cannot read the MLflow store at {tracking_uri} ({first}): {hint}") from None
    return client


def _all(fetch) -> list:
    """Every page of a paged MLflow search."""
    out, token = [], None
    while True:
        page = fetch(token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in _all(lambda t: client.search_experiments(
        view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=t))]


def _is_missing(e: MlflowException) -> bool:
    return e.error_code == "RESOURCE_DOES_NOT_EXIST"


def get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if _is_missing(e) or e.error_code == "INVALID_PARAMETER_VALUE":
            raise StoreError(f"no MLflow run {run_id!r} in this store: copy a run id from "
                             "python search/report.py or the MLflow UI, or check --tracking-uri") from None
        raise


def find_parent(client: MlflowClient, experiment: str | None = None, run_id: str | None = None) -> Run:
    """The search's parent run: by run id, else the latest search in `experiment`, else the
    latest search in the store."""
    if run_id:
        run = get_run(client, run_id)
        if run.data.tags.get(R.ROLE_TAG) != R.ROLE_SEARCH:
            parent = run.data.tags.get(R.PARENT_TAG)
            hint = f"; its search is {parent}" if parent else ""
            raise StoreError(f"run {run_id} is not a search's parent run (no tag role=search){hint}: "
                             "pass the parent run id, or --experiment NAME")
        return run
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments(max_results=20)]
            raise StoreError(f"no MLflow experiment named {experiment!r} in this store; it has "
                             f"{', '.join(map(repr, names)) or 'none'}: check --experiment")
        ids = [exp.experiment_id]
    else:
        ids = _experiment_ids(client)
    runs = client.search_runs(ids, f"tags.{R.ROLE_TAG} = '{R.ROLE_SEARCH}'", max_results=1,
                              order_by=["attributes.start_time DESC"]) if ids else []
    if not runs:
        where = f"experiment {experiment!r}" if experiment else "this store"
        raise StoreError(f"{where} holds no search (no run tagged role=search): run "
                         "python search/run.py first, or check --tracking-uri / --experiment")
    return runs[0]


def read_json_artifact(client: MlflowClient, run_id: str, path: str) -> dict | None:
    """A JSON artifact of a run, or None when the run has no such artifact."""
    folder = str(Path(path).parent)
    if path not in {a.path for a in client.list_artifacts(run_id, None if folder == "." else folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


# --- rows -----------------------------------------------------------------------------------------


def trial_status(run: Run) -> str:
    return R.run_status(run.info.status, run.data.tags.get(R.STATUS_TAG))


def trial_record(run: Run) -> TrialRecord:
    """A trial run as a `TrialRecord`."""
    return R.build_record(run.info.run_id, run.info.status, run.data.tags, run.data.params, run.data.metrics,
                          run.info.start_time)


def trial_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """The parent's child runs, oldest first."""
    flt = f"tags.{R.PARENT_TAG} = '{parent.info.run_id}'"
    return _all(lambda t: client.search_runs(
        [parent.info.experiment_id], flt, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
        order_by=["attributes.start_time ASC"], page_token=t))


def read_search(client_or_uri: MlflowClient | str = DEFAULT_TRACKING_URI, experiment: str | None = None,
                run_id: str | None = None) -> dict:
    """One search from the store: {"parent": {...}, "rows": [one dict per trial, oldest first]}.

    parent: run_id, experiment_id, experiment, status, start_time, end_time, params, tags,
    artifact_uri, metric_name and cost_unit (params of the parent run). rows: `TrialRecord`s.
    """
    client = open_store(client_or_uri) if isinstance(client_or_uri, str) else client_or_uri
    run = find_parent(client, experiment, run_id)
    exp = client.get_experiment(run.info.experiment_id)
    params = dict(run.data.params)
    parent = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "experiment": exp.name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "params": params,
        "tags": dict(run.data.tags),
        "artifact_uri": run.info.artifact_uri,
        "metric_name": params.get(R.METRIC_NAME, "score"),
        "cost_unit": params.get(R.COST_UNIT, R.GPU_HOURS),
    }
    rows = [trial_record(r) for r in trial_runs(client, run) if R.TRIAL_ID_TAG in r.data.tags]
    return {"parent": parent, "rows": rows}
