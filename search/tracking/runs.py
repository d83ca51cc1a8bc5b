"""The search's parent run in MLflow: one experiment per search, one parent run for the search
(tag role=search) under which every trial run nests.

Where it sits: track. `open_search_run` makes (or, on --resume, reopens) the parent run; what the
search is made of is logged on it by `search.phases.session`, each trial by `search.tuning.tracker`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from trainables import record as R


@dataclass(frozen=True)
class SearchRun:
    """Where a search is tracked: its MLflow store, experiment and parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def open_search_run(client: MlflowClient, name: str, *, artifact_location: str | None, resume: bool,
                    tracking_uri: str | None = None) -> SearchRun:
    """The experiment named `name` (made if needed) and its search parent run: the existing one on
    `resume`, else a new one (the caller logs what the search is made of). `tracking_uri`: the URI
    the run carries (and Tune's snapshots of the tracker keep), its password masked; default the
    client's."""
    tracking_uri = tracking_uri or client.tracking_uri
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_location)
    if resume:
        parents = client.search_runs([exp_id], filter_string=f"tags.{R.ROLE_TAG} = '{R.ROLE_SEARCH}'", max_results=1)
        if parents:
            client.update_run(parents[0].info.run_id, status="RUNNING")
            return SearchRun(tracking_uri, exp_id, parents[0].info.run_id)
    pid = client.create_run(exp_id, run_name="search", tags={R.ROLE_TAG: R.ROLE_SEARCH}).info.run_id
    return SearchRun(tracking_uri, exp_id, pid)
