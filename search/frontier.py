"""Publish a search's Pareto frontier: tags on the trial runs, tables and plots on disk and in MLflow.

Where it sits: track -> **frontier**. The driver calls `publish_frontier` at the end of a search and
`search/report.py` calls it to rebuild the frontier from a store alone. The frontier is taken over
completed trials (score up, trainable parameters down, compute hours down;
`analysis.pareto.frontier`).
"""

from __future__ import annotations

from pathlib import Path

from trainables import record as R
from trainables.record import TrialRecord

FILES = ("trials.csv", "pareto.csv", "pareto.png", "pareto.html")


def mark_frontier(records: list[TrialRecord]) -> list[TrialRecord]:
    """The records with `pareto` set: True exactly for the frontier's trials."""
    from analysis.pareto import frontier

    on_front = {r["run_id"] for r in frontier([t.as_dict() for t in records]) if r["pareto"]}
    return [t.replace(pareto=t.run_id in on_front) for t in records]


def publish_frontier(client, parent_run_id: str, records: list[TrialRecord], metric_name: str, cost_unit: str,
                     output_dir: str | Path, *, prefix: str = "", title: str | None = None) -> list[TrialRecord]:
    """Take the frontier over `records`, record it in MLflow and on disk; return the records with
    `pareto` set.

    Writes `<prefix>trials.csv`, `<prefix>pareto.csv`, `<prefix>pareto.png` and
    `<prefix>pareto.html` into `output_dir`, logs the four to the root of the parent run's
    artifacts, sets tag pareto=true on every frontier trial run and deletes it from this search's
    runs that carry it but are no longer on the frontier.
    """
    from analysis.plots import plot_pareto_html, plot_pareto_png
    from analysis.report import write_rows

    records = mark_frontier(records)
    on_front = {r.run_id for r in records if r.pareto}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{prefix}{name}" for name in FILES]
    write_rows(records, paths[0])
    write_rows([r for r in records if r.pareto], paths[1])
    title = title or f"{metric_name} vs trainable parameters" + (f" ({prefix.rstrip('-')})" if prefix else "")
    rows = [r.as_dict() for r in records]
    plot_pareto_png(rows, paths[2], metric_name, cost_unit, title=title)
    plot_pareto_html(rows, paths[3], metric_name, cost_unit, title=title)
    for path in paths:
        client.log_artifact(parent_run_id, str(path))

    parent = client.get_run(parent_run_id)
    tagged = client.search_runs(
        [parent.info.experiment_id],
        f"tags.{R.PARENT_TAG} = '{parent_run_id}' and tags.{R.PARETO_TAG} = 'true'", max_results=50000)
    for run in tagged:
        if run.info.run_id not in on_front:
            client.delete_tag(run.info.run_id, R.PARETO_TAG)
    for run_id in on_front:
        client.set_tag(run_id, R.PARETO_TAG, "true")
    return records
