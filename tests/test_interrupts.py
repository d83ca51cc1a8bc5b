"""Stopping and restarting a search: one driver per search, Ctrl-C and SIGTERM end it as KILLED with
the --resume command, a new search stopped before its first trial takes back what it wrote, and a
restarted driver keeps one outcome per trial in MLflow and Optuna alike.

The fast tests drive the parts (the lock, the study claim, the settled outcomes, the tracker, the
searcher); the slow ones stop a real smoke search through the CLI with SIGINT and SIGTERM, as a
terminal, Slurm or Kubernetes would.
"""

import json
import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.runtime.errors import UsageError
from tests.conftest import run_script, start_script
from trainables import record as R


# ---- one driver per search ---------------------------------------------------------------------
def test_a_second_driver_on_the_same_search_is_refused(tmp_path):
    from search.runtime.workspace import SearchLock

    with SearchLock(tmp_path / "out", "s1"):
        with pytest.raises(UsageError, match=r"search 's1' in .* is being run by another driver \(pid \d+ on .*\): "
                                             "wait for it to end, or pass another --experiment name"):
            with SearchLock(tmp_path / "out", "s1"):
                pass
        with SearchLock(tmp_path / "out", "s2"):  # another search in the same folder is fine
            pass
    with SearchLock(tmp_path / "out", "s1"):  # released when the first driver ends
        pass


def test_a_search_another_driver_runs_is_refused_before_ray_starts(tmp_path):
    from search.runtime.workspace import SearchLock, check_free

    check_free(tmp_path / "out", "s1")  # nothing there: free, and nothing written
    assert not (tmp_path / "out").exists()
    with SearchLock(tmp_path / "out", "s1"):
        with pytest.raises(UsageError, match=r"search 's1' in .* is being run by another driver \(pid \d+ on "):
            check_free(tmp_path / "out", "s1")
    check_free(tmp_path / "out", "s1")  # the lock file stays, the lock does not
    with SearchLock(tmp_path / "out", "s1"):  # and the probe took no lock of its own
        pass


def test_a_new_search_claims_its_study_exclusively(tmp_path):
    from search.runtime.workspace import claim_study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    claim_study(url, "s1")
    with pytest.raises(UsageError, match="already holds a study named 's1' .another driver started it just now."):
        claim_study(url, "s1")


def test_a_new_search_stopped_before_its_first_trial_takes_back_what_it_wrote(tmp_path, new_mlflow_store):
    from mlflow.tracking import MlflowClient

    from search.runtime.workspace import SearchLock, Written, claim_study

    out = tmp_path / "out"
    search = SimpleNamespace(output_dir=out, name="s1", tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
                             study_url=f"sqlite:///{out / 'optuna.db'}", storage_path=str(out / "ray_results"))
    written = Written.before(search)
    with SearchLock(out, "s1"):
        claim_study(search.study_url, "s1")
        written.study_claimed = True
        (out / "s1.search.json").write_text("{}")
        (out / "s1-scores.png").write_bytes(b"png")
        new_mlflow_store(out / "mlflow.db")  # what MLflow's first call makes, in a blink
        client = MlflowClient(search.tracking_uri)
        written.experiment_id = client.create_experiment("s1", artifact_location=(out / "mlartifacts").as_uri())
        parent = client.create_run(written.experiment_id).info.run_id
        client.log_dict(parent, {"a": 1}, "config.json")  # lands in mlartifacts/<run id>/artifacts
        written.remove(client, parent)
    assert not out.exists(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_resume_with_a_damaged_state_file_is_one_line(tmp_path, monkeypatch, capsys):
    from search.run import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "s1.search.json").write_text('{"config": {"model": {"name": "tiny-be')  # truncated
    monkeypatch.chdir(tmp_path)
    assert main(["--resume", "--output-dir", str(out), "--experiment", "s1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--resume: the search's state file {out / 's1.search.json'} is damaged (JSONDecodeError" in err
    assert "start it again under another --experiment name" in err
    assert sorted(p.name for p in out.iterdir()) == ["s1.search.json"]


# ---- the signal handler ------------------------------------------------------------------------
def _deliver(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in the main thread at its next instruction


def test_a_signal_inside_a_tune_phase_stops_tune_and_a_second_one_stops_at_once():
    from search.runtime.interrupts import Interrupts

    asked = []
    before, env = signal.getsignal(signal.SIGINT), os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    with Interrupts() as interrupts:
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune must not answer Ctrl-C itself
        with interrupts.tune_phase():
            signal.signal(signal.SIGUSR1, lambda *_: asked.append("stop"))  # what tuner.fit() installs
            _deliver(signal.SIGINT)
            assert asked == ["stop"] and interrupts.stopped and interrupts.exit_code == 130
            with pytest.raises(KeyboardInterrupt):
                _deliver(signal.SIGINT)
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # no handler of an ended Tune run left
    assert signal.getsignal(signal.SIGINT) is before and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == env


def test_sigterm_outside_a_tune_phase_interrupts_and_exits_143():
    from search.runtime.interrupts import Interrupts

    with Interrupts() as interrupts:
        signal.signal(signal.SIGTERM, lambda *_: None)  # ray.init installs a SIGTERM handler of its own
        interrupts.install()  # ... which the driver takes back
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGTERM)
        assert interrupts.exit_code == 143 and interrupts.name == "SIGTERM"


def test_the_processes_ray_starts_for_a_local_runtime_get_a_session_of_their_own():
    """A SIGTERM to the driver's process group (`timeout`, Slurm) must not reach Ray's GCS and
    raylet: `ray_processes_apart` starts them, through Ray's own Popen, in a session of their own
    (the slow test below stops a real search that way)."""
    import subprocess
    import sys

    import ray._private.services as services

    from search.runtime.ray_internals import ray_processes_apart

    show_session = [sys.executable, "-c", "import os; print(os.getsid(0), os.getpid())"]
    with ray_processes_apart():
        apart = services.ConsolePopen(show_session, stdout=subprocess.PIPE, text=True)
    sid, pid = apart.communicate(timeout=30)[0].split()
    assert sid == pid  # a session (and process group) of its own
    assert services.ConsolePopen is not None and "Apart" not in services.ConsolePopen.__name__  # put back
    plain = services.ConsolePopen(show_session, stdout=subprocess.PIPE, text=True)
    assert plain.communicate(timeout=30)[0].split()[0] == str(os.getsid(0))


# ---- the trial entry point ----------------------------------------------------------------------
def test_a_settled_trial_reports_its_outcome_without_training(monkeypatch):
    from ray import tune

    from trainables import tune_entry

    reported = []
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reported.append(metrics))
    monkeypatch.setattr(tune_entry, "cached_task", lambda *a: pytest.fail("a settled trial trains nothing"))
    outcome = {R.SETTLED: True, R.EPOCH_SCORE: 0.5}
    tune_entry.run_trial({}, cfg_dict={}, space_dict={}, metric_name="accuracy", settled={"t1": outcome})
    assert reported == [outcome]


def test_a_trial_leaves_no_adapter_folder_behind(monkeypatch, tmp_path):
    """The adapter travels as Tune's checkpoint; the temporary folder it was saved to goes, also
    when training raises."""
    import tempfile

    from ray import tune

    from spaces import Placement
    from trainables import model as model_module
    from trainables import tune_entry
    from trainables.config import load_config

    space = _space()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(tune_entry, "cached_task", lambda *a: (SimpleNamespace(num_labels=2), None))
    monkeypatch.setattr(model_module, "load_model", lambda *a, **kw: None)
    seen = []

    def train(*args):
        save_dir = Path(args[-1])
        (save_dir / "adapter_model.safetensors").write_bytes(b"x")
        seen.append(save_dir)
        if len(seen) == 2:
            raise RuntimeError("a worker died")

    monkeypatch.setattr(tune_entry, "_train", train)
    trial = {"placement": Placement.full(space, 2).to_json(), "lr": 1e-3}
    cfg = load_config(["smoke"]).to_dict()
    tune_entry.run_trial(trial, cfg_dict=cfg, space_dict=space.to_dict(), metric_name="accuracy")
    with pytest.raises(RuntimeError):
        tune_entry.run_trial(trial, cfg_dict=cfg, space_dict=space.to_dict(), metric_name="accuracy")
    assert len(seen) == 2 and seen[0].name.startswith("adapter-") and not any(p.exists() for p in seen)


# ---- one outcome per trial, in both stores, across a restart -------------------------------------
def _space():
    from spaces.space import ModelSpace

    return ModelSpace("model.layers", 2, ("a.q", "a.v"), ("q", "v"), (((4, 4), (4, 4)), ((4, 4), (4, 4))),
                      (False, False))


def _store(tmp_path, new_mlflow_store):
    from mlflow.tracking import MlflowClient

    from search.tuning.tracker import MlflowTracker, SearchRun, TrialContext
    from spaces import Placement

    space = _space()
    client = MlflowClient(new_mlflow_store(tmp_path / "mlflow.db"))
    exp = client.create_experiment("s1", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"role": "search"}).info.run_id
    run = SearchRun(client.tracking_uri, exp, parent)
    context = TrialContext(space, "accuracy", "CPU-core-hours", 3)
    config = {"placement": Placement.full(space, 2).to_json(), "lr": 1e-3, "budget_ratio": 0.5, "repairs": ""}
    return client, run, context, config, lambda: MlflowTracker(client, run, context)


def test_a_restarted_driver_reports_known_outcomes_and_neither_store_changes_its_mind(tmp_path, new_mlflow_store):
    """ASHA pruned t1 and the tracker closed its run, then the driver died before Tune's snapshot:
    Tune reruns t1. It reports its recorded outcome instead of training; MLflow keeps `pruned`,
    Optuna gets PRUNED. t2's outcome reached Optuna only: its run is closed with that outcome."""
    import optuna
    from optuna.trial import TrialState

    from search.phases.explore import settled as _settled
    from search.sampling.study import DIRECTIONS, TUNE_TRIAL_ATTR

    client, run, context, config, tracker = _store(tmp_path, new_mlflow_store)
    first = tracker()
    t1 = SimpleNamespace(trial_id="t1", config={**config, "optuna_trial": 0}, last_result={}, checkpoint=None)
    t2 = SimpleNamespace(trial_id="t2", config={**config, "optuna_trial": 1}, last_result={}, checkpoint=None)
    for t in (t1, t2):
        first.on_trial_start(0, [], t)
        first.on_trial_result(0, [], t, {"epoch": 1, "epoch_score": 0.55, "compute_hours": 0.001})
    t1.last_result = {"epoch_score": 0.55, "compute_hours": 0.001}  # stopped by ASHA after epoch 1
    first.on_trial_complete(0, [], t1)
    first.flush()  # the tracker's store calls run on its writer thread
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s1", storage=url, directions=DIRECTIONS)
    for tid in ("t1", "t2"):
        trial = study.ask()
        trial.set_user_attr(TUNE_TRIAL_ATTR, tid)
    study.tell(1, [0.9, 40])  # t2 was told to Optuna, and the driver died before its run was closed

    search = SimpleNamespace(name="s1", study_url=url)
    settled = _settled(search, client, run)
    assert settled["t1"] == {R.SETTLED: True, R.EPOCH_SCORE: 0.55, R.COMPUTE_HOURS: 0.001}  # pruned: no score
    assert settled["t2"][R.SCORE] == 0.9 and settled["t2"][R.TRAINABLE_PARAMS] == 40

    closed = {r.data.tags["trial_id"]: r.info.end_time for r in client.search_runs([run.experiment_id])
              if r.data.tags.get("trial_id") == "t1"}
    time.sleep(0.01)
    again = tracker()  # the restarted driver's tracker: Tune reruns t1 and t2, each reports its outcome
    for t in (t1, t2):
        t.last_result = settled[t.trial_id]
        again.on_trial_start(0, [], t)
        again.on_trial_result(0, [], t, t.last_result)
        again.on_trial_complete(0, [], t)
    again.flush()
    from search.sampling.study import optuna_state

    assert optuna_state(settled["t1"], False)[0] == TrialState.PRUNED
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([run.experiment_id]) if "trial_id" in r.data.tags}
    assert runs["t1"].data.tags["status"] == "pruned" and "score" not in runs["t1"].data.metrics
    assert [m.step for m in client.get_metric_history(runs["t1"].info.run_id, "epoch_score")] == [1]  # no new epoch
    assert runs["t2"].data.tags["status"] == "completed" and runs["t2"].data.metrics["score"] == 0.9
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["t1"].info.end_time == closed["t1"]  # the settled rerun left its closed run alone


def test_a_trial_the_full_disk_broke_is_rerun_on_resume_into_its_run(tmp_path, new_mlflow_store):
    """Tune gave up on t1 because its checkpoint met a full disk: that is no outcome of the
    placement. Its run is closed KILLED (not FAILED) and no stored outcome is read for it, even
    where an older driver had told the study FAIL, so a rerun trains it again, in the same run;
    t2's real error stays a failure."""
    import optuna

    from search.phases.explore import settled as _settled
    from search.sampling.study import DIRECTIONS, TUNE_TRIAL_ATTR

    client, run, context, config, tracker = _store(tmp_path, new_mlflow_store)
    full, broken = tmp_path / "full.txt", tmp_path / "broken.txt"
    full.write_text("Failure # 1\nray.exceptions.RayTaskError(OSError): ray::run_trial()\n"
                    "OSError: [Errno 28] No space left on device: '/out/full/checkpoint_000001'\n")
    broken.write_text("Failure # 1\nValueError: the data loader broke\n")
    first = tracker()
    t1 = SimpleNamespace(trial_id="t1", config={**config, "optuna_trial": 0}, error_file=str(full),
                         last_result={}, checkpoint=None)
    t2 = SimpleNamespace(trial_id="t2", config={**config, "optuna_trial": 1}, error_file=str(broken),
                         last_result={}, checkpoint=None)
    for t in (t1, t2):
        first.on_trial_start(0, [], t)
        first.on_trial_result(0, [], t, {"epoch": 1, "epoch_score": 0.55, "compute_hours": 0.001})
        first.on_trial_error(0, [], t)
    first.flush()
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([run.experiment_id]) if "trial_id" in r.data.tags}
    assert (runs["t1"].info.status, runs["t1"].data.tags["status"]) == ("KILLED", R.KILLED)
    assert "No space left on device" in runs["t1"].data.tags["error"]
    assert (runs["t2"].info.status, runs["t2"].data.tags["status"]) == ("FAILED", R.FAILED)

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s1", storage=url, directions=DIRECTIONS)
    for tid in ("t1", "t2"):
        study.ask().set_user_attr(TUNE_TRIAL_ATTR, tid)
        study.tell(study.trials[-1].number, state=optuna.trial.TrialState.FAIL)  # an older driver told FAIL
    settled = _settled(SimpleNamespace(name="s1", study_url=url), client, run)
    assert "t1" not in settled and settled["t2"][R.FAILURE] == "ValueError: the data loader broke"

    again = tracker()  # a search resumed without Tune's state reruns t1 (the study's orphan)
    t1.last_result = {"score": 0.8, "trainable_params": 9, "adapter_params": 8}
    again.on_trial_start(0, [], t1)
    again.on_trial_complete(0, [], t1)
    again.flush()
    runs = [r for r in client.search_runs([run.experiment_id]) if r.data.tags.get("trial_id") == "t1"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["status"] == R.COMPLETED


def test_a_trial_asked_again_logs_into_the_run_it_had(tmp_path, new_mlflow_store):
    """A trial the dead driver had started after Tune's last snapshot runs again under a new Tune
    id, as the same Optuna trial: it logs into its run, never a second one."""
    client, run, context, config, tracker = _store(tmp_path, new_mlflow_store)
    first = tracker()
    first.on_trial_start(0, [], SimpleNamespace(trial_id="old", config={**config, "optuna_trial": 3}))
    first.flush()  # the tracker's store calls run on its writer thread
    again = tracker()
    new = SimpleNamespace(trial_id="new", config={**config, "optuna_trial": 3}, checkpoint=None,
                          last_result={"score": 0.8, "trainable_params": 9, "adapter_params": 8})
    again.on_trial_start(0, [], new)
    again.on_trial_complete(0, [], new)
    again.flush()
    runs = [r for r in client.search_runs([run.experiment_id]) if "trial_id" in r.data.tags]
    assert len(runs) == 1 and runs[0].data.tags["trial_id"] == "new" and runs[0].data.tags["status"] == "completed"
    assert runs[0].data.params["optuna_trial"] == "3"


def test_a_tune_phase_restores_only_from_a_whole_saved_state(tmp_path):
    """`Tuner.can_restore` only sees tuner.pkl, written before Tune saves any state; restored from
    there, Ray starts over without num_samples or the param space. A phase restores only when
    the newest save is whole, its search state included; else it starts a new Tune run."""
    import pickle

    from search.tuning.tune_state import GRID_STATE, SEARCHER_STATE, restorable

    exp = tmp_path / "s1"
    assert not restorable(str(exp), SEARCHER_STATE)  # no folder
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"tune_config": list(range(100))}))
    assert not restorable(str(exp), SEARCHER_STATE)  # killed as the phase started
    (exp / "experiment_state-2026-01-01_00-00-02.json").write_text('{"trial_data": []}')
    assert not restorable(str(exp), SEARCHER_STATE)  # killed between the two writes of a save
    (exp / "search_gen_state-2026-01-01_00-00-01.json").write_text("{}")  # an older save's
    assert not restorable(str(exp), SEARCHER_STATE)
    (exp / "search_gen_state-2026-01-01_00-00-02.json").write_text("{}")
    assert restorable(str(exp), SEARCHER_STATE) and not restorable(str(exp), GRID_STATE)
    (exp / "tuner.pkl").write_bytes((exp / "tuner.pkl").read_bytes()[:40])  # cut short while written
    assert not restorable(str(exp), SEARCHER_STATE)
    (exp / "tuner.pkl").write_bytes(pickle.dumps({}))
    (exp / "experiment_state-2026-01-01_00-00-03.json").write_text('{"trial_da')
    (exp / "search_gen_state-2026-01-01_00-00-03.json").write_text("{}")
    assert not restorable(str(exp), SEARCHER_STATE)  # the newest state cut short while written


def test_why_no_trial_completed():
    from search.phases.publish import why_none_completed as _why_none_completed

    failed = R.TrialRecord("a", "ra", "r2 q[0]", status=R.FAILED, error="non-finite training loss (nan) at step 0")
    pruned = R.TrialRecord("b", "rb", "r2 v[0]", status=R.PRUNED)
    assert _why_none_completed([failed, failed, pruned], 0) == (
        "no trial completed (2 of 3 failed; 2 with: non-finite training loss (nan) at step 0): fix what the reason "
        "names (the MLflow runs hold every trial's error)")
    assert "raise --max-compute-hours" in _why_none_completed([pruned], 0.01)


# ---- slow: a real smoke search, stopped with a signal ---------------------------------------------
def _runs(out: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if r.data.tags.get("role") == "search"], [r for r in runs if "trial_id" in r.data.tags]


def _start(args, cwd: Path):
    return start_script("run", "--config", "smoke", *args, cwd=cwd)


def _signal_after(driver, prefix: str, sig: int, seen: list, wait_s: float = 0.0, timeout_s: float = 400) -> None:
    deadline = time.time() + timeout_s
    for line in driver.stdout:
        seen.append(line)
        if line.startswith(prefix) or time.time() > deadline:
            break
    time.sleep(wait_s)
    assert driver.poll() is None, "the search ended before it could be stopped:\n" + "".join(seen[-20:])
    os.kill(driver.pid, sig)


def _finish(driver, seen: list, timeout_s: float = 300) -> str:
    try:
        rest, _ = driver.communicate(timeout=timeout_s)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return "".join(seen) + rest


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_after_the_first_trial_ends_the_search_as_killed_and_resume_finishes_it(tmp_path, sig):
    out = tmp_path / "out"
    # Trials long enough (16x the smoke data) that the signal lands while trials 2 and 3 still run.
    args = ["--trials", "3", "--output-dir", str(out), "--experiment", "stopped", "--set", "train.epochs=4",
            "--set", "search.asha_grace_epochs=4", "--set", "search.confirm_seeds=0",
            "--set", "search.calibrate_lr=false", "--set", "data.synthetic_examples=4096"]
    driver, seen = _start(args, tmp_path), []
    _signal_after(driver, "[1/3]", sig, seen, wait_s=2)  # inside trial 2
    text = _finish(driver, seen)
    assert driver.returncode == 128 + sig, text[-3000:]
    assert "Traceback" not in text and "Aborted" not in text and "core dumped" not in text
    assert f"{signal.Signals(sig).name}: the search was stopped;" in text
    assert f"continue with: python search/run.py --resume --output-dir {out} --experiment stopped" in text
    parents, trials = _runs(out, "stopped")
    assert parents[0].info.status == "KILLED"
    assert trials and all(r.info.status != "RUNNING" for r in trials)  # none left RUNNING
    assert any(r.data.tags["status"] == "killed" and r.info.status == "KILLED" for r in trials)
    if sig == signal.SIGTERM:
        return  # the same state as after Ctrl-C; the resume below is checked once
    # A second driver on the search while none runs is fine: --resume finishes it.
    proc = run_script("run", "--config", "smoke", "--resume", "--output-dir", out, "--experiment", "stopped",
                      cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "min in this run," in proc.stdout and "min since it started" in proc.stdout
    parents, trials = _runs(out, "stopped")
    assert parents[0].info.status == "FINISHED" and len(parents) == 1
    ids = [r.data.tags["trial_id"] for r in trials]
    assert len(ids) == len(set(ids)) == 3 and all(r.info.status == "FINISHED" for r in trials)
    import optuna

    told = optuna.load_study(study_name="stopped", storage=f"sqlite:///{out / 'optuna.db'}").get_trials()
    assert len(told) == 3 and {t.state.name for t in told} == {"COMPLETE"}  # nothing RUNNING or WAITING


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_ends_the_search_as_sigterm_to_the_driver_does(tmp_path):
    """`timeout`, Slurm, systemd and Kubernetes send SIGTERM to the driver's whole process group.
    The search's Ray processes (GCS, raylet, workers) must not be in it, or they die under the
    driver: no trial marked, no --resume line, no exit 143."""
    out = tmp_path / "out"
    args = ["--trials", "3", "--output-dir", str(out), "--experiment", "grouped", "--set", "train.epochs=4",
            "--set", "search.asha_grace_epochs=4", "--set", "search.confirm_seeds=0",
            "--set", "search.calibrate_lr=false", "--set", "data.synthetic_examples=4096"]
    driver, seen = _start(args, tmp_path), []
    _signal_after(driver, "[1/3]", 0, seen, wait_s=2)  # signal 0: only checks the driver is alive
    os.killpg(driver.pid, signal.SIGTERM)  # the driver's group, as `timeout` or `kill -TERM -PGID` does
    text = _finish(driver, seen)
    assert driver.returncode == 143, text[-3000:]
    assert "Traceback" not in text and "Aborted" not in text and "core dumped" not in text
    assert "SIGTERM: the search was stopped;" in text, text[-3000:]
    assert f"continue with: python search/run.py --resume --output-dir {out} --experiment grouped" in text
    parents, trials = _runs(out, "grouped")
    assert parents[0].info.status == "KILLED"
    assert trials and all(r.info.status != "RUNNING" for r in trials)  # none left RUNNING


def kill_when_tune_starts(driver, prefix: str, tune_dir: Path, seen: list, timeout_s: float = 400) -> None:
    """SIGKILL the driver (and its Ray processes) once it printed a line starting with `prefix`
    and Ray Tune wrote `tune_dir/tuner.pkl`: the Tuner exists, Tune has saved no experiment state
    yet (a driver killed just as a Tune phase starts)."""
    deadline = time.time() + timeout_s
    try:
        for line in driver.stdout:
            seen.append(line)
            if line.startswith(prefix) or time.time() > deadline:
                break
        while not (tune_dir / "tuner.pkl").exists() and driver.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert driver.poll() is None, "the search ended before it could be killed:\n" + "".join(seen[-20:])
        assert (tune_dir / "tuner.pkl").exists(), "".join(seen[-20:])
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)


@pytest.mark.slow
def test_a_driver_killed_as_the_search_starts_resumes_every_trial(tmp_path):
    """Killed 1 s after `searching:` (Tune's tuner.pkl written, no experiment state yet): Ray's
    restore would start over with 1 trial (its restart drops num_samples); --resume runs them all."""
    out = tmp_path / "out"
    args = ["--trials", "3", "--output-dir", str(out), "--experiment", "early", "--set", "search.confirm_seeds=0",
            "--set", "search.calibrate_lr=false"]
    seen = []
    kill_when_tune_starts(_start(args, tmp_path), "searching:", out / "ray_results" / "early", seen)
    proc = run_script("run", "--config", "smoke", "--resume", "--output-dir", out, "--experiment", "early",
                      cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parents, trials = _runs(out, "early")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r.data.tags["trial_id"] for r in trials]
    assert len(ids) == len(set(ids)) == 3, proc.stdout[-3000:]  # every trial of search.trials, each once
    assert all(r.info.status == "FINISHED" and r.data.tags["status"] in ("completed", "pruned") for r in trials)
    import optuna

    told = optuna.load_study(study_name="early", storage=f"sqlite:///{out / 'optuna.db'}").get_trials()
    assert len(told) == 3 and {t.state.name for t in told} <= {"COMPLETE", "PRUNED"}  # nothing RUNNING or WAITING
    counts = re.search(r"(\d+) completed, (\d+) stopped early by ASHA, (\d+) failed", proc.stdout)
    assert counts and sum(map(int, counts.groups())) == 3  # the full result, not 1 of 3


@pytest.mark.slow
def test_resume_while_the_first_driver_runs_is_refused(tmp_path):
    out = tmp_path / "out"
    driver, seen = _start(["--trials", "2", "--output-dir", str(out), "--experiment", "busy"], tmp_path), []
    try:
        for line in driver.stdout:
            seen.append(line)
            if line.startswith(("calibrating", "searching")):
                break
        proc = run_script("run", "--config", "smoke", "--resume", "--output-dir", out, "--experiment", "busy",
                          cwd=tmp_path, timeout=300)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "search 'busy' in" in lines[0] and "is being run by another driver (pid" in lines[0]
        assert f"pid {driver.pid} " in lines[0]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["preparing", "calibrating"])
def test_a_signal_before_the_first_trial_leaves_nothing_behind(tmp_path, when):
    out = tmp_path / "out"
    driver, seen = _start(["--output-dir", str(out), "--experiment", "early"], tmp_path), []
    _signal_after(driver, when, signal.SIGINT, seen, wait_s=1 if when == "calibrating" else 0)
    text = _finish(driver, seen)
    assert driver.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert ("nothing was written" if when == "preparing" else "removed what this search had written") in text
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [], left  # no output folder, store, study or state file


@pytest.mark.slow
def test_a_search_whose_every_trial_fails_exits_non_zero_and_says_why(tmp_path):
    out = tmp_path / "out"
    proc = run_script("run", "--config", "smoke", "--trials", "1", "--output-dir", out, "--experiment", "allfail",
                      "--set", "search.calibrate_lr=false", "--set", "search.confirm_seeds=0", cwd=tmp_path,
                      timeout=600, env={"LORA_SEARCH_TEST_FAULT": f"nan:{tmp_path / 'marker'}"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "no trial completed (1 of 1 failed; 1 with: non-finite training loss" in lines[0]
    assert "fix what the reason names" in lines[0]
    assert json.loads((out / "allfail.search.json").read_text())["config"]["search"]["trials"] == 1
