"""Cluster sweeps: a real multi-node Ray cluster on loopback, and resuming after the driver dies.

Both are slow integration tests: real `ray start` processes, real trials, a real MLflow store.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the loopback cluster of benchmarks/cluster_scale.py


def _cli(*args):
    return [sys.executable, str(ROOT / "search" / "run.py"), "--config", "smoke", *args]


def _child_runs(out_dir: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if "trial_id" in r.data.tags], [r for r in runs if r.data.tags.get("role") == "search"]


def test_the_address_reaches_ray_init_and_no_address_starts_a_runtime_of_its_own(monkeypatch):
    """A bare ray.init() joins any cluster `ray start` launched on this machine (someone else's
    included), so the slow test below would pass even if --address were dropped: check the call."""
    import ray

    from search.prepared import init_ray
    from trainables.config import load_config

    for name in ("RAY_DEDUP_LOGS", "RAY_AIR_NEW_OUTPUT", "TUNE_GLOBAL_CHECKPOINT_S"):
        monkeypatch.delenv(name, raising=False)  # init_ray sets them; undone after the test
    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(kwargs["address"]))
    init_ray(load_config(["smoke"], ["search.address='127.0.0.1:6380'"]))
    init_ray(load_config(["smoke"]))
    assert seen == ["127.0.0.1:6380", "local"]


@pytest.mark.slow
def test_search_runs_on_the_worker_nodes_of_an_existing_cluster(tmp_path):
    from cluster_scale import LoopbackCluster

    # A head that runs no trials (0 CPUs, like a CPU-only head node) and two workers that declare
    # one GPU (and one CPU) each, so trials asking for GPUs must be placed on them (they train on
    # CPU here). The cluster has its own temp dir and is stopped by process id: `ray stop` would
    # stop every Ray cluster on the machine.
    cluster = LoopbackCluster(nodes=2, gpus_per_node=1, root=tmp_path)
    try:
        address = cluster.start()
        out = tmp_path / "out"
        proc = subprocess.run(_cli("--address", address, "--gpus-per-trial", "0.5",
                                   "--cpus-per-trial", "1", "--trials", "2", "--output-dir", str(out),
                                   "--experiment", "cluster", "--set", "search.confirm_seeds=0"),
                              capture_output=True, text=True, timeout=400, cwd=ROOT,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        import ray

        ray.init(address=address)
        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
        ray.shutdown()
        workers = {nid for nid, n in nodes.items() if n["Resources"].get("GPU", 0) > 0}
        assert len(nodes) == 3 and len(workers) == 2
        _, trials, _ = _child_runs(out, "cluster")
        assert len(trials) == 2
        ran_on = {r.data.tags["node_id"] for r in trials}
        assert ran_on <= workers  # never on the head, which has no CPU or GPU for trials
        assert all(r.data.tags["status"] in ("completed", "pruned") for r in trials)
    finally:
        cluster.stop()


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path):
    out = tmp_path / "out"
    args = ["--trials", "4", "--output-dir", str(out), "--experiment", "resumed", "--set", "train.epochs=4",
            "--set", "search.asha_grace_epochs=4",  # every trial runs to the end: nothing is pruned
            "--set", "search.confirm_seeds=0"]  # the search phase alone (tests/test_confirmation.py: the rest)
    driver = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                              start_new_session=True)
    try:
        deadline = time.time() + 300
        for line in driver.stdout:  # wait until a trial has finished, then kill the driver hard
            if line.startswith("[1/4]") or time.time() > deadline:
                break
        time.sleep(5)  # past Tune's 2 s state snapshot period (search.driver), inside trial 2
        assert driver.poll() is None, "the search ended before it could be interrupted"
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    _, before, _ = _child_runs(out, "resumed")
    finished_before = {r.data.tags["trial_id"]: r.info.end_time for r in before if r.info.status == "FINISHED"}
    assert finished_before  # at least one trial finished before the kill

    proc = subprocess.run(_cli("--resume", "--output-dir", str(out), "--experiment", "resumed"),
                          capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, trials, parents = _child_runs(out, "resumed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r.data.tags["trial_id"] for r in trials]
    assert len(ids) == len(set(ids)) == 4  # one run per trial, no duplicates
    assert all(r.info.status == "FINISHED" for r in trials)  # none left RUNNING
    for r in trials:  # finished trials were not re-run
        if r.data.tags["trial_id"] in finished_before:
            assert r.info.end_time == finished_before[r.data.tags["trial_id"]]
        assert r.data.tags["status"] == "completed"
    # The Optuna study in its database went on across the restart: one study, every trial told
    # once with the outcome MLflow holds, nothing left RUNNING.
    import optuna

    study = optuna.load_study(study_name="resumed", storage=f"sqlite:///{out / 'optuna.db'}")
    told = study.get_trials(deepcopy=False)
    assert not [t for t in told if t.state == optuna.trial.TrialState.RUNNING]
    complete = [t for t in told if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert sorted(t.values[0] for t in complete) == pytest.approx(sorted(r.data.metrics["score"] for r in trials))
    # Asking to resume what does not exist is a clear error.
    bad = subprocess.run(_cli("--resume", "--output-dir", str(tmp_path / "nothing")), capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "no earlier search" in bad.stderr
