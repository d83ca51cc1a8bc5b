"""Record every trial in MLflow, from the driver: one nested child run per trial under the search's
parent run (`search.tracking.runs`).

Where it sits: train -> **track** -> frontier. `MlflowTracker`, a Tune `Callback` on the driver (no
torch), logs each trial under the names of `trainables.record`:
- trial start: a child run with the placement key, rank, learning rate and the rest of the
  sampled values as params; `placement.json` and `lora_config.json` as artifacts;
- each result: the epoch's metrics, with step = epoch;
- trial end: status `completed` (with `score`, the objective, and the adapter PEFT saved),
  `pruned` (ASHA or the cost cap stopped it) or `failed` (with the reason in tag `error`); the
  MLflow run is closed FINISHED, or FAILED for a failed trial, so no run stays RUNNING (KILLED
  for a trial a full disk or a read-only store broke: no outcome).
Three separate things do the work: a `TrialMirror` per trial keeps what was written, so `records()`
gives the same `TrialRecord`s that `analysis.mlflow_read` reads back from the store (one builder,
`trainables.record.build_record`); a `StoreWriter` makes the store calls in order on one background
thread, never on Tune's loop (`search.tracking.writer`); `Progress` prints a line per finished
trial. `records()`, `run_id()` and the end of the experiment wait for the writer's queue; a store
error stops the search at the next hook. At the end of the experiment, a trial Tune has finished
whose run is still RUNNING (a driver that died after Tune's last snapshot but before its queued
writes) is closed from Tune's last result.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from analysis.mlflow_read import trial_runs
from search.runtime.credentials import real
from search.runtime.errors import storage_problem
from search.runtime.interrupts import stop_requested
from search.tracking.runs import SearchRun
from search.tracking.writer import StoreWriter, TrialMirror
from spaces.placement import LoraScaling, Placement
from spaces.space import ModelSpace
from trainables import record as R
from trainables.record import TrialRecord


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


@dataclass(frozen=True)
class TrialContext:
    """What the tracker needs to know to log and print a trial of this search."""

    space: ModelSpace
    metric_name: str
    cost_unit: str
    total_trials: int
    lora_scaling: LoraScaling = LoraScaling()
    lora_dropout: float = 0.0
    seed: int = 0  # the training seed of trials whose config names none (the search's own)
    label: str = ""  # printed before each trial's line ("confirm" for the confirmation phase)


class Progress:
    """The console's line per finished trial: `[done/total] status metric score  params  key`,
    counting this phase's trials only (the search's own, or the confirmation runs)."""

    def __init__(self, context: TrialContext):
        self.context, self.t0 = context, time.time()

    def trial_done(self, r: TrialRecord, mirrors) -> None:
        ctx = self.context
        score = f"{r.score:.4f}" if r.score is not None else f"({r.last_score or 0:.4f} at epoch {r.epochs})"
        label = f"{ctx.label} " if ctx.label else ""
        done = sum(m.mlflow_status != "RUNNING" and (R.CONFIRMS_TAG in m.tags) == bool(ctx.label)
                   and R.WARM_START_TAG not in m.tags for m in mirrors)
        print(f"{label}[{done}/{ctx.total_trials}] {r.status:<9} {ctx.metric_name} {score}  "
              f"params {r.trainable_params or 0:,}  {r.key}  ({time.time() - self.t0:.0f}s elapsed)", flush=True)

    @staticmethod
    def retrying(trial_id: str, key: str, attempt: int, reason: str) -> None:
        print(f"retrying {trial_id} {key} (attempt {attempt}): {reason[:200]}", flush=True)


class MlflowTracker(Callback):
    def __init__(self, client: MlflowClient, run: SearchRun, context: TrialContext):
        self.client, self.run, self.context = client, run, context
        self._mirrors: dict[str, TrialMirror] = {}  # trial id -> what was written to its run
        self._writer = StoreWriter()
        self.progress = Progress(context)
        self._rehydrate()

    # ---- resume: Tune pickles its callbacks with the experiment and restores them on --resume ----
    def __getstate__(self):
        self._writer.flush()
        state = self.__dict__.copy()
        state["client"] = None  # a client holds connections; rebuilt from the run's tracking URI
        state["_writer"] = None  # a thread; a new one is made on restore
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.client = MlflowClient(real(self.run.tracking_uri))
        self._writer = StoreWriter()
        self._rehydrate()

    def _rehydrate(self) -> None:
        """Map trial ids to the runs already in the store, so a resumed search logs into them
        (one MLflow run per trial, never a duplicate)."""
        for run in trial_runs(self.client, self.client.get_run(self.run.parent_run_id)):
            tid = run.data.tags.get(R.TRIAL_ID_TAG)
            if tid is None or tid in self._mirrors:
                continue
            m = TrialMirror(run.info.run_id, dict(run.data.tags), dict(run.data.params),
                        {k: (0, v) for k, v in run.data.metrics.items()}, run.info.status, run.info.start_time)
            self._mirrors[tid] = m

    def _earlier_run_of(self, cfg: dict) -> str | None:
        """The trial id whose run already holds this job under another Tune trial id: a confirmation
        job (same trial confirmed, same seed) or a search trial asked again (same Optuna trial),
        restarted without Tune's state; it logs into that run instead of a second one."""
        for tid, m in self._mirrors.items():
            if cfg.get(R.CONFIRMS_TAG):
                if m.tags.get(R.CONFIRMS_TAG) == cfg[R.CONFIRMS_TAG] and m.params.get(R.SEED) == str(cfg.get(R.SEED)):
                    return tid
            elif cfg.get(R.OPTUNA_TRIAL) is not None and m.params.get(R.OPTUNA_TRIAL) == str(cfg[R.OPTUNA_TRIAL]) \
                    and not _final(m):
                return tid
        return None

    def run_id(self, trial_id: str) -> str | None:
        self._writer.flush()  # the run exists once its queued create_run has run
        m = self._mirrors.get(trial_id)
        return m.run_id if m else None

    def records(self) -> list[TrialRecord]:
        """Every trial this tracker knows, in the order they started (all of it written)."""
        self._writer.flush()
        return [m.record() for m in self._mirrors.values()]

    def flush(self) -> None:
        """Wait until everything the hooks logged is in the store."""
        self._writer.flush()

    # ---- Tune hooks ------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        m = self._mirrors.get(trial.trial_id)
        if m is not None:  # a retried trial keeps its run; a settled rerun leaves it as it is
            if m.mlflow_status != "RUNNING" and not _final(m):  # stopped with its search: it runs again
                self._write(m, tags={R.STATUS_TAG: R.RUNNING})
                self.client.update_run(m.run_id, status="RUNNING")
                m.mlflow_status = "RUNNING"
            return
        cfg, space = R.trial_config(trial.config), self.context.space
        earlier = self._earlier_run_of(cfg)
        if earlier is not None:
            m = self._mirrors.pop(earlier)
            self._mirrors[trial.trial_id] = m
            self._write(m, tags={R.TRIAL_ID_TAG: trial.trial_id, R.STATUS_TAG: R.RUNNING})
            self._writer.submit(lambda: self.client.update_run(m.run_id, status="RUNNING"))
            m.mlflow_status = "RUNNING"
            return
        placement = Placement.from_json(cfg["placement"])
        seed = int(cfg.get(R.SEED, self.context.seed))
        tags = {R.PARENT_TAG: self.run.parent_run_id, R.TRIAL_ID_TAG: trial.trial_id,
                R.PLACEMENT_KEY: _short(placement.key), R.STATUS_TAG: R.RUNNING}
        name = f"{trial.trial_id} {placement.key}"
        if cfg.get(R.CONFIRMS_TAG):
            tags[R.CONFIRMS_TAG] = cfg[R.CONFIRMS_TAG]
            name = f"{trial.trial_id} {placement.key} seed {seed}"
        m = TrialMirror(None, dict(tags))
        self._mirrors[trial.trial_id] = m

        def create() -> None:  # later calls read m.run_id when they run, after this one
            run = self.client.create_run(self.run.experiment_id, run_name=name[:250], tags=tags)
            m.run_id, m.start_time = run.info.run_id, run.info.start_time

        self._writer.submit(create)
        params = {
            R.PLACEMENT_KEY: _short(placement.key),
            "rank": max(placement.rank_values()),
            "lr": cfg["lr"],
            "n_sites": placement.n_sites,
            R.ADAPTER_PARAMS: placement.adapter_params(space),
            "budget_ratio": round(cfg.get("budget_ratio", float("nan")), 6),
            "repairs": _short(cfg.get("repairs") or "none"),
            R.SEED: seed,
        }
        if cfg.get(R.OPTUNA_TRIAL) is not None:
            params[R.OPTUNA_TRIAL] = cfg[R.OPTUNA_TRIAL]
        params.update({k: v for k, v in cfg.items() if k.startswith(("kind_", "layer_"))})
        params = {k: str(v) for k, v in params.items()}
        new_tags = {R.BASELINE_TAG: str(cfg["baseline"])} if cfg.get("baseline") else {}
        self._write(m, params=params, tags=new_tags)
        lora = placement.lora_config_kwargs(space, scaling=self.context.lora_scaling, dropout=self.context.lora_dropout)
        self._writer.submit(lambda: self.client.log_dict(m.run_id, placement.to_dict(), "placement.json"))
        self._writer.submit(lambda: self.client.log_dict(m.run_id, lora, "lora_config.json"))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        m = self._mirrors.get(trial.trial_id)
        if m is None or result.get(R.SETTLED):
            return
        epoch = int(result.get(R.EPOCH, result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        names = R.LOGGED_EPOCH_METRICS + (R.EPOCH,)
        metrics = [Metric(name, float(result[name]), now, epoch) for name in names
                   if isinstance(result.get(name), (int, float)) and math.isfinite(result[name])]
        if R.TRAINABLE_PARAMS not in m.metrics and R.TRAINABLE_PARAMS in result:
            metrics.append(Metric(R.TRAINABLE_PARAMS, float(result[R.TRAINABLE_PARAMS]), now, 0))
        tags = {}
        if result.get(R.NODE_ID) and m.tags.get(R.NODE_ID) != result[R.NODE_ID]:
            tags[R.NODE_ID] = result[R.NODE_ID]
        self._write(m, metrics=metrics, tags=tags)

    def on_trial_complete(self, iteration, trials, trial, **info):
        m = self._mirrors.get(trial.trial_id)
        if m is None or _final(m):  # a settled rerun: the run already holds its outcome
            return
        result = trial.last_result or {}
        if R.FAILURE in result:
            self._close(m, R.FAILED, "FAILED", tags={R.ERROR_TAG: _short(result[R.FAILURE])})
            return
        metrics = []
        status = R.PRUNED
        if R.SCORE in result:
            status = R.COMPLETED
            now = int(time.time() * 1000)
            metrics = [Metric(name, float(result[name]), now, 0)
                       for name in (R.SCORE, R.TRAINABLE_PARAMS, R.ADAPTER_PARAMS)]
            if trial.checkpoint is not None:
                path = trial.checkpoint.path
                self._writer.submit(lambda: self.client.log_artifacts(m.run_id, path, "adapter"))
        self._close(m, status, "FINISHED", metrics=metrics)

    def on_trial_error(self, iteration, trials, trial, **info):
        """Tune gave up on the trial: its run is closed FAILED with the reason, unless a full disk or
        a read-only store caused it (the storage's fault, not the placement's): then KILLED, no
        outcome, like a trial a signal stopped."""
        m = self._mirrors.get(trial.trial_id)
        if m is None or _final(m):
            return
        reason = _error_reason(trial)
        status, closed = (R.KILLED, "KILLED") if storage_problem(RuntimeError(reason)) else (R.FAILED, "FAILED")
        self._close(m, status, closed, tags={R.ERROR_TAG: _short(reason)})

    def on_trial_recover(self, iteration, trials, trial, **info):
        """The trial errored and Ray runs it again (`search.max_failures`: a worker that died), from
        epoch 1, in the same MLflow run: its metric history then holds both attempts' epochs, and
        tag `retries` counts the retries."""
        m = self._mirrors.get(trial.trial_id)
        if m is None:
            return
        reason = _error_reason(trial)
        retries = int(m.tags.get(R.RETRIES_TAG, 0)) + 1
        self._write(m, tags={R.RETRIES_TAG: str(retries), R.RETRY_REASON_TAG: _short(reason)})
        self.progress.retrying(trial.trial_id, m.params.get(R.PLACEMENT_KEY, ""), retries + 1, reason)

    def on_experiment_end(self, trials, **info):
        """Everything queued is written; a trial Tune has finished whose run is still RUNNING (its
        close was queued when a previous driver died) is closed from Tune's last result. After
        Ctrl-C or SIGTERM the trials Tune stopped are left to the driver, which marks them KILLED
        (`search.driver`): their last result is not an outcome."""
        self._writer.flush()
        for trial in [] if stop_requested() else trials:
            m = self._mirrors.get(trial.trial_id)
            if m is None or m.mlflow_status != "RUNNING":
                continue
            if trial.status == "TERMINATED":
                self.on_trial_complete(0, trials, trial)
            elif trial.status == "ERROR":
                self.on_trial_error(0, trials, trial)
        self._writer.close()

    # ---- helpers ---------------------------------------------------------------------------
    def _write(self, m: TrialMirror, *, metrics: list | None = None, params: dict | None = None,
               tags: dict | None = None) -> None:
        """One store call for everything a hook logs, queued; mirrored at once."""
        metrics, params, tags = list(metrics or []), dict(params or {}), dict(tags or {})
        if metrics or params or tags:
            batch = {"metrics": metrics, "params": [Param(k, v) for k, v in params.items()],
                     "tags": [RunTag(k, v) for k, v in tags.items()]}
            self._writer.submit(lambda: self.client.log_batch(m.run_id, **batch))
        m.log(metrics)
        m.params.update(params)
        m.tags.update(tags)

    def _close(self, m: TrialMirror, status: str, mlflow_status: str, *, metrics: list | None = None,
               tags: dict | None = None) -> None:
        self._write(m, metrics=metrics, tags={**(tags or {}), R.STATUS_TAG: status})
        self._writer.submit(lambda: self.client.set_terminated(m.run_id, mlflow_status))
        m.mlflow_status = mlflow_status
        self.progress.trial_done(m.record(), self._mirrors.values())

def _final(m: TrialMirror) -> bool:
    """The run holds an outcome (completed, pruned, failed) and is closed."""
    return m.mlflow_status != "RUNNING" and m.tags.get(R.STATUS_TAG) in R.TRIAL_STATUSES


def _error_reason(trial) -> str:
    """The last line of the trial's error (Ray keeps the traceback in a file)."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text().strip() if path else ""
    except OSError:
        text = ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "trial errored (no message)"
