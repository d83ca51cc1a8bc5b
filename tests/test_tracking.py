"""The tracker's store calls leave Tune's loop: its hooks queue them for one background thread,
the end of the experiment waits for them, a store error still stops the search, and a finished
trial whose run was left RUNNING by a dead driver is closed at the end (search.tuning.tracker)."""

import threading
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from search.tuning.tracker import MlflowTracker, SearchRun, TrialContext
from spaces import Placement
from spaces.space import ModelSpace

SPACE = ModelSpace("model.layers", 2, ("a.q", "a.v"), ("q", "v"), (((4, 4), (4, 4)), ((4, 4), (4, 4))), (False, False))
FINAL = {"epoch": 2, "epoch_score": 0.7, "score": 0.7, "trainable_params": 40, "adapter_params": 32,
         "compute_hours": 0.001}


def _store(tmp_path, new_mlflow_store):
    client = MlflowClient(new_mlflow_store(tmp_path / "mlflow.db"))
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    return client, SearchRun(client.tracking_uri, exp, parent)


def _trial(tid, status="RUNNING"):
    config = {"placement": Placement.full(SPACE, 2).to_json(), "lr": 1e-3, "budget_ratio": 0.5, "repairs": ""}
    return SimpleNamespace(trial_id=tid, config=config, error_file=None, last_result={}, checkpoint=None, status=status)


def _trial_runs(client, run):
    return {r.data.tags["trial_id"]: r for r in client.search_runs([run.experiment_id]) if "trial_id" in r.data.tags}


def test_hooks_return_while_the_store_is_busy_and_the_end_writes_everything(tmp_path, new_mlflow_store):
    client, run = _store(tmp_path, new_mlflow_store)
    tracker = MlflowTracker(client, run, TrialContext(SPACE, "accuracy", "GPU-hours", 1))
    release = threading.Event()
    create_run = client.create_run
    client.create_run = lambda *a, **k: (release.wait(60), create_run(*a, **k))[1]  # a store that hangs
    t = _trial("a")
    hooks = threading.Thread(target=lambda: (tracker.on_trial_start(0, [t], t),
                                             tracker.on_trial_result(0, [t], t, {"epoch": 1, "epoch_score": 0.5}),
                                             tracker.on_trial_complete(0, [t], SimpleNamespace(**{**vars(t), "last_result": FINAL}))))
    hooks.start()
    hooks.join(timeout=20)
    assert not hooks.is_alive(), "a hook waited for the store: Tune's loop (and the trial) would too"
    assert _trial_runs(client, run) == {}  # nothing written yet
    release.set()
    tracker.on_experiment_end(trials=[t])
    r = _trial_runs(client, run)["a"]
    assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed" and r.data.metrics["score"] == 0.7
    assert r.data.params["rank"] == "2" and r.data.metrics["epoch"] == 1
    assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"placement.json", "lora_config.json"}
    assert tracker.run_id("a") == r.info.run_id


def test_a_store_error_stops_the_search_at_the_next_hook(tmp_path, new_mlflow_store):
    client, run = _store(tmp_path, new_mlflow_store)
    tracker = MlflowTracker(client, run, TrialContext(SPACE, "accuracy", "GPU-hours", 1))

    def broken(*a, **k):
        raise ConnectionError("tracking server went away")

    client.log_batch = broken
    t = _trial("a")
    tracker.on_trial_start(0, [t], t)
    with pytest.raises(RuntimeError, match="MLflow tracking failed.*tracking server went away"):
        tracker.flush()
    with pytest.raises(RuntimeError, match="MLflow tracking failed"):
        tracker.on_trial_result(0, [t], t, {"epoch": 1, "epoch_score": 0.5})


def test_a_finished_trial_left_running_by_a_dead_driver_is_closed_at_the_end(tmp_path, new_mlflow_store):
    client, run = _store(tmp_path, new_mlflow_store)
    first = MlflowTracker(client, run, TrialContext(SPACE, "accuracy", "GPU-hours", 2))
    done, unfinished = _trial("done"), _trial("unfinished")
    for t in (done, unfinished):
        first.on_trial_start(0, [done, unfinished], t)
        first.on_trial_result(0, [done, unfinished], t, {"epoch": 1, "epoch_score": 0.5})
    first.flush()  # the driver dies here: Tune's snapshot already says `done` finished, MLflow does not
    resumed = MlflowTracker(MlflowClient(run.tracking_uri), run, TrialContext(SPACE, "accuracy", "GPU-hours", 2))
    done.status, done.last_result = "TERMINATED", FINAL
    resumed.on_experiment_end(trials=[done, unfinished])
    runs = _trial_runs(client, run)
    assert runs["done"].info.status == "FINISHED" and runs["done"].data.tags["status"] == "completed"
    assert runs["done"].data.metrics["score"] == 0.7
    assert runs["unfinished"].info.status == "RUNNING"  # Tune has not finished it: a resumed search reruns it
