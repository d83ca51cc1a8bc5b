"""A search, its report and a deploy through a real MLflow tracking server (REST + proxied artifacts).

The search is tests/conftest.py's `served_search`, shared with tests/test_mlflow_ui.py: `mlflow
server` on a free local port with its SQLite store and artifact root in tmp, the smoke search run
against it through the CLI, its recommended trial (on the frontier) deployed with search/deploy.py
(model registry over REST); the server's whole process group is stopped at the end of the session.
This test checks the runs and artifacts through the server, the deploy, and then rebuilds the
frontier with search/report.py (after the UI test, which sees the search as it ended).
"""

import pytest


@pytest.mark.slow
def test_search_report_and_deploy_through_a_server(served_search, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from search.report import main as report_main

    for name, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        monkeypatch.setenv(name, value)  # what the CLIs would set, undone after the test
    s = served_search
    url, proc = s.url, s.proc
    assert f"MLflow tracking server: {url}" in proc.stdout

    # Runs and artifacts, read back through the server.
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(s.experiment)
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied, not a local path
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    trials = [r for r in runs if "trial_id" in r.data.tags]
    assert len(parents) == 1 and len([r for r in trials if "confirms" not in r.data.tags]) == 2
    pid = parents[0].info.run_id
    assert {"config.json", "space.json", f"{s.experiment}-trials.csv"} <= {a.path for a in client.list_artifacts(pid)}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == pid
        assert {"placement.json", "lora_config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        if run.data.tags["status"] == "completed":
            adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
            assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter
    assert any(p.name == "adapter_model.safetensors" for p in s.artifacts.rglob("*"))  # stored by the server
    assert not (s.tmp / "mlruns").exists()

    # The deployed frontier trial: exported over REST, a registry version with the alias "deploy".
    chosen = s.best.run_id
    assert chosen in {r.info.run_id for r in s.front}
    assert (s.deployed / "adapter_model.safetensors").exists()
    assert client.get_model_version_by_alias(s.model, "deploy").run_id == chosen
    assert client.get_run(chosen).data.tags["deployed"] == "true"

    # The report, from the server alone.
    capsys.readouterr()
    assert report_main(["--tracking-uri", url, "--experiment", s.experiment, "--output-dir", str(tmp_path / "r")]) == 0
    assert {"pareto.png", "pareto.html", "pareto.csv"} <= {a.path for a in client.list_artifacts(pid)}
    front = client.search_runs([exp.experiment_id], "tags.pareto = 'true'")
    assert front and all(r.data.tags["status"] == "completed" for r in front)
    assert chosen in {r.info.run_id for r in front}  # the report's frontier still holds the deployed trial
