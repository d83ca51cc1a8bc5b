"""optuna-dashboard as the second view of a search: the study names its objectives, and the end of
the search leaves its result (JSON) and a note (Markdown) on the study, read here through the
dashboard's own HTTP API, served by `optuna-dashboard` on loopback as a user starts it."""

import contextlib
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
from tests.browser import chromium, page_text, wait_for
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


@contextlib.contextmanager
def _dashboard(url: str):
    """`optuna-dashboard <url>` on a free loopback port, as a user starts it: yields its address and
    the id of the study it lists first."""
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
        yield f"http://127.0.0.1:{port}", studies[0]["study_id"]
    finally:
        stop_server(server)


def _result(study) -> dict:
    result = {"metric": R.ACCURACY, "recommended": {"placement_key": "r2 v[1]", "trial_number": 1}, "confirmed": []}
    note_result(study, result, "**Recommendation: deploy r2 v[1]**")
    return result


def test_the_dashboard_shows_the_objectives_by_name_and_the_result(tmp_path):
    url, study = _study(tmp_path)
    result = _result(study)
    with _dashboard(url) as (address, study_id):
        detail = _get(f"{address}/api/studies/{study_id}")
    assert detail.get("objective_names") == [R.ACCURACY, R.TRAINABLE_PARAMS], detail
    attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert json.loads(attrs[RESULT_ATTR]) == result  # the dashboard shows it as JSON text
    assert "Recommendation: deploy r2 v[1]" in detail["note"]["body"]
    assert len(detail["trials"]) == 2 and detail["best_trials"]


@pytest.mark.slow
def test_a_person_reads_the_result_in_the_dashboard(tmp_path):
    """What a user sees in a browser: the study's page with the Pareto front over the objectives by
    name and the search's result among the study's attributes, and its Note page (the left menu's
    "Note") with the recommendation."""
    url, study = _study(tmp_path)
    _result(study)
    with _dashboard(url) as (address, study_id):
        chrome = chromium("the Optuna Dashboard test")
        try:
            chrome.get(f"{address}/dashboard/studies/{study_id}")
            top = wait_for(chrome, lambda c: "Study User Attributes" in page_text(c) and page_text(c),
                           "the study's page", where="Optuna Dashboard").split("\n")
            chrome.get(f"{address}/dashboard/studies/{study_id}/note")
            wait_for(chrome, lambda c: "Recommendation: deploy r2 v[1]" in page_text(c), "the study's note",
                     where="Optuna Dashboard")
        finally:
            chrome.quit()
    x, y = top.index("Objective X:"), top.index("Objective Y:")  # the Pareto front's axes, by name
    assert (top[x + 1], top[y + 1]) == (R.ACCURACY, R.TRAINABLE_PARAMS), top[x:y + 2]
    assert any(line.startswith(RESULT_ATTR) and '"placement_key": "r2 v[1]"' in line for line in top), top
