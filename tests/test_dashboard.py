"""optuna-dashboard as the second view of a search: the study names its objectives, and the end of
the search leaves its result (JSON) and a note (Markdown) on the study, read here through the
dashboard's own HTTP API, served by `optuna-dashboard` on loopback as a user starts it."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from search.sampling.study import RESULT_ATTR, create_study, metric_names, note_result, open_study_storage
from tests.conftest import free_port, stop_server
from trainables import record as R


def _study(tmp_path, metric=R.ACCURACY):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = create_study(optuna.samplers.RandomSampler(seed=0), open_study_storage(url), "s", metric)
    for value, params in ((0.6, 1000), (0.7, 5000)):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        study.tell(trial, [value, params])
    return url, study


def test_the_study_names_its_objectives_after_the_metric(tmp_path):
    _, study = _study(tmp_path, R.NLL)
    assert study.metric_names == [R.NLL, R.TRAINABLE_PARAMS] == metric_names(R.NLL)
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert again.metric_names == [R.NLL, R.TRAINABLE_PARAMS]  # stored, not only on the object


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_the_dashboard_shows_the_objectives_by_name_and_the_result(tmp_path):
    url, study = _study(tmp_path)
    result = {"metric": R.ACCURACY, "recommended": {"placement_key": "r2 v[1]", "trial_number": 1}, "confirmed": []}
    note_result(study, result, "**Recommendation: deploy r2 v[1]**")
    port = free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(exe), url, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True, env=os.environ.copy())
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline:
            if server.poll() is not None:
                pytest.fail(f"optuna-dashboard exited: {server.stderr.read().decode()[-2000:]}")
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert studies, "optuna-dashboard did not answer within 60 s"
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
    finally:
        stop_server(server)
    assert detail.get("objective_names") == [R.ACCURACY, R.TRAINABLE_PARAMS], detail
    attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert json.loads(attrs[RESULT_ATTR]) == result  # the dashboard shows it as JSON text
    assert "Recommendation: deploy r2 v[1]" in detail["note"]["body"]
    assert len(detail["trials"]) == 2 and detail["best_trials"]
