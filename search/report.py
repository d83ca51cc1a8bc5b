"""Rebuild a search's table and Pareto frontier from its MLflow store alone (no Ray, no torch).

    python search/report.py                                  # the latest search in outputs/mlflow.db
    python search/report.py --experiment NAME                # the latest search of one experiment
    python search/report.py --run-id PARENT_RUN_ID --tracking-uri http://127.0.0.1:5000

Where it sits: **publish**, after the search (or after an interrupted one). It reads the trial
records back (`analysis.mlflow_read`) and runs the search's own ending (`search.phases.publish`,
the same function the driver ends with): trials.csv, pareto.csv, pareto.png and pareto.html in
--output-dir and on the search's parent run, the notes, the `pareto=true` tag on exactly the
frontier's trial runs (so the UI filter `tags.pareto = "true"` shows the current frontier), which
prior was right and the recommendation, printed as the driver prints them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from analysis.direction import best_first
from analysis.mlflow_read import DEFAULT_TRACKING_URI, StoreError, open_store, read_search
from search.cli import fail, mlflow_client_defaults
from search.phases.publish import FILES, SearchView, publish
from search.runtime.checks import check_output_dir
from search.runtime.errors import UsageError
from search.tracking.ui import open_views
from trainables import record as R


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "search"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python search/report.py",
        description="Rebuild a search's trial table and Pareto frontier from its MLflow store, write "
        "trials.csv, pareto.csv, pareto.png and pareto.html, log them to the search's parent run and "
        "tag the frontier's trial runs pareto=true.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                   help="MLflow store: sqlite:///path/mlflow.db or http://host:port")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--experiment", default=None, help="experiment name (default: the latest search in the store)")
    which.add_argument("--run-id", default=None, help="the search's parent run id (tag role=search)")
    p.add_argument("--output-dir", default=None,
                   help="where the files go (default: outputs/report-<experiment>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mlflow_client_defaults()
    try:
        if args.output_dir:
            check_output_dir(Path(args.output_dir))  # before reading the store
        client = open_store(args.tracking_uri)
        search = read_search(client, experiment=args.experiment, run_id=args.run_id)
        output_dir = Path(args.output_dir or f"outputs/report-{_safe_name(search['parent']['experiment'])}")
        if not args.output_dir:  # an explicit one was checked above
            check_output_dir(output_dir)
    except (StoreError, UsageError) as e:
        return fail(str(e))
    parent = search["parent"]
    view = SearchView.of_store(client, parent, args.tracking_uri)
    open_views(client, parent["experiment_id"], parent["run_id"], R.sense(view.metric_name))
    ending = publish(client, view, search["rows"], output_dir, status=parent["status"],
                     title=f"{view.metric_name} vs trainable parameters ({parent['experiment']})")
    counts = {s: sum(r.status == s for r in ending.searched) for s in ("completed", "pruned", "failed", "running")}
    print(f"search {parent['run_id']} in experiment {parent['experiment']!r} ({parent['status']}): "
          f"{len(ending.searched)} trials, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f"; {len(ending.result.records) - len(ending.searched)} confirmation runs")
    print(ending.text())
    front = [r for r in ending.result.records if r.pareto]
    by_run = {c.run_id: c.stats.mean for c in ending.result.confirmed}
    sense = R.sense(view.metric_name)
    print(f"frontier: {len(front)} trial runs tagged pareto=true; deploy one with "
          f"python search/deploy.py --run-id RUN_ID --tracking-uri {args.tracking_uri}")
    for r in sorted(front, key=lambda r: best_first(by_run.get(r.run_id, r.score), sense)):
        what = f"mean {by_run[r.run_id]:.4f} over seeds" if r.run_id in by_run else f"{r.score:.4f}"
        print(f"  {r.run_id}  {view.metric_name} {what}  params {r.trainable_params:,}  {r.key}")
    print(f"written: {', '.join(str(output_dir / n) for n in FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
