"""End a search when its trials have cost `search.max_compute_hours` (alongside the trial count).

Where it sits: train -> track; a Tune `Stopper` on the driver. Cost is each trial's latest
`compute_hours` (GPU-hours, or CPU-core-hours when trials reserve no GPU), summed over trials;
trials running when the cap is reached are stopped and count as pruned (they have no final result).
"""

from __future__ import annotations

from ray.tune import Stopper

from trainables.record import COMPUTE_HOURS


class CostStopper(Stopper):
    def __init__(self, max_compute_hours: float):
        self.cap = float(max_compute_hours)
        self.spent: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        if isinstance(result.get(COMPUTE_HOURS), (int, float)):
            self.spent[trial_id] = float(result[COMPUTE_HOURS])
        return False

    def stop_all(self) -> bool:
        return self.cap > 0 and self.total() >= self.cap

    def total(self) -> float:
        return sum(self.spent.values())
