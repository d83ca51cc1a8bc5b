"""Rebuild a search's table and Pareto frontier from its MLflow store alone (no Ray, no torch).

    python search/report.py                                  # the latest search in outputs/mlflow.db
    python search/report.py --experiment NAME                # the latest search of one experiment
    python search/report.py --run-id PARENT_RUN_ID --tracking-uri http://127.0.0.1:5000

Where it sits: track -> **frontier**, after the search (or after an interrupted one). It reads the
trial rows back (`analysis.mlflow_read`), prints the table, takes the frontier over completed
trials (metric up, trainable parameters down, GPU-hours down), writes trials.csv, pareto.csv,
pareto.png and pareto.html into --output-dir, logs them to the search's parent run, and moves the
`pareto=true` tag onto exactly the frontier's trial runs, so the UI filter `tags.pareto = "true"`
shows the current frontier. `publish_frontier` is the same step for the driver at the end of a
search.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)] if __package__ in (None, "") else []

from search.cli import fail  # noqa: E402

DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"


def publish_frontier(client, parent_run_id: str, rows: list[dict], metric_name: str, cost_unit: str,
                     output_dir: str | Path, *, prefix: str = "", title: str | None = None) -> list[dict]:
    """Take the frontier over `rows`, record it in MLflow and on disk; return the rows with
    "pareto" set (copies; the input is not modified).

    Writes `<prefix>trials.csv`, `<prefix>pareto.csv`, `<prefix>pareto.png` and
    `<prefix>pareto.html` into `output_dir`, logs the four to the root of the parent run's
    artifacts, sets tag pareto=true on every frontier trial run and deletes it from this search's
    runs that carry it but are no longer on the frontier.
    """
    from analysis.pareto import frontier
    from analysis.plots import plot_pareto_html, plot_pareto_png
    from analysis.report import write_rows

    on_front = {r["run_id"] for r in frontier(rows) if r["pareto"]}
    rows = [{**r, "pareto": r["run_id"] in on_front} for r in rows]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{prefix}{name}" for name in ("trials.csv", "pareto.csv", "pareto.png", "pareto.html")]
    write_rows(rows, paths[0])
    write_rows([r for r in rows if r["pareto"]], paths[1])
    title = title or f"{metric_name} vs trainable parameters" + (f" ({prefix.rstrip('-')})" if prefix else "")
    plot_pareto_png(rows, paths[2], metric_name, cost_unit, title=title)
    plot_pareto_html(rows, paths[3], metric_name, cost_unit, title=title)
    for path in paths:
        client.log_artifact(parent_run_id, str(path))

    parent = client.get_run(parent_run_id)
    tagged = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.pareto = 'true'", max_results=50000)
    for run in tagged:
        if run.info.run_id not in on_front:
            client.delete_tag(run.info.run_id, "pareto")
    for run_id in on_front:
        client.set_tag(run_id, "pareto", "true")
    return rows


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
    # An unreachable server should fail in seconds, not after MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from analysis.mlflow_read import StoreError, open_store, read_search
    from analysis.report import format_table

    try:
        client = open_store(args.tracking_uri)
        search = read_search(client, experiment=args.experiment, run_id=args.run_id)
    except StoreError as e:
        return fail(str(e))
    parent, rows = search["parent"], search["rows"]
    output_dir = Path(args.output_dir or f"outputs/report-{_safe_name(parent['experiment'])}")
    rows = publish_frontier(client, parent["run_id"], rows, parent["metric_name"], parent["cost_unit"],
                            output_dir, title=f"{parent['metric_name']} vs trainable parameters ({parent['experiment']})")

    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "pruned", "failed", "running")}
    print(f"search {parent['run_id']} in experiment {parent['experiment']!r} ({parent['status']}): "
          f"{len(rows)} trials, " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    print()
    print(format_table(rows, parent["metric_name"], parent["cost_unit"]))
    print()
    front = [r for r in rows if r["pareto"]]
    print(f"frontier: {len(front)} trial runs tagged pareto=true; deploy one with "
          f"python search/deploy.py --run-id RUN_ID --tracking-uri {args.tracking_uri}")
    for r in sorted(front, key=lambda r: -r["metric"]):
        print(f"  {r['run_id']}  {parent['metric_name']} {r['metric']:.4f}  params {r['trainable_params']:,}  {r['key']}")
    print(f"written: {', '.join(str(output_dir / n) for n in ('trials.csv', 'pareto.csv', 'pareto.png', 'pareto.html'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
