"""The smoke search through the real CLI: Ray, Optuna, ASHA, MLflow (SQLite), PEFT, training.

The search is tests/conftest.py's `smoke_search` (3 trials, seed 1), which other slow tests read too."""

import csv
import json

import pytest

from tests.conftest import run_script

EPOCH_METRICS = {"accuracy", "balanced_accuracy", "epoch_score", "train_loss", "wall_s", "compute_hours"}


@pytest.mark.slow
def test_smoke_search_logs_one_run_per_trial(smoke_search, tmp_path):
    from mlflow.tracking import MlflowClient

    out_dir, proc = smoke_search.out, smoke_search.proc
    assert smoke_search.experiment == "smoke-test"  # the file names below start with it
    assert "Pareto-optimal" in proc.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{(out_dir / 'mlflow.db').resolve()}" in proc.stdout

    client = MlflowClient(f"sqlite:///{out_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    runs_of_trials = [r for r in runs if "trial_id" in r.data.tags]
    trials = [r for r in runs_of_trials if "confirms" not in r.data.tags]  # the search's own trials
    assert len(parents) == 1 and len(trials) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "space.json", "scores.json", "smoke-test-scores.png", "smoke-test-trials.csv",
            "smoke-test-pareto.csv", "smoke-test-prior_quality.json", "smoke-test-prior_quality.png"} <= artifacts
    assert "which prior was right" in proc.stdout
    scores = json.loads(open(client.download_artifacts(parent.info.run_id, "scores.json", str(tmp_path))).read())
    assert scores["kinds"] == ["q", "k", "v", "o", "up", "down"] and len(scores["cka"]["importance"]) == 2

    with open(out_dir / "smoke-test-trials.csv") as f:
        rows = {r["run_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {r.info.run_id for r in runs_of_trials}  # the search's trials and the confirmations
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status in ("FINISHED", "FAILED")  # never left RUNNING
        status = run.data.tags["status"]
        assert status in ("completed", "pruned") and rows[run.info.run_id]["status"] == status
        assert {"placement_key", "rank", "lr", "adapter_params", "repairs"} <= set(run.data.params)
        assert EPOCH_METRICS <= set(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "epoch_score")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"placement.json", "lora_config.json"} <= names
        placement = json.loads(open(client.download_artifacts(run.info.run_id, "placement.json", str(tmp_path))).read())
        assert placement["key"] == run.data.params["placement_key"]
        if status == "completed":
            assert {"score", "trainable_params", "adapter_params"} <= set(run.data.metrics)
            assert len(history) == 3  # the smoke schedule: 3 epochs
            adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
            assert "adapter/adapter_config.json" in adapter
            assert run.data.metrics["trainable_params"] > run.data.metrics["adapter_params"]  # + head
    assert any(r.data.tags.get("pareto") == "true" for r in trials)

    # One ending: search/report.py, on the store alone, prints what the driver printed at its end
    # (the table, the counts, the confirmed table, which prior was right, the recommendation and the
    # UI lines), apart from the folder the files go to and the driver's own timing line.
    report_dir = tmp_path / "report"
    rep = run_script("report", "--tracking-uri", f"sqlite:///{out_dir / 'mlflow.db'}", "--experiment", "smoke-test",
                     "--output-dir", report_dir, cwd=smoke_search.tmp, timeout=300)  # the search's cwd: its UI command
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    driver_end = _ending(proc.stdout, str(out_dir / "smoke-test-"))
    report_end = _ending(rep.stdout, f"{report_dir}/")
    assert "recommendation: deploy" in driver_end and "which prior was right" in driver_end
    assert report_end == driver_end


def _ending(stdout: str, files_prefix: str) -> str:
    """The block a search's ending prints: from the trial table's header to the UI's address."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["placement", "lr"])
    end = next(i for i, line in enumerate(lines) if line.startswith(("then browse to:", "open the trials in")))
    return "\n".join(lines[start:end + 1]).replace(files_prefix, "<files>/")


@pytest.mark.slow
def test_the_search_prints_its_own_lines_and_logs_the_libraries_to_a_file(smoke_search):
    """Ray's token warning, MLflow's table creation and artifact progress bars are not the tool's
    lines: they go to <output-dir>/library.log, whose path the search prints at its end."""
    proc, log = smoke_search.proc, smoke_search.out / "library.log"
    for chatter in ("Token authentication", "MLflow database tables", "Downloading artifacts"):
        assert chatter not in proc.stdout + proc.stderr, chatter
    assert "MLflow database tables" in log.read_text()  # the new store was created and said so
    assert f"in {log.resolve()} (--verbose prints them here)" in proc.stdout


@pytest.mark.slow
def test_the_study_holds_the_searchs_result_for_optuna_dashboard(smoke_search):
    """The search's Optuna study names its objectives and holds what the end decided: the
    recommended trial (as printed) with its Optuna trial number, and the search's MLflow run."""
    import optuna

    study = optuna.load_study(study_name=smoke_search.experiment, storage=f"sqlite:///{smoke_search.out / 'optuna.db'}")
    assert study.metric_names == ["accuracy", "trainable_params"]
    result = study.user_attrs["result"]
    line = next(x for x in smoke_search.proc.stdout.splitlines() if x.startswith("recommendation: deploy "))
    rec = result["recommended"]
    assert line.endswith(f"(run {rec['run_id']})") and rec["confirmed"] is True
    numbers = {t.number: t.user_attrs.get("placement_key") for t in study.trials}
    assert numbers[rec["trial_number"]] == rec["placement_key"]
    assert {c["vs_best"] for c in result["confirmed"]} <= {"best", "better", "as good", "worse", "undecided"}
    assert len(result["confirmed"]) >= 2 and result["mlflow_run_id"]
