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
    from analysis.confirmed import confirmed_markdown, format_confirmed, recommendation_markdown
    from analysis.report import format_table
    from search.frontier import FILES, publish_frontier
    from search.notes import publish_notes
    from search.ui import open_views, ui_lines

    from search.checks import check_output_dir
    from search.errors import UsageError

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
    parent, records = search["parent"], search["rows"]
    cap = parent["params"].get("max_adapter_params")
    metric_name = parent["metric_name"]
    result = publish_frontier(client, parent["run_id"], records, metric_name, parent["cost_unit"], output_dir,
                              title=f"{metric_name} vs trainable parameters ({parent['experiment']})",
                              max_adapter_params=float(cap) if cap else None)
    searched = [r for r in result.records if r.confirms is None]
    rec = result.recommendation
    open_views(client, parent["experiment_id"], parent["run_id"])
    publish_notes(client, parent["run_id"], searched, args.tracking_uri, status=parent["status"],
                  recommendation=None if rec is None else recommendation_markdown(rec, metric_name),
                  confirmed_table=confirmed_markdown(result.confirmed, metric_name, parent["cost_unit"])
                  if result.confirmed else None)
    counts = {s: sum(r.status == s for r in searched) for s in ("completed", "pruned", "failed", "running")}
    print(f"search {parent['run_id']} in experiment {parent['experiment']!r} ({parent['status']}): "
          f"{len(searched)} trials, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f"; {len(result.records) - len(searched)} confirmation runs")
    print()
    print(format_table(searched, metric_name, parent["cost_unit"], confirmed=bool(result.confirmed)))
    if result.confirmed:
        print()
        print(format_confirmed(result.confirmed, metric_name, parent["cost_unit"]))
    if result.recommendation is not None:
        print()
        print("\n".join(result.recommendation.lines(metric_name)))
    print()
    front = [r for r in result.records if r.pareto]
    by_run = {c.run_id: c.stats.mean for c in result.confirmed}
    print(f"frontier: {len(front)} trial runs tagged pareto=true; deploy one with "
          f"python search/deploy.py --run-id RUN_ID --tracking-uri {args.tracking_uri}")
    for r in sorted(front, key=lambda r: -by_run.get(r.run_id, r.score)):
        what = f"mean {by_run[r.run_id]:.4f} over seeds" if r.run_id in by_run else f"{r.score:.4f}"
        print(f"  {r.run_id}  {metric_name} {what}  params {r.trainable_params:,}  {r.key}")
    print(f"written: {', '.join(str(output_dir / n) for n in FILES)}")
    print("\n".join(ui_lines(args.tracking_uri, parent["experiment_id"], parent["run_id"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
