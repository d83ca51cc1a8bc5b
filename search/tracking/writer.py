"""Store calls made in order on one background thread, so that no MLflow round trip is made on Ray
Tune's loop (a trial waits in `tune.report` until the loop has taken its result: a store call made
in a hook is trial time; docs/benchmarks.md, "Cluster scale").

Where it sits: track. `search.tuning.tracker` queues its calls here and mirrors what it wrote in a
`TrialMirror`, one per trial run, so that it can answer `records()` without reading the store.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from mlflow.entities import Metric

from trainables import record as R
from trainables.record import TrialRecord


@dataclass
class TrialMirror:
    """What the tracker wrote to one trial run: tags, params, latest metric per name (by step)."""

    run_id: str | None  # None until its queued create_run has run
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # name -> (step, value)
    mlflow_status: str = "RUNNING"
    start_time: int | None = None

    def log(self, metrics: list[Metric]) -> None:
        for m in metrics:
            if m.key not in self.metrics or m.step >= self.metrics[m.key][0]:
                self.metrics[m.key] = (m.step, m.value)

    def record(self) -> TrialRecord:
        return R.build_record(self.run_id, self.mlflow_status, self.tags, self.params,
                              {k: v for k, (_, v) in self.metrics.items()}, self.start_time)


class StoreWriter:
    """The tracker's store calls, made in order on one background thread (this module's docstring).

    `submit` queues a call; `flush` waits until every queued call has run. The first error a call
    raises is kept: later calls are skipped (the store would be left in an order nobody wrote) and
    `submit` and `flush` raise it, so a failing store still stops the search loudly."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, call) -> None:
        self._raise()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mlflow-tracker", daemon=True)
            self._thread.start()
        self._queue.put(call)

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Flush, then let the thread end (a later `submit` starts another)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None
        self._raise()

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            try:
                if call is None:
                    return
                if self._error is None:
                    call()
            except BaseException as e:  # kept and raised on the driver's thread (submit, flush)
                self._error = e
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"MLflow tracking failed: {self._error!r}") from self._error
