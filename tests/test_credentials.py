"""Passwords in the URLs a search is given are never shown or stored: the config a search carries
(what its state file, its MLflow run's config.json and Ray Tune's snapshots hold) has them masked,
a tracking server's user and password go to MLflow's variables, and `--resume` takes a masked
password again from the flag that gave it."""

import json
import pickle

import pytest

from search.runtime import credentials
from search.runtime.errors import UsageError
from trainables.config import load_config

DB = "postgresql://alice:s3cret@db-host:5432/studies"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)  # restored after each test
    monkeypatch.setattr(credentials, "_REAL", {})


def test_masking_and_taking_credentials(monkeypatch):
    import os

    assert credentials.shown(DB) == "postgresql://alice:***@db-host:5432/studies"
    assert credentials.shown("sqlite:////tmp/a b/optuna.db") == "sqlite:////tmp/a b/optuna.db"
    assert credentials.without_credentials("https://u:p@[::1]:5000/x") == "https://[::1]:5000/x"
    masked = credentials.keep(DB)
    assert masked == credentials.shown(DB) and credentials.real(masked) == DB
    assert credentials.real("sqlite:///x.db") == "sqlite:///x.db"
    assert credentials.take_tracking_credentials("http://bob:pw0rd@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("bob", "pw0rd")


def test_the_config_a_search_carries_holds_no_password():
    from search.phases.prepare import carried_config

    cfg = load_config(["smoke"], [f"search.study_storage={DB}", "tracking.uri=http://bob:pw0rd@mlflow-host:5000"])
    carried = carried_config(cfg)
    text = json.dumps(carried.to_dict())
    assert "s3cret" not in text and "pw0rd" not in text
    assert carried.search.study_storage == "postgresql://alice:***@db-host:5432/studies"
    assert carried.tracking.uri == "http://mlflow-host:5000"
    assert credentials.real(carried.search.study_storage) == DB


def test_resume_takes_a_masked_password_again_from_the_flag(tmp_path):
    from search.phases.prepare import _restore_credentials, carried_config

    stored = carried_config(load_config(["smoke"], [f"search.study_storage={DB}"]))
    credentials._REAL.clear()  # a new driver process
    with pytest.raises(UsageError, match=r"--resume: search.study_storage postgresql://alice:\*\*\*@db-host:5432/studies "
                                         "needs its password, which a search does not store: pass --study-storage"):
        _restore_credentials(stored, load_config(["smoke"]))
    _restore_credentials(stored, load_config(["smoke"], [f"search.study_storage={DB}"]))
    assert credentials.real(stored.search.study_storage) == DB


def test_a_pickled_study_storage_holds_the_masked_url(tmp_path):
    """What Ray Tune snapshots of the searcher keep: the URL without its password; restored by a
    driver that was given the password, the storage connects with the full URL."""
    from search.sampling.study import MaskedRDBStorage, open_study_storage

    storage = MaskedRDBStorage.__new__(MaskedRDBStorage)
    storage.__dict__.update(url=DB, engine_kwargs={}, skip_compatibility_check=False, scoped_session=None,
                            engine=None, _version_manager=None)
    state = storage.__getstate__()
    assert state["url"] == credentials.shown(DB) and b"s3cret" not in pickle.dumps(state)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    again = pickle.loads(pickle.dumps(open_study_storage(url)))  # a URL without a password round-trips
    assert again.url == url and again.get_all_studies() == []


# ---- a password in the query string: postgresql://user@host/db?password=..., mysql://...?passwd=... --
QUERY_DB = "postgresql://alice@db-host:5432/studies?sslmode=require&Password=s3cret"


@pytest.mark.parametrize("url, masked", [
    (QUERY_DB, "postgresql://alice@db-host:5432/studies?sslmode=require&Password=***"),
    ("mysql+pymysql://bob@db/x?passwd=pw0rd&charset=utf8", "mysql+pymysql://bob@db/x?passwd=***&charset=utf8"),
    ("postgresql://db/x?user=a&PWD=p%40ss&token=t0k&secret=s", "postgresql://db/x?user=a&PWD=***&token=***&secret=***"),
    ("postgresql://carol:c0de@db/x?password=again", "postgresql://carol:***@db/x?password=***"),
    ("sqlite:////tmp/optuna.db?timeout=20", "sqlite:////tmp/optuna.db?timeout=20"),
])
def test_a_password_in_the_query_string_is_masked_and_given_back(url, masked):
    assert credentials.shown(url) == masked
    assert credentials.keep(url) == masked and credentials.real(masked) == url
    assert credentials.has_masked_password(masked) == (masked != url)
    assert credentials.shown(masked) == masked  # masking twice changes nothing


def test_the_config_a_search_carries_holds_no_query_password():
    from search.phases.prepare import _restore_credentials, carried_config

    cfg = load_config(["smoke"], [f"search.study_storage={QUERY_DB}", "tracking.uri=https://mlflow-host/?token=t0k"])
    carried = carried_config(cfg)
    text = json.dumps(carried.to_dict())
    assert "s3cret" not in text and "t0k" not in text
    assert credentials.real(carried.search.study_storage) == QUERY_DB
    assert credentials.real(carried.tracking.uri) == "https://mlflow-host/?token=t0k"
    credentials._REAL.clear()  # a new driver process, on --resume
    with pytest.raises(UsageError, match=r"needs its password, which a search does not store: pass --study-storage"):
        _restore_credentials(carried, load_config(["smoke"]))


@pytest.mark.parametrize("url, secret", [
    ("postgresql://alice@127.0.0.1:{port}/studies?password=s3cret", "s3cret"),
    ("mysql://bob@127.0.0.1:{port}/studies?passwd=pw0rd", "pw0rd"),
])
def test_a_refused_study_storage_shows_no_query_password(url, secret, tmp_path, monkeypatch, capsys):
    """Through search/run.py: the database cannot be used (no driver, or nothing listening), and the
    one line that says so holds the URL with its password masked."""
    import socket

    from search.run import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    code = main(["--config", "smoke", "--output-dir", str(tmp_path / "out"), "--study-storage", url.format(port=port)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: search.study_storage "), err
    assert secret not in err and "=***" in lines[0]
    assert list(tmp_path.iterdir()) == []
