"""End a search when its trials have cost `search.max_compute_hours` (alongside the trial count).

Where it sits: train -> track; a Tune `Stopper` on the driver. Cost is each trial's latest
`compute_hours` (GPU-hours, or CPU-core-hours when trials reserve no GPU), summed over trials;
trials running when the cap is reached are stopped and count as pruned (they have no final result).
A stopper is given what is left of the cap when its phase starts (the learning-rate probe and the
search's trials spent the rest); no stopper means no cap (`search.max_compute_hours = 0`). Nothing
left (0 or less) stops at once, but Tune starts a first trial before it asks: a phase whose cap is
spent does not start a Tune run (`search.phases.explore`, `search.phases.confirm`).
"""

from __future__ import annotations

from ray.tune import Stopper

from trainables.record import COMPUTE_HOURS


class CostStopper(Stopper):
    def __init__(self, max_compute_hours: float):
        self.cap = float(max_compute_hours)  # what is left of the cap; 0 or less: stop at once
        self.spent: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        if isinstance(result.get(COMPUTE_HOURS), (int, float)):
            self.spent[trial_id] = float(result[COMPUTE_HOURS])
        return False

    def stop_all(self) -> bool:
        return self.total() >= self.cap

    def total(self) -> float:
        return sum(self.spent.values())
