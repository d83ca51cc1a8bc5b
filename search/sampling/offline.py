"""Run a placement search offline: a plain Optuna study asked and told one trial at a time, with
training replaced by a function the caller gives.

Where it sits: score -> **sample** -> (train: the caller's function) -> frontier. The sampler, the
define-by-run space with budget repair and the enqueued baselines are the product's
(`search.sampling.samplers.make_sampler`), on an in-memory study with the searcher's directions;
there is no Ray, no Tune and no MLflow. The benchmarks replay samplers with it: on a table of real
trainings (`benchmarks.replay`) and on synthetic landscapes (`benchmarks.search_efficiency`).

Each trial: ask; the space turns the sampled values into a budget-repaired placement (or the
baseline the trial was enqueued with); `train(placement, lr)` says what training it gave (the task
metric after each epoch, the trainable parameters, the cost); `stop`, when given, is fed those
epochs in turn as ASHA's scheduler is fed a trial's reports, one trial at a time
(`search.tuning.asha.Rungs.on_result` fits it): a trial it stops before its last epoch is told
PRUNED, any other is told its last epoch's score and its size by the searcher's rule
(`search.sampling.study.optuna_state`): the outcome's measured cost goes to the records, never to
the sampler. Every trial comes back as a `trainables.record.TrialRecord`, in the order it was
proposed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.sampling.proposal import BASELINE_ATTR
from search.sampling.samplers import SamplerInputs, make_sampler
from search.sampling.study import create_study, optuna_state
from spaces.placement import Placement
from trainables import record as R


@dataclass(frozen=True)
class Outcome:
    """What training one proposed placement gave: the task metric after each epoch (the last one is
    the objective `score`), its trainable parameters and its cost in compute hours (all epochs; it
    goes to the records, never to the sampler)."""

    epoch_scores: Sequence[float]
    trainable_params: float
    compute_hours: float

    def __post_init__(self):
        if not self.epoch_scores:
            raise ValueError("an outcome needs the score of at least one epoch")


Train = Callable[[Placement, float], Outcome]  # (placement, lr) -> what training it gave
Stop = Callable[[str, int, float, float], bool]  # (trial id, epoch, epoch score, trainable params) -> stop now


def epochs_trained(trial_id: str, outcome: Outcome, stop: Stop | None) -> int:
    """How many epochs a trial trains: up to the first epoch `stop` says to stop at, else all."""
    for epoch, score in enumerate(outcome.epoch_scores, start=1):
        if stop is not None and stop(trial_id, epoch, score, outcome.trainable_params):
            return epoch
    return len(outcome.epoch_scores)


def run_offline(sampler: str, inputs: SamplerInputs, train: Train, *, prior_options: dict | None = None,
                baselines: int | None = None, stop: Stop | None = None,
                metric_name: str = R.ACCURACY) -> list[R.TrialRecord]:
    """One search of `inputs.trials` trials with sampler `sampler` (prior | tpe | random), seeded
    by `inputs.seed`; the records of its trials in proposal order (module docstring).

    metric_name: what the outcomes' scores measure; the study optimizes it in its direction
    (`search.sampling.study.directions`: minimized for a lower-is-better metric such as `nll`), and
    `stop` must judge it in that direction too (`Rungs` takes scores turned so that higher is better).

    baselines: enqueue at most this many of the sampler's baselines (an ablation; None: all).
    A stopped trial's record has status pruned, no score, the epochs it trained and, as its cost,
    its share of the outcome's (epochs trained / epochs)."""
    setup = make_sampler(sampler, inputs, prior_options)
    study = create_study(setup.sampler, metric_name=metric_name)  # in memory
    for params, attrs in setup.enqueue[:baselines]:
        study.enqueue_trial(params, user_attrs=attrs)
    records = []
    for _ in range(inputs.trials):
        trial = study.ask()
        config = setup.space(trial)
        placement = Placement.from_json(config["placement"])
        outcome = train(placement, config["lr"])
        n = len(outcome.epoch_scores)
        done = epochs_trained(str(trial.number), outcome, stop)
        completed = done == n
        last = {R.SCORE: outcome.epoch_scores[-1], R.TRAINABLE_PARAMS: outcome.trainable_params} if completed else {}
        state, values = optuna_state(last, False)
        study.tell(trial, values, state=state)
        records.append(R.TrialRecord(
            trial_id=str(trial.number), run_id="", key=placement.key, rank=max(placement.rank_values()),
            lr=config["lr"], status=R.COMPLETED if completed else R.PRUNED,
            score=outcome.epoch_scores[-1] if completed else None, trainable_params=outcome.trainable_params,
            adapter_params=placement.adapter_params(inputs.space),
            compute_hours=outcome.compute_hours if completed else outcome.compute_hours * done / n,
            epochs=done, last_score=outcome.epoch_scores[done - 1], baseline=trial.user_attrs.get(BASELINE_ATTR)))
    return records
