"""Benchmark: the cost of one proposal on the driver, with many trials finished and many running.

    python -m benchmarks.ask_cost                                  # 300 finished, 64 running, 30 asks
    python -m benchmarks.ask_cost --finished 1000 --running 64 --asks 30

Where it sits: the searcher's `suggest` on Tune's loop (`search.tuning.searcher.PlacementSearcher`), the
largest share of the driver's CPU in a sweep at cluster scale (docs/benchmarks.md, "Cluster
scale"). Unlike `benchmarks/cluster_scale.py` it needs no Ray and no trial processes, so it
measures the proposal alone, without the machine's contention: the product's prior sampler on the
simulated MiniLM landscape (`configs/simulated.toml`), over the product's Optuna RDB storage (SQLite
in WAL mode, `search.sampling.study.open_study_storage`), with --finished trials told (values from the
landscape) and --running trials asked and left RUNNING, as trials in flight are. Then --asks more
proposals are timed (ask plus the define-by-run space, what `suggest` does), each told FAIL at
once so that the running count stays fixed (with --reopen, on the study loaded afresh from its
file, as a resumed search or a second process sees it). Printed: seconds per proposal (median, p95, max) and
how many times a proposal read the study's trials from storage (an RDB study re-reads every
unfinished trial on each read), counted as the storage's queries of the trials table (SQLAlchemy's
public event hook on the storage's engine: one such query per read).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--finished", type=int, default=300, help="trials told before timing")
    p.add_argument("--running", type=int, default=64, help="trials left RUNNING before timing")
    p.add_argument("--asks", type=int, default=30, help="proposals timed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reopen", action="store_true",
                   help="time the proposals on the study reopened from its file (a resumed search), not the one built")
    args = p.parse_args()

    import optuna
    import sqlalchemy

    from search.sampling.samplers import SamplerInputs, make_sampler
    from search.sampling.study import directions, open_study_storage
    from spaces.budget import make_budget
    from spaces.placement import Placement
    from trainables.config import load_config
    from trainables.simulated import landscape_for, simulated_preparation

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = load_config(["simulated"], [f"search.seed={args.seed}", f"search.trials={args.finished + args.running}"])
    prep = simulated_preparation(cfg)
    land = landscape_for(cfg)
    budget = make_budget(prep.space, cfg.search.budget, cfg.search.r_ref, min(cfg.search.ranks))
    setup = make_sampler("prior", SamplerInputs.from_config(prep.space, budget, cfg, prep.scores))
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_study_storage(f"sqlite:///{Path(tmp) / 'study.db'}")
        study = optuna.create_study(study_name="ask-cost", directions=directions(prep.metric_name), sampler=setup.sampler,
                                    storage=storage)
        for params, attrs in setup.enqueue:
            study.enqueue_trial(params, user_attrs=attrs)
        t0 = time.perf_counter()
        for i in range(args.finished + args.running):
            trial = study.ask()
            placement = Placement.from_json(setup.space(trial)["placement"])
            if i < args.finished:
                study.tell(trial, [land.metric(placement), placement.adapter_params(prep.space)])
        print(f"study: {args.finished} finished, {args.running} running ({time.perf_counter() - t0:.0f} s to build)",
              flush=True)
        if args.reopen:
            storage = open_study_storage(f"sqlite:///{Path(tmp) / 'study.db'}")
            study = optuna.load_study(study_name="ask-cost", sampler=setup.sampler, storage=storage)
        reads = [0]

        @sqlalchemy.event.listens_for(storage.engine, "before_cursor_execute")
        def counted(conn, cursor, statement, parameters, context, executemany):
            # a read of the study's trials: the trials themselves, in order (their params, values
            # and attributes follow in queries of their own tables)
            sql = " ".join(statement.split())
            if sql.startswith("SELECT") and "FROM trials" in sql and "ORDER BY trials.trial_id" in sql:
                reads[0] += 1
        seconds, per_ask = [], []
        for _ in range(args.asks):
            reads[0] = 0
            t0 = time.perf_counter()
            trial = study.ask()
            setup.space(trial)
            seconds.append(time.perf_counter() - t0)
            per_ask.append(reads[0])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    ranked = sorted(seconds)
    p95 = ranked[round(0.95 * (len(ranked) - 1))]
    print(f"seconds per proposal: median {statistics.median(seconds):.3f}, p95 {p95:.3f}, max {ranked[-1]:.3f} "
          f"({args.asks} asks)")
    print(f"reads of the study's trials per proposal: median {statistics.median(per_ask):g}, max {max(per_ask)}")
    print("the first five, in order: " + ", ".join(f"{x:.3f}" for x in seconds[:5]))


if __name__ == "__main__":
    main()
