"""Passwords in the URLs a search is given are never shown or stored: the config a search carries
(what its state file, its MLflow run's config.json and Ray Tune's snapshots hold) has them masked,
a tracking server's user and password go to MLflow's variables, and `--resume` takes a masked
password again from the flag that gave it."""

import json
import pickle

import pytest

from search import credentials
from search.errors import UsageError
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
    from search.prepared import carried_config

    cfg = load_config(["smoke"], [f"search.study_storage={DB}", "tracking.uri=http://bob:pw0rd@mlflow-host:5000"])
    carried = carried_config(cfg)
    text = json.dumps(carried.to_dict())
    assert "s3cret" not in text and "pw0rd" not in text
    assert carried.search.study_storage == "postgresql://alice:***@db-host:5432/studies"
    assert carried.tracking.uri == "http://mlflow-host:5000"
    assert credentials.real(carried.search.study_storage) == DB


def test_resume_takes_a_masked_password_again_from_the_flag(tmp_path):
    from search.prepared import _restore_credentials, carried_config

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
    from search.searcher import MaskedRDBStorage, open_study_storage

    storage = MaskedRDBStorage.__new__(MaskedRDBStorage)
    storage.__dict__.update(url=DB, engine_kwargs={}, skip_compatibility_check=False, scoped_session=None,
                            engine=None, _version_manager=None)
    state = storage.__getstate__()
    assert state["url"] == credentials.shown(DB) and b"s3cret" not in pickle.dumps(state)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    again = pickle.loads(pickle.dumps(open_study_storage(url)))  # a URL without a password round-trips
    assert again.url == url and again.get_all_studies() == []
