"""Rebuild a search's table and Pareto frontier from its MLflow store alone (no Ray, no torch).

    python search/report.py                                  # the latest search in outputs/mlflow.db
    python search/report.py --experiment NAME                # the latest search of one experiment
    python search/report.py --run-id PARENT_RUN_ID --tracking-uri http://127.0.0.1:5000

Where it sits: track -> **frontier**, after the search (or after an interrupted one). It reads the
trial records back (`analysis.mlflow_read`), prints the table and publishes the frontier
(`search.frontier`): trials.csv, pareto.csv, pareto.png and pareto.html in --output-dir and on the
search's parent run, and the `pareto=true` tag on exactly the frontier's trial runs, so the UI
filter `tags.pareto = "true"` shows the current frontier.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from analysis.mlflow_read import DEFAULT_TRACKING_URI
from search.cli import fail, mlflow_client_defaults


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
    from analysis.mlflow_read import StoreError, open_store, read_search
    from analysis.report import format_table
    from search.frontier import FILES, publish_frontier
    from search.notes import publish_notes
    from search.ui import open_views, ui_lines

    try:
        client = open_store(args.tracking_uri)
        search = read_search(client, experiment=args.experiment, run_id=args.run_id)
    except StoreError as e:
        return fail(str(e))
    parent, records = search["parent"], search["rows"]
    output_dir = Path(args.output_dir or f"outputs/report-{_safe_name(parent['experiment'])}")
    records = publish_frontier(client, parent["run_id"], records, parent["metric_name"], parent["cost_unit"],
                               output_dir, title=f"{parent['metric_name']} vs trainable parameters ({parent['experiment']})")
    open_views(client, parent["experiment_id"], parent["run_id"])
    publish_notes(client, parent["run_id"], records, args.tracking_uri, status=parent["status"])

    counts = {s: sum(r.status == s for r in records) for s in ("completed", "pruned", "failed", "running")}
    print(f"search {parent['run_id']} in experiment {parent['experiment']!r} ({parent['status']}): "
          f"{len(records)} trials, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    print()
    print(format_table(records, parent["metric_name"], parent["cost_unit"]))
    print()
    front = [r for r in records if r.pareto]
    print(f"frontier: {len(front)} trial runs tagged pareto=true; deploy one with "
          f"python search/deploy.py --run-id RUN_ID --tracking-uri {args.tracking_uri}")
    for r in sorted(front, key=lambda r: -r.score):
        print(f"  {r.run_id}  {parent['metric_name']} {r.score:.4f}  params {r.trainable_params:,}  {r.key}")
    print(f"written: {', '.join(str(output_dir / n) for n in FILES)}")
    print("\n".join(ui_lines(args.tracking_uri, parent["experiment_id"], parent["run_id"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
