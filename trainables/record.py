"""The trial record: one typed home for what a trial reports and what is read back about it.

Where it sits: train -> **track** -> frontier. A trial reports per-epoch results under the key
names below (`trainables.train`); the tracker logs them to MLflow under the same names
(`search.tuning.tracker`); the frontier, the tables and the plots read `TrialRecord`s built by one
function, `build_record`, from what MLflow holds (`analysis.mlflow_read`) or from the tracker's
mirror of what it wrote. Stdlib only, so `analysis/` and the driver use it without torch.

One name per quantity:
- `epoch_score`: the task metric after an epoch (what ASHA watches);
- `score`: the task metric after the last epoch, the objective; only in a trial's last report;
- `metric_name`: which metric `score` is (`accuracy` or `balanced_accuracy`), a search-level param;
- `compute_hours`: wall time x the units a trial reserved / 3600, in `cost_unit`: GPU-hours when
  trials reserve GPUs, CPU-core-hours otherwise (never a CPU figure under a GPU name).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# ---- a trial's report (Tune result keys) and its MLflow metrics: the same names ---------------
EPOCH = "epoch"
EPOCH_SCORE = "epoch_score"
SCORE = "score"
ACCURACY = "accuracy"
BALANCED_ACCURACY = "balanced_accuracy"
# Generation (task.kind = "sft"): exact match of the greedy answer, teacher-forced token accuracy
# on the response tokens, and their mean negative log-likelihood (nats per token; lower is better).
EXACT_MATCH = "exact_match"
TOKEN_ACCURACY = "token_accuracy"
NLL = "nll"
TRAIN_LOSS = "train_loss"
TRAINABLE_PARAMS = "trainable_params"
ADAPTER_PARAMS = "adapter_params"
WALL_S = "wall_s"
COMPUTE_HOURS = "compute_hours"
NODE_ID = "node_id"
# A trial that cannot succeed (non-finite loss, out of memory) reports this key, with the reason,
# and ends without raising, so that it is not retried (a retry would fail the same way).
FAILURE = "failure"

# A trial whose outcome one store already held when a driver restarted: Tune reran it (its snapshot
# was older), and it reports that outcome instead of training again (`settled_result`).
SETTLED = "settled"

EPOCH_METRICS = (ACCURACY, BALANCED_ACCURACY, EPOCH_SCORE, TRAIN_LOSS, WALL_S, COMPUTE_HOURS)  # a classifier's epoch
# What an sft epoch reports instead of the two accuracies (exact match only when it is scored by it).
SFT_METRICS = (EXACT_MATCH, TOKEN_ACCURACY, NLL)
LOGGED_EPOCH_METRICS = EPOCH_METRICS + SFT_METRICS  # what the tracker logs per epoch, when reported

# ---- direction: the one definition of which way a metric improves ---------------------------
# Every place that compares scores (ASHA, the study, the frontier, hypervolume, the decisions, the
# recommendation, the plots and tables) asks `sense(metric_name)`; nothing else assumes "higher".
LOWER_IS_BETTER = frozenset({NLL})


def sense(metric_name: str) -> str:
    """"max" when a higher value of `metric_name` is better, "min" when a lower one is."""
    return "min" if metric_name in LOWER_IS_BETTER else "max"


def higher_is_better(metric_name: str) -> bool:
    return sense(metric_name) == "max"


def oriented(value: float, metric_name: str) -> float:
    """`value` turned so that higher is better (negated for a lower-is-better metric)."""
    return value if higher_is_better(metric_name) else -value


# The objectives, with their senses, in the order the searcher and the frontier use.
OBJECTIVES: tuple[tuple[str, str], ...] = ((SCORE, "max"), (TRAINABLE_PARAMS, "min"), (COMPUTE_HOURS, "min"))

# ---- cost units -----------------------------------------------------------------------------
GPU_HOURS = "GPU-hours"
CPU_CORE_HOURS = "CPU-core-hours"


def trial_config(config: dict) -> dict:
    """A Tune trial's own config: the search's trials carry it directly, confirmations under JOB."""
    return config.get(JOB, config)


def cost_unit(gpus_per_trial: float) -> str:
    return GPU_HOURS if gpus_per_trial > 0 else CPU_CORE_HOURS


# ---- MLflow names: the search's parent run and its trial runs -------------------------------
ROLE_TAG, ROLE_SEARCH = "role", "search"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "trial_id"
STATUS_TAG = "status"
BASELINE_TAG = "baseline"
PARETO_TAG = "pareto"
ERROR_TAG = "error"
RETRIES_TAG, RETRY_REASON_TAG = "retries", "retry_reason"
JOB = "job"  # a confirmation trial's config is {"job": <the trial config>} (a grid over jobs)
DECISION_TAG = "decision"  # on a confirmed trial's run: against the best, "best" or a decision word
CONFIRMS_TAG = "confirms"  # on a confirmation run: the trial id of the search trial it retrains
SEED = "seed"  # param of every trial run: its training seed
WARM_START_TAG = "warm_start"  # on a run copied from an earlier search (--warm-start): its run id there
WITHIN_BUDGET_TAG = "within_budget"  # "false" on a copied run whose placement exceeds this search's budget
PLACEMENT_KEY = "placement_key"  # param and tag of a trial run
METRIC_NAME = "metric_name"  # params of the parent run
COST_UNIT = "cost_unit"

# ---- trial statuses -------------------------------------------------------------------------
RUNNING, COMPLETED, PRUNED, FAILED = "running", "completed", "pruned", "failed"
TRIAL_STATUSES = (COMPLETED, PRUNED, FAILED)
KILLED = "killed"  # the search was stopped (Ctrl-C, SIGTERM) while the trial ran; --resume reruns it
OPTUNA_TRIAL = "optuna_trial"  # param of a search trial's run: its Optuna trial number


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the tables, the frontier and the plots see it.

    status: running | completed | pruned (ASHA stopped it) | failed | killed | unknown.
    score: the objective, for completed trials only. last_score: the last epoch's epoch_score
    (what a stopped trial had reached). epochs: the last epoch reported. pareto: on the frontier.
    seed: the training seed. confirms: for a confirmation run, the trial id it retrains with
    another seed (None for the search's own trials). warm_start: for a trial copied from an
    earlier search (never trained here), its run id there; within_budget is False when its
    placement exceeds this search's budget (it then never enters the frontier).
    """

    trial_id: str
    run_id: str
    key: str
    rank: int | None = None
    lr: float | None = None
    status: str = RUNNING
    score: float | None = None
    trainable_params: int | None = None
    adapter_params: int | None = None
    compute_hours: float | None = None
    epochs: int = 0
    last_score: float | None = None
    baseline: str | None = None
    pareto: bool = False
    error: str | None = None
    start_time: int | None = None
    seed: int | None = None
    confirms: str | None = None
    warm_start: str | None = None
    within_budget: bool = True

    def replace(self, **changes) -> "TrialRecord":
        return dataclasses.replace(self, **changes)

    def objectives(self) -> tuple[float, float, float]:
        """(score, trainable_params, compute_hours) of a completed trial."""
        return (float(self.score), float(self.trainable_params), float(self.compute_hours))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


CSV_COLUMNS = ["trial_id", "run_id", "status", "pareto", "key", "rank", "lr", SCORE, TRAINABLE_PARAMS,
               ADAPTER_PARAMS, COMPUTE_HOURS, "epochs", "seed", "confirms", "baseline", "warm_start", "within_budget"]


def _number(value, kind=float):
    """A number from an MLflow param (a string) or metric, or None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if kind is int and math.isfinite(number) else number


def run_status(mlflow_status: str, status_tag: str | None) -> str:
    """completed | pruned | failed from the tracker's tag; running while MLflow says so; killed or
    unknown for a closed run the tracker never finished (a search stopped from outside)."""
    if mlflow_status in ("RUNNING", "SCHEDULED"):
        return RUNNING
    if status_tag in TRIAL_STATUSES:
        return status_tag
    return {"FAILED": FAILED, "KILLED": "killed"}.get(mlflow_status, "unknown")


def build_record(run_id: str, mlflow_status: str, tags: dict, params: dict, metrics: dict,
                 start_time: int | None = None) -> TrialRecord:
    """The one way a `TrialRecord` is made: from a trial run's tags, params and latest metrics (the
    value at the highest step, as MLflow holds them or as the tracker wrote them). The last epoch and
    its score are the latest `epoch` and `epoch_score` (logged with step = epoch)."""
    status = run_status(mlflow_status, tags.get(STATUS_TAG))
    adapter = metrics.get(ADAPTER_PARAMS, _number(params.get(ADAPTER_PARAMS)))
    return TrialRecord(
        trial_id=tags.get(TRIAL_ID_TAG, ""),
        run_id=run_id,
        key=params.get(PLACEMENT_KEY, tags.get(PLACEMENT_KEY, "")),
        rank=_number(params.get("rank"), int),
        lr=_number(params.get("lr")),
        status=status,
        score=metrics.get(SCORE) if status == COMPLETED else None,
        trainable_params=_number(metrics.get(TRAINABLE_PARAMS), int),
        adapter_params=_number(adapter, int),
        compute_hours=metrics.get(COMPUTE_HOURS),
        epochs=_number(metrics.get(EPOCH), int) or 0,
        last_score=metrics.get(EPOCH_SCORE),
        baseline=params.get(BASELINE_TAG) or tags.get(BASELINE_TAG) or None,
        pareto=tags.get(PARETO_TAG) == "true",
        error=tags.get(ERROR_TAG) if status == FAILED else None,
        start_time=start_time,
        seed=_number(params.get(SEED), int),
        confirms=tags.get(CONFIRMS_TAG),
        warm_start=tags.get(WARM_START_TAG),
        within_budget=tags.get(WITHIN_BUDGET_TAG) != "false",
    )


def settled_result(record: TrialRecord) -> dict:
    """The result a rerun reports instead of training, for a trial whose outcome is already known
    (`SETTLED`): the objectives of a completed trial, the reason of a failed one, nothing more for
    a pruned one (so Optuna reads the same outcome MLflow holds)."""
    nan = float("nan")
    out = {SETTLED: True, EPOCH_SCORE: record.last_score if record.last_score is not None else nan}
    if record.compute_hours is not None:
        out[COMPUTE_HOURS] = record.compute_hours
    if record.status == COMPLETED and None not in (record.score, record.trainable_params, record.compute_hours):
        out.update({SCORE: record.score, TRAINABLE_PARAMS: record.trainable_params,
                    ADAPTER_PARAMS: record.adapter_params or 0})
    elif record.status == FAILED:
        out[FAILURE] = record.error or "failed before the driver restarted"
    return out
