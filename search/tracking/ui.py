"""Where the MLflow UI opens on a search: the links, the command that serves the UI, and the ready-made
runs views those links open.

Where it sits: track -> frontier -> **what a person opens**. Checked against MLflow 3.17's UI (its
JS bundle and headless Chromium, `tests/test_mlflow_ui.py`):
- the UI takes its mode from the URL parameter `workflowType`; without `machine_learning` it opens
  on its GenAI pages. The experiment tag `mlflow.experimentKind` alone does not switch it (the UI
  reads that tag only when its workflow switch is off); `open_views` sets it anyway.
- a link must name the runs tab (`#/experiments/<id>/runs?...`): `#/experiments/<id>?...` redirects
  and drops every parameter but the mode.
- `viewStateShareKey=<key>` opens the view stored in the experiment tag
  `mlflow.sharedViewState.<key>` (JSON: filter, sort, columns, widths, charts); `compareRunsMode=CHART`
  opens it on the charts.
- the runs table nests child runs under their parent (collapsed) only when sorted by creation time:
  sorted by `score`, the trial runs are rows of their own.
- it sorts by one key only (`orderByKey`), and a shared view does not restore pinned rows
  (`runsPinned`): to list the recommended trial first and the others best first, the end of a search
  logs `pick_order` (1 = the recommended trial) and `picked` views sort by it.

`open_views` writes this search's views when it starts (so the links work while it runs, sorted by
score), and again at its end (`search.phases.publish`, `picked=True`: the recommended trial first);
`ui_lines` is what the end of a search prints; `search.tracking.notes` links the same views.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from urllib.parse import quote, urlparse

from trainables import record as R

UI_PORT = 5000
WORKFLOW = "workflowType=machine_learning"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUN_NAME_COLUMN = "attributes.`Run Name`"

# What the end of a search writes on each trial run (`search.phases.publish`) for picking in the table.
RECOMMENDED_TAG = "recommended"  # "true" on exactly the recommended trial's run
PARETO_SINGLE_TAG = "pareto_single_run"  # "true": non-dominated among the completed single-run trials
PARETO_CONFIRMED_TAG = "pareto_confirmed"  # "true": non-dominated among the confirmed placements' seed means
PICK_ORDER = "pick_order"  # metric: 1 = the recommended trial, then confirmed (best mean), then best score
SEED_METRICS = ("score_mean", "score_sd", "score_low", "score_high", "n_seeds")  # a confirmed placement's

# The trial columns of every view, in this order: what a user sorts, filters and picks placements by.
COLUMNS = (f"tags.`{RECOMMENDED_TAG}`", "metrics.`score`", "metrics.`score_mean`", "metrics.`score_low`",
           "metrics.`score_high`", "metrics.`n_seeds`", "metrics.`trainable_params`", "metrics.`compute_hours`",
           "tags.`pareto`", f"tags.`{PARETO_SINGLE_TAG}`", f"tags.`{PARETO_CONFIRMED_TAG}`", f"tags.`{R.DECISION_TAG}`",
           "tags.`baseline`", "tags.`status`", "params.`lr`", "params.`rank`")
NARROW = 110  # px: the tag columns hold a word


@dataclass(frozen=True)
class View:
    """A runs view of one search: its trial runs filtered, sorted by score (best first: descending,
    ascending for a lower-is-better metric) or, once the search has picked (`view_state(picked=True)`,
    not for `charts`), by `pick_order` (the recommended trial first), with the trial columns;
    `charts` opens it on scatter plots of score against trainable params and cost."""

    name: str
    title: str
    condition: str  # a filter clause before the search's own (or "" for all its trials)
    charts: bool = False

    def key(self, parent_run_id: str) -> str:
        return f"{self.name}-{parent_run_id[:8]}"

    def search_filter(self, parent_run_id: str) -> str:
        """This view's filter, restricted to the trials of one search (an experiment may hold more)."""
        mine = f'tags.`{R.PARENT_TAG}` = "{parent_run_id}"'
        return f"{self.condition} and {mine}" if self.condition else mine


# Confirmation runs (the frontier retrained over seeds) share the search's experiment and parent;
# the views show the searched trials only.
SEARCHED = f"tags.`{R.CONFIRMS_TAG}` IS NULL"
TRIALS = View("trials", "all trials, recommended first", SEARCHED)
# `pareto`: the frontier the recommendation is taken from (over seed means once placements were
# confirmed, else over single runs); the two named frontiers are tagged as well (docs/mlflow.md).
FRONTIER = View("frontier", "the Pareto frontier", f'tags.{R.PARETO_TAG} = "true"')
SINGLE_FRONTIER = View("single", "the single-run Pareto frontier", f'tags.{PARETO_SINGLE_TAG} = "true"')
CHARTS = View("charts", "charts: score against trainable params and cost, parallel coordinates",
              f'tags.{R.STATUS_TAG} = "{R.COMPLETED}" and {SEARCHED}', charts=True)
VIEWS = (TRIALS, FRONTIER, CHARTS)  # the views the descriptions link at their top
ALL_VIEWS = (*VIEWS, SINGLE_FRONTIER)


CHART_SECTION = "lora-placements"
# The charts view's cards: two to a row at 440 px (MLflow's default is three at 360 px, too small to
# read a placement's point). MLflow 3.17's scatter card has no log axis (its line cards do): sizes
# span decades, so the search's own pareto.png (log x) stays the picture to read sizes from.
CHART_COLUMNS, CHART_HEIGHT = 2, 440
# The parallel-coordinates card's axes: what a placement is (rank, learning rate, sites) against what
# it costs and reaches, the score last (the axis MLflow colours the lines by). Without them MLflow
# takes the first three params of its own list.
PARALLEL_PARAMS = ("rank", "lr", "n_sites")
PARALLEL_METRICS = (R.TRAINABLE_PARAMS, R.COMPUTE_HOURS, R.SCORE)


def _card(uuid: str, kind: str) -> dict:
    return {"uuid": uuid, "type": kind, "runsCountToCompare": 200, "metricSectionId": CHART_SECTION,
            "deleted": False, "isGenerated": False}


def _scatter(uuid: str, x: str) -> dict:
    return {**_card(uuid, "SCATTER"), "xaxis": {"key": x, "type": "METRIC"}, "yaxis": {"key": R.SCORE, "type": "METRIC"}}


def _parallel(uuid: str) -> dict:
    return {**_card(uuid, "PARALLEL"), "selectedParams": list(PARALLEL_PARAMS),
            "selectedMetrics": list(PARALLEL_METRICS), "showAllRuns": True}


def view_state(view: View, parent_run_id: str, sense: str = "max", picked: bool = False) -> dict:
    """The shared view state the UI restores: search facets and the runs table's UI state, sorted
    by score with the best first (`sense`: the metric's direction, `trainables.record.sense`), or with
    `picked` (not the charts) by `pick_order`: the recommended trial first, then the others best first."""
    if sense not in ("max", "min"):
        raise ValueError(f"sense must be 'max' or 'min', got {sense!r}")
    by_pick = picked and not view.charts
    state = {
        "searchFilter": view.search_filter(parent_run_id),
        "orderByKey": f"metrics.`{PICK_ORDER if by_pick else R.SCORE}`", "orderByAsc": by_pick or sense == "min",
        "selectedColumns": list(COLUMNS), "columnOrder": [RUN_NAME_COLUMN, *COLUMNS],
        # the run name carries the trial id and the placement key
        "columnWidths": {RUN_NAME_COLUMN: 380, **{c: NARROW for c in COLUMNS if c.startswith("tags.")}},
    }
    if view.charts:
        state["compareRunSections"] = [{"uuid": CHART_SECTION, "name": "Placements", "display": True,
                                        "isReordered": False, "deleted": False, "isGenerated": False,
                                        "columns": CHART_COLUMNS, "cardHeight": CHART_HEIGHT}]
        state["compareRunCharts"] = [_scatter("lora-score-params", R.TRAINABLE_PARAMS),
                                     _scatter("lora-score-cost", R.COMPUTE_HOURS), _parallel("lora-parallel")]
    return state


# ---- links -----------------------------------------------------------------------------------------
def is_server(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def ui_base(tracking_uri: str) -> str:
    """Where the UI answers: a tracking server serves it itself; a store is served by `mlflow ui`."""
    return tracking_uri.rstrip("/") if is_server(tracking_uri) else f"http://127.0.0.1:{UI_PORT}"


def view_link(experiment_id: str, parent_run_id: str, view: View = TRIALS) -> str:
    """A link relative to the UI's address (as the Markdown descriptions use it)."""
    link = f"#/experiments/{experiment_id}/runs?{WORKFLOW}&viewStateShareKey={view.key(parent_run_id)}"
    return link + ("&compareRunsMode=CHART" if view.charts else "")


def view_url(tracking_uri: str, experiment_id: str, parent_run_id: str, view: View = TRIALS) -> str:
    return f"{ui_base(tracking_uri)}/{view_link(experiment_id, parent_run_id, view)}"


def run_link(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW}"


def artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    """The run's artifact page with `path` selected (the UI shows images and renders HTML there)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{quote(path)}?{WORKFLOW}"


def artifact_file(run_id: str, path: str) -> str:
    """The artifact's file itself, served by the UI (an image source)."""
    return f"get-artifact?path={quote(path)}&run_uuid={run_id}"


def model_link(name: str) -> str:
    return f"#/models/{quote(name)}?{WORKFLOW}"


def compare_link(experiment_id: str, run_ids: list[str]) -> str:
    """The UI's page comparing `run_ids` side by side (params, metrics, parallel coordinates)."""
    runs, exps = quote(json.dumps(list(run_ids))), quote(json.dumps([experiment_id]))
    return f"#/compare-runs?runs={runs}&experiments={exps}&{WORKFLOW}"


DEPLOY_ALIAS = "deploy"  # the registered model's alias that `search/deploy.py` points at the exported trial


def default_model_name(experiment: str) -> str:
    """The registered model's name for a search's experiment (a name MLflow accepts anywhere)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("._") or "lora-placement"


def python_command(cwd: str | None = None) -> str:
    """The interpreter running this code, as a user types it from `cwd` (default: the current
    folder): `.venv/bin/python` from the project's folder, an absolute path from elsewhere. It has
    MLflow whether or not the virtual environment is activated (a bare `mlflow` needs that)."""
    exe = sys.executable or "python3"
    cwd = os.path.abspath(cwd or os.getcwd())
    if os.path.isabs(exe) and os.path.commonpath([cwd, os.path.abspath(exe)]) == cwd:
        rel = os.path.relpath(exe, cwd)
        return rel if os.sep in rel else os.path.join(".", rel)
    return exe


def ui_command(tracking_uri: str, port: int = UI_PORT, python: str | None = None) -> str:
    """The shell command that serves the UI on a store, quoted for a POSIX shell: `python -m mlflow ui`
    with the interpreter running the search (`python_command`), so it works without activating
    the virtual environment."""
    return shlex.join([python or python_command(), "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                       "--host", "127.0.0.1", "--port", str(port)])


def ui_lines(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list[str]:
    """What the end of a search prints: how to serve the UI, and the exact address to open."""
    url = view_url(tracking_uri, experiment_id, parent_run_id)
    if is_server(tracking_uri):
        return [f"MLflow tracking server: {tracking_uri}", f"open the trials in the MLflow UI: {url}"]
    return [f"open the MLflow UI: {ui_command(tracking_uri)}", f"then browse to: {url}"]


# ---- writing the views -----------------------------------------------------------------------------
def open_views(client, experiment_id: str, parent_run_id: str, sense: str = "max", picked: bool = False) -> None:
    """Store this search's views in its experiment (best score first in `sense`; with `picked`, the
    recommended trial first: `view_state`), and mark the experiment a model-training one."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    for view in ALL_VIEWS:
        client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + view.key(parent_run_id),
                                  json.dumps(view_state(view, parent_run_id, sense, picked)))
