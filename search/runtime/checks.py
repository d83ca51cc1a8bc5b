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
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

import sqlalchemy
from sqlalchemy.engine import make_url

from analysis.mlflow_read import StoreError, find_parent, open_store, read_json_artifact
from search.runtime.credentials import shown, without_credentials
from search.runtime.errors import UsageError
from trainables import record as R
from trainables.config import ModelConfig, check_name
from trainables.model import TINY, ModelError, resolve_model_path

SERVER_TIMEOUT_S = 3.0
_SQLITE_FIX = "pass --tracking-uri sqlite:///<a writable folder>/mlflow.db"
_STUDY_FIX = "pass --study-storage sqlite:///<a writable folder>/optuna.db"


# MLflow stores a search can track to (MLflow's own registry also has the deprecated file store).
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
# Where Ray Tune can keep an experiment: a local or shared folder, or a pyarrow filesystem URI.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")
ADDRESS_TIMEOUT_S = 3.0


def check_search_name(name: str) -> None:
    """A search's name (--experiment) is safe as a file name prefix inside --output-dir and as an
    MLflow experiment, Ray Tune experiment and Optuna study name."""

    problem = check_name(name, "--experiment")
    if problem:
        raise UsageError(problem)


def check_tracking_uri(uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> None:
    """An MLflow tracking URI the search can use. "" (the default store under --output-dir) is
    checked with the output folder; a store MLflow cannot track a search in (a bare path, the
    deprecated file store, an unknown scheme) is refused; http(s): a server answers within
    `timeout_s`; sqlite: the database file can be created or written; postgresql, mysql, mssql:
    SQLAlchemy's driver for it is installed (the server is left to MLflow, as databricks is).
    Messages show the URI with any password masked."""

    if not uri:
        return
    scheme = urlparse(uri).scheme.lower()
    if scheme.split("+")[0] not in TRACKING_SCHEMES:
        raise UsageError(f"tracking.uri {shown(uri)} is not an MLflow store a search can use (scheme "
                         f"{scheme or 'none'!r}; known: {', '.join(TRACKING_SCHEMES)}): pass an MLflow server "
                         f"(--tracking-uri http://HOST:5000) or {_SQLITE_FIX}")
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite(uri, "tracking.uri", _SQLITE_FIX)
        _check_mlflow_sqlite(uri)
    elif scheme.split("+")[0] in DATABASE_SCHEMES:
        _check_database_driver(uri)


# Database stores MLflow opens with SQLAlchemy (their driver is checked before Ray starts), and the
# pip package of each driver module SQLAlchemy imports for them.
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
DRIVER_PACKAGES = {"MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "mysql": "mysql-connector-python",
                   "psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "pyodbc": "pyodbc",
                   "pymssql": "pymssql", "pg8000": "pg8000", "asyncpg": "asyncpg"}


def _check_database_driver(uri: str) -> None:
    """A database tracking store's SQLAlchemy driver is installed (without it MLflow fails after Ray
    has started, in a ModuleNotFoundError traceback). Nothing is connected to or created."""
    try:
        engine = sqlalchemy.create_engine(uri)
    except ImportError as e:
        module = (e.name or "").split(".")[0]
        package = DRIVER_PACKAGES.get(module, module or "the driver")
        raise UsageError(f"tracking.uri {shown(uri)}: no database driver for it ({e}): pip install {package}, "
                         f"or {_SQLITE_FIX}") from None
    except sqlalchemy.exc.NoSuchModuleError as e:
        raise UsageError(f"tracking.uri {shown(uri)}: SQLAlchemy knows no such database driver ({e}): fix the "
                         f"part after '+' (e.g. mysql+pymysql://), or {_SQLITE_FIX}") from None
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise UsageError(f"tracking.uri {shown(uri)} is not a database URL ({str(e).splitlines()[0][:160]}): fix it "
                         f"(e.g. mysql://USER@HOST/DB) or {_SQLITE_FIX}") from None
    engine.dispose()


def check_storage(storage: str) -> None:
    """Ray Tune's experiment storage: "" (<output-dir>/ray_results, checked with it), a folder that
    exists or can be made, or a URI of a filesystem Ray Tune reads through pyarrow."""
    if not storage:
        return
    fix = "pass --storage <a writable folder> (a shared one on a multi-node cluster) or an s3://, gs://, hdfs:// or abfs:// URI"
    scheme = urlparse(storage).scheme.lower() if "://" in storage else ""
    if scheme and scheme not in STORAGE_SCHEMES:
        raise UsageError(f"search.storage {storage}: Ray Tune cannot keep an experiment on {scheme}:// "
                         f"storage: {fix}")
    if scheme in ("", "file"):
        path = Path(urlparse(storage).path) if scheme else Path(storage)
        _check_creatable_dir(path, f"search.storage {storage}", fix)


def check_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """A Ray cluster to join answers: "" (a local runtime) needs nothing; HOST:PORT and
    ray://HOST:PORT accept a connection within `timeout_s` (ray:// also needs Ray Client, grpcio);
    "auto": the HOST:PORT that RAY_ADDRESS names, if it names one, accepts a connection; else Ray
    looks for the cluster running on this machine, and `init_ray` reports it if it finds none."""
    if not address:
        return
    fix = "start the cluster (ray start --head) or fix --address; leave --address out to start a local runtime"
    if address == "auto":
        named = os.environ.get("RAY_ADDRESS", "")
        host, sep, port = named.rpartition(":")
        if "://" not in named and sep and port.isdigit():
            _check_port(f"search.address auto (RAY_ADDRESS {named})", host.strip("[]"), int(port), timeout_s, fix)
        return
    client = address.startswith("ray://")
    if client:
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            raise UsageError(f"search.address {address}: a ray:// address needs Ray Client (pip install "
                             "'ray[client]'); or run the driver on a node of the cluster with --address auto")
    rest = address[len("ray://"):] if client else address
    host, sep, port = rest.rpartition(":")
    if client and not sep:
        host, port = rest, "10001"
    _check_port(f"search.address {address}", host.strip("[]"), int(port), timeout_s, fix)


def _check_port(what: str, host: str, port: int, timeout_s: float, fix: str) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise UsageError(f"{what} cannot be reached ({why}, waited {timeout_s:g}s): {fix}") from None


def check_model_source(name: str, path: str) -> None:
    """A hub model id (`path` is not a folder) can be loaded: from the local Hugging Face cache, or
    from a hub that answers. Without this an unreachable hub costs a minute of retries on a Ray
    worker before a traceback."""
    if Path(path).exists():
        return
    import huggingface_hub
    import huggingface_hub.constants
    import huggingface_hub.errors
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    fix = "point model.name at a local model folder, or check the id"
    try:
        validate_repo_id(path)
        cached = huggingface_hub.try_to_load_from_cache(path, "config.json")
    except HFValidationError:
        raise UsageError(f"model.name {name!r} is neither a local folder nor a Hugging Face hub id: {fix}") from None
    if isinstance(cached, str):
        return  # in the cache: transformers loads it offline too
    if huggingface_hub.constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UsageError(f"model.name {name!r} is not a local folder and not in the Hugging Face cache, and the "
                         f"hub is off (HF_HUB_OFFLINE=1): {fix}, or download it first with the hub on")
    token = huggingface_hub.get_token()
    url = f"{huggingface_hub.constants.ENDPOINT.rstrip('/')}/api/models/{path}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    wait_s = SERVER_TIMEOUT_S * 3
    try:
        urllib.request.urlopen(request, timeout=wait_s).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403, 404):  # the hub answers 401 for a repository it does not show you
            access = "your HF_TOKEN cannot read it" if token else "it is private or gated: set HF_TOKEN"
            raise UsageError(f"model.name {name!r} is not a model on the Hugging Face hub, or {access}: {fix}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise UsageError(f"model.name {name!r} is not a local folder and the Hugging Face hub cannot be reached "
                         f"({str(why)[:160] or type(why).__name__}, waited {wait_s:g}s): {fix}, or check your "
                         "network") from None


def check_study_storage(url: str, new_study: str | None = None) -> None:
    """The Optuna study's database: a SQLite file can be created or written; any other SQLAlchemy
    URL names a dialect whose driver is installed and a database that accepts a connection.
    `new_study`: the name a new search gives its study, which the database must not hold yet.
    Nothing is created or written."""

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"search.study_storage {shown(url)!r} is not a database URL: {_STUDY_FIX}") from None
    named = shown(url)  # the password masked, in the user-info part and the query string
    if parsed.get_backend_name() == "sqlite":
        if parsed.username or parsed.password or parsed.host or parsed.port or not url.startswith("sqlite:///"):
            raise UsageError(f"search.study_storage {named}: a SQLite URL names a file and nothing else (no user, "
                             f"password or host): {_STUDY_FIX} (four slashes before an absolute path)")
        _check_sqlite(url, "search.study_storage", _STUDY_FIX)
        if not Path(parsed.database or "").is_file():
            return  # a new file: no studies yet
    try:
        engine = sqlalchemy.create_engine(url)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise UsageError(f"search.study_storage {named}: no database driver for it ({e}): install the "
                         f"driver (e.g. pip install psycopg2-binary for postgresql) or {_STUDY_FIX}") from None
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            optuna_store = {"studies", "trials", "version_info"} <= tables
            taken = new_study is not None and optuna_store and conn.execute(
                sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": new_study}).first()
    except sqlalchemy.exc.SQLAlchemyError as e:
        why = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        if "file is not a database" in why:
            raise UsageError(f"search.study_storage {named} is not a SQLite database ({why}): {_STUDY_FIX} "
                             "(a new file, or the optuna.db of a search)") from None
        raise UsageError(f"search.study_storage {named} cannot be reached ({why}): start the database "
                         f"or {_STUDY_FIX}") from None
    finally:
        engine.dispose()
    if tables and not optuna_store:
        listed = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
        raise UsageError(f"search.study_storage {named} holds a database that is not an Optuna study store "
                         f"(its tables: {listed}): {_STUDY_FIX} (a new file, or the optuna.db of a search)")
    if taken:
        raise UsageError(f"search.study_storage {named} already holds a study named {new_study!r}: pass "
                         "--resume to continue that search, or another --experiment name")


def check_resumable(tracking_uri: str, study_url: str, name: str) -> None:
    """A resumed search's two stores are there and hold it: the MLflow store its search run (a
    missing SQLite file would be created empty, and the trials' outcomes lost), the Optuna
    database its study (a missing file would be created empty). Nothing is created."""
    again = "start it again under another --experiment name (or in another --output-dir)"
    db = _sqlite_db(tracking_uri)
    if db is not None and not db.is_file():
        raise UsageError(f"--resume {name}: its MLflow store {db} is missing (tracking.uri {shown(tracking_uri)}): "
                         f"put the file back, pass the --tracking-uri the search was started with, or {again}")
    try:
        find_parent(open_store(tracking_uri), experiment=name)
    except StoreError as e:
        raise UsageError(f"--resume {name}: the MLflow store {shown(tracking_uri)} does not hold the search ({e}): "
                         f"pass the --tracking-uri it was started with, or {again}") from None
    db = _sqlite_db(study_url)
    if db is not None and not db.is_file():
        raise UsageError(f"--resume {name}: its Optuna study store {db} is missing (search.study_storage "
                         f"{shown(study_url)}): put the file back, pass the --study-storage the search was started "
                         f"with, or {again}")
    check_study_storage(study_url)  # a database, reachable, an Optuna store
    engine = sqlalchemy.create_engine(study_url)
    try:
        with engine.connect() as conn:
            held = conn.execute(sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": name}).first()
    except sqlalchemy.exc.SQLAlchemyError:
        held = None  # an empty database: no studies table
    finally:
        engine.dispose()
    if not held:
        raise UsageError(f"--resume {name}: the Optuna store {shown(study_url)} holds no study named {name!r}: pass the "
                         f"--study-storage the search was started with, or {again}")


def _sqlite_db(url: str) -> Path | None:
    """The file of a sqlite:/// URL (relative after 3 slashes, absolute after 4), else None."""
    return Path(url[len("sqlite:///"):].split("?", 1)[0]) if url.startswith("sqlite:///") else None


def check_warm_start(tracking_uri: str, experiment: str, cfg=None) -> None:
    """--warm-start names a search the tracking store holds (nothing is created), and, given this
    search's config `cfg`, one on the same model (by its resolved path or hub id; a tiny model by
    its size too: models of one architecture and size have sites of the same shapes), the same
    task kind and data source, and the same metric when train.metric names one (an earlier
    search's scores enter this one's study and frontier as they are)."""
    try:
        client = open_store(tracking_uri)
        parent = find_parent(client, experiment=experiment)
    except StoreError as e:
        raise UsageError(f"--warm-start {experiment} (search.warm_start): {e}") from None
    if cfg is None:
        return
    params = parent.data.params
    there = read_json_artifact(client, parent.info.run_id, "config.json") or {}
    model_there = there.get("model") or {"name": params.get("model", "")}
    task_there = (there.get("task") or {}).get("kind", "classification")
    data_there = (there.get("data") or {}).get("source", params.get("data", ""))
    metric_there = params.get(R.METRIC_NAME, "")
    fix = "warm-start only from a search on the same model, task and metric, or leave --warm-start out"
    mine, theirs = _model_identity(asdict(cfg.model)), _model_identity(model_there)
    if mine != theirs:
        raise UsageError(f"--warm-start {experiment}: that search ran on model {theirs}, this one runs on {mine} (their "
                         f"sites may have the same shapes, but its scores are another model's): {fix}")
    if task_there != cfg.task.kind:
        raise UsageError(f"--warm-start {experiment}: that search's task.kind is {task_there!r}, this one's "
                         f"{cfg.task.kind!r}: {fix}")
    if _data_identity(data_there) != _data_identity(cfg.data.source):
        raise UsageError(f"--warm-start {experiment}: that search trained on data.source {data_there!r}, this one on "
                         f"{cfg.data.source!r} (its scores measure another task): {fix}")
    if cfg.train.metric != "auto" and metric_there and metric_there != cfg.train.metric:
        raise UsageError(f"--warm-start {experiment}: that search's scores are {metric_there!r}, this one's "
                         f"{cfg.train.metric!r} (train.metric): {fix} (--set train.metric={metric_there})")


def _model_identity(model: dict) -> str:
    """A model as a search records it (config.json's [model]), named so that two names of one model
    agree: a packaged name or local path as its resolved absolute path, a hub id as itself, a tiny
    model with its size."""
    name = str(model.get("name", ""))
    if name in TINY:
        size = ", ".join(f"{k} {model.get(k, v)}" for k, v in asdict(ModelConfig()).items() if k.startswith("tiny_"))
        return f"{name} ({size})"
    try:
        path = resolve_model_path(ModelConfig(name=name))
    except ModelError:  # a local folder that has moved since: its name as given
        return name
    return str(Path(path).resolve()) if Path(path).exists() else path


def _data_identity(source: str) -> str:
    """A data.source with each local file as its absolute path (packaged names and hub ids as given)."""
    return ",".join(str(Path(p.strip()).resolve()) if Path(p.strip()).exists() else p.strip() for p in source.split(","))


def check_output_dir(path: Path, flag: str = "--output-dir") -> None:
    """`flag`'s folder (a command's output) is one it can write in, or one that can be created."""
    _check_creatable_dir(Path(path), f"{flag} {path}", f"pass {flag} <a writable folder>")


def _check_server(uri: str, timeout_s: float) -> None:
    """Any HTTP answer (even 404 or 401) means a server is there; no answer in time does not. A
    server that answers must let in the credentials MLflow sends (`_check_credentials`)."""
    url = without_credentials(uri).rstrip("/") + "/health"  # user:password@ is not part of the host
    why = None
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return  # a TLS server answered; certificates are MLflow's business (MLFLOW_TRACKING_*)
        why = e.reason
    except (OSError, http.client.HTTPException, ValueError) as e:  # timeout, reset, not HTTP, bad URL
        why = e
    if why is None:
        _check_credentials(uri, timeout_s)
        return

    why = str(why) or type(why).__name__
    host = urlparse(uri)
    raise UsageError(
        f"tracking.uri {shown(uri)} cannot be reached ({why}, waited {timeout_s:g}s): start the MLflow server "
        f"(mlflow server --host {host.hostname or '<host>'} --port {host.port or '<port>'}) or {_SQLITE_FIX}"
    )


# MLflow's cheapest call that needs the credentials a search's every call sends.
_SIGNED_IN_ENDPOINT = "/api/2.0/mlflow/experiments/search?max_results=1"


def _check_credentials(uri: str, timeout_s: float) -> None:
    """A tracking server that answers lets in the credentials MLflow will send it: one request to
    `_SIGNED_IN_ENDPOINT` signed the way MLflow signs its own (`get_default_host_creds`:
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials, else
    MLFLOW_TRACKING_TOKEN, or an auth plugin; user:password in `uri` win). Without this a server
    that refuses them (HTTP 401) fails the search after Ray has started, in a traceback. Any other
    answer, or none, is left to MLflow (`_check_server` has seen the server answer)."""
    from urllib.parse import unquote, urlsplit

    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(without_credentials(uri).rstrip("/"))
    given = urlsplit(uri)
    if given.username is not None:
        creds.username, creds.password = unquote(given.username), unquote(given.password or "")
    try:
        answer = http_request(creds, _SIGNED_IN_ENDPOINT, "GET", max_retries=0, timeout=timeout_s)
    except Exception:  # noqa: BLE001 - TLS, a reset, an auth plugin's own error: MLflow's to report
        return
    if answer.status_code not in (401, 403):
        return
    if creds.username and creds.password:
        sent = f"those of user {creds.username!r}"
    elif creds.token:
        sent = "the token in MLFLOW_TRACKING_TOKEN"
    else:
        sent = "none (no MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN is set)"
    how = "refused the credentials" if answer.status_code == 401 else "refused access with the credentials"
    raise UsageError(
        f"tracking.uri {shown(without_credentials(uri))} {how} MLflow sent it (HTTP {answer.status_code}; sent: "
        f"{sent}): export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of an account on that server "
        f"(or MLFLOW_TRACKING_TOKEN, or pass --tracking-uri http://USER:PASSWORD@HOST:PORT), or {_SQLITE_FIX}")


def _check_sqlite(uri: str, key: str, fix: str) -> None:
    """sqlite:///relative.db or sqlite:////absolute.db: the file, or its folder, is writable."""
    raw = uri.split("?", 1)[0][len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if raw in ("", ":memory:"):
        return

    uri = shown(uri)
    db = Path(raw)
    if db.is_dir():
        raise UsageError(f"{key} {uri}: {db} is a folder, not a database file: {fix}")
    if db.exists():
        if not os.access(db, os.W_OK):
            raise UsageError(f"{key} {uri}: {db} is not writable: {fix}")
        return
    _check_creatable_dir(db.parent, f"{key} {uri}", fix)


def _check_mlflow_sqlite(uri: str) -> None:
    """An existing SQLite tracking store opens, read-only, as a SQLite database, and its MLflow
    schema (alembic's revision) is the one the installed MLflow writes. Otherwise MLflow fails
    once the search has claimed its name, in a traceback ("file is not a database", "out-of-date
    database schema"). An empty file or a new database MLflow fills itself. Read under
    `store_creation_lock` (another search may be making the store now). Nothing is written."""
    db = _sqlite_db(uri)
    if db is None or not db.is_file() or db.stat().st_size == 0:
        return
    import sqlite3
    from urllib.parse import quote

    from search.runtime.workspace import store_creation_lock

    named, move = shown(uri), f"move {db} away (a new store is made in its place) or {_SQLITE_FIX}"
    try:
        with store_creation_lock(uri):  # not halfway through another search's making of it
            conn = sqlite3.connect(f"file:{quote(str(db.absolute()))}?mode=ro", uri=True, timeout=SERVER_TIMEOUT_S)
            try:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone() \
                    if "alembic_version" in tables else None
            finally:
                conn.close()
    except sqlite3.Error as e:
        why = str(e) or type(e).__name__
        if "locked" in why or "busy" in why:
            return  # another program writes it now: a database, and MLflow waits its turn
        raise UsageError(f"tracking.uri {named}: {db} is not a SQLite database MLflow can open ({why}): {move}") from None
    if row is None or "experiments" not in tables:
        return  # no MLflow store yet (MLflow makes its tables in it)
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    if row[0] != head:
        raise UsageError(f"tracking.uri {named}: the MLflow store {db} has schema version {row[0]}, the installed "
                         f"MLflow writes {head} (a store of another MLflow version): back it up and run "
                         f"`mlflow db upgrade {named}` (an older store), install the MLflow that wrote it, or {move}")


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


# Ray's settings for how long a process waits for the GCS (the head's control store), read from the
# environment when Ray starts: the GCS client's reconnect window (C++ RayConfig, 60 s: "Failed to
# connect to GCS within 60 seconds") and the wait for a new GCS to publish its port (python, 30 s).
GCS_TIMEOUT_ENV = ("RAY_gcs_rpc_server_reconnect_timeout_s", "RAY_gcs_server_port_wait_time_s")
_GCS_STARTUP_SIGNS = ("failed to connect to gcs", "failed to start gcs", "waiting for gcs to become available",
                      "timed out during startup", "waiting for node to startup")


def ray_auth_problem(address: str) -> str | None:
    """The one line for a cluster at HOST:PORT `address` that refuses this driver's token, or None.
    A `ray start --head` turns token authentication on when a token is saved (~/.ray/auth_token),
    but `ray.init` with an explicit address joins without one unless RAY_AUTH_MODE=token: the GCS
    answers every call "Unauthenticated", and `ray.init` retries for a minute, then says only that
    it could not connect. One call (0.1 s; at most 5 s and Ray's retries) asks first. Ray must be imported
    (`init_ray` calls this inside `ray_environment`); any other error is left to `ray.init`."""
    if not address or address == "auto" or "://" in address:
        return None  # a local runtime; "auto" turns token auth on by itself when a token is saved
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except (OSError, ValueError):
        return None  # nothing answers there: Ray's client would wait its whole timeout for it
    from search.runtime.ray_internals import token_refusal

    why = token_refusal(address)
    if why is None:
        return None
    where = "~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return (f"search.address {address}: the Ray cluster refused this driver's token ({why}): give the driver "
                f"the cluster's token (ray get-auth-token on its head) in {where}")
    return (f"search.address {address}: the Ray cluster requires token authentication and this driver sent no "
            f"token ({why}): export RAY_AUTH_MODE=token (Ray reads the token from {where}), or start the "
            "cluster with RAY_AUTH_MODE=disabled")


def ray_start_problem(error: BaseException, address: str = "") -> str | None:
    """The one line for a Ray runtime that did not come up in time (its GCS did not answer: on a
    loaded machine, a local head's processes start slowly), or None for any other error of
    `ray.init`. `address`: "" for the search's own local runtime, else the cluster joined."""
    text = " ".join(str(error).split())
    if not (any(sign in text.lower() for sign in _GCS_STARTUP_SIGNS) or isinstance(error, TimeoutError)):
        return None
    import re

    waited = re.search(r"(?:within|after) (\d+) seconds", text)
    how_long = f"within {waited.group(1)} s" if waited else "in time"
    longer = " ".join(f"{name}=300" for name in GCS_TIMEOUT_ENV)
    # Ray's message goes on with log lines and a traceback: its first sentence says it.
    why = re.split(r"\s*(?:Last \d+ lines|Last connection error|Please check|Traceback)", text)[0][:160].strip()
    why = why or type(error).__name__
    if address:
        return (f"search.address {address}: the Ray cluster's GCS did not answer {how_long} ({why}): check that the "
                f"cluster is up (ray status on its head) and retry, or give Ray longer (export {longer})")
    return (f"the search's local Ray runtime did not start: its GCS did not answer {how_long} ({why}), as happens "
            f"on a heavily loaded machine: retry when the machine is less loaded, give Ray longer (export {longer}), "
            "or start Ray first (ray start --head) and pass --address auto")
