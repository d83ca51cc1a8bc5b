"""What one run of `benchmarks/cluster_scale.py` measured, and whether its stores agree.

Where it sits: after a simulated search, reading what it left: the driver's probes
(`benchmarks/cluster_probes.py`), the trials' report traces (`trainables.simulated.ReportTrace`),
the MLflow store, the Optuna study and Tune's experiment state. `measure` turns them into the
numbers of the benchmark; `check_invariants` says whether every trial is in MLflow once, the study
holds as many trials as Tune ran with the same outcomes, and nothing is left RUNNING.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

ASK_BINS = ((0, 100), (100, 300), (300, 1000), (1000, 10**9))


def summary(values: list[float], scale: float = 1.0) -> dict:
    """n, mean, p50, p95 and max of `values` x scale (None when empty)."""
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "max": None}
    v = sorted(x * scale for x in values)
    return {"n": len(v), "mean": statistics.fmean(v), "p50": v[len(v) // 2], "p95": v[min(len(v) - 1, int(0.95 * len(v)))],
            "max": v[-1]}


def load_traces(trace_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(trace_dir.glob("*.jsonl")):
        rows.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return rows


def trial_timing(traces: list[dict], concurrent: int) -> dict:
    """Waits after reports, gaps between trials on a worker, simulated time, wall against the ideal."""
    waits, busy, lost, sim = [], 0.0, 0.0, 0.0
    warm = warm_up_end(traces, concurrent)
    steady_waits, steady_lost, steady_busy = [], 0.0, 0.0  # the same, after the warm-up
    by_worker: dict[int, list[dict]] = {}
    for t in traces:
        for made, resumed in t["reports"]:
            wait = (resumed if resumed is not None else t["end"]) - made  # stopped at a report: until it ended
            waits.append(wait)
            lost += wait
            if made >= warm:
                steady_waits.append(wait)
                steady_lost += wait
        busy += t["end"] - t["start"]
        steady_busy += max(0.0, t["end"] - max(t["start"], warm))
        sim += len(t["reports"]) * t["epoch_s"]
        by_worker.setdefault(t["pid"], []).append(t)
    gaps = []
    for rows in by_worker.values():
        rows.sort(key=lambda r: r["start"])
        gaps.extend(b["start"] - a["end"] for a, b in zip(rows, rows[1:]))
    start, end = min(t["start"] for t in traces), max(t["end"] for t in traces)
    return {"trials": len(traces), "workers": len(by_worker), "report_wait_s": summary(waits),
            "wait_share": lost / busy if busy else None, "gap_between_trials_s": summary(gaps),
            "warm_up_s": warm - start, "steady_report_wait_s": summary(steady_waits),
            "steady_wait_share": steady_lost / steady_busy if steady_busy else None,
            "simulated_s": sim, "ideal_s": sim / concurrent, "schedule_s": zero_overhead_schedule(traces, concurrent),
            "first_start": start, "last_end": end}


def warm_up_end(traces: list[dict], concurrent: int) -> float:
    """When the cluster has warmed up: the first `concurrent` trials (one per worker process, each
    started cold: Ray starts the process, the worker imports Ray Tune) have all made their first
    report. Later trials reuse those processes (`reuse_actors`)."""
    first = sorted(traces, key=lambda t: t["start"])[:concurrent]
    made = [t["reports"][0][0] for t in first if t["reports"]]
    return max(made) if made else min(t["start"] for t in traces)


def zero_overhead_schedule(traces: list[dict], concurrent: int) -> float:
    """The wall time of the same trials, started in the same order, on `concurrent` slots with no
    overhead at all (each trial takes its simulated time; a trial starts the moment a slot frees):
    unlike simulated time / concurrency, it counts the tail, where fewer trials are left than slots."""
    import heapq

    slots = [0.0] * concurrent
    end = 0.0
    for t in sorted(traces, key=lambda t: t["start"]):
        free = heapq.heappop(slots)
        finish = free + len(t["reports"]) * t["epoch_s"]
        heapq.heappush(slots, finish)
        end = max(end, finish)
    return end


def measure(run: dict, concurrent: int) -> dict:
    """The benchmark's numbers for one run (module docstring of benchmarks/cluster_scale.py)."""
    out = Path(run["out"])
    probes = json.loads((out / "probes.json").read_text())
    traces = load_traces(out / "trace")
    timing = trial_timing(traces, concurrent)
    asks = probes["ask"]  # [finished, start, seconds]
    fit_start = min(a[1] for a in asks)
    wall = timing["last_end"] - fit_start
    timeline = [row for row in probes["timeline"] if fit_start <= row[0] <= timing["last_end"]]
    cpu_fit = timeline[-1][1] - timeline[0][1] if len(timeline) > 1 else None
    n = timing["trials"]
    hooks = {name: summary([e[2] for e in probes["hook"] if e[0] == name], 1000.0)
             for name in ("on_trial_start", "on_trial_result", "on_trial_complete")}
    calls = {name: summary([e[2] for e in probes["mlflow"] if e[0] == name], 1000.0)
             for name in sorted({e[0] for e in probes["mlflow"]})}
    snapshots = [e[2] for e in probes["snapshot"] if fit_start <= e[1] <= timing["last_end"]]
    return {
        **run, "concurrent": concurrent, "trials": n, "workers": timing["workers"],
        "ask_points": [[a[0], a[2]] for a in asks],
        "ask_s": {f"{lo}-{hi - 1 if hi < 10**9 else ''}": summary([a[2] for a in asks if lo <= a[0] < hi])
                  for lo, hi in ASK_BINS},
        "ask_s_all": summary([a[2] for a in asks]),
        "tell_s": summary([t[2] for t in probes["tell"]]),
        "hook_ms": hooks, "mlflow_call_ms": calls,
        "snapshots": {"count": len(snapshots), **summary(snapshots), "total_s": sum(snapshots),
                      "share_of_wall": sum(snapshots) / wall if wall else None},
        "driver_cpu_s": {"fit": cpu_fit, "process": probes["rusage"]["cpu_s"],
                         "per_trial": cpu_fit / n if cpu_fit is not None and n else None,
                         "share_of_one_core": cpu_fit / wall if cpu_fit is not None and wall else None},
        "driver_rss_mb": {"peak": probes["rusage"]["max_rss_bytes"] / 2**20,
                          "end": probes["timeline"][-1][2] / 2**20 if probes["timeline"] else None},
        "report_wait_s": timing["report_wait_s"], "wait_share": timing["wait_share"],
        "warm_up_s": timing["warm_up_s"], "steady_report_wait_s": timing["steady_report_wait_s"],
        "steady_wait_share": timing["steady_wait_share"],
        "gap_between_trials_s": timing["gap_between_trials_s"],
        "wall_s": wall, "first_trial_to_last_s": timing["last_end"] - timing["first_start"],
        "simulated_s": timing["simulated_s"], "ideal_s": timing["ideal_s"], "wall_over_ideal": wall / timing["ideal_s"],
        "schedule_s": timing["schedule_s"], "wall_over_schedule": wall / timing["schedule_s"],
    }


def extra_asks(out: Path, name: str, k: int) -> list[float]:
    """Seconds per ask of `k` more proposals on a copy of the finished study, with the search's own
    sampler (rebuilt from the search's state file), after every trial has been told."""
    import optuna

    from search.sampling.samplers import SamplerInputs, make_sampler
    from search.sampling.study import open_study_storage
    from spaces.budget import make_budget
    from trainables.config import Config
    from trainables.prepare import Preparation

    state = json.loads((out / f"{name}.search.json").read_text())
    cfg, prep = Config.from_dict(state["config"]), Preparation.from_dict(state["prepare"])
    budget = make_budget(prep.space, cfg.search.budget, cfg.search.r_ref, min(cfg.search.ranks))
    setup = make_sampler(cfg.search.sampler, SamplerInputs.from_config(prep.space, budget, cfg, prep.scores))
    copy = out / "optuna-extra-asks.db"
    shutil.copy(out / "optuna.db", copy)
    study = optuna.load_study(study_name=name, storage=open_study_storage(f"sqlite:///{copy}"), sampler=setup.sampler)
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        trial = study.ask()
        setup.space(trial)
        times.append(time.perf_counter() - t0)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    copy.unlink()
    return times


def check_invariants(out: Path, name: str, tracking_uri: str) -> dict:
    """Every Tune trial in MLflow exactly once, the study's trials = Tune's with the same outcomes,
    nothing RUNNING anywhere. Returns the counts and a list of problems (empty when all hold)."""
    import optuna
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    from ray.tune import ExperimentAnalysis

    from trainables import record as R

    problems = []
    tune_trials = ExperimentAnalysis(str(out / "ray_results" / name)).trials
    tune_ids = [t.trial_id for t in tune_trials]
    unfinished = [t.trial_id for t in tune_trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished:
        problems.append(f"Tune trials not finished: {unfinished[:5]}")

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    trial_runs = [r for r in runs if R.TRIAL_ID_TAG in r.data.tags]
    mlflow_ids = [r.data.tags[R.TRIAL_ID_TAG] for r in trial_runs]
    if len(mlflow_ids) != len(set(mlflow_ids)):
        problems.append(f"{len(mlflow_ids) - len(set(mlflow_ids))} trials have more than one MLflow run")
    if set(mlflow_ids) != set(tune_ids):
        problems.append(f"MLflow runs for {len(set(mlflow_ids))} trials, Tune ran {len(set(tune_ids))} "
                        f"(missing {sorted(set(tune_ids) - set(mlflow_ids))[:5]}, "
                        f"extra {sorted(set(mlflow_ids) - set(tune_ids))[:5]})")
    running = [r.info.run_id for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    if running:
        problems.append(f"{len(running)} MLflow runs left RUNNING")
    statuses = [r.data.tags.get(R.STATUS_TAG) for r in trial_runs]

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    if len(states) != len(tune_ids):
        problems.append(f"the study holds {len(states)} trials, Tune ran {len(tune_ids)}")
    left = [s for s in states if s in ("RUNNING", "WAITING")]
    if left:
        problems.append(f"{len(left)} study trials left RUNNING or WAITING")
    outcome = {"COMPLETE": R.COMPLETED, "PRUNED": R.PRUNED, "FAIL": R.FAILED}
    told = sorted(outcome.get(s, s) for s in states)
    if told != sorted(str(s) for s in statuses):
        problems.append(f"outcomes differ: study {_counts(told)}, MLflow {_counts(statuses)}")
    return {"tune_trials": len(tune_ids), "mlflow_trial_runs": len(trial_runs), "study_trials": len(states),
            "mlflow_statuses": _counts(statuses), "study_states": _counts(states), "problems": problems}


def _counts(values) -> dict:
    out: dict = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))
