"""Cluster sweeps: a real multi-node Ray cluster on loopback, and resuming after the driver dies.

Both are slow integration tests: real `ray start` processes, real trials, a real MLflow store.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import stop_cluster

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args):
    return [sys.executable, str(ROOT / "search" / "run.py"), "--config", "smoke", *args]


def _child_runs(out_dir: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if "trial_id" in r.data.tags], [r for r in runs if r.data.tags.get("role") == "search"]


def _fake_ray_init(monkeypatch, gcs_address="127.0.0.1:6379"):
    """ray.init recorded with Ray's multi-node switch as the call saw it; a started runtime's GCS at
    `gcs_address`."""
    import types

    import ray

    from search.phases.prepare import RAY_MULTI_NODE_ENV

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append({**kwargs, "switch": os.environ.get(RAY_MULTI_NODE_ENV)}))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(gcs_address=gcs_address))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    return calls


def test_the_driver_joins_the_address_it_is_given_else_a_runtime_of_its_own(monkeypatch):
    from search.phases.prepare import RAY_MULTI_NODE_ENV, init_ray
    from trainables.config import load_config

    monkeypatch.setenv(RAY_MULTI_NODE_ENV, "1")
    calls = _fake_ray_init(monkeypatch)
    for address in ("127.0.0.1:6379", "auto", "ray://head:10001"):
        init_ray(load_config(["smoke"], [f"search.address={address}"]))
        assert calls[-1]["address"] == address
        assert calls[-1]["switch"] == "1"  # joining changes nothing about this machine
    init_ray(load_config(["smoke"]))
    # "local": never a cluster `ray start` launched here or RAY_ADDRESS names; started with Ray's
    # multi-node switch off (its servers on 127.0.0.1), which is as it was afterwards
    assert calls[-1]["address"] == "local" and calls[-1]["switch"] == "0"
    assert os.environ[RAY_MULTI_NODE_ENV] == "1"


def test_a_local_runtime_that_would_listen_beyond_loopback_is_shut_down(monkeypatch):
    from search.phases.prepare import init_ray
    from trainables.config import load_config

    calls = _fake_ray_init(monkeypatch, gcs_address="192.0.2.7:6379")  # Ray was imported before the switch
    with pytest.raises(RuntimeError, match="started on 192.0.2.7, so its servers listened on every interface"):
        init_ray(load_config(["smoke"]))
    assert calls[-1] == "shutdown"


@pytest.mark.parametrize("nodes, joined, cpus, gpus, refusal", [
    ([{"CPU": 2}], False, 2, 0, None),
    ([{"CPU": 2}], False, 64, 0, "--cpus-per-trial 64 but the largest node of the Ray cluster has 2 CPUs (a trial "
                                 "runs on one node): pass --cpus-per-trial 2 or fewer"),
    ([{"CPU": 0}, {"CPU": 4}, {"CPU": 4}], False, 8, 0, "has 4 CPUs"),  # 8 in all, but not on one node
    ([{"CPU": 2}], True, 64, 0, None),  # a joined cluster's autoscaler may add a node that fits: a note
    ([{"CPU": 2}], True, 1, 1.0, None),  # (KubeRay's GPU groups often start at 0 nodes)
    ([{"CPU": 2}], False, 1, 1.0, "--gpus-per-trial 1.0 but the Ray cluster has 0 GPUs: pass --gpus-per-trial 0"),
    ([{"CPU": 1, "GPU": 1}, {"CPU": 8}], False, 4, 0.5, "with 0.5 GPUs has 1 CPUs"),
    ([{"CPU": 8, "GPU": 1}], False, 4, 0.5, None),
    ([{"CPU": 8, "GPU": 1}], True, 4, 0.5, None),
])
def test_trial_resources_must_fit_on_one_node(monkeypatch, capsys, nodes, joined, cpus, gpus, refusal):
    import ray

    from search.phases import prepare as prepared
    from search.runtime.errors import UsageError
    from trainables.config import load_config

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": r} for r in nodes] +
                        [{"Alive": False, "Resources": {"CPU": 999, "GPU": 99}}])  # a dead node counts for nothing
    cfg = load_config(["smoke"], [f"search.cpus_per_trial={cpus}", f"search.gpus_per_trial={gpus}"]
                      + (["search.address=127.0.0.1:6379"] if joined else []))
    if refusal is None:
        prepared.check_resources(cfg)
        fits = any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes)
        assert ("the trials wait until its autoscaler adds one" in capsys.readouterr().out) == (not fits)
    else:
        with pytest.raises(UsageError, match=re.escape(refusal)):
            prepared.check_resources(cfg)


@pytest.mark.slow
def test_more_cpus_per_trial_than_any_node_has_is_refused_not_a_hang(tmp_path):
    proc = subprocess.run(_cli("--cpus-per-trial", "64", "--output-dir", str(tmp_path / "out")), capture_output=True,
                          text=True, timeout=180, cwd=tmp_path, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--cpus-per-trial 64 but the largest node of the Ray cluster has" in lines[0]
    assert list(tmp_path.iterdir()) == []


_LISTENERS = """
import psutil
from search.phases.prepare import init_ray
from trainables.config import load_config
init_ray(load_config(["smoke"]))  # the first import of Ray in this process, as in search/run.py
import ray
print("nodes", len(ray.nodes()), ray.get_runtime_context().gcs_address)
procs = [psutil.Process()] + psutil.Process().children(recursive=True)
for p in procs:
    try:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                print("listen", p.name(), c.laddr.ip, c.laddr.port)
    except psutil.Error:
        pass
ray.shutdown()
"""


def _local_runtime(env: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """Start the driver's local runtime in a fresh process: (its `nodes` line, every listening socket)."""
    out = subprocess.run([sys.executable, "-c", _LISTENERS], capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    nodes = next(line.split() for line in lines if line.startswith("nodes"))
    return nodes, [tuple(line.split()[1:3]) for line in lines if line.startswith("listen")]


@pytest.mark.slow
def test_a_local_runtime_listens_on_loopback_only():
    _, listening = _local_runtime({**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert listening, "no listening sockets found"
    assert {ip for _, ip in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening


@pytest.mark.slow
def test_search_runs_on_the_worker_nodes_of_an_existing_cluster(tmp_path):
    from benchmarks.cluster_scale import LoopbackCluster  # the loopback cluster of the benchmark

    # A head that runs no trials (0 CPUs, like a CPU-only head node) and two workers that declare
    # one GPU (and one CPU) each, so trials asking for GPUs must be placed on them (they train on
    # CPU here). The cluster has its own temp dir and is stopped by process id: `ray stop` would
    # stop every Ray cluster on the machine.
    cluster = LoopbackCluster(nodes=2, gpus_per_node=1, root=tmp_path)
    try:
        address = cluster.start()
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        # Without --address the driver starts a runtime of its own, never the cluster found on this machine.
        local, _ = _local_runtime(env)
        assert local[1] == "1" and local[2] != address, local
        out = tmp_path / "out"
        # RAY_ADDRESS names no cluster: a driver that dropped --address would fail to connect, and
        # one that started a local runtime would run the trials on a node that is not a worker.
        joined = {**env, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}
        proc = subprocess.run(_cli("--address", address, "--gpus-per-trial", "0.5",
                                   "--cpus-per-trial", "1", "--trials", "2", "--output-dir", str(out),
                                   "--experiment", "cluster", "--set", "search.confirm_seeds=0"),
                              capture_output=True, text=True, timeout=400, cwd=ROOT, env=joined)
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
        stop_cluster(cluster)


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path):
    out = tmp_path / "out"
    args = ["--trials", "4", "--output-dir", str(out), "--experiment", "resumed", "--set", "train.epochs=4",
            "--set", "search.asha_grace_epochs=4",  # every trial runs to the end: nothing is pruned
            "--set", "search.confirm_seeds=0",  # the search phase alone (tests/test_confirmation.py: the rest)
            "--set", "search.calibrate_lr=false"]  # no probe either (tests/test_confirmation.py: not redone on resume)
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


@pytest.mark.slow
def test_a_cluster_with_token_auth_joined_without_a_token_is_one_line_naming_the_fix(tmp_path):
    """A plain `ray start --head` on a machine with a saved token (~/.ray/auth_token) turns token
    authentication on; `ray.init` with an explicit address joins without a token unless
    RAY_AUTH_MODE=token, retries for a minute and says only "Failed to connect". The driver asks
    first and says what to export. The head runs in its own session with its own temp dir and is
    stopped by process id (`ray stop` would stop every Ray cluster on the machine)."""
    import secrets
    import tempfile

    from benchmarks.cluster_scale import _descendants, _listening, _stop_group
    from tests.conftest import one_error_line, script_argv

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # RAY_AUTH_MODE unset
    plain["RAY_USAGE_STATS_ENABLED"] = "0"
    port, temp_dir = _free_port(), tempfile.mkdtemp(prefix="rauth-", dir="/tmp")  # short: socket paths
    address = f"127.0.0.1:{port}"
    with open(tmp_path / "ray-head.log", "w") as log:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block", "--head",
                                 f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                 "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                                stdout=log, stderr=subprocess.STDOUT, env={**plain, "HOME": str(home)},
                                start_new_session=True)
    try:
        deadline = time.time() + 120
        while not _listening(port) and head.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert _listening(port), (tmp_path / "ray-head.log").read_text()[-2000:]
        t0 = time.time()
        proc = subprocess.run(script_argv("run", "--config", "smoke", "--address", address, "--output-dir",
                                          tmp_path / "out"), capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env=plain)
        took_s = time.time() - t0
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        line = one_error_line(proc.stderr)
        assert f"search.address {address}: the Ray cluster requires token authentication" in line
        assert "export RAY_AUTH_MODE=token" in line and "~/.ray/auth_token" in line
        assert took_s < 60, took_s  # not Ray's minute of retries
        assert not (tmp_path / "out").exists()
        # The fix it names works: with RAY_AUTH_MODE=token (the token in ~/.ray/auth_token) Ray joins;
        # a wrong token is its own line.
        join = ("import ray\nfrom search.runtime.checks import ray_auth_problem\n"
                f"print('problem:', ray_auth_problem({address!r}))\n"
                f"ray.init(address={address!r}, log_to_driver=False)\nprint('joined', len(ray.nodes()))\n")
        fixed = subprocess.run([sys.executable, "-c", join], capture_output=True, text=True, timeout=180, cwd=ROOT,
                               env={**plain, "HOME": str(home), "RAY_AUTH_MODE": "token"})
        assert "problem: None" in fixed.stdout and "joined 1" in fixed.stdout, fixed.stdout + fixed.stderr[-2000:]
        wrong = subprocess.run([sys.executable, "-c", join.split("ray.init")[0]], capture_output=True, text=True,
                               timeout=180, cwd=ROOT, env={**plain, "RAY_AUTH_MODE": "token",
                                                           "RAY_AUTH_TOKEN": secrets.token_hex(32)})
        assert "the Ray cluster refused this driver's token" in wrong.stdout, wrong.stdout + wrong.stderr[-2000:]
    finally:
        _stop_group(head, _descendants(head.pid), grace_s=3)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_token_question_is_asked_only_of_a_host_port_that_answers():
    """`ray_auth_problem` asks a HOST:PORT cluster's GCS; "", "auto", ray:// and a port where nothing
    listens are left to `ray.init` at once (Ray's client would wait its whole timeout on a closed port)."""
    import ray  # noqa: F401  (imported first, as `init_ray` does)

    from search.runtime.checks import ray_auth_problem

    t0 = time.time()
    for address in ("", "auto", "ray://127.0.0.1:10001", f"127.0.0.1:{_free_port()}"):
        assert ray_auth_problem(address) is None
    assert time.time() - t0 < 10
