"""A search's hold on what it writes: one driver per search, and nothing left behind by a new
search that stops before its first trial.

Where it sits: on the driver, between preparation and tracking (`search.driver`).
- `SearchLock`: an exclusive lock file per search in the output folder (`<name>.lock`, held with
  `flock` for the driver's life; the kernel lets go of it when the driver dies, even by SIGKILL).
  A second driver on the same search (two searches started with one `--experiment`, or `--resume`
  while the first still runs) is refused with one line naming the one that holds it; `check_free`
  refuses it already before Ray starts.
- `claim_study`: a new search creates its Optuna study exclusively, so two drivers that share a
  study database from different machines cannot both start the same search.
- `store_creation_lock`: one driver at a time on this machine opens, so creates or migrates, a
  SQLite store (searches started at once on one new store would race MLflow's migrations).
- `Written`: which stores and files existed before this driver began. A new search stopped before
  its first trial started (Ctrl-C during the learning-rate probe, a store that refused it) has
  nothing worth keeping and would block a rerun under its name, so `remove` takes back what it
  made: its MLflow experiment (the store file too, when this driver created it and it holds
  nothing else), its study (likewise), its state file, plots and Ray Tune folder (when it made
  it), and the output folder when the driver created it and nothing else is in it. What a search
  wrote before a store failed it after its claim (`search.runtime.stores.store_failures`) goes the same way.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from search.runtime.credentials import shown
from search.runtime.errors import UsageError
from search.sampling.study import directions, open_study_storage
from trainables import record as R

LIBRARY_LOG = "library.log"  # the libraries' log lines, in the output directory (`search.cli.route_library_logs`)


class SearchLock:
    def __init__(self, output_dir: Path, name: str):
        self.output_dir, self.name = Path(output_dir), name
        self.path = self.output_dir / f"{name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> "SearchLock":
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(self.path, self.name) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        # The file stays: unlinking it would let a driver waiting on the old file and a new one both
        # hold "the" lock. Closing releases the lock.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_free(output_dir: Path, name: str) -> None:
    """Refuse a search another driver holds, at once (before Ray starts) and without writing
    anything; the driver takes the lock itself (`SearchLock`) once the search is prepared."""
    path = Path(output_dir) / f"{name}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: no driver has held this search here
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(path, name) from None
    finally:
        os.close(fd)  # a lock this probe took goes with the descriptor


def _busy(path: Path, name: str) -> UsageError:
    try:
        holder = path.read_text(errors="replace")[:300].strip() or "a driver"
    except OSError:
        holder = "a driver"
    return UsageError(f"search {name!r} in {path.parent} is being run by another driver ({holder}): "
                      "wait for it to end, or pass another --experiment name")


def claim_study(url: str, name: str, metric_name: str = R.ACCURACY) -> None:
    """Create a new search's study, refusing one that exists (another driver made it since the
    checks ran). Directions as the searcher's (`search.sampling.study.directions(metric_name)`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with store_creation_lock(url, "search.study_storage"):  # a new file's tables, made once
        storage = open_study_storage(url)
    try:
        optuna.create_study(study_name=name, storage=storage, directions=directions(metric_name))
    except optuna.exceptions.DuplicatedStudyError:
        raise UsageError(f"search.study_storage {shown(url)} already holds a study named {name!r} (another driver "
                         "started it just now): pass --resume to continue that search, or another --experiment name") from None
    finally:
        storage.engine.dispose()  # the searcher opens its own; an idle connection would keep SQLite's WAL files


def _sqlite_file(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):].split("?", 1)[0]).absolute() if url.startswith("sqlite:///") else None


STORE_LOCK_WAIT_S = 300.0  # MLflow builds a new store through its chain of migrations: seconds, on a busy machine more


@contextmanager
def store_creation_lock(url: str, key: str = "tracking.uri"):
    """Inside: this driver alone, of those on this machine, opens (so creates or migrates) the
    SQLite store at `url`: two searches started at once on one new store would both run MLflow's
    migrations (or Optuna's CREATE TABLEs) and one fail ("table _alembic_tmp_params already
    exists"). The lock is `flock` on the database's folder, which leaves no file behind; the folder
    is made if missing (as MLflow would). Other URLs: no lock. Waits at most STORE_LOCK_WAIT_S."""
    db = _sqlite_file(url)
    if db is None or db.name in ("", ":memory:"):
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        deadline = time.monotonic() + STORE_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UsageError(f"{key} {shown(url)}: another program has been creating the store in "
                                     f"{db.parent} for over {STORE_LOCK_WAIT_S:g}s: wait for it to end (or stop it), "
                                     "then run the same command again") from None
                time.sleep(0.1)
            except OSError:
                break  # a filesystem without flock on folders: open it unlocked, as MLflow does
        yield
    finally:
        os.close(fd)  # releases the lock


def _tune_folder(storage_path: str, name: str) -> Path | None:
    """The search's Ray Tune folder in local storage (None on a cloud URI)."""
    return None if "://" in storage_path else (Path(storage_path) / name).absolute()


@dataclass
class Written:
    """What existed before a new search's driver began (see the module docstring)."""
    output_dir: Path
    name: str
    tracking_uri: str
    study_url: str
    storage_path: str
    existed: set[Path] = field(default_factory=set)
    study_claimed: bool = False  # this driver created the study (`claim_study`)
    experiment_id: str | None = None  # the MLflow experiment this driver created

    @classmethod
    def before(cls, search) -> "Written":
        paths = [Path(search.output_dir).absolute(), _sqlite_file(search.tracking_uri), _sqlite_file(search.study_url),
                 _tune_folder(search.storage_path, search.name), Path(search.output_dir).absolute() / LIBRARY_LOG]
        existed = {p for p in paths if p is not None and p.exists()}
        return cls(Path(search.output_dir).absolute(), search.name, search.tracking_uri, search.study_url,
                   search.storage_path, existed)

    def remove(self, client=None, parent_run_id: str | None = None) -> None:
        """Take back what this search wrote (it started no trial): its parent run, and the
        experiment and study when this driver created them."""
        experiment_id = self.experiment_id
        if client is not None and parent_run_id is not None and experiment_id is None:
            client.delete_run(parent_run_id)  # an experiment that existed before: only our run goes
        self._remove_experiment(client, experiment_id)
        if client is None:
            self._remove_new_tracking_store()
        if self.study_claimed:
            self._remove_study()
        out = self.output_dir
        for suffix in (".search.json", "-scores.png", "-lr.png", ".lock"):
            (out / f"{self.name}{suffix}").unlink(missing_ok=True)
        if out / LIBRARY_LOG not in self.existed:  # the libraries' lines of this search alone
            (out / LIBRARY_LOG).unlink(missing_ok=True)
        # Its own Tune folder only: one that was there before is another's (a search stopped before
        # its first trial has run no confirmation, so it has no `<name>-confirm` folder either).
        tune_folder = _tune_folder(self.storage_path, self.name)
        if tune_folder is not None and tune_folder not in self.existed:
            shutil.rmtree(tune_folder, ignore_errors=True)
        for folder in (experiment_id, parent_run_id):  # a local store's artifacts: <mlartifacts>/<run id>/...
            if folder is not None:
                shutil.rmtree(out / "mlartifacts" / str(folder), ignore_errors=True)
        for folder in (out / "ray_results", out / "mlartifacts", out):
            if folder.is_dir() and not any(folder.iterdir()) and (folder != out or out not in self.existed):
                folder.rmdir()

    def _remove_experiment(self, client, experiment_id) -> None:
        if client is None or experiment_id is None:
            return
        db = _sqlite_file(self.tracking_uri)
        others = [e for e in client.search_experiments() if e.experiment_id != experiment_id and e.name != "Default"]
        if db is not None and db not in self.existed and not others:
            db.unlink(missing_ok=True)  # this driver made the store and it holds nothing else
            return
        # A shared store: free the name (a deleted experiment keeps it), then delete.
        client.rename_experiment(experiment_id, f"{self.name}-removed-{int(time.time())}")
        client.delete_experiment(experiment_id)

    def _remove_new_tracking_store(self) -> None:
        """The SQLite tracking store this driver created, when the search failed before it had a
        client (the store may be what failed): removed if it holds no experiment but MLflow's
        Default and this search's, read with sqlite3 under `store_creation_lock` (another search
        may be making its own experiment in it)."""
        db = _sqlite_file(self.tracking_uri)
        if db is None or db in self.existed or not db.is_file():
            return
        import sqlite3
        from urllib.parse import quote

        with store_creation_lock(self.tracking_uri):
            try:
                conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=10)
                try:
                    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    names = {row[0] for row in conn.execute("SELECT name FROM experiments")} \
                        if "experiments" in tables else set()
                finally:
                    conn.close()
            except sqlite3.Error:
                return  # not a store to judge: left as it is
            if names <= {"Default", self.name}:
                for path in (db, db.with_name(db.name + "-journal"), db.with_name(db.name + "-wal"),
                             db.with_name(db.name + "-shm")):
                    path.unlink(missing_ok=True)

    def _remove_study(self) -> None:
        storage = open_study_storage(self.study_url)
        try:
            optuna.delete_study(study_name=self.name, storage=storage)
        except KeyError:
            pass  # never created
        db = _sqlite_file(self.study_url)
        if db is not None and db not in self.existed and not storage.get_all_studies():
            storage.engine.dispose()
            for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):  # WAL mode's files
                path.unlink(missing_ok=True)
