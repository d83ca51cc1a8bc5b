"""End a search when its trials have cost `search.gpu_hours` (alongside the trial count).

Where it sits: train -> track; a Tune `Stopper` on the driver. Cost is each trial's latest
`gpu_hours` (CPU-core-hours on CPU), summed over trials; trials running when the cap is reached
are stopped and count as pruned (they have no final result).
"""

from __future__ import annotations

from ray.tune import Stopper


class CostStopper(Stopper):
    def __init__(self, gpu_hours: float):
        self.cap = float(gpu_hours)
        self.spent: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        if isinstance(result.get("gpu_hours"), (int, float)):
            self.spent[trial_id] = float(result["gpu_hours"])
        return False

    def stop_all(self) -> bool:
        return self.cap > 0 and self.total() >= self.cap

    def total(self) -> float:
        return sum(self.spent.values())
