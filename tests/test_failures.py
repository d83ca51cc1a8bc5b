"""Failing trials and killed workers.

A trial whose loss becomes non-finite or that runs out of memory is recorded as failed (MLflow
FAILED with the reason, status failed in the table) and not retried; the search goes on. A trial
whose worker process dies is retried (search.max_failures) in the same MLflow run, which ends
FINISHED. The fast tests drive the fault hooks and the tracker's hooks directly; the slow ones run
a 3-trial smoke search through the CLI with `train.fault` injecting one fault into one trial.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainables.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
FAKE_TOKEN = "hf_FAKEtokenDoNotLog0123456789abcdefXYZ"


def _fault(tmp_path, fault: str, *more: str):
    return load_config(["smoke"], [f'train.fault="{fault}"', f'train.fault_marker="{tmp_path / "marker"}"', *more])


# ---- fast: the hooks -------------------------------------------------------------------------------
def test_fault_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="train.fault 'segv' is not one of '', 'nan', 'oom', 'kill'"):
        load_config(["smoke"], ['train.fault="segv"'])
    with pytest.raises(ConfigError, match="train.fault 'oom' needs train.fault_marker"):
        load_config(["smoke"], ['train.fault="oom"'])
    assert load_config(["smoke"]).train.fault == ""  # off unless asked for


def test_exactly_one_claim_per_marker(tmp_path):
    from trainables.train import claim_fault

    cfg = _fault(tmp_path, "nan")
    assert not claim_fault(cfg, "oom")  # another fault kind never fires
    assert not (tmp_path / "marker").exists()
    assert [claim_fault(cfg, "nan") for _ in range(3)] == [True, False, False]
    assert "nan injected in pid" in (tmp_path / "marker").read_text()


@pytest.mark.parametrize("fault, error, reason", [
    ("nan", "NonFiniteLoss", "non-finite training loss (nan) at step 0 (epoch 1): lower search.lr_max"),
    ("oom", "OutOfMemoryError", "out of memory (CUDA out of memory. Tried to allocate"),
])
def test_fault_fires_at_the_first_step_and_is_not_retryable(tmp_path, fault, error, reason):
    from spaces import Placement
    from spaces.discovery import discover
    from trainables.data import load_task
    from trainables.model import load_model, vocab_size
    from trainables.train import tokenize, train_placement
    from trainables.tune_entry import failure_reason

    cfg = _fault(tmp_path, fault)
    task = load_task(cfg.data, vocab_size(cfg.model))
    model = load_model(cfg.model, task.num_labels)
    space = discover(model)
    reports = []
    with pytest.raises(Exception) as e:
        train_placement(cfg, Placement.full(space, 2), space, 1e-3, model, tokenize(task.train, None, 16),
                        tokenize(task.val, None, 16), task.num_labels, "accuracy", reports.append)
    assert type(e.value).__name__ == error and reports == []
    assert reason in failure_reason(e.value)
    assert failure_reason(RuntimeError("connection reset by peer")) is None  # other errors: retried


def _tracker(tmp_path):
    from mlflow.tracking import MlflowClient

    from search.tracking import MlflowTracker
    from spaces import Placement
    from spaces.space import ModelSpace

    space = ModelSpace("model.layers", 2, ("a.q", "a.v"), ("q", "v"), (((4, 4), (4, 4)), ((4, 4), (4, 4))),
                       (False, False))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("hooks", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    tracker = MlflowTracker(client, exp, parent, space, "accuracy", "CPU-core-hours", 2)
    config = {"placement": Placement.full(space, 2).to_json(), "lr": 1e-3, "budget_ratio": 0.5, "repairs": ""}
    return client, tracker, config


class FakeTrial(SimpleNamespace):
    def set_config(self, config):
        self.config = config


def test_tracker_retries_a_died_worker_in_its_run_and_fails_a_non_retryable_error(tmp_path):
    client, tracker, config = _tracker(tmp_path)
    died, nan = tmp_path / "died.txt", tmp_path / "nan.txt"
    died.write_text("Failure # 1\nray.exceptions.ActorDiedError: The actor died unexpectedly.\n")
    nan.write_text("Failure # 1\n...\ntrainables.tune_entry.TrialFailed: not retried: non-finite training loss\n")
    a = FakeTrial(trial_id="a", config=dict(config), error_file=str(died), max_failures=1, last_result={},
                  checkpoint=None)
    b = FakeTrial(trial_id="b", config=dict(config), error_file=str(nan), max_failures=3)
    for t in (a, b):
        tracker.on_trial_start(0, [a, b], t)

    tracker.on_trial_recover(0, [a, b], a)  # a worker died: retried in the same run
    tracker.on_trial_start(0, [a, b], a)
    assert a.max_failures == 1 and "not_retried" not in a.config
    a.last_result = {"final_metric": 0.75, "trainable_params": 40, "adapter_params": 32}
    tracker.on_trial_complete(0, [a, b], a)

    tracker.on_trial_recover(0, [a, b], b)  # a repeatable failure: the requeued attempt is the last
    assert b.max_failures == 0 and b.config["not_retried"] == "non-finite training loss"
    tracker.on_trial_error(0, [a, b], b)

    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([tracker.experiment_id]) if "trial_id" in r.data.tags}
    assert set(runs) == {"a", "b"}  # one run per trial, the retry included
    assert runs["a"].info.status == "FINISHED" and runs["a"].data.tags["status"] == "completed"
    assert runs["a"].data.tags["retries"] == "1" and "ActorDiedError" in runs["a"].data.tags["retry_reason"]
    assert runs["b"].info.status == "FAILED" and runs["b"].data.tags["status"] == "failed"
    assert runs["b"].data.tags["error"] == "non-finite training loss" and "retries" not in runs["b"].data.tags
    assert {r["trial_id"]: r["status"] for r in tracker.table_rows()} == {"a": "completed", "b": "failed"}


# ---- slow: a smoke search through the CLI, one injected fault -----------------------------------
def _search(tmp_path, fault: str, env: dict | None = None):
    """Run the smoke search with one injected fault; returns (stdout, client, trial runs, csv rows)."""
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    marker = tmp_path / "fault.marker"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "search" / "run.py"), "--config", "smoke", "--trials", "3", "--seed", "1",
         "--output-dir", str(out), "--experiment", "faults", "--set", "train.epochs=2",
         "--set", f'train.fault="{fault}"', "--set", f'train.fault_marker="{marker}"'],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,  # cwd: MLflow's artifacts land here
        env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker.exists()  # the fault fired, in exactly one trial (the marker is claimed once)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    trials = [r for r in runs if "trial_id" in r.data.tags]
    with open(out / "faults-trials.csv") as f:
        rows = {r["run_id"]: r for r in csv.DictReader(f)}
    assert len(trials) == 3 and set(rows) == {r.info.run_id for r in trials}  # one run per trial
    for run in trials:
        status = run.data.tags["status"]
        assert rows[run.info.run_id]["status"] == status
        if status == "completed":  # every completed trial has its adapter
            adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
            assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter
        else:  # the frontier considers completed trials only
            assert run.data.tags.get("pareto") != "true" and rows[run.info.run_id]["pareto"] == "False"
    assert any(r.data.tags.get("pareto") == "true" for r in trials)
    return proc.stdout, client, trials, rows


@pytest.mark.slow
@pytest.mark.parametrize("fault, reason", [("nan", "non-finite training loss"), ("oom", "out of memory")])
def test_a_trial_that_fails_is_recorded_not_retried_and_the_search_goes_on(tmp_path, fault, reason):
    # The nan search also checks that a token in the environment never reaches the tracking store.
    env = {"HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN} if fault == "nan" else {}
    stdout, client, trials, rows = _search(tmp_path, fault, env)
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert len(failed) == 1, [(r.info.status, r.data.tags) for r in trials]
    run = failed[0]
    assert run.data.tags["status"] == "failed" and rows[run.info.run_id]["status"] == "failed"
    assert reason in run.data.tags["error"] and "not retried" not in run.data.tags["error"]
    # Not retried: a retry would not fault again (the marker is taken) and would have completed;
    # the failed trial never finished an epoch.
    assert "retries" not in run.data.tags and client.get_metric_history(run.info.run_id, "epoch_score") == []
    for other in trials:
        if other is not run:
            assert other.info.status == "FINISHED" and other.data.tags["status"] in ("completed", "pruned")
    assert "1 failed" in stdout
    if fault == "nan":
        stored = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "fault.marker"]
        assert {"mlflow.db", "placement.json", "adapter_config.json"} <= {p.name for p in stored}  # store + artifacts
        leaks = [p for p in stored if FAKE_TOKEN.encode() in p.read_bytes()]
        assert leaks == []


@pytest.mark.slow
def test_a_killed_worker_is_retried_in_the_same_run(tmp_path):
    stdout, client, trials, rows = _search(tmp_path, "kill")
    assert all(r.info.status == "FINISHED" for r in trials)  # none RUNNING, none FAILED
    assert all(r.data.tags["status"] in ("completed", "pruned") for r in trials)
    retried = [r for r in trials if "retries" in r.data.tags]
    assert len(retried) == 1 and retried[0].data.tags["retries"] == "1"
    assert "actor died" in retried[0].data.tags["retry_reason"].lower() or "worker" in retried[0].data.tags["retry_reason"]
    # The retry starts again from epoch 1: the run holds epoch 1 of the killed attempt too.
    steps = [m.step for m in client.get_metric_history(retried[0].info.run_id, "epoch_score")]
    assert steps[:2] == [1, 1]
    assert "retrying" in stdout and "0 failed" in stdout
