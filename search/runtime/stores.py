"""A store that fails a running search, said in one line (`UsageError`) instead of the traceback of
whichever layer met it: the tracking store or the study storage failing as a search claims its
name or opens its run (`store_failures`), and a disk that fills up, or a store that turns
read-only, while it runs (`storage_stop`)."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import optuna
import sqlalchemy
from mlflow.exceptions import MlflowException

from search.runtime.errors import UsageError, storage_problem

# What a store raises when it fails a search: MLflow (its server's answers, and its own SQLAlchemy
# store's errors it wraps), SQLAlchemy (Optuna's storage, MLflow's migrations), sqlite3, Optuna.
STORE_ERRORS = (MlflowException, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error,
                optuna.exceptions.StorageInternalError)


@contextmanager
def store_failures(resumed: bool, name: str, key: str, url: str):
    """Inside: a store that fails the search `name` as it claims its name or opens its run (a failure
    the checks could not see before: a server that lets the user read but not write, a database
    that went away) is one `UsageError` line naming `key` and `url`; the driver then takes back what
    a new search wrote, so that the same command works once the store is fixed."""
    try:
        yield
    except STORE_ERRORS as e:
        why = " ".join(str(e).split())[:240] or type(e).__name__
        flag = "--tracking-uri" if key == "tracking.uri" else "--study-storage"
        if resumed:
            raise UsageError(f"--resume {name}: {key} {url} failed as the search resumed ({why}): fix the store "
                             "and run the same command again (the search's finished trials are kept)") from None
        raise UsageError(f"{key} {url} failed as the search began ({why}): fix the store (or pass another {flag}) and "
                         "run the same command again; what this search had written was removed") from None


@contextmanager
def storage_stop(output_dir: Path, resume_hint: Callable[[], str]):
    """Around a search: a disk that fills up (or a store that turns read-only) while it runs, seen
    as the error of whichever write met it first (MLflow's SQLite, Optuna's, Tune's snapshot, a
    file), ends it with one `UsageError` line instead of that traceback. What was recorded stays:
    SQLite rolls back the write that failed, and --resume reruns only what has no outcome."""
    try:
        yield
    except UsageError:
        raise
    except Exception as error:
        problem = storage_problem(error)
        if problem is None:
            raise
        what, why = problem
        where = (f"the disk is full ({why})" if what == "full"
                 else f"a store or folder of the search became read-only ({why})")
        fix = "free space" if what == "full" else "make it writable"
        raise UsageError(f"the search stopped: a write failed because {where}; what it had recorded is kept: {fix} "
                         f"(its files are in {output_dir}), then {resume_hint()}") from None
