"""Propose placements from an Optuna study under Ray Tune, always within budget.

Where it sits: score -> **sample** -> train. `PlacementSearcher` is a small Ray Tune `Searcher`
over an Optuna study's public ask / tell interface: `suggest` asks the study for a trial and runs
the define-by-run space (`search.proposal.PlacementSpace`) on it; when Tune's trial ends, its
outcome is told to the study:
- the last result has every objective, all finite -> COMPLETE with those values;
- the trial reported a `failure` (non-finite loss, out of memory) or errored -> FAIL;
- otherwise (stopped early by ASHA, or by the cost cap) -> PRUNED.
The objectives (`trainables.record.OBJECTIVES`) arrive only in a trial's last result, so Tune's
strict per-result metric check must not ask for them: the searcher tells Tune no metric (Tune still
checks ASHA's `epoch_score`, so a misspelt scheduler metric fails loudly).

The study can live in an RDB storage (`open_study_storage`, SQLite by default): Tune's searcher
snapshot then holds a handle to it, so a driver that restarts (`--resume`, on this machine or
another that reaches the database) continues the same study, including every outcome told after
Tune's last snapshot. Each trial's config carries its Optuna trial number (`OPTUNA_TRIAL`) and
each Optuna trial its Tune trial id (user attr `TUNE_TRIAL_ATTR`). On restore, trials the dead
driver had asked for after the searcher's snapshot ("orphans", still RUNNING) are kept: when Tune
asks for a trial again, an orphan is asked again (the same Optuna trial, never a copy); when Tune
reruns one from its own experiment state (a separate file, which can be newer than the
searcher's), its outcome reaches its Optuna trial through the config. The driver fails those
left at the end (`close_running`), so nothing stays RUNNING or WAITING.
"""

from __future__ import annotations

import functools
import logging
import math
import pickle

from optuna.storages import RDBStorage
from ray.tune.search import Searcher

from search.proposal import PlacementSpace
from trainables import record as R

log = logging.getLogger(__name__)

OPTUNA_TRIAL = "optuna_trial"  # in a trial's config: its Optuna trial number
TUNE_TRIAL_ATTR = "tune_trial_id"  # user attr of an Optuna trial: the Tune trial that ran it
OBJECTIVE_NAMES = [name for name, _ in R.OBJECTIVES]
DIRECTIONS = ["maximize" if sense == "max" else "minimize" for _, sense in R.OBJECTIVES]


def optuna_state(result: dict | None, error: bool, objectives: list[str] = OBJECTIVE_NAMES):
    """The Optuna trial state and values for a finished Tune trial (see module docstring)."""
    from optuna.trial import TrialState

    if error or (result and R.FAILURE in result):
        return TrialState.FAIL, None
    values = None
    if result and all(m in result for m in objectives):
        values = [float(result[m]) for m in objectives]
        if not all(math.isfinite(v) for v in values):
            values = None
    if values is not None:
        return TrialState.COMPLETE, values
    return TrialState.PRUNED, None


class MaskedRDBStorage(RDBStorage):
    """An Optuna RDB storage whose pickles (Tune's snapshots of the searcher) hold its URL with the
    password masked; unpickled by a driver that was given the password (`search.credentials`), it
    connects with the full URL."""

    def __getstate__(self) -> dict:
        from search.credentials import shown

        return {**super().__getstate__(), "url": shown(self.url)}

    def __setstate__(self, state: dict) -> None:
        from search.credentials import real

        super().__setstate__({**state, "url": real(state["url"])})


def open_study_storage(url: str):
    """An Optuna RDB storage at a SQLAlchemy URL (sqlite:///path.db, postgresql://..., mysql://...);
    a masked URL (`search.credentials`) connects with the password this process was given.

    A SQLite file is opened by `sqlite_connect`: it waits up to 60 s for a lock instead of failing
    at once (an `optuna-dashboard` or a notebook reading the same file holds it briefly), and
    commits without waiting for the disk (docstring there)."""
    from sqlalchemy.engine import make_url

    from search.credentials import real

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

    Optuna commits every suggested value on its own (about 20 commits per proposal); in SQLite's
    default mode each commit waits for the disk, which made a proposal take 0.3 s on this
    project's machine and the driver's loop the bottleneck at 64 concurrent trials
    (docs/benchmarks.md, "Cluster scale"). With a write-ahead log a commit waits for the disk only
    at checkpoints: a driver that is killed loses nothing, a machine that loses power may lose the
    last commits. Readers (optuna-dashboard) do not block the writer. The file must be on a local
    disk (SQLite's WAL does not work over a network filesystem): on a cluster whose driver may move,
    use a database server (README, "Run on a cluster")."""
    import sqlite3

    conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def create_study(sampler, storage=None, study_name: str | None = None):
    """A multi-objective study over `trainables.record.OBJECTIVES`, in `storage` (None: in memory);
    an existing study of that name in the storage is loaded (a restarted driver)."""
    import optuna

    return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, directions=DIRECTIONS,
                               load_if_exists=storage is not None)


class PlacementSearcher(Searcher):
    """A Tune searcher over an Optuna study (module docstring).

    study: from `create_study`; persistent: True when it lives in a database (restore then
    reconciles it); space: the define-by-run function; enqueue: (params, user_attrs) pairs
    enqueued before any trial, in order (the baselines), unless the study already has trials.
    """

    def __init__(self, study, space: PlacementSpace, *, enqueue: list[tuple[dict, dict]] = (),
                 persistent: bool = False):
        super().__init__(metric=None, mode=None)
        self.study, self.space, self.persistent = study, space, persistent
        self._numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._told: set[str] = set()
        self._orphans: list[int] = []  # asked for by a driver that died after the last snapshot
        if not study.get_trials(deepcopy=False):
            for params, user_attrs in enqueue:
                study.enqueue_trial(params, user_attrs=user_attrs)

    # ---- Tune's Searcher interface -------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the define-by-run function; Tune's metric stays None (docstring)

    def suggest(self, trial_id: str) -> dict:
        from optuna.trial import TrialState

        trial = self._next_orphan() or self.study.ask()
        try:
            config = self.space(trial)  # an orphan answers with the values it was given
        except Exception:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        self._numbers[trial_id] = trial.number
        return {**config, OPTUNA_TRIAL: trial.number}

    def _next_orphan(self):
        """The oldest orphan still RUNNING (told by no rerun in the meantime), as a live trial."""
        from optuna.trial import Trial, TrialState

        while self._orphans:
            number = self._orphans.pop(0)
            frozen = self.study.get_trials(deepcopy=False)[number]
            if frozen.state == TrialState.RUNNING and number not in self._numbers.values():
                return Trial(self.study, frozen._trial_id)
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return  # early stopping is ASHA's job; Optuna sees final outcomes only

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self._numbers.get(trial_id)
        if number is None:  # a trial Tune restored from a snapshot newer than this searcher's
            number = ((result or {}).get("config") or {}).get(OPTUNA_TRIAL)
            if number in self._orphans:
                self._orphans.remove(number)
        if number is None or trial_id in self._told:
            return
        state, values = optuna_state(result, error)
        # skip_if_finished: with an RDB study, a trial told just before the driver died (after
        # Tune's last snapshot) is told again when its rerun completes; the first outcome stays.
        self.study.tell(number, values, state=state, skip_if_finished=True)
        self._told.add(trial_id)

    def trial_number(self, trial_id: str) -> int | None:
        """The Optuna trial number behind a Tune trial id."""
        return self._numbers.get(trial_id)

    # ---- snapshots -------------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"study": self.study, "space": self.space, "persistent": self.persistent,
                "numbers": dict(self._numbers), "told": set(self._told), "orphans": list(self._orphans)}

    def set_state(self, state: dict) -> None:
        self.study, self.space, self.persistent = state["study"], state["space"], state["persistent"]
        self._numbers, self._told = dict(state["numbers"]), set(state["told"])
        self._orphans = list(state.get("orphans", []))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
        if self.persistent:
            self.reconcile()

    def reconcile(self) -> list[int]:
        """Find the study's orphans: trials still RUNNING that no Tune trial of this searcher owns
        (asked for by a driver that died before Tune's next snapshot). They are asked again before
        any new trial, or told when Tune reruns them (module docstring). Returns their numbers."""
        from optuna.trial import TrialState

        owned = set(self._numbers.values())  # Tune reruns these if unfinished
        self._orphans = [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                         if t.number not in owned]
        if self._orphans:
            log.warning("study %s: trials %s were asked for by the previous driver after its last snapshot; "
                        "they run again before any new trial", self.study.study_name, self._orphans)
        return list(self._orphans)


def close_running(study) -> list[int]:
    """After a search phase has ended, fail the trials still RUNNING in its study: orphans nobody
    asked for again or reran (the search ended first). Returns their numbers."""
    from optuna.trial import TrialState

    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in running:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if running:
        log.warning("study %s: trials %s never ran to an end; marked FAIL", study.study_name, running)
    return running


def make_searcher(inputs, sampler_name: str, storage=None, study_name: str | None = None) -> PlacementSearcher:
    """The searcher for `sampler_name` over `inputs` (`search.samplers.SamplerInputs`). With
    `prior`, the first trials Tune asks for are the baselines, in order. `storage`: an Optuna RDB
    storage (`open_study_storage`), None keeps the study in memory; `study_name` names the study
    in it (the search's name)."""
    from search.samplers import make_sampler

    setup = make_sampler(sampler_name, inputs)
    study = create_study(setup.sampler, storage, study_name)
    return PlacementSearcher(study, setup.space, enqueue=setup.enqueue, persistent=storage is not None)
