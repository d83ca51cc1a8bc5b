"""Early stopping for a placement search: asynchronous successive halving, optionally by size.

Where it sits: train -> **stop early** -> track; a Tune scheduler on the driver
(`search.phases.explore.scheduler`), and the same rule replayed by `benchmarks/replay.py`.

ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"): rungs at
grace * factor^k epochs below the last; when a trial reaches a rung it is stopped if its epoch
score is below the (1 - 1/factor) quantile of the scores earlier trials had there, and its own
score joins the rung either way. This is Ray Tune's `ASHAScheduler` with one bracket, rule for rule.

A placement search has more than one objective: a placement a third the size of the budget that
scores a little below the budget-sized ones can be on the Pareto frontier, yet plain ASHA stops it,
since it compares scores alone, and the trials that come first (the baselines, sized to the budget)
set the bar. With `by_size` a trial is compared only with the earlier trials at the rung that
are no larger than it (trainable parameters): it stops when placements of its size or smaller
already do better, which is when it is unlikely to reach the frontier; the smallest placement
seen so far always goes on. docs/search_efficiency.md measures both rules on the replay tables.

Direction: `Rungs` compares scores as higher = better; `PlacementASHA` turns a "min" metric's
results (a lower-is-better metric such as `nll`; the search passes `trainables.record.sense` of its
metric) into that before it asks, by size as well as over all trials.
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


class Rungs:
    """The rungs of one bracket, with what each trial scored there (and its size)."""

    def __init__(self, max_t: int, grace: int, factor: int, by_size: bool):
        if not (1 <= grace <= max_t and factor >= 2):
            raise ValueError(f"rungs need 1 <= grace ({grace}) <= max_t ({max_t}) and factor ({factor}) >= 2")
        # Ray's count: milestones grace * factor^k for k < int(log(max_t / grace) / log(factor) + 1)
        n = int(np.log(max_t / grace) / np.log(factor) + 1)
        self.milestones = [grace * factor ** k for k in range(n)]
        self.factor = factor
        self.by_size = by_size
        self.recorded: dict[int, dict[str, tuple[float, float]]] = {m: {} for m in self.milestones}

    def on_result(self, trial_id: str, t: int, score: float, size: float) -> bool:
        """Whether to stop a trial that reports `score` (higher = better) after `t` epochs (`size`:
        its trainable parameters). At the highest rung it has reached and not yet been judged at, it is judged
        and its score recorded; at any other epoch it goes on."""
        for milestone in reversed(self.milestones):
            recorded = self.recorded[milestone]
            if t < milestone:
                continue
            if trial_id in recorded:
                return False
            peers = [s for s, n in recorded.values() if not self.by_size or n <= size]
            stop = bool(peers) and score < float(np.nanpercentile(peers, (1 - 1 / self.factor) * 100))
            recorded[trial_id] = (score, size)
            return stop
        return False


class PlacementASHA(FIFOScheduler):
    """Tune scheduler: `Rungs` on the trials' per-epoch `metric`, sized by `size_attr`.

    A result without the metric goes on, as in Ray's ASHA (Tune's strict metric check, on by
    default, fails a search whose trials never report it); a result without the size compares the
    trial with every earlier one."""

    def __init__(self, metric: str, mode: str, max_t: int, grace: int, factor: int, by_size: bool,
                 size_attr: str, time_attr: str = "training_iteration"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} must be 'min' or 'max'")
        super().__init__()
        self._metric, self._mode = metric, mode
        self.time_attr, self.size_attr = time_attr, size_attr
        self.rungs = Rungs(max_t, grace, factor, by_size)
        self.stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return metric in (None, self._metric) and mode in (None, self._mode)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._metric not in result:
            return TrialScheduler.CONTINUE
        score = float(result[self._metric]) * (1.0 if self._mode == "max" else -1.0)
        size = result.get(self.size_attr)
        size = math.inf if size is None else float(size)
        if self.rungs.on_result(trial.trial_id, int(result[self.time_attr]), score, size):
            self.stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        rule = "by size" if self.rungs.by_size else "all trials"
        return f"PlacementASHA ({rule}): rungs at {self.rungs.milestones} epochs, {self.stopped} stopped"
