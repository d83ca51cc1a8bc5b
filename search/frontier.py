"""Publish a search's Pareto frontier: tags on the trial runs, tables and plots on disk and in MLflow,
and the recommendation.

Where it sits: track -> **frontier**. The driver calls `publish_frontier` at the end of a search and
`search/report.py` calls it to rebuild the frontier from a store alone. With confirmation runs
(`search.confirmation`) the frontier is taken over seed means of the confirmed placements
(`analysis.confirmed`); without, over the completed search trials' single runs (score up, trainable
parameters down, compute hours down; `analysis.pareto.frontier`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from analysis.confirmed import Confirmed, Recommendation
from trainables import record as R
from trainables.record import TrialRecord

FILES = ("trials.csv", "pareto.csv", "pareto.png", "pareto.html")


@dataclass(frozen=True)
class FrontierResult:
    records: list[TrialRecord]  # every trial run, `pareto` set on the frontier's search trials
    confirmed: list[Confirmed]  # the confirmed placements (empty without confirmation runs)
    recommendation: Recommendation | None


def mark_frontier(records: list[TrialRecord]) -> list[TrialRecord]:
    """The records with `pareto` set: True exactly for the frontier's trials (single runs of the
    search's own trials; confirmation runs never count on their own)."""
    from analysis.pareto import frontier

    searched = [t.as_dict() for t in records if t.confirms is None]
    on_front = {r["run_id"] for r in frontier(searched) if r["pareto"]}
    return [t.replace(pareto=t.run_id in on_front) for t in records]


def frontier_of(records: list[TrialRecord], max_adapter_params: float | None = None) -> FrontierResult:
    """The frontier a user deploys from: over seed means when placements were confirmed."""
    from analysis.confirmed import group_confirmed, mark_frontier as mark_confirmed, recommend

    confirmed = mark_confirmed(group_confirmed(records))
    if not confirmed:
        return FrontierResult(mark_frontier(records), [], None)
    on_front = {c.run_id for c in confirmed if c.pareto}
    marked = [t.replace(pareto=t.run_id in on_front) for t in records]
    return FrontierResult(marked, confirmed, recommend(confirmed, max_adapter_params))


def publish_frontier(client, parent_run_id: str, records: list[TrialRecord], metric_name: str, cost_unit: str,
                     output_dir: str | Path, *, prefix: str = "", title: str | None = None,
                     max_adapter_params: float | None = None) -> FrontierResult:
    """Take the frontier over `records`, record it in MLflow and on disk.

    Writes `<prefix>trials.csv` (every trial run), `<prefix>pareto.csv` (the frontier),
    `<prefix>pareto.png` and `<prefix>pareto.html`, and with confirmation runs
    `<prefix>confirmed.csv` and `<prefix>recommendation.json`, into `output_dir`; logs them to the
    root of the parent run's artifacts, sets tag pareto=true on every frontier trial run and deletes
    it from this search's runs that carry it but are no longer on the frontier.
    """
    from analysis.confirmed import CONFIRMED_COLUMNS
    from analysis.plots import plot_pareto_html, plot_pareto_png
    from analysis.report import write_dicts, write_rows

    result = frontier_of(records, max_adapter_params)
    on_front = {r.run_id for r in result.records if r.pareto}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / f"{prefix}{name}" for name in FILES]
    write_rows(result.records, paths[0])
    single = [r.as_dict() for r in result.records if r.confirms is None]
    if result.confirmed:
        rows = [c.row() for c in result.confirmed]
        write_dicts([r for r in rows if r["pareto"]], paths[1], CONFIRMED_COLUMNS)
        confirmed_csv = output_dir / f"{prefix}confirmed.csv"
        write_dicts(rows, confirmed_csv, CONFIRMED_COLUMNS)
        paths.append(confirmed_csv)
        background = single
    else:
        rows, background = single, None
        write_rows([r for r in result.records if r.pareto], paths[1])
    title = title or f"{metric_name} vs trainable parameters" + (f" ({prefix.rstrip('-')})" if prefix else "")
    plot_pareto_png(rows, paths[2], metric_name, cost_unit, title=title, background=background)
    plot_pareto_html(rows, paths[3], metric_name, cost_unit, title=title)
    if result.recommendation is not None:
        rec_path = output_dir / f"{prefix}recommendation.json"
        rec = result.recommendation
        rec_path.write_text(json.dumps({
            "lines": rec.lines(metric_name), "run_id": rec.pick.run_id, "trial_id": rec.pick.trial_id,
            "key": rec.pick.key, "lr": rec.pick.lr, "scores_by_seed": rec.pick.scores,
            "mean": rec.pick.stats.mean, "sd": rec.pick.stats.sd, "ci95": [rec.pick.stats.low, rec.pick.stats.high],
            "budget_share": rec.budget_share,
            "vs_best_baseline": None if rec.pick_vs_baseline is None else rec.pick_vs_baseline.describe(),
        }, indent=2))
        paths.append(rec_path)
        client.set_tag(parent_run_id, "recommendation", "\n".join(rec.lines(metric_name))[:5000])
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
    return result
