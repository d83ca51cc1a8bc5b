"""Tracking stores that fail a search (hardening issue, items 8, 11 and 20): a server that refuses
the credentials, two searches creating one new SQLite store at once, a store that is not a SQLite
database, and a store that fails once the search has claimed its name. Each ends in one line on
stderr naming the value and the fix, exit code 2, and nothing left behind, so the same command works
once the cause is fixed.

`search/run.py`'s `main` runs in this process with Ray's start replaced by a sentinel (`ReachedRay`)
where the failure must come before Ray; one case runs the real CLI."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import ReachedRay, one_error_line, run_script


@contextlib.contextmanager
def _serving(answer):
    """A loopback HTTP server answering every GET and POST with answer(handler) -> (status, JSON
    body, extra headers); yields its URL."""
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            code, body, headers = answer(self)
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


# ---- 8. a tracking server that refuses the credentials -------------------------------------------
@pytest.fixture
def refusing_server():
    """A loopback HTTP server that answers 401 to everything; yields (its URL, the Authorization
    headers it was sent)."""
    seen: list[str | None] = []

    def refuse(handler) -> tuple[int, bytes, dict]:
        seen.append(handler.headers.get("Authorization"))
        return (401, b'{"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}',
                {"WWW-Authenticate": 'Basic realm="mlflow"'})

    with _serving(refuse) as url:
        yield url, seen


@pytest.fixture
def no_mlflow_credentials(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    from mlflow.utils import credentials

    monkeypatch.setattr(credentials, "_get_credentials_path", lambda: "/nonexistent/.mlflow/credentials")


def test_a_server_that_refuses_the_credentials_is_refused_before_ray(tmp_path, search_main, refusing_server,
                                                                     no_mlflow_credentials, monkeypatch):
    url, seen = refusing_server
    out = tmp_path / "out"
    code, _, err = search_main("--config", "smoke", "--output-dir", out, "--tracking-uri",
                               url.replace("http://", "http://alice:s3cret@"))
    line = one_error_line(err)
    assert code == 2 and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert f"tracking.uri {url} refused the credentials MLflow sent it (HTTP 401; sent: those of user 'alice')" in line
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line and "s3cret" not in line
    assert f"Basic {base64.b64encode(b'alice:s3cret').decode()}" in seen  # signed as MLflow signs its calls

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # where the URI's user and password went
        monkeypatch.delenv(name)
    code, _, err = search_main("--config", "smoke", "--output-dir", out, "--tracking-uri", url)
    line = one_error_line(err)
    assert code == 2 and not out.exists()
    assert "(HTTP 401; sent: none (no MLFLOW_TRACKING_USERNAME" in line


def test_a_resumed_search_on_a_server_that_refuses_the_credentials(tmp_path, search_main, refusing_server,
                                                                   no_mlflow_credentials, monkeypatch):
    from trainables.config import load_config
    from trainables.simulated import simulated_preparation

    url, _ = refusing_server
    cfg = load_config(["simulated"])
    d = cfg.to_dict()
    d["tracking"]["uri"] = url
    out = tmp_path / "out"
    out.mkdir()
    state = out / "s.search.json"
    state.write_text(json.dumps({"config": d, "prepare": simulated_preparation(cfg).to_dict(), "calibration": None}))
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "expired")
    code, _, err = search_main("--resume", "--output-dir", out, "--experiment", "s")
    line = one_error_line(err)
    assert code == 2 and [p.name for p in out.iterdir()] == ["s.search.json"]
    assert f"tracking.uri {url} refused the credentials MLflow sent it (HTTP 401; sent: the token in " \
           "MLFLOW_TRACKING_TOKEN)" in line


def test_the_cli_refuses_a_server_that_refuses_the_credentials(tmp_path, refusing_server):
    url, _ = refusing_server
    proc = run_script("run", "--config", "smoke", "--output-dir", tmp_path / "out", "--tracking-uri", url,
                      cwd=tmp_path, timeout=120,
                      env={"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "wrong"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_error_line(proc.stderr)
    assert f"tracking.uri {url} refused the credentials MLflow sent it (HTTP 401; sent: those of user 'alice')" in line
    assert list(tmp_path.iterdir()) == []


# ---- 20. a tracking store that is not one, refused before the search claims its name -------------
def test_a_tracking_store_that_is_not_a_sqlite_database(tmp_path, search_main):
    inputs = tmp_path / "in"
    inputs.mkdir()
    junk = inputs / "mlflow.db"
    junk.write_bytes(b"these are not the bytes of a SQLite database\n" * 100)
    code, _, err = search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--tracking-uri",
                               f"sqlite:///{junk}")
    line = one_error_line(err)
    assert code == 2 and not (tmp_path / "out").exists()
    assert f"tracking.uri sqlite:///{junk}: {junk} is not a SQLite database MLflow can open (file is not a " \
           f"database): move {junk} away" in line

    out = tmp_path / "out2"  # the default store, in the output folder
    out.mkdir()
    (out / "mlflow.db").write_bytes(junk.read_bytes())
    code, _, err = search_main("--config", "smoke", "--output-dir", out)
    line = one_error_line(err)
    assert code == 2 and sorted(p.name for p in out.iterdir()) == ["mlflow.db"]
    assert f"{(out / 'mlflow.db').resolve()} is not a SQLite database MLflow can open" in line


def test_a_tracking_store_of_another_mlflow_schema(tmp_path, search_main, new_mlflow_store):
    import sqlite3

    db = tmp_path / "in" / "mlflow.db"
    uri = new_mlflow_store(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")  # an early MLflow's schema
    conn.close()
    before = db.read_bytes()
    code, _, err = search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--tracking-uri", uri)
    line = one_error_line(err)
    assert code == 2 and not (tmp_path / "out").exists() and db.read_bytes() == before
    assert f"tracking.uri {uri}: the MLflow store {db} has schema version 0a8213491aaa" in line
    assert f"`mlflow db upgrade {uri}`" in line

    with sqlite3.connect(db) as conn:  # the schema this MLflow writes: on to Ray
        from mlflow.store.db.utils import _get_latest_schema_revision

        conn.execute("UPDATE alembic_version SET version_num = ?", (_get_latest_schema_revision(),))
    conn.close()
    with pytest.raises(ReachedRay):
        search_main("--config", "smoke", "--output-dir", tmp_path / "out", "--tracking-uri", uri)


# ---- 11. searches started at once on one new SQLite store ----------------------------------------
def _open_new_store(url: str, kind: str, barrier, errors) -> None:
    """In a process of its own: open the store at `url` as a new search does, at the same moment as
    the others (`barrier`); an error goes to `errors`."""
    try:
        from search.phases.session import tracking_client
        from search.runtime.workspace import claim_study

        barrier.wait(timeout=300)
        if kind == "mlflow":
            tracking_client(url).search_experiments()
        else:
            claim_study(url, f"search-{os.getpid()}")
    except BaseException as e:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlflow", "optuna"])
def test_searches_started_at_once_on_one_new_sqlite_store(tmp_path, kind):
    import multiprocessing

    n = 4
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    (tmp_path / "new").mkdir()  # the output folder, made by the search's lock before its stores
    url = f"sqlite:///{tmp_path / 'new' / (kind + '.db')}"
    procs = [ctx.Process(target=_open_new_store, args=(url, kind, barrier, errors)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    failed = []
    while not errors.empty():
        failed.append(errors.get())
    assert failed == [] and [p.exitcode for p in procs] == [0] * n, failed
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) in ([f"{kind}.db"], [f"{kind}.db", f"{kind}.db-shm",
                                                                                     f"{kind}.db-wal"])


# ---- 20. a store that fails the search after it claimed its name ---------------------------------
@pytest.fixture
def past_ray(monkeypatch):
    """A simulated search (no model, no data) gets past Ray without starting it, to its claim and
    its MLflow run; it stops with `ReachedRay` where it would go on to train."""
    from search import driver
    from search.phases import prepare as prepared

    def reached_ray(*args, **kwargs):
        raise ReachedRay

    monkeypatch.setattr(prepared, "init_ray", lambda cfg: None)
    monkeypatch.setattr(prepared, "check_resources", lambda cfg: None)
    monkeypatch.setattr(driver, "calibrate_search", reached_ray)
    monkeypatch.setattr(driver, "_print_lr", reached_ray)


@pytest.fixture
def read_only_server():
    """A loopback 'MLflow server' that lets the user search experiments (what the checks ask) but
    refuses everything else with 403, as MLflow's auth app does for a user with READ permission."""
    def answer(handler) -> tuple[int, bytes, dict]:
        if handler.path.startswith("/api/2.0/mlflow/experiments/search") or handler.path == "/health":
            return 200, b"{}", {}
        return 403, b'{"error_code": "PERMISSION_DENIED", "message": "Permission denied"}', {}

    with _serving(answer) as url:
        yield url


def test_a_server_that_refuses_writes_after_the_claim_leaves_nothing(tmp_path, search_main, past_ray,
                                                                     read_only_server):
    out = tmp_path / "out"
    command = ["--config", "simulated", "--output-dir", out, "--experiment", "s", "--tracking-uri", read_only_server]
    for _ in range(2):  # the same command again: refused the same way, not "a search named 's' already exists"
        code, _, err = search_main(*command)
        line = one_error_line(err)
        assert code == 2 and not out.exists(), sorted(p.name for p in out.rglob("*"))
        assert f"tracking.uri {read_only_server} failed as the search began (" in line
        assert "PERMISSION_DENIED" in line and "run the same command again" in line


@pytest.mark.slow
def test_the_cli_after_the_claim_on_a_server_that_refuses_writes(tmp_path, read_only_server):
    """The same through the CLI, Ray started and stopped: exit code 2, one line, nothing left."""
    proc = run_script("run", "--config", "simulated", "--output-dir", tmp_path / "out", "--experiment", "s",
                      "--tracking-uri", read_only_server, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = one_error_line(proc.stderr)
    assert f"tracking.uri {read_only_server} failed as the search began (PERMISSION_DENIED" in line
    assert list(tmp_path.iterdir()) == []


def _forget_open_stores() -> None:
    """MLflow keeps each store it opened, and its SQLAlchemy engine, for the process's life: one
    whose file was removed would be written through a stale connection ("readonly database")."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()


def test_a_sqlite_store_that_fails_after_the_claim_leaves_nothing(tmp_path, search_main, past_ray, monkeypatch):
    from mlflow.exceptions import MlflowException

    from search.phases import session

    def failing(*args, **kwargs):
        raise MlflowException("database is locked")

    out = tmp_path / "out"
    command = ["--config", "simulated", "--output-dir", out, "--experiment", "s"]
    with monkeypatch.context() as m:
        m.setattr(session, "open_views", failing)  # after the store, the experiment and the run were made
        code, _, err = search_main(*command)
    line = one_error_line(err)
    assert code == 2 and not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert f"tracking.uri sqlite:///{out.resolve() / 'mlflow.db'} failed as the search began (database is locked)" \
           in line

    _forget_open_stores()  # the next command is a new process
    with pytest.raises(ReachedRay):  # the cause gone, the same command starts the search
        search_main(*command)
    assert (out / "s.search.json").is_file() and (out / "mlflow.db").is_file()


def test_a_resumed_search_without_its_config_in_mlflow_gets_it(tmp_path, search_main, past_ray, new_mlflow_store):
    import optuna
    from mlflow.tracking import MlflowClient

    from trainables import record as R
    from trainables.config import load_config
    from trainables.simulated import simulated_preparation

    out = tmp_path / "out"
    cfg = load_config(["simulated"])
    out.mkdir()
    (out / "s.search.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "prepare": simulated_preparation(cfg).to_dict(), "calibration": None}))
    client = MlflowClient(new_mlflow_store(out / "mlflow.db"))
    pid = client.create_run(client.create_experiment("s"), tags={R.ROLE_TAG: R.ROLE_SEARCH}).info.run_id
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="s", storage=f"sqlite:///{out.resolve() / 'optuna.db'}")

    with pytest.raises(ReachedRay):
        search_main("--resume", "--output-dir", out, "--experiment", "s")
    run = client.get_run(pid)
    assert run.data.params[R.METRIC_NAME] and run.data.params[R.COST_UNIT]
    assert run.data.params["budget"] == str(cfg.search.budget)
    assert {a.path for a in client.list_artifacts(pid)} >= {"config.json", "space.json", "task.json"}
