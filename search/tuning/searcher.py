"""Propose placements from an Optuna study under Ray Tune, always within budget.

Where it sits: score -> **sample** -> train. `PlacementSearcher` is a small Ray Tune `Searcher`
over an Optuna study's public ask / tell interface: `suggest` asks the study for a trial and runs
the define-by-run space (`search.sampling.proposal.PlacementSpace`) on it; when Tune's trial ends, its
outcome is told to the study:
- the last result has `score` and `trainable_params`, both finite -> COMPLETE with those two
  (`search.sampling.study.objectives`: the score in its metric's direction, made so by
  `make_searcher(metric_name=...)`), never the measured compute hours: the same seed and scores
  give the same proposals on a busy machine;
- the trial reported a `failure` (non-finite loss, out of memory) or errored -> FAIL;
- otherwise (stopped early by ASHA, or by the cost cap) -> PRUNED.
The score arrives only in a trial's last result, so Tune's strict per-result metric check must
not ask for it: the searcher tells Tune no metric (Tune still checks ASHA's `epoch_score`, so a
misspelt scheduler metric fails loudly).

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

import logging
import pickle

from optuna.trial import Trial, TrialState
from ray.tune.search import Searcher

from search.sampling.proposal import PlacementSpace
from search.sampling.samplers import make_sampler
from search.sampling.study import (
    OPTUNA_TRIAL,
    TUNE_TRIAL_ATTR,
    create_study,
    optuna_state,
)
from trainables import record as R

log = logging.getLogger(__name__)

class PlacementSearcher(Searcher):
    """A Tune searcher over an Optuna study (module docstring).

    study: from `create_study`; storage: the RDB storage the study lives in (`open_study_storage`;
    restore then reconciles the study), None for a study in memory; space: the define-by-run
    function; enqueue: (params, user_attrs) pairs enqueued before any trial, in order (the
    baselines), unless the study already has trials.
    """

    def __init__(self, study, space: PlacementSpace, *, enqueue: list[tuple[dict, dict]] = (), storage=None):
        super().__init__(metric=None, mode=None)
        self.study, self.space, self.storage = study, space, storage
        self.persistent = storage is not None
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
        """The oldest orphan still RUNNING (told by no rerun in the meantime), as a live trial: its
        storage id comes from the storage's public lookups (study name, then trial number)."""

        while self._orphans:
            number = self._orphans.pop(0)
            frozen = self.study.get_trials(deepcopy=False)[number]
            if frozen.state == TrialState.RUNNING and number not in self._numbers.values():
                study_id = self.storage.get_study_id_from_name(self.study.study_name)
                return Trial(self.study, self.storage.get_trial_id_from_study_id_trial_number(study_id, number))
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
        if error:
            # Tune gave up on the trial (a placement's own failure comes as a result with `failure`):
            # a worker lost or a full disk is no outcome of the placement. The study keeps it RUNNING,
            # so a search resumed without Tune's state reruns it as an orphan and tells what the rerun
            # gives; a phase that ends first marks it FAIL (`close_running`).
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
        return {"study": self.study, "space": self.space, "storage": self.storage, "persistent": self.persistent,
                "numbers": dict(self._numbers), "told": set(self._told), "orphans": list(self._orphans)}

    def set_state(self, state: dict) -> None:
        self.study, self.space, self.persistent = state["study"], state["space"], state["persistent"]
        self.storage = state["storage"]
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

        owned = set(self._numbers.values())  # Tune reruns these if unfinished
        self._orphans = [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                         if t.number not in owned]
        if self._orphans:
            log.warning("study %s: trials %s were asked for by the previous driver after its last snapshot; "
                        "they run again before any new trial", self.study.study_name, self._orphans)
        return list(self._orphans)


def make_searcher(inputs, sampler_name: str, storage=None, study_name: str | None = None, *,
                  metric_name: str = R.ACCURACY) -> PlacementSearcher:
    """The searcher for `sampler_name` over `inputs` (`search.sampling.samplers.SamplerInputs`). With
    `prior`, the first trials Tune asks for are the baselines, in order. `storage`: an Optuna RDB
    storage (`open_study_storage`), None keeps the study in memory; `study_name` names the study
    in it (the search's name); `metric_name`: the search's metric, whose direction the study's
    first objective takes (an existing study's directions must be it: `create_study`)."""

    setup = make_sampler(sampler_name, inputs)
    study = create_study(setup.sampler, storage, study_name, metric_name)
    return PlacementSearcher(study, setup.space, enqueue=setup.enqueue, storage=storage)
