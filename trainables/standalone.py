"""Train one placement outside a search, as a `TrialRecord`, and the JSON-lines row it is kept as.

Where it sits: beside the search: (a placement picked by hand) -> **train** -> a row on disk. The
scripts that train placements themselves (`benchmarks.placement_table`, `benchmarks.retrain`,
`benchmarks.split_noise`) call `train_outside_search`: the model loaded at the plan's seed (unless
the caller hands one in), `trainables.train.train_placement` (the code a trial runs, no Ray), and a
failure a retry would only repeat (`trainables.worker.failure_reason`: a non-finite loss, out of
memory) kept as the result, any other error raised. It returns a `TrainedPlacement`: the run's
`TrialRecord` (how the search's tables and frontier read a trial) and what a record does not hold:
the score after every epoch, the last epoch's training loss, the wall time.

On disk (`TrainedPlacement.to_row`, read back by `from_row`): one JSON object per line, under the
names the replay tables (docs/data/table-<task>.jsonl) and the retrain files
(docs/data/retrain/*.jsonl) were first written with, so every committed file still reads:

    key, seed, lr, baseline, rank, adapter_params, trainable_params   as the record's fields
    epoch_scores        the task metric after each epoch (the record keeps the last, `last_score`)
    score               the objective: the last epoch's metric; null for a failed run
    train_loss, wall_s  the last epoch's training loss; seconds in `train_placement`
    compute_hours       wall_s x the units the run reserved / 3600 (`trainables.record`)
    failure             why the run could not finish (the record's `error`), else null

plus what the caller adds (the retrain files: label, rslora, metric_name, config, overrides). The
record's search-only fields (trial and run id, pareto, confirms, warm start) are not written.
Imports no torch until it trains: the replay reads the tables through `from_row` without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trainables import record as R


@dataclass(frozen=True)
class TrainedPlacement:
    """One placement trained outside a search (module docstring)."""

    record: R.TrialRecord
    epoch_scores: tuple[float, ...] = ()
    train_loss: float | None = None
    wall_s: float | None = None

    def to_row(self, **extra) -> dict:
        """The JSON-lines row (module docstring), with the caller's `extra` fields after it."""
        r = self.record
        return {"key": r.key, R.SEED: r.seed, "lr": r.lr, "baseline": r.baseline, "rank": r.rank,
                R.ADAPTER_PARAMS: r.adapter_params, R.TRAINABLE_PARAMS: r.trainable_params,
                "epoch_scores": list(self.epoch_scores), R.SCORE: r.score, R.TRAIN_LOSS: self.train_loss,
                R.WALL_S: self.wall_s, R.COMPUTE_HOURS: r.compute_hours, R.FAILURE: r.error, **extra}

    @classmethod
    def from_row(cls, row: dict) -> TrainedPlacement:
        """A row as `to_row` writes it, or as the committed tables hold it (fields they lack are None);
        values are kept as read. Completed when it has a score, failed otherwise."""
        epochs = tuple(row.get("epoch_scores") or ())
        score = row.get(R.SCORE)
        record = R.TrialRecord(
            trial_id="", run_id="", key=row["key"], rank=row.get("rank"), lr=row.get("lr"),
            status=R.COMPLETED if score is not None else R.FAILED, score=score,
            trainable_params=row.get(R.TRAINABLE_PARAMS), adapter_params=row.get(R.ADAPTER_PARAMS),
            compute_hours=row.get(R.COMPUTE_HOURS), epochs=len(epochs), last_score=epochs[-1] if epochs else None,
            baseline=row.get("baseline"), error=row.get(R.FAILURE), seed=row.get(R.SEED))
        return cls(record, epochs, row.get(R.TRAIN_LOSS), row.get(R.WALL_S))


def train_outside_search(cfg, plan, data, *, tokenizer=None, model=None, resources=None,
                         baseline: str | None = None) -> TrainedPlacement:
    """Train `plan` (a `trainables.train.TrialPlan`) on `data` (a `TokenizedTask`) with `cfg` for
    `cfg.train.epochs` epochs; its record says completed or, for a failure a retry would only
    repeat, failed with the reason (module docstring). model: trained in place when given (the
    caller can evaluate it afterwards), else loaded from `cfg.model` at `plan.seed` with
    `tokenizer`. resources: what the run reserved (default: one CPU core), which its cost counts.
    baseline: the baseline's name, when the placement is one."""
    from trainables.model import load_task_model
    from trainables.train import Resources, train_placement
    from trainables.worker import failure_reason

    resources = resources or Resources()
    if model is None:
        model = load_task_model(cfg, data.num_labels, seed=plan.seed, tokenizer=tokenizer)
    reports: list[dict] = []
    failure = None
    t0 = time.perf_counter()
    try:
        train_placement(cfg, plan, model, data, reports.append, resources=resources)
    except Exception as e:  # a diverged run is a result too
        failure = failure_reason(e)
        if failure is None:
            raise
    wall_s = time.perf_counter() - t0
    last = reports[-1] if reports else {}
    placement = plan.placement
    record = R.TrialRecord(
        trial_id="", run_id="", key=placement.key, rank=max(placement.rank_values()), lr=plan.lr,
        status=R.FAILED if failure else R.COMPLETED, score=None if failure else last.get(R.SCORE),
        trainable_params=last.get(R.TRAINABLE_PARAMS), adapter_params=placement.adapter_params(plan.space),
        compute_hours=wall_s * resources.cost_units / 3600, epochs=last.get(R.EPOCH, 0),
        last_score=last.get(R.EPOCH_SCORE), baseline=baseline, error=failure, seed=plan.seed)
    return TrainedPlacement(record, tuple(r[R.EPOCH_SCORE] for r in reports), last.get(R.TRAIN_LOSS), wall_s)
