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
import logging
import re
import sys
from pathlib import Path

from analysis.direction import best_first
from analysis.mlflow_read import DEFAULT_TRACKING_URI, StoreError, open_store, read_search
from search.cli import fail, mlflow_client_defaults
from search.phases.publish import FILES, SearchView, publish
from search.runtime.checks import check_output_dir
from search.runtime.errors import UsageError, storage_problem
from search.tracking.ui import open_views
from trainables import record as R


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "search"


class _TolerantWrites:
    """The report's MLflow client: reads go through; the first write the store refuses because it is
    read-only or its disk is full is remembered (`refused`: kind, cause), and it and every later
    write are skipped, so that the report is still built and printed from what the store holds."""

    WRITES = frozenset({"set_tag", "delete_tag", "log_artifact", "log_artifacts", "log_batch", "log_metric",
                        "log_param", "set_experiment_tag", "update_run", "set_terminated", "log_text", "log_dict"})

    def __init__(self, client):
        self._client = client
        self.refused: tuple[str, str] | None = None

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in self.WRITES:
            return attr

        def write(*args, **kwargs):
            if self.refused is not None:
                return None
            quiet = logging.getLogger("mlflow.store.db.utils")  # logs each refused write with its traceback
            level = quiet.level
            quiet.setLevel(logging.CRITICAL)
            try:
                return attr(*args, **kwargs)
            except Exception as e:
                self.refused = storage_problem(e)
                if self.refused is None:
                    raise
                return None
            finally:
                quiet.setLevel(level)

        return write


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
    client = _TolerantWrites(client)  # a read-only store still gets its report, printed and in files
    view = SearchView.of_store(client, parent, args.tracking_uri)
    open_views(client, parent["experiment_id"], parent["run_id"], R.sense(view.metric_name))
    try:
        ending = publish(client, view, search["rows"], output_dir, status=parent["status"],
                         title=f"{view.metric_name} vs trainable parameters ({parent['experiment']})")
    except OSError as e:
        problem = storage_problem(e)
        if problem is None:
            raise
        return fail(f"--output-dir {output_dir}: cannot write the report's files: the folder is "
                    f"{'on a full disk' if problem[0] == 'full' else 'read-only'} ({problem[1]}): free space there "
                    "or pass --output-dir <a writable folder>")
    counts = {s: sum(r.status == s for r in ending.searched) for s in ("completed", "pruned", "failed", "running")}
    print(f"search {parent['run_id']} in experiment {parent['experiment']!r} ({parent['status']}): "
          f"{len(ending.searched)} trials, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f"; {len(ending.result.records) - len(ending.searched)} confirmation runs")
    print(ending.text())
    front = [r for r in ending.result.records if r.pareto]
    by_run = {c.run_id: c.stats.mean for c in ending.result.confirmed}
    sense = R.sense(view.metric_name)
    tagged = "not tagged: the store refused writes" if client.refused else "tagged pareto=true"
    print(f"frontier: {len(front)} trial runs {tagged}; deploy one with "
          f"python search/deploy.py --run-id RUN_ID --tracking-uri {args.tracking_uri}")
    for r in sorted(front, key=lambda r: best_first(by_run.get(r.run_id, r.score), sense)):
        what = f"mean {by_run[r.run_id]:.4f} over seeds" if r.run_id in by_run else f"{r.score:.4f}"
        print(f"  {r.run_id}  {view.metric_name} {what}  params {r.trainable_params:,}  {r.key}")
    print(f"written: {', '.join(str(output_dir / n) for n in FILES)}")
    if client.refused:
        kind, why = client.refused
        state = "is read-only" if kind == "read-only" else "is on a full disk"
        print(f"warning: the MLflow store {args.tracking_uri} {state} ({why}): the report above and its files are "
              "complete, but what it writes to the store (the pareto=true tags, notes, views and artifacts on the "
              "search's runs) was not written, or only in part: run it again once the store can be written",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
