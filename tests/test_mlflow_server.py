"""A search, its report and a deploy through a real MLflow tracking server (REST + proxied artifacts).

Starts `mlflow server` on a free local port with its SQLite store and artifact root in tmp, runs
the smoke search against it through the CLI, checks the runs and artifacts through the server,
rebuilds the frontier with search/report.py and deploys a frontier trial (model registry over
REST), then stops the server's whole process group.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"mlflow server did not answer on {url} within {timeout_s}s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (uvicorn workers, job runner), then SIGKILL."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


@pytest.mark.slow
def test_search_report_and_deploy_through_a_server(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from search.deploy import main as deploy_main
    from search.report import main as report_main

    for name, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        monkeypatch.setenv(name, value)  # what the CLIs would set, undone after the test
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts, log = tmp_path / "artifacts", tmp_path / "server.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        )
    try:
        _wait_until_up(url, server, log)
        out = tmp_path / "out"
        proc = run_script("run", "--config", "smoke", "--trials", "2", "--sampler", "prior", "--output-dir", out,
                          "--experiment", "served", "--tracking-uri", url, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"MLflow tracking server: {url}" in proc.stdout

        # Runs and artifacts, read back through the server.
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("served")
        assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied, not a local path
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if r.data.tags.get("role") == "search"]
        trials = [r for r in runs if "trial_id" in r.data.tags]
        assert len(parents) == 1 and len([r for r in trials if "confirms" not in r.data.tags]) == 2
        pid = parents[0].info.run_id
        assert {"config.json", "space.json", "served-trials.csv"} <= {a.path for a in client.list_artifacts(pid)}
        for run in trials:
            assert run.data.tags["mlflow.parentRunId"] == pid
            assert {"placement.json", "lora_config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
            if run.data.tags["status"] == "completed":
                adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
                assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter
        assert any(p.name == "adapter_model.safetensors" for p in artifacts.rglob("*"))  # stored by the server
        assert not (tmp_path / "mlruns").exists()

        # The report, from the server alone.
        assert report_main(["--tracking-uri", url, "--experiment", "served", "--output-dir", str(tmp_path / "r")]) == 0
        assert {"pareto.png", "pareto.html", "pareto.csv"} <= {a.path for a in client.list_artifacts(pid)}
        front = client.search_runs([exp.experiment_id], "tags.pareto = 'true'")
        assert front and all(r.data.tags["status"] == "completed" for r in front)

        # Deploy a frontier trial: export over REST, registry version with the alias "deploy".
        chosen = max(front, key=lambda r: r.data.metrics["score"]).info.run_id
        capsys.readouterr()
        assert deploy_main(["--run-id", chosen, "--tracking-uri", url, "--output", str(tmp_path / "deployed")]) == 0
        assert (tmp_path / "deployed" / "adapter_model.safetensors").exists()
        assert client.get_model_version_by_alias("served", "deploy").run_id == chosen
        assert client.get_run(chosen).data.tags["deployed"] == "true"
    finally:
        _stop(server)
    assert server.poll() is not None
