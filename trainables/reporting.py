"""How a trial's results reach Ray Tune: one report per epoch, the last with the adapter as the
trial's checkpoint. Used by the real trial (`trainables.tune_entry`) and the simulated one
(`trainables.simulated`), so both report the same way.
"""

from __future__ import annotations

from ray import tune

from trainables import record as R


def make_reporter(node_id: str, save_dir: str):
    """(report, last): the callback a trial hands its per-epoch results to, and the latest results
    it saw. Each result goes to Tune with the node that ran the trial; the last one (it has
    `score`) carries the adapter folder as the trial's checkpoint, which the tracker logs."""
    last: dict = {}

    def report(results: dict) -> None:
        last.update(results)
        results = {**results, R.NODE_ID: node_id}
        if R.SCORE in results:
            tune.report(results, checkpoint=tune.Checkpoint.from_directory(save_dir))
        else:
            tune.report(results)

    return report, last
