"""Failing trials and killed workers.

A trial whose loss becomes non-finite or that runs out of memory is recorded as failed (MLflow
FAILED with the reason, status failed in the table) and not retried; the search goes on. A trial
whose worker process dies is retried (search.max_failures) in the same MLflow run, which ends
FINISHED. The fast tests drive the fault hooks and the tracker's hooks directly; the slow ones run
a 3-trial smoke search through the CLI with the test-only `LORA_SEARCH_TEST_FAULT` injecting one
fault into one trial (`trainables.faults`).
"""

import csv
from types import SimpleNamespace

import pytest

from tests.conftest import run_script
from trainables import faults
from trainables.config import load_config

FAKE_TOKEN = "hf_FAKEtokenDoNotLog0123456789abcdefXYZ"


def test_fault_variable_is_validated_and_off_by_default(monkeypatch):
    with pytest.raises(faults.FaultError, match="expected <fault>:<marker path> with fault one of nan, oom, kill"):
        faults.parse("segv:/tmp/m")
    with pytest.raises(faults.FaultError, match="expected <fault>:<marker path>"):
        faults.parse("oom")
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.from_environment() is None  # off unless asked for
    monkeypatch.setenv(faults.ENV, "kill:/tmp/m")
    assert (faults.from_environment().fault, faults.from_environment().marker) == ("kill", "/tmp/m")


def test_exactly_one_claim_per_marker(tmp_path):
    hooks = [faults.FaultHooks("nan", str(tmp_path / "marker")) for _ in range(3)]  # three trials
    assert not (tmp_path / "marker").exists()
    assert [h.claimed() for h in hooks] == [True, False, False]
    assert [h.claimed() for h in hooks] == [True, False, False]  # decided once per trial
    assert "nan injected in pid" in (tmp_path / "marker").read_text()
    kill = faults.FaultHooks("kill", str(tmp_path / "other"))
    loss = __import__("torch").tensor(1.5)
    assert kill.on_loss(0, loss) is loss and not (tmp_path / "other").exists()  # another fault kind never fires


@pytest.mark.parametrize("fault, error, reason", [
    ("nan", "NonFiniteLoss", "non-finite training loss (nan) at step 0 (epoch 1): lower search.lr_max"),
    ("oom", "OutOfMemoryError", "out of memory (CUDA out of memory. Tried to allocate"),
])
def test_fault_fires_at_the_first_step_and_is_not_retryable(tmp_path, fault, error, reason):
    from spaces import Placement
    from spaces.discovery import discover
    from trainables.data import load_task
    from trainables.model import load_model, vocab_size
    from trainables.train import TokenizedTask, TrialPlan, tokenize, train_placement
    from trainables.worker import failure_reason

    cfg = load_config(["smoke"])
    task = load_task(cfg.data, vocab_size(cfg.model))
    model = load_model(cfg.model, task.num_labels)
    space = discover(model)
    data = TokenizedTask(tokenize(task.train, None, 16), tokenize(task.val, None, 16), task.num_labels, "accuracy")
    reports = []
    with pytest.raises(Exception) as e:
        train_placement(cfg, TrialPlan(Placement.full(space, 2), space, 1e-3), model, data, reports.append,
                        hooks=faults.FaultHooks(fault, str(tmp_path / "marker")))
    assert type(e.value).__name__ == error and reports == []
    assert reason in failure_reason(e.value)
    assert failure_reason(RuntimeError("connection reset by peer")) is None  # other errors: retried


def _tracker(tmp_path, new_mlflow_store):
    from mlflow.tracking import MlflowClient

    from search.tuning.tracker import MlflowTracker, SearchRun, TrialContext
    from spaces import Placement
    from spaces.space import ModelSpace

    space = ModelSpace("model.layers", 2, ("a.q", "a.v"), ("q", "v"), (((4, 4), (4, 4)), ((4, 4), (4, 4))),
                       (False, False))
    client = MlflowClient(new_mlflow_store(tmp_path / "mlflow.db"))
    exp = client.create_experiment("hooks", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    tracker = MlflowTracker(client, SearchRun(client.tracking_uri, exp, parent),
                            TrialContext(space, "accuracy", "CPU-core-hours", 2))
    config = {"placement": Placement.full(space, 2).to_json(), "lr": 1e-3, "budget_ratio": 0.5, "repairs": ""}
    return client, tracker, config


def test_tracker_retries_a_died_worker_in_its_run_and_fails_a_non_retryable_error(tmp_path, new_mlflow_store):
    client, tracker, config = _tracker(tmp_path, new_mlflow_store)
    died, broken = tmp_path / "died.txt", tmp_path / "broken.txt"
    died.write_text("Failure # 1\nray.exceptions.ActorDiedError: The actor died unexpectedly.\n")
    broken.write_text("Failure # 2\n...\nValueError: the data loader broke\n")
    a = SimpleNamespace(trial_id="a", config=dict(config), error_file=str(died), last_result={}, checkpoint=None)
    b = SimpleNamespace(trial_id="b", config=dict(config), error_file=None, last_result={}, checkpoint=None)
    c = SimpleNamespace(trial_id="c", config=dict(config), error_file=str(broken), last_result={}, checkpoint=None)
    for t in (a, b, c):
        tracker.on_trial_start(0, [a, b, c], t)

    tracker.on_trial_recover(0, [a, b, c], a)  # a worker died: retried in the same run
    tracker.on_trial_start(0, [a, b, c], a)
    a.last_result = {"score": 0.75, "trainable_params": 40, "adapter_params": 32}
    tracker.on_trial_complete(0, [a, b, c], a)

    # A repeatable failure reports its reason and ends: Tune completes it, nothing to retry.
    b.last_result = {"epoch_score": float("nan"), "failure": "non-finite training loss"}
    tracker.on_trial_result(0, [a, b, c], b, b.last_result)
    tracker.on_trial_complete(0, [a, b, c], b)
    tracker.on_trial_error(0, [a, b, c], c)  # retries used up: the error's last line is the reason
    tracker.on_experiment_end(trials=[a, b, c])  # Tune's end of the experiment: queued writes are in the store

    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([tracker.run.experiment_id])
            if "trial_id" in r.data.tags}
    assert set(runs) == {"a", "b", "c"}  # one run per trial, the retry included
    assert runs["a"].info.status == "FINISHED" and runs["a"].data.tags["status"] == "completed"
    assert runs["a"].data.tags["retries"] == "1" and "ActorDiedError" in runs["a"].data.tags["retry_reason"]
    assert runs["b"].info.status == "FAILED" and runs["b"].data.tags["status"] == "failed"
    assert runs["b"].data.tags["error"] == "non-finite training loss" and "retries" not in runs["b"].data.tags
    assert runs["c"].info.status == "FAILED" and runs["c"].data.tags["error"] == "ValueError: the data loader broke"
    assert {r.trial_id: r.status for r in tracker.records()} == {"a": "completed", "b": "failed", "c": "failed"}
    # The tracker's records are what the store gives back (one builder).
    from analysis.mlflow_read import read_search

    assert sorted(read_search(client, experiment="hooks")["rows"], key=lambda r: r.trial_id) == \
        sorted((r.replace(start_time=runs[r.trial_id].info.start_time) for r in tracker.records()),
               key=lambda r: r.trial_id)


# ---- slow: a smoke search through the CLI, one injected fault -----------------------------------
def _search(tmp_path, fault: str, env: dict | None = None, probe: bool = False):
    """Run the smoke search with one injected fault; returns (stdout, client, trial runs, csv rows).
    probe: with the learning-rate probe (it trains outside the trials, with no fault hooks)."""
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    marker = tmp_path / "fault.marker"
    proc = run_script("run", "--config", "smoke", "--trials", "3", "--seed", "1", "--output-dir", out,
                      "--experiment", "faults", "--set", "train.epochs=2", "--set", "search.confirm_seeds=0",
                      "--set", f"search.calibrate_lr={str(probe).lower()}",
                      cwd=tmp_path, timeout=400,  # cwd: MLflow's artifacts land here
                      env={faults.ENV: f"{fault}:{marker}", **(env or {})})
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
    # It runs the probe too, so that what the probe stores is searched for the token as well.
    env = {"HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN} if fault == "nan" else {}
    stdout, client, trials, rows = _search(tmp_path, fault, env, probe=fault == "nan")
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
