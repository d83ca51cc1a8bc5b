"""A disk that fills up under a running search, and a report on a store it cannot write.

The search ends with one line (exit code 2) instead of SQLAlchemy's "database or disk is full"
traceback, keeps what it had recorded, and `--resume` finishes it once space is freed; the report
on a read-only store prints its report, writes its files and says in one line what it could not
write. The slow tests need a small filesystem of their own: a tmpfs mounted here (root, and a
container that allows mounts), skipped with the reason where it cannot be.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import one_error_line, run_script, start_script


# ---- fast: what counts as a full disk or a read-only store ---------------------------------------
def test_a_full_disk_or_a_read_only_store_is_recognised_through_the_exception_chain():
    import sqlite3

    import sqlalchemy
    from mlflow.exceptions import MlflowException

    from search.runtime.errors import storage_problem

    def chained(inner: BaseException) -> BaseException:  # as the tracker's writer re-raises a store's error
        try:
            try:
                raise inner
            except BaseException as e:
                raise MlflowException(str(e)) from e
        except MlflowException as e:
            try:
                raise RuntimeError("MLflow tracking failed") from e
            except RuntimeError as outer:
                return outer

    full = sqlalchemy.exc.OperationalError("UPDATE runs", {}, sqlite3.OperationalError("database or disk is full"))
    assert storage_problem(chained(full)) == ("full", "database or disk is full")
    assert storage_problem(OSError(errno.ENOSPC, "No space left on device")) == ("full", "no space left on device")
    assert storage_problem(OSError(errno.EROFS, "x")) == ("read-only", "read-only file system")
    readonly = sqlite3.OperationalError("attempt to write a readonly database")
    assert storage_problem(chained(readonly)) == ("read-only", "attempt to write a readonly database")
    assert storage_problem(RuntimeError("MLflow tracking failed: connection refused")) is None
    assert storage_problem(OSError(errno.EACCES, "Permission denied")) is None


def test_a_library_line_the_log_file_cannot_take_is_dropped_quietly(tmp_path, capsys):
    import logging

    from search.cli import LibraryLog

    handler = LibraryLog(tmp_path / "library.log")
    handler.stream = open(os.devnull, "r")  # writing to it fails, as a full disk does  # noqa: SIM115
    try:
        handler.emit(logging.LogRecord("mlflow", logging.ERROR, __file__, 1, "lost", None, None))
    finally:
        handler.stream.close()
    assert capsys.readouterr().err == "" and handler.count == 0


# ---- a small filesystem of our own ---------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs a tmpfs of its own: mounting one needs root (run as root, e.g. in a container)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:160]})")


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs at tmp_path / "disk" (a smoke search writes about 2 MB), unmounted afterwards."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "8m")
    yield disk
    _unmount(disk)


def _fill(disk: Path) -> Path:
    """Take every byte left on `disk`; returns the file that holds them."""
    filler = disk / f"filler-{uuid.uuid4().hex[:6]}"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def _runs(out: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if r.data.tags.get("role") == "search"], [r for r in runs if "trial_id" in r.data.tags]


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="known, intermittent: when the full disk breaks a trial (Tune ERROR), its "
                   "run is closed KILLED but a resume from Tune's state does not rerun errored trials; rerunning "
                   "them (resume_errored=True) hung --resume for 600 s in one CI run (issue 29, item 10)")
def test_a_disk_that_fills_up_during_a_search_ends_it_in_one_line_and_resume_finishes_it(small_disk, tmp_path):
    out = small_disk / "out"
    args = ["--config", "smoke", "--trials", "3", "--output-dir", out, "--experiment", "full", "--set",
            "train.epochs=6", "--set", "search.asha_grace_epochs=6", "--set", "search.confirm_seeds=0",
            "--set", "search.max_concurrent_trials=1",  # trials 2 and 3 start after trial 1: the disk fills under them
            "--set", "search.calibrate_lr=false", "--set", "data.synthetic_examples=2048"]
    driver, seen = start_script("run", *args, cwd=tmp_path), []
    try:
        for line in driver.stdout:
            seen.append(line)
            if line.startswith("[1/3]"):
                break
        assert driver.poll() is None, "".join(seen[-20:])
        # the console line comes first; the store records trial 1 a moment later (a background writer)
        deadline = time.time() + 120
        while not any(r.data.tags.get("status") == "completed" for r in _runs(out, "full")[1]):
            assert time.time() < deadline and driver.poll() is None, "trial 1 never recorded: " + "".join(seen[-20:])
            time.sleep(0.5)
        filler = _fill(small_disk)  # the disk fills up while trials 2 and 3 run
        rest, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
            driver.wait(timeout=30)
    text = "".join(seen) + rest
    assert driver.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "Logging error" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the search stopped: a write failed because the disk is full" in errors[0], text[-3000:]
    assert f"continue with: python search/run.py --resume --output-dir {out} --experiment full" in errors[0]
    _, before = _runs(out, "full")
    kept = {r.data.tags["trial_id"]: r.info.run_id for r in before if r.data.tags.get("status") == "completed"}
    assert kept, [(r.data.tags.get("status"), r.info.status) for r in before]  # the trial done before the disk filled

    filler.unlink()  # space freed: --resume continues the search
    proc = run_script("run", "--resume", "--output-dir", out, "--experiment", "full", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parents, trials = _runs(out, "full")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r.data.tags["trial_id"] for r in trials]
    assert len(ids) == len(set(ids)) == 3 and all(r.info.status == "FINISHED" for r in trials), (
        [(r.data.tags.get("trial_id"), r.info.status, r.data.tags.get("status"), r.data.tags.get("error"))
         for r in trials], text[-4000:], proc.stdout[-4000:])
    after = {r.data.tags["trial_id"]: r.info.run_id for r in trials}
    assert all(after[t] == run_id for t, run_id in kept.items())  # what was recorded is kept, not rerun anew


@pytest.mark.slow
def test_report_on_a_read_only_store_prints_the_report_and_says_what_it_could_not_write(tmp_path):
    from tests.test_report import make_search

    made = tmp_path / "made"
    made.mkdir()
    uri, _, rows, _ = make_search(made)
    store = tmp_path / "ro"
    _mount_tmpfs(store, "32m")
    try:
        shutil.copytree(made, store, dirs_exist_ok=True)  # the store and its artifacts
        done = subprocess.run(["mount", "-o", "remount,ro", str(store)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make the tmpfs read-only here ({done.stderr.strip()[:160]})")
        ro_uri = f"sqlite:///{store / 'mlflow.db'}"
        out = tmp_path / "report"
        proc = run_script("report", "--tracking-uri", ro_uri, "--experiment", "t", "--output-dir", out,
                          cwd=tmp_path, timeout=300)
    finally:
        _unmount(store)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"warning: the MLflow store {ro_uri} is read-only (attempt to write a readonly database)")
    assert "pareto=true tags" in lines[0]
    assert "Pareto-optimal" in proc.stdout and rows["best"]["run_id"] in proc.stdout  # the report itself
    assert "not tagged: the store refused writes" in proc.stdout
    assert all((out / name).is_file() for name in ("trials.csv", "pareto.csv", "pareto.png", "pareto.html"))


def test_report_to_an_output_dir_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """The report's files cannot be written (the disk is full): one line naming --output-dir."""
    import search.report as report
    from tests.test_report import make_search

    made = tmp_path / "made"
    made.mkdir()
    uri, _, _, _ = make_search(made)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "publish", full)
    out = tmp_path / "report"
    capsys.readouterr()  # MLflow's lines as the store was made
    assert report.main(["--tracking-uri", uri, "--experiment", "t", "--output-dir", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--output-dir {out}: cannot write the report's files: the folder is on a full disk" in line
