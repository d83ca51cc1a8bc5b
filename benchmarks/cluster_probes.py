"""The real search driver (`search/run.py`) with timing probes, for `benchmarks/cluster_scale.py`.

    python -m benchmarks.cluster_probes PROBES.json -- <search/run.py arguments>

Where it sits: around the driver, in its own process, for a benchmark only. Before the search
starts it wraps, in this process, the calls whose cost grows with a search's size, and when the
search ends it writes what they measured to PROBES.json:
- `ask`: each proposal (`PlacementSearcher.suggest`: Optuna's ask and the define-by-run space),
  with the number of trials the study had been told had finished;
- `tell`: each outcome told to the study (`PlacementSearcher.on_trial_complete`);
- `hook`: each MLflow tracker hook (`MlflowTracker.on_trial_start/result/complete`): while it
  runs, Tune's loop on the driver waits, and so does the trial whose result it logs;
- `mlflow`: each MLflow client call of the tracker (create_run, log_batch, log_dict,
  log_artifacts, set_terminated, update_run);
- `snapshot`: each Tune experiment-state snapshot (`TuneController.save_to_dir`: every trial's
  state, the searcher and the callbacks, pickled to disk);
- `timeline`: the driver's CPU seconds (every thread of the process) and resident memory, every
  second; and `rusage`: the process's totals at the end (peak resident memory included).
Nothing here changes what the driver does, only how long its calls are seen to take.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import threading
import time
from pathlib import Path

EVENTS: dict[str, list] = {"ask": [], "tell": [], "hook": [], "mlflow": [], "snapshot": [], "timeline": []}


def _probe(cls, name: str, kind: str, extra=None) -> None:
    """Replace cls.name with a wrapper that appends [kind-specific fields..., start, seconds]."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def timed(self, *args, **kwargs):
        start, t0 = time.time(), time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            seconds = time.perf_counter() - t0
            EVENTS[kind].append([*(extra(self) if extra else [name]), start, seconds])

    setattr(cls, name, timed)


def install() -> None:
    from mlflow.tracking import MlflowClient
    from ray.tune.execution.tune_controller import TuneController

    from search.tuning.searcher import PlacementSearcher
    from search.tuning.tracker import MlflowTracker

    _probe(PlacementSearcher, "suggest", "ask", extra=lambda s: [len(s._told)])
    _probe(PlacementSearcher, "on_trial_complete", "tell", extra=lambda s: [len(s._told)])
    for hook in ("on_trial_start", "on_trial_result", "on_trial_complete"):
        _probe(MlflowTracker, hook, "hook")
    for call in ("create_run", "log_batch", "log_dict", "log_artifacts", "set_terminated", "update_run"):
        _probe(MlflowClient, call, "mlflow")
    _probe(TuneController, "save_to_dir", "snapshot")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _sample(stop: threading.Event, period_s: float = 1.0) -> None:
    while not stop.is_set():
        EVENTS["timeline"].append([time.time(), time.process_time(), _rss_bytes()])
        stop.wait(period_s)


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit(__doc__.split("\n\n")[1])
    out, argv = Path(sys.argv[1]), sys.argv[3:]
    install()
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(stop,), daemon=True)
    sampler.start()
    from search.run import main as run_main

    started = time.time()
    code = 1
    try:
        code = run_main(argv)
    finally:
        stop.set()
        sampler.join(timeout=5)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out.write_text(json.dumps({
            **EVENTS, "started": started, "ended": time.time(), "exit_code": code,
            "rusage": {"cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_bytes": usage.ru_maxrss * 1024},
        }))
    return code


if __name__ == "__main__":
    sys.exit(main())
