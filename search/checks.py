"""Input checks the driver runs before it starts anything: no model, no Ray, nothing written.

Where it sits: before score -> sample -> train -> track. A search that would fail minutes in,
after Ray has started and trials have run, on a tracking server that is down or a store that
cannot be created, fails here instead with one `UsageError` line naming the value and the fix.
Every check only looks: it creates no folder, file or store (the output folder is made only once
every check has passed).
"""

from __future__ import annotations

import http.client
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from search.errors import UsageError

SERVER_TIMEOUT_S = 3.0
_SQLITE_FIX = "pass --tracking-uri sqlite:///<a writable folder>/mlflow.db"
_STUDY_FIX = "pass --study-storage sqlite:///<a writable folder>/optuna.db"


def check_tracking_uri(uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> None:
    """An MLflow tracking URI the search can use. "" (the default store under --output-dir) is
    checked with the output folder; http(s): a server answers within `timeout_s`; sqlite: the
    database file can be created or written. Other stores (databricks, postgresql, ...) are left to
    MLflow."""
    if not uri:
        return
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri, "tracking.uri", _SQLITE_FIX)


def check_study_storage(url: str, new_study: str | None = None) -> None:
    """The Optuna study's database: a SQLite file can be created or written; any other SQLAlchemy
    URL names a dialect whose driver is installed and a database that accepts a connection.
    `new_study`: the name a new search gives its study, which the database must not hold yet.
    Nothing is created or written."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"search.study_storage {url!r} is not a database URL: {_STUDY_FIX}") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(url, "search.study_storage", _STUDY_FIX)
        if not Path(parsed.database or "").is_file():
            return  # a new file: no studies yet
    try:
        engine = sqlalchemy.create_engine(url)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise UsageError(f"search.study_storage {shown}: no database driver for it ({e}): install the "
                         f"driver (e.g. pip install psycopg2-binary for postgresql) or {_STUDY_FIX}") from None
    try:
        with engine.connect() as conn:
            taken = new_study is not None and sqlalchemy.inspect(conn).has_table("studies") and conn.execute(
                sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": new_study}).first()
    except sqlalchemy.exc.SQLAlchemyError as e:
        why = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UsageError(f"search.study_storage {shown} cannot be reached ({why}): start the database "
                         f"or {_STUDY_FIX}") from None
    finally:
        engine.dispose()
    if taken:
        raise UsageError(f"search.study_storage {shown} already holds a study named {new_study!r}: pass "
                         "--resume to continue that search, or another --experiment name")


def check_warm_start(tracking_uri: str, experiment: str) -> None:
    """--warm-start names a search the tracking store holds (nothing is created)."""
    from analysis.mlflow_read import StoreError, find_parent, open_store

    try:
        find_parent(open_store(tracking_uri), experiment=experiment)
    except StoreError as e:
        raise UsageError(f"--warm-start {experiment}: {e}") from None


def check_output_dir(path: Path) -> None:
    """--output-dir is a folder the search can write in, or one that can be created."""
    _check_creatable_dir(Path(path), f"--output-dir {path}", "pass --output-dir <a writable folder>")


def _check_server(uri: str, timeout_s: float) -> None:
    """Any HTTP answer (even 404 or 401) means a server is there; no answer in time does not."""
    url = uri.rstrip("/") + "/health"
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()
        return
    except urllib.error.HTTPError:
        return  # it answered
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return  # a TLS server answered; certificates are MLflow's business (MLFLOW_TRACKING_*)
        why = e.reason
    except (OSError, http.client.HTTPException, ValueError) as e:  # timeout, reset, not HTTP, bad URL
        why = e
    why = str(why) or type(why).__name__
    host = urlparse(uri)
    raise UsageError(
        f"tracking.uri {uri} cannot be reached ({why}, waited {timeout_s:g}s): start the MLflow server "
        f"(mlflow server --host {host.hostname or '<host>'} --port {host.port or '<port>'}) or {_SQLITE_FIX}"
    )


def _check_sqlite(uri: str, key: str, fix: str) -> None:
    """sqlite:///relative.db or sqlite:////absolute.db: the file, or its folder, is writable."""
    raw = uri.split("?", 1)[0][len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if raw in ("", ":memory:"):
        return
    db = Path(raw)
    if db.is_dir():
        raise UsageError(f"{key} {uri}: {db} is a folder, not a database file: {fix}")
    if db.exists():
        if not os.access(db, os.W_OK):
            raise UsageError(f"{key} {uri}: {db} is not writable: {fix}")
        return
    _check_creatable_dir(db.parent, f"{key} {uri}", fix)


def _check_creatable_dir(path: Path, what: str, fix: str) -> None:
    """`path` is a writable folder, or its nearest existing ancestor is one (so mkdir would work)."""
    path = path.expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what}: {existing} is a file, not a folder: {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        action = "cannot write in" if existing == path else f"cannot create {path} in"
        raise UsageError(f"{what}: {action} {existing} (permission denied): {fix}")
