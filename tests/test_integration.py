"""The smoke search through the real CLI: Ray, Optuna, ASHA, MLflow (SQLite), PEFT, training."""

import csv
import json

import pytest

from tests.conftest import run_script
EPOCH_METRICS = {"accuracy", "balanced_accuracy", "epoch_score", "train_loss", "wall_s", "compute_hours"}


@pytest.mark.slow
def test_smoke_search_logs_one_run_per_trial(tmp_path):
    from mlflow.tracking import MlflowClient

    out_dir = tmp_path / "out"
    proc = run_script("run", "--config", "smoke", "--trials", "3", "--output-dir", out_dir, "--experiment", "smoke-test",
                      "--seed", "1", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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
                     "--output-dir", report_dir, timeout=300)
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
