"""Shared test setup: the hub is off (any download fails loudly), torch uses one thread (tiny
models on a shared 2-core machine run far faster without OpenMP contention), tiny model builders,
the one way tests run a script (`run_script`, `start_script`), a new MLflow store in a blink
(`new_mlflow_store`), and the searches several slow tests share (`smoke_search`, `served_search`).

Two tiers: `pytest` runs the fast one (pyproject.toml deselects `slow`), `pytest -m slow` the
tests that start Ray, an MLflow server, a browser, a search through the CLI or a real model;
`bash scripts/test.sh` (CI) runs both."""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_models():
    """(name, model factory) for a tiny BERT, GPT-2 and Llama sequence classifier."""
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                              GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification)

    return {
        "bert": lambda: BertForSequenceClassification(BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=24, num_labels=3)),
        "gpt2": lambda: GPT2ForSequenceClassification(GPT2Config(
            vocab_size=64, n_embd=16, n_layer=3, n_head=2, num_labels=3, pad_token_id=0,
            bos_token_id=0, eos_token_id=0)),
        "llama": lambda: LlamaForSequenceClassification(LlamaConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=24, num_labels=3, pad_token_id=0)),
    }


# ---- scripts, run as a user runs them ------------------------------------------------------------
def script_argv(name: str, *args) -> list[str]:
    """`python search/<name>.py ARGS` with this interpreter (name: "run", "report", "deploy", ...)."""
    return [sys.executable, str(ROOT / "search" / f"{name}.py"), *map(str, args)]


def _script_env(env: dict | None) -> dict:
    # The hub stays off (set above); a local Ray head needs no token, whatever the caller's shell says.
    return {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}


def run_script(name: str, *args, cwd: Path = ROOT, timeout: float = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run search/<name>.py to its end in a new process, stdout and stderr captured as text.
    cwd: where the script runs (MLflow's ./mlruns and the like land there); env: added to ours."""
    return subprocess.run(script_argv(name, *args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=_script_env(env))


def start_script(name: str, *args, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start search/<name>.py without waiting, stderr merged into stdout (read it line by line), in
    a session of its own, so that `os.killpg(proc.pid, ...)` also reaches its Ray processes."""
    return subprocess.Popen(script_argv(name, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd, start_new_session=True, env=_script_env(env))


# ---- MLflow stores -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def new_mlflow_store(tmp_path_factory):
    """new_mlflow_store(path) -> "sqlite:///<path>": a new, empty MLflow store in the file path.
    MLflow builds a store's tables through its whole chain of migrations, 2 s (7 s on a busy
    machine) each time; here they are built once a session and the file is copied (0.2 s)."""
    template: list[Path] = []

    def make(path: Path) -> str:
        if not template:
            from mlflow.tracking import MlflowClient

            folder = tmp_path_factory.mktemp("mlflow-template")
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(folder)  # the Default experiment's artifact folder is resolved against the cwd
                MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
            template.append(folder / "mlflow.db")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template[0], path)
        return f"sqlite:///{path}"

    return make


def copy_sqlite(source: Path, dest: Path) -> str:
    """A consistent copy of the SQLite database `source` at `dest` (SQLite's backup, not a file
    copy), for a test that writes to a store other tests read; returns "sqlite:///<dest>"."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return f"sqlite:///{dest}"



# ---- a command refused before Ray ----------------------------------------------------------------
class ReachedRay(Exception):
    """Raised by a stand-in for `search.phases.prepare.init_ray`: a case a test expects refused
    before Ray starts fails loudly instead of starting it."""


@pytest.fixture
def search_main(tmp_path, monkeypatch, capsys):
    """Shared by the refusal tests: search_main(*args) -> (exit code, stdout, stderr) of `search/run.py ARGS`, Ray's start a sentinel."""
    from search.phases import prepare as prepared
    from search.run import main

    # the class the tests catch: pytest imports this file as `conftest`, the tests as `tests.conftest`
    from tests.conftest import ReachedRay as sentinel

    def reached_ray(*args, **kwargs):
        raise sentinel

    monkeypatch.setattr(prepared, "init_ray", reached_ray)
    monkeypatch.chdir(tmp_path)

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def one_error_line(err: str) -> str:
    """The single line a refused command prints on stderr (`error: ...`), asserting that it is one
    line and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]

# ---- searches that several slow tests share ------------------------------------------------------
# A search through the CLI costs a minute or more on 2 cores (Ray, the model on a worker, the
# learning-rate probe, a Tune run per phase). Slow tests that only read what the same search left
# share one, made once a session on first use; a test that would change what the others read
# works on a copy (`copy_sqlite`) or runs after them (`pytest_collection_modifyitems`).
SMOKE_EXPERIMENT = "smoke-test"


@pytest.fixture(scope="session")
def smoke_search(tmp_path_factory):
    """The smoke search through the CLI as a user runs it (SQLite store in its output dir, the
    default prior sampler, the learning-rate probe), 3 trials, seed 1, and the frontier's best
    placement and best baseline confirmed with 2 more seeds each. Read by tests/test_integration.py
    (the runs, artifacts, ending and report), test_confirmation.py (probe and confirmation),
    test_deploy.py (deploy and report) and test_warm_start.py (the earlier search, on a copy of the
    store). Fields: proc (its CompletedProcess), out (the output dir), tmp (its cwd), experiment, uri."""
    tmp = tmp_path_factory.mktemp("smoke-search")
    out = tmp / "out"
    proc = run_script("run", "--config", "smoke", "--trials", "3", "--seed", "1", "--output-dir", out,
                      "--experiment", SMOKE_EXPERIMENT, "--set", "search.confirm_seeds=2",
                      "--set", "search.confirm_baselines=1", cwd=tmp, timeout=600)  # cwd: MLflow's ./mlruns lands in tmp
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return SimpleNamespace(proc=proc, out=out, tmp=tmp, experiment=SMOKE_EXPERIMENT,
                           uri=f"sqlite:///{out / 'mlflow.db'}")


# ---- an MLflow tracking server -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port, its SQLite store (server.db) and proxied artifact
    root (artifacts/) in `folder`, its log in folder/server.log, in a session of its own; returns
    (the process, its URL) once it answers."""
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", folder / "server.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
            env={**os.environ, **(env or {})})
    try:
        wait_until_up(url, server, log)
    except BaseException:
        stop_server(server)
        raise
    return server, url


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
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
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer on {url} within {timeout_s}s:\n{log.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (uvicorn workers, job runner), then SIGKILL."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


# No job runner on the test servers: it serves GenAI features only, and its workers take 15 s to stop.
SERVED_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
SERVED_EXPERIMENT = "served"


@pytest.fixture(scope="session")
def served_search(tmp_path_factory):
    """The 2-trial smoke search tracked by a real `mlflow server` (REST, proxied artifacts), run
    through the CLI from an output dir whose name has a space, its recommended trial deployed with
    search/deploy.py (export over REST, registry version with the alias "deploy"). Shared by
    tests/test_mlflow_ui.py (what a person sees) and tests/test_mlflow_server.py (the store through
    the server, then search/report.py, which rewrites the search's notes: that test runs after the
    UI test, `pytest_collection_modifyitems`). Fields: url, proc, tmp, artifacts (the server's
    artifact root), experiment_id, parent, trials (the searched ones, not the confirmation runs),
    front, best (the recommended trial's record), deployed (its export folder), model (the
    registered model's name)."""
    from mlflow.tracking import MlflowClient

    from analysis.mlflow_read import trial_record
    from search.deploy import main as deploy_main

    tmp = tmp_path_factory.mktemp("served")
    server, url = start_mlflow_server(tmp, SERVED_ENV)
    try:
        proc = run_script("run", "--config", "smoke", "--trials", "2", "--sampler", "prior", "--output-dir",
                          tmp / "out dir", "--experiment", SERVED_EXPERIMENT, "--tracking-uri", url, cwd=tmp,
                          timeout=300, env=SERVED_ENV)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(SERVED_EXPERIMENT)
        runs = client.search_runs([exp.experiment_id])
        parent = next(r for r in runs if r.data.tags.get("role") == "search")
        # the searched trials; the confirmation runs (tagged `confirms`) retrain the frontier
        trials = [r for r in runs if "trial_id" in r.data.tags and "confirms" not in r.data.tags]
        front = [r for r in trials if r.data.tags.get("pareto") == "true"]
        assert len(trials) == 2 and front
        # The search ends with its confirmed recommendation: "recommendation: deploy ... (run <id>)".
        line = next(x for x in proc.stdout.splitlines() if x.startswith("recommendation: deploy "))
        best = next(t for t in map(trial_record, trials) if line.endswith(f"(run {t.run_id})"))
        deployed = tmp / "deployed"
        with pytest.MonkeyPatch.context() as mp:  # the CLI's MLflow defaults, undone afterwards
            for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                         "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
                mp.delenv(name, raising=False)
            mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            assert deploy_main(["--run-id", best.run_id, "--tracking-uri", url, "--output", str(deployed)]) == 0
        yield SimpleNamespace(url=url, proc=proc, tmp=tmp, artifacts=tmp / "artifacts", experiment=SERVED_EXPERIMENT,
                              experiment_id=exp.experiment_id, parent=parent, trials=trials, front=front, best=best,
                              deployed=deployed, model=SERVED_EXPERIMENT)
    finally:
        stop_server(server)
    assert server.poll() is not None


def pytest_collection_modifyitems(items):
    """tests/test_mlflow_ui.py before tests/test_mlflow_server.py: both read `served_search`, and
    the server test then runs search/report.py on it, which logs its own plots and rewrites the
    notes that the UI test checks as the search left them."""
    ui = [i for i in items if i.path.name == "test_mlflow_ui.py"]
    server = [i for i in items if i.path.name == "test_mlflow_server.py"]
    if ui and server and items.index(server[0]) < items.index(ui[0]):
        rest = [i for i in items if i not in ui]
        at = rest.index(server[0])
        items[:] = rest[:at] + ui + rest[at:]


# ---- a loopback Ray cluster ----------------------------------------------------------------------
def stop_cluster(cluster, grace_s: float = 3.0) -> None:
    """Stop a `benchmarks.cluster_scale.LoopbackCluster` as its `stop` does (worker nodes first,
    then the head; each node's process group by id, then SIGKILL to what it had started), with a
    grace of `grace_s` instead of 20 s: the head's gcs_server outlives SIGTERM by more than 20 s,
    so `stop` took 33 s, waiting on a cluster the test is done with."""
    from benchmarks.cluster_scale import _descendants, _stop_group

    for proc in reversed(cluster.procs):
        _stop_group(proc, _descendants(proc.pid), grace_s=grace_s)
    cluster.procs = []
    cluster.stop()  # no process left: removes its temp dir
