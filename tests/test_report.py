"""search/report.py and analysis/mlflow_read.py on a store written by the real tracker.

The store is made the way a search makes it, without a cluster: the driver's parent run, then
`search.tuning.tracker.MlflowTracker`'s Tune hooks driven with fake trials and results (completed,
dominated, pruned, failed, still running), then the driver's own end-of-search CSV. The report
must rebuild that CSV from MLflow alone, move the pareto tags and write the plots.
"""

import csv
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METRIC, COST = "accuracy", "CPU-core-hours"


class FakeTrial:
    """What MlflowTracker reads from a Ray Tune trial."""

    def __init__(self, trial_id, placement, lr, error_file=None):
        self.trial_id = trial_id
        self.config = {"placement": placement.to_json(), "lr": lr, "budget_ratio": 0.5, "repairs": None,
                       "baseline": None, "kind_q": True, "layer_0": True}
        self.last_result = {}
        self.checkpoint = None
        self.error_file = error_file


def _space():
    from spaces.space import ModelSpace

    return ModelSpace(block_prefix="bert.encoder.layer", n_layers=2, kinds=("attention.self.query", "attention.self.value"),
                      aliases=("q", "v"), shapes=(((32, 32), (32, 32)), ((32, 32), (32, 32))),
                      fan_in_fan_out=(False, False), model_type="bert")


def _result(epoch, score, trainable, hours, final=False):
    r = {"epoch": epoch, "accuracy": score, "balanced_accuracy": score, "epoch_score": score, "train_loss": 0.5,
         "wall_s": 3600 * hours, "compute_hours": hours, "trainable_params": trainable, "adapter_params": trainable - 66}
    if final:
        r["score"] = score
    return r


def make_search(tmp_path, name="t", stale_tag_on=None):
    """A search in a fresh SQLite store: (tracking uri, the driver's trials CSV, rows by trial id,
    parent run id)."""
    from mlflow.tracking import MlflowClient

    from analysis.report import write_rows
    from search.phases.publish import mark_frontier
    from search.tuning.tracker import MlflowTracker, SearchRun, TrialContext
    from spaces.placement import Placement

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=(tmp_path / "artifacts").resolve().as_uri())
    pid = client.create_run(exp_id, run_name="search", tags={"role": "search"}).info.run_id
    client.log_param(pid, "metric_name", METRIC)
    client.log_param(pid, "cost_unit", COST)
    space = _space()
    tracker = MlflowTracker(client, SearchRun(uri, exp_id, pid), TrialContext(space, METRIC, COST, 5))
    p = lambda q, v: Placement(("q", "v"), (tuple(q), tuple(v)))  # noqa: E731
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback ...\nNonFiniteLoss: training loss became nan at step 3\n")
    trials = {
        "best": (FakeTrial("best", p((2, 0), (0, 0)), 1e-3), [(0.7, 1e-4), (0.9, 2e-4)], "complete"),
        "dominated": (FakeTrial("dominated", p((2, 2), (0, 0)), 2e-3), [(0.6, 2e-4), (0.8, 4e-4)], "complete"),
        "big": (FakeTrial("big", p((4, 4), (4, 4)), 3e-3), [(0.7, 1e-4), (0.95, 1e-4)], "complete"),
        "pruned": (FakeTrial("pruned", p((0, 0), (2, 0)), 4e-3), [(0.55, 1e-4)], "complete"),
        "failed": (FakeTrial("failed", p((0, 0), (0, 2)), 5e-3, str(error_file)), [], "error"),
        "running": (FakeTrial("running", p((0, 2), (0, 0)), 6e-3), [(0.65, 1e-4)], None),
    }
    for tid, (trial, epochs, end) in trials.items():
        placement = Placement.from_json(trial.config["placement"])
        trainable = placement.adapter_params(space) + 66
        tracker.on_trial_start(0, [], trial)
        for e, (score, hours) in enumerate(epochs, start=1):
            trial.last_result = _result(e, score, trainable, hours, final=(e == 2))
            tracker.on_trial_result(0, [], trial, trial.last_result)
        if end == "complete":
            tracker.on_trial_complete(0, [], trial)
        elif end == "error":
            tracker.on_trial_error(0, [], trial)
    if stale_tag_on:
        client.set_tag(tracker.run_id(stale_tag_on), "pareto", "true")
    # The driver's end of search: the frontier over the tracker's records, written as CSV.
    rows = mark_frontier(tracker.records())
    csv_path = tmp_path / f"{name}-trials.csv"
    write_rows(rows, csv_path)
    client.set_terminated(pid, "FINISHED")
    return uri, csv_path, {r.trial_id: r.as_dict() for r in rows}, pid


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    """The CLI's defaults for MLflow's HTTP retries, undone after each test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (a new SQLite store costs seconds of schema migrations); the
    dominated trial carries a stale pareto tag."""
    return make_search(tmp_path_factory.mktemp("store"), stale_tag_on="dominated")


@pytest.fixture
def search(store, tmp_path):
    """The module's store copied for one test (tags and artifacts it logs stay its own)."""
    uri, csv_path, rows, pid = store
    db = tmp_path / "mlflow.db"
    shutil.copy(uri[len("sqlite:///"):], db)
    return f"sqlite:///{db}", csv_path, rows, pid


def _read_csv(path):
    with open(path) as f:
        return {r["run_id"]: r for r in csv.DictReader(f)}


def test_rebuild_matches_the_search_csv(search, tmp_path, capsys):
    from search.report import main

    uri, csv_path, rows, pid = search
    out = tmp_path / "report"
    assert main(["--tracking-uri", uri, "--experiment", "t", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    theirs, ours = _read_csv(csv_path), _read_csv(out / "trials.csv")
    assert set(ours) == set(theirs) and len(ours) == 6
    for run_id, mine in ours.items():
        ref = theirs[run_id]
        same = ["trial_id", "status", "pareto", "key", "rank", "lr", "score", "adapter_params", "compute_hours", "epochs"]
        # MLflow has trainable_params only for completed trials (the tracker logs it at the end).
        if ref["status"] == "completed":
            same.append("trainable_params")
        assert {k: mine[k] for k in same} == {k: ref[k] for k in same}, run_id
    assert {r["status"] for r in ours.values()} == {"completed", "pruned", "failed", "running"}
    assert {r["trial_id"] for r in _read_csv(out / "pareto.csv").values()} == {"best", "big"}
    assert "Pareto-optimal" in printed and rows["best"]["run_id"] in printed


def test_read_search_rows(search):
    from analysis.mlflow_read import read_search

    uri, _, rows, pid = search
    found = read_search(uri)  # no experiment and no run id: the latest search
    assert found["parent"]["run_id"] == pid
    assert (found["parent"]["metric_name"], found["parent"]["cost_unit"]) == (METRIC, COST)
    got = {r.trial_id: r.as_dict() for r in found["rows"]}
    assert got["pruned"]["score"] is None and got["pruned"]["last_score"] == 0.55 and got["pruned"]["epochs"] == 1
    assert got["best"]["score"] == 0.9 and got["best"]["last_score"] == 0.9 and got["best"]["epochs"] == 2
    assert got["running"]["status"] == "running" and got["running"]["epochs"] == 1
    assert got["failed"]["status"] == "failed" and "NonFiniteLoss" in got["failed"]["error"]
    assert got["best"]["lr"] == 1e-3 and got["best"]["rank"] == 2 and got["best"]["baseline"] is None
    assert got["dominated"]["pareto"] is True  # the tag as stored, before any report
    assert read_search(uri, run_id=pid)["rows"] == found["rows"]


def test_pareto_tags_follow_the_frontier(search, tmp_path):
    from mlflow.tracking import MlflowClient

    from search.report import main

    uri, _, rows, _ = search
    client = MlflowClient(uri)
    assert client.get_run(rows["dominated"]["run_id"]).data.tags.get("pareto") == "true"  # stale
    assert main(["--tracking-uri", uri, "--output-dir", str(tmp_path / "r")]) == 0
    tagged = {tid for tid, r in rows.items() if client.get_run(r["run_id"]).data.tags.get("pareto") == "true"}
    assert tagged == {"best", "big"}
    found = client.search_runs([client.get_experiment_by_name("t").experiment_id], 'tags.pareto = "true"')
    assert {r.data.tags["trial_id"] for r in found} == {"best", "big"}  # the filter docs/mlflow.md gives


def test_plots_written_and_logged(search, tmp_path):
    from mlflow.tracking import MlflowClient

    from search.report import main

    uri, _, rows, pid = search
    out = tmp_path / "r"
    assert main(["--tracking-uri", uri, "--run-id", pid, "--output-dir", str(out)]) == 0
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "pareto.html").read_text()
    assert "<svg" in page and rows["best"]["run_id"] in page and rows["big"]["run_id"] in page
    logged = {a.path for a in MlflowClient(uri).list_artifacts(pid)}
    assert {"trials.csv", "pareto.csv", "pareto.png", "pareto.html"} <= logged


def test_clear_errors(search, tmp_path, monkeypatch, capsys):
    from search.report import main

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri, _, rows, pid = search
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cases = {
        ("--tracking-uri", uri, "--experiment", "nope"): "no MLflow experiment named 'nope'",
        ("--tracking-uri", uri, "--run-id", "0" * 32): "no MLflow run",
        ("--tracking-uri", uri, "--run-id", rows["best"]["run_id"]): f"its search is {pid}",
        ("--tracking-uri", f"sqlite:///{tmp_path / 'missing.db'}"): "no MLflow store at",
        ("--tracking-uri", f"http://127.0.0.1:{port}"): "cannot read the MLflow store",
    }
    for args, message in cases.items():
        capsys.readouterr()
        assert main([*args, "--output-dir", str(tmp_path / "x")]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, (args, err)
    assert not (tmp_path / "missing.db").exists()  # never creates an empty store
    assert not (tmp_path / "x").exists()


def test_cli_one_line_error_and_no_torch(search, tmp_path):
    uri, _, _, _ = search
    bad = subprocess.run([sys.executable, str(ROOT / "search" / "report.py"), "--tracking-uri", uri,
                          "--experiment", "nope"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: no MLflow experiment")
    assert "Traceback" not in bad.stderr
    code = ("import sys; from search.report import main; "
            f"rc = main(['--tracking-uri', {uri!r}, '--output-dir', {str(tmp_path / 'r')!r}]); "
            "assert rc == 0; assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'torch/ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "r" / "pareto.csv").read_text().startswith("trial_id,run_id,status,pareto")


def test_report_writes_descriptions_and_views(search, tmp_path, capsys):
    """The UI's side (search.tracking.notes, search.tracking.ui): descriptions on the experiment, the search run and
    every trial run, and runs views whose filters the store answers."""
    import json

    from mlflow.tracking import MlflowClient

    from search.report import main

    uri, _, rows, pid = search
    assert main(["--tracking-uri", uri, "--run-id", pid, "--output-dir", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    client = MlflowClient(uri)
    exp = client.get_experiment(client.get_run(pid).info.experiment_id)
    note = client.get_run(pid).data.tags["mlflow.note.content"]
    brief = exp.tags["mlflow.note.content"]  # above the runs table: short, and it links the full one
    assert brief.split("\n")[0] == note.split("\n")[0] and "### Priors" in note and "### Priors" not in brief
    assert f"[**the search's full summary**](#/experiments/{exp.experiment_id}/runs/{pid}?" in brief
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # test_report's trials: "big" (0.95) is the best, then "best" (0.9); both on the frontier.
    assert note.startswith("**Recommended: `r4 q[0-1] v[0-1]`**") and "search run status: FINISHED" in note
    assert "/artifacts/pareto.html?workflowType=machine_learning" in note  # the report's own plots
    view = json.loads(exp.tags[f"mlflow.sharedViewState.frontier-{pid[:8]}"])
    front = client.search_runs([exp.experiment_id], view["searchFilter"])  # the view's filter, run by the server
    assert {r.data.tags["trial_id"] for r in front} == {"best", "big"}
    trials = json.loads(exp.tags[f"mlflow.sharedViewState.trials-{pid[:8]}"])
    assert len(client.search_runs([exp.experiment_id], trials["searchFilter"])) == 6
    for tid, row in rows.items():
        trial_note = client.get_run(row["run_id"]).data.tags["mlflow.note.content"]
        assert f"(trial {tid}" in trial_note
    assert f"viewStateShareKey=trials-{pid[:8]}" in printed and "mlflow ui --backend-store-uri" in printed
