"""Record every trial in MLflow, from the driver: one experiment per search, a parent run for the
search and one nested child run per trial.

Where it sits: train -> **track** -> frontier. A Tune `Callback` (runs on the driver, no torch):
- trial start: a child run with the placement key, rank, learning rate and the rest of the
  sampled values as params; `placement.json` and `lora_config.json` as artifacts;
- each epoch: the epoch's metrics, with step = epoch;
- trial end: status `completed` (with `metric`, the objective, and the adapter PEFT saved),
  `pruned` (ASHA stopped it) or `failed` (with the reason); the MLflow run is closed FINISHED,
  or FAILED for a failed trial, so no run stays RUNNING.
It also keeps one plain row per trial for the end-of-run table and the frontier.

Each hook writes in as few store calls as it can (`log_batch`): a trial waits for the driver to
take each epoch's result before it goes on, so tracking time is trial time
(`benchmarks/trial_overhead.py`).
"""

from __future__ import annotations

import json
import math
import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables.tune_entry import NOT_RETRIED, NOT_RETRIED_KEY

EPOCH_METRICS = ("accuracy", "balanced_accuracy", "epoch_score", "train_loss", "wall_s", "gpu_hours")


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


class MlflowTracker(Callback):
    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, space: ModelSpace,
                 metric_name: str, cost_unit: str, total_trials: int, lora_alpha_over_rank: float = 2.0,
                 lora_dropout: float = 0.0):
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.space = space
        self.metric_name = metric_name
        self.cost_unit = cost_unit
        self.total_trials = total_trials
        self.lora_alpha_over_rank, self.lora_dropout = lora_alpha_over_rank, lora_dropout
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.rows: dict[str, dict] = {}  # trial id -> row for the table / frontier
        self.t0 = time.time()
        self._rehydrate()

    # ---- resume: Tune pickles its callbacks with the experiment and restores them on --resume ----
    def __getstate__(self):
        state = self.__dict__.copy()
        state["client"] = self.client.tracking_uri  # a client holds connections: keep its URI
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.client = MlflowClient(state["client"])
        self._rehydrate()

    def _rehydrate(self) -> None:
        """Map trial ids to the runs already in the store, so a resumed search logs into them
        (one MLflow run per trial, never a duplicate) and its table covers every trial."""
        from analysis.mlflow_read import trial_row, trial_runs

        for run in trial_runs(self.client, self.client.get_run(self.parent_run_id)):
            tid = run.data.tags.get("trial_id")
            if tid is None or tid in self.runs:
                continue
            self.runs[tid] = run.info.run_id
            self.rows[tid] = trial_row(self.client, run)

    # ---- Tune hooks ------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            return  # a retried trial keeps its run
        cfg = trial.config
        placement = Placement.from_json(cfg["placement"])
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{trial.trial_id} {placement.key}"[:250],
            tags={"mlflow.parentRunId": self.parent_run_id, "trial_id": trial.trial_id,
                  "placement_key": _short(placement.key), "status": "running"},
        )
        rid = run.info.run_id
        self.runs[trial.trial_id] = rid
        params = {
            "placement_key": _short(placement.key),
            "rank": max(placement.rank_values()),
            "lr": cfg["lr"],
            "n_sites": placement.n_sites,
            "adapter_params": placement.adapter_params(self.space),
            "budget_ratio": round(cfg.get("budget_ratio", float("nan")), 6),
            "repairs": _short(cfg.get("repairs") or "none"),
        }
        params.update({k: v for k, v in cfg.items() if k.startswith(("kind_", "layer_"))})
        tags = [RunTag("baseline", str(cfg["baseline"]))] if cfg.get("baseline") else []
        self.client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()], tags=tags)
        self.client.log_dict(rid, placement.to_dict(), "placement.json")
        self.client.log_dict(rid, placement.lora_config_kwargs(
            self.space, alpha_over_rank=self.lora_alpha_over_rank, dropout=self.lora_dropout), "lora_config.json")
        self.rows[trial.trial_id] = {
            "trial_id": trial.trial_id, "run_id": rid, "key": placement.key,
            "rank": max(placement.rank_values()), "lr": cfg["lr"],
            "adapter_params": placement.adapter_params(self.space),
            "status": "running", "metric": None, "trainable_params": None, "gpu_hours": None,
            "epochs": 0, "baseline": cfg.get("baseline"),
        }

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rid = self.runs.get(trial.trial_id)
        if rid is None:
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(result[name]), now, epoch) for name in EPOCH_METRICS
                   if isinstance(result.get(name), (int, float)) and math.isfinite(result[name])]
        row, tags = self.rows[trial.trial_id], []
        if row.get("trainable_params") is None and "trainable_params" in result:
            metrics.append(Metric("trainable_params", float(result["trainable_params"]), now, 0))
        if result.get("node_id") and row.get("node_id") != result["node_id"]:
            row["node_id"] = result["node_id"]
            tags.append(RunTag("node_id", result["node_id"]))
        self.client.log_batch(rid, metrics=metrics, tags=tags)
        row.update(epochs=epoch, trainable_params=result.get("trainable_params"),
                   gpu_hours=result.get("gpu_hours"), last_score=result.get("epoch_score"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        rid = self.runs.get(trial.trial_id)
        if rid is None:
            return
        result = trial.last_result or {}
        row = self.rows[trial.trial_id]
        metrics = []
        if "final_metric" in result:
            row.update(status="completed", metric=result["final_metric"])
            now = int(time.time() * 1000)
            metrics = [Metric("metric", float(result["final_metric"]), now, 0)]
            metrics += [Metric(name, float(result[name]), now, 0) for name in ("trainable_params", "adapter_params")]
            if trial.checkpoint is not None:
                self.client.log_artifacts(rid, trial.checkpoint.path, "adapter")
        else:
            row.update(status="pruned")
        self._close(trial, rid, row, "FINISHED", metrics)

    def on_trial_error(self, iteration, trials, trial, **info):
        rid = self.runs.get(trial.trial_id)
        if rid is None:
            return
        row = self.rows[trial.trial_id]
        reason = _error_reason(trial)
        if NOT_RETRIED in reason:  # "...TrialFailed: not retried: <reason>" -> "<reason>"
            reason = reason.split(NOT_RETRIED, 1)[1]
        row.update(status="failed", error=reason)
        self.client.set_tag(rid, "error", _short(reason))
        self._close(trial, rid, row, "FAILED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        """The trial errored and Ray runs it again (`search.max_failures`), in the same MLflow run.

        A failure that a retry would repeat (`TrialFailed`: non-finite loss, out of memory) gets
        no real retry (Ray retries any error): max_failures 0 makes the requeued attempt the last,
        and the reason in its config makes it fail at once, before training (tune_entry.run_trial).
        Any other failure (a worker that died) is retried from epoch 1: the run's metric history
        then holds both attempts' epochs, and tag `retries` counts the retries.
        """
        reason = _error_reason(trial)
        if NOT_RETRIED in reason:
            trial.max_failures = 0
            trial.set_config({**trial.config, NOT_RETRIED_KEY: reason.split(NOT_RETRIED, 1)[1]})
            return
        rid = self.runs.get(trial.trial_id)
        if rid is None:
            return
        row = self.rows[trial.trial_id]
        row["retries"] = row.get("retries", 0) + 1
        self.client.set_tag(rid, "retries", str(row["retries"]))
        self.client.set_tag(rid, "retry_reason", _short(reason))
        print(f"retrying {trial.trial_id} {row['key']} (attempt {row['retries'] + 1}): {reason[:200]}", flush=True)

    # ---- helpers ---------------------------------------------------------------------------
    def _close(self, trial, rid: str, row: dict, mlflow_status: str, metrics: list | None = None) -> None:
        metrics = list(metrics or [])
        if row.get("gpu_hours") is not None:
            metrics.append(Metric("gpu_hours", float(row["gpu_hours"]), int(time.time() * 1000), 0))
        self.client.log_batch(rid, metrics=metrics, tags=[RunTag("status", row["status"])])
        self.client.set_terminated(rid, mlflow_status)
        done = sum(r["status"] != "running" for r in self.rows.values())
        metric = f"{row['metric']:.4f}" if row["metric"] is not None else f"({row.get('last_score') or 0:.4f} at epoch {row['epochs']})"
        print(
            f"[{done}/{self.total_trials}] {row['status']:<9} {self.metric_name} {metric}  "
            f"params {row.get('trainable_params') or 0:,}  {row['key']}  "
            f"({time.time() - self.t0:.0f}s elapsed)",
            flush=True,
        )

    def table_rows(self) -> list[dict]:
        return list(self.rows.values())


def _error_reason(trial) -> str:
    """The last line of the trial's error (Ray keeps the traceback in a file)."""
    path = getattr(trial, "error_file", None)
    try:
        text = open(path).read().strip() if path else ""
    except OSError:
        text = ""
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else "trial errored (no message)"


def write_json(path, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
