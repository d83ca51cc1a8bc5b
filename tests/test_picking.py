"""The MLflow runs table as the place to pick a placement (issue 28): what the end of a search
(`search.phases.publish`, run here through `search/report.py`) writes on the trial runs of a
hand-made store: the recommended trial marked and listed first, the seed statistics of the
confirmed placements, the run names the recommendation cites, the two frontiers by name, intervals
inside the metric's range, links that keep the model-training mode, and a UI command that runs.
What a browser shows of it is `tests/test_mlflow_ui.py`."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

METRIC, COST = "accuracy", "CPU-core-hours"
# trial id: (placement key, single-run score, trainable params, compute hours, status)
TRIALS = {
    "big": ("r8 q[0-5] v[0-5]", 0.900, 5000, 0.010, "completed"),
    "small": ("r2 q[0]", 0.895, 500, 0.004, "completed"),
    "cheap": ("r1 v[5]", 0.600, 100, 0.001, "completed"),
    "dominated": ("r8 k[0-5]", 0.700, 6000, 0.020, "completed"),
    "pruned": ("r4 o[0-5]", None, 2000, 0.002, "pruned"),
}
# Confirmation runs, named by Ray's trial ids as the tracker names them: (confirms, seed, score).
# small is as good as big within the margin (0.01) on every seed and ten times smaller: recommended.
CONFIRMATIONS = [("big", 1, 0.910), ("big", 2, 0.905), ("small", 1, 0.905), ("small", 2, 0.900)]


def _run(client, eid, pid, tid, key, score, params, hours, status="completed", seed=0, confirms=None, name=None):
    tags = {"mlflow.parentRunId": pid, "trial_id": tid, "status": status, "placement_key": key}
    if confirms:
        tags["confirms"] = confirms
    run = client.create_run(eid, run_name=name or f"{tid} {key}", tags=tags).info.run_id
    for k, v in {"placement_key": key, "lr": "0.001", "rank": key[1], "seed": str(seed)}.items():
        client.log_param(run, k, v)
    metrics = {"trainable_params": params, "compute_hours": hours, "epoch": 2, "epoch_score": score or 0.5}
    if score is not None:
        metrics["score"] = score
    for k, v in metrics.items():
        client.log_metric(run, k, v)
    client.set_terminated(run, "FINISHED")
    return run


def _confirm(client, eid, pid, n, confirms, seed, score):
    key, _, params, hours, _ = TRIALS[confirms]
    return _run(client, eid, pid, f"f6c41_{n:05d}", key, score, params, hours, seed=seed, confirms=confirms,
                name=f"f6c41_{n:05d} {key} seed {seed}")


@pytest.fixture
def store(tmp_path, new_mlflow_store):
    """(client, uri, experiment id, parent run id, run ids by trial id)."""
    from mlflow.tracking import MlflowClient

    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    eid = client.create_experiment("picks", artifact_location=(tmp_path / "artifacts").as_uri())
    pid = client.create_run(eid, run_name="search", tags={"role": "search"}).info.run_id
    client.log_param(pid, "metric_name", METRIC)
    client.log_param(pid, "cost_unit", COST)
    runs = {tid: _run(client, eid, pid, tid, key, score, params, hours, status)
            for tid, (key, score, params, hours, status) in TRIALS.items()}
    for n, (confirms, seed, score) in enumerate(CONFIRMATIONS):
        runs[f"{confirms} seed {seed}"] = _confirm(client, eid, pid, n, confirms, seed, score)
    client.set_terminated(pid, "FINISHED")
    return client, uri, eid, pid, runs


def _report(uri, pid, out, capsys) -> str:
    from search.report import main

    assert main(["--tracking-uri", uri, "--run-id", pid, "--output-dir", str(out)]) == 0
    return capsys.readouterr().out


def _tagged(client, eid, tag) -> set[str]:
    return {r.info.run_id for r in client.search_runs([eid]) if r.data.tags.get(tag) == "true"}


# ---- 1. the recommended trial: marked, first in the table; seed statistics on the confirmed ---------
def test_the_recommended_trial_is_marked_and_listed_first(store, tmp_path, capsys):
    client, uri, eid, pid, runs = store
    _report(uri, pid, tmp_path / "r", capsys)
    assert _tagged(client, eid, "recommended") == {runs["small"]}  # as good as big, ten times smaller

    view = json.loads(client.get_experiment(eid).tags[f"mlflow.sharedViewState.trials-{pid[:8]}"])
    assert "tags.`recommended`" in view["selectedColumns"] and "tags.`recommended`" in view["columnOrder"]
    # the table as the UI asks the store for it: the view's filter and sort
    order = "ASC" if view["orderByAsc"] else "DESC"
    table = client.search_runs([eid], view["searchFilter"], order_by=[f"{view['orderByKey']} {order}"])
    assert [r.info.run_id for r in table][:4] == [runs[t] for t in ("small", "big", "dominated", "cheap")]  # best first
    assert len(table) == len(TRIALS)  # every searched trial, no confirmation run

    small, big = client.get_run(runs["small"]).data.metrics, client.get_run(runs["big"]).data.metrics
    assert small["n_seeds"] == 3 and small["score_mean"] == pytest.approx((0.895 + 0.905 + 0.900) / 3)
    assert small["score_low"] < small["score_mean"] < small["score_high"] and big["n_seeds"] == 3
    assert "score_mean" not in client.get_run(runs["cheap"]).data.metrics  # never confirmed

    # Re-publishing moves the mark: a bad fourth seed for small leaves big the recommendation.
    _confirm(client, eid, pid, 8, "big", 3, 0.905)
    _confirm(client, eid, pid, 9, "small", 3, 0.80)
    _report(uri, pid, tmp_path / "r2", capsys)
    assert _tagged(client, eid, "recommended") == {runs["big"]}
    assert client.get_run(runs["small"]).data.metrics["n_seeds"] == 4


# ---- 2. the run the recommendation cites is a row of the table, by its name ---------------------------
def test_the_recommendation_cites_a_run_name_the_table_shows(store, tmp_path, capsys):
    client, uri, eid, pid, runs = store
    printed = _report(uri, pid, tmp_path / "r", capsys)
    name = client.get_run(runs["small"]).info.run_name
    assert name == "small r2 q[0]"
    assert f"in the MLflow runs table: {name} (tag recommended=true, listed first)" in printed
    for note in (client.get_run(pid).data.tags["mlflow.note.content"],
                 client.get_experiment(eid).tags["mlflow.note.content"]):
        assert note.split("\n")[0].endswith(f"(run `{name}`)**")  # the headline cites the name, not the id
        assert f"In the runs table: **`{name}`**, tagged `recommended` = `true` and listed first" in note
    # Confirmation runs are named after the trial they confirm and their seed, not Ray's trial ids.
    for tid, seed in (("big", 1), ("big", 2), ("small", 1), ("small", 2)):
        origin = client.get_run(runs[tid]).info.run_name
        assert client.get_run(runs[f"{tid} seed {seed}"]).info.run_name == f"{origin} seed {seed}"
    names = [r.info.run_name for r in client.search_runs([eid])]
    assert len(names) == len(set(names))  # one name per run


# ---- 3. two frontiers, each tagged by name; the interactive plot counts right -----------------------------
def test_each_frontier_is_tagged_by_name_and_the_plot_counts_right(store, tmp_path, capsys):
    client, uri, eid, pid, runs = store
    _report(uri, pid, tmp_path / "r", capsys)
    # single runs: dominated loses to big on all three objectives; cheap is the cheapest
    assert _tagged(client, eid, "pareto_single_run") == {runs["big"], runs["small"], runs["cheap"]}
    assert _tagged(client, eid, "pareto_confirmed") == {runs["big"], runs["small"]}
    assert _tagged(client, eid, "pareto") == _tagged(client, eid, "pareto_confirmed")  # what it is picked from
    note = client.get_run(pid).data.tags["mlflow.note.content"]
    assert "### Single-run Pareto frontier (3 of 5 trials; one run each)" in note
    assert "(tag `pareto_confirmed` = true)" in note
    cheap = client.get_run(runs["cheap"]).data.tags["mlflow.note.content"]
    assert "**On the single-run Pareto frontier.**" in cheap and "seed means" not in cheap
    page = (tmp_path / "r" / "pareto.html").read_text()
    assert "2 placements confirmed over seeds" in page and "the search&#x27;s 5 trials (4 completed" in page
    assert "<p>2 trials," not in page


# ---- 4. intervals inside the metric's range; two seeds said to be too few ------------------------------
def test_intervals_stay_in_the_metrics_range(tmp_path, new_mlflow_store, capsys):
    from mlflow.tracking import MlflowClient

    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    eid = client.create_experiment("edge", artifact_location=(tmp_path / "artifacts").as_uri())
    pid = client.create_run(eid, run_name="search", tags={"role": "search"}).info.run_id
    client.log_param(pid, "metric_name", METRIC)
    edge = _run(client, eid, pid, "edge", "r2 q[0]", 0.99, 500, 0.004)
    _run(client, eid, pid, "c0", "r2 q[0]", 0.95, 500, 0.004, seed=1, confirms="edge")  # 2 seeds: t = 12.7
    printed = _report(uri, pid, tmp_path / "r", capsys)
    metrics = client.get_run(edge).data.metrics
    assert metrics["score_high"] == 1.0 and metrics["score_low"] < 0.97 and metrics["n_seeds"] == 2
    rec = json.loads((tmp_path / "r" / "recommendation.json").read_text())
    assert rec["ci95"][1] == 1.0
    line = "95% CI 0.716 to 1.000, clipped to the metric's range; 2 seeds: too wide to mean much"
    assert line in printed and line in client.get_run(pid).data.tags["mlflow.note.content"]
    assert "too wide to mean much" in client.get_run(edge).data.tags["mlflow.note.content"]
    assert "*95% intervals are clipped to the metric's range; an interval from 2 seeds is too wide to mean much.*" in (
        client.get_run(pid).data.tags["mlflow.note.content"])


# ---- 5. every link keeps the model-training mode ------------------------------------------------------------
UI_LINK = re.compile(r"\]\((#/[^)\s]+)\)|(https?://\S+/#/\S+)")


def test_every_link_keeps_the_model_training_mode(store, tmp_path, capsys):
    client, uri, eid, pid, runs = store
    printed = _report(uri, pid, tmp_path / "r", capsys)
    texts = [printed, client.get_experiment(eid).tags["mlflow.note.content"]]
    texts += [r.data.tags.get("mlflow.note.content", "") for r in client.search_runs([eid])]
    links = [a or b for text in texts for a, b in UI_LINK.findall(text)]
    assert any("#/compare-runs?" in x for x in links) and any("compareRunsMode=CHART" in x for x in links)
    assert any(x.startswith("http://127.0.0.1:5000/#/experiments/") for x in links)  # the printed address
    missing = [x for x in links if "workflowType=machine_learning" not in x]
    assert not missing, f"links that open MLflow's GenAI pages: {missing}"


# ---- 8. the printed `mlflow ui` command works without an activated virtual environment -----------------------
def test_the_printed_ui_command_runs_without_an_activated_venv():
    from search.tracking.ui import ui_command

    cmd = shlex.split(ui_command("sqlite:///outputs/mlflow.db"))
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    if sys.executable.startswith(str(ROOT) + os.sep):  # the project's venv: a path relative to the project
        assert not os.path.isabs(cmd[0])
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"  # no venv on the PATH: a bare `mlflow` would not be found
    proc = subprocess.run([*cmd[:4], "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--backend-store-uri" in proc.stdout, proc.stderr[-2000:]
