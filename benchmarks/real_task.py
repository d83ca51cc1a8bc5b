"""Benchmark: samplers head to head on a real task, at equal trial counts.

    python -m benchmarks.real_task                                   # prior vs random, seeds 0-2, default task
    python -m benchmarks.real_task --samplers prior tpe random --seeds 0 1 2 3 4 --trials 20

Each (sampler, seed) is a full search (`search/run.py --sampler S --seed K`, its own process)
on the same config; every search trains its trials for real, with ASHA as configured. Searches
that already finished in --output-dir are read, not rerun, so an interrupted benchmark continues
where it stopped. The training seed stays fixed: runs differ only in which placements the
sampler proposes.

Reported per search and as the median per sampler:
- best metric within the budget (every trained placement is within it) among completed trials;
- hypervolume of the completed trials on (metric max, trainable params min, cost min), with one
  set of bounds for all searches (ideal and nadir per objective over every completed trial of
  every search here; reference 1.1 per objective after normalising, `analysis.pareto`), so the
  numbers compare across samplers and seeds but not with other benchmark runs;
- how many trials it took to reach its own best metric.
A summary is written to <output-dir>/summary.json and printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from analysis.pareto import hypervolume
from analysis.report import read_rows
from trainables.record import COMPLETED, FAILED, OBJECTIVES, PRUNED, TrialRecord

ROOT = Path(__file__).resolve().parent.parent
SENSES = tuple(sense for _, sense in OBJECTIVES)  # score max, trainable params min, cost min


def run_one(args, sampler: str, seed: int) -> Path:
    name = f"{sampler}-seed{seed}"
    table = args.output_dir / f"{name}-trials.csv"
    if table.exists():
        print(f"{name}: done earlier ({table})", flush=True)
        return table
    cmd = [sys.executable, str(ROOT / "search" / "run.py"), "--config", args.config, "--sampler", sampler,
           "--seed", str(seed), "--trials", str(args.trials), "--output-dir", str(args.output_dir),
           "--experiment", name, *sum((["--set", s] for s in args.overrides), [])]
    print(f"{name}: searching ...", flush=True)
    t0 = time.perf_counter()
    with open(args.output_dir / f"{name}.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0 or not table.exists():
        sys.exit(f"{name}: the search failed (exit {code}); see {args.output_dir / (name + '.log')}")
    print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return table


def points(rows: list[TrialRecord]) -> list[tuple[float, float, float]]:
    return [r.objectives() for r in rows if r.status == COMPLETED]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="default")
    p.add_argument("--samplers", nargs="+", default=["prior", "random"], choices=["prior", "tpe", "random"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/bench-real-task"))
    args = p.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)

    # each search's trials, in the order they started (the order the sampler proposed them)
    runs = {(s, k): read_rows(run_one(args, s, k)) for s in args.samplers for k in args.seeds}
    everything = [pt for rows in runs.values() for pt in points(rows)]
    if not everything:
        sys.exit("no search completed a trial: nothing to compare")
    cols = list(zip(*everything))
    bounds = ((max(cols[0]), min(cols[1]), min(cols[2])), (min(cols[0]), max(cols[1]), max(cols[2])))

    summary = []
    for (sampler, seed), rows in runs.items():
        pts = points(rows)
        best = max((m for m, _, _ in pts), default=float("nan"))
        # The first trial, in proposal order, that reached the best metric (None if none completed).
        at = next((i for i, r in enumerate(rows) if r.status == COMPLETED and float(r.score) == best), None)
        summary.append({
            "sampler": sampler, "seed": seed, "trials": len(rows),
            "completed": len(pts), "pruned": sum(r.status == PRUNED for r in rows),
            "failed": sum(r.status == FAILED for r in rows),
            "best_metric": best, "trials_to_best": None if at is None else at + 1,
            "best_key": "" if at is None else rows[at].key,
            "hypervolume": hypervolume(pts, SENSES, bounds=bounds) if pts else 0.0,
        })
    (args.output_dir / "summary.json").write_text(json.dumps({"bounds": bounds, "runs": summary}, indent=2))

    print()
    print("| sampler | seed | best metric | hypervolume | trials to best | completed / pruned / failed | best placement |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in summary:
        print(f"| {r['sampler']} | {r['seed']} | {r['best_metric']:.4f} | {r['hypervolume']:.4f} | {r['trials_to_best']} "
              f"| {r['completed']} / {r['pruned']} / {r['failed']} | `{r['best_key']}` |")
    print()
    print("| sampler | median best metric | median hypervolume | median trials to best |")
    print("| --- | --- | --- | --- |")
    for s in args.samplers:
        mine = [r for r in summary if r["sampler"] == s]
        print(f"| {s} | {statistics.median(r['best_metric'] for r in mine):.4f} "
              f"| {statistics.median(r['hypervolume'] for r in mine):.4f} "
              f"| {statistics.median(r['trials_to_best'] or args.trials for r in mine):g} |")
    print(f"\nbounds (metric, trainable params, cost): ideal {bounds[0]}, nadir {bounds[1]}; "
          f"summary: {args.output_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
