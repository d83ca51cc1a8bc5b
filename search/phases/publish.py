"""The end of a search, written once: the Pareto frontier (tags on the trial runs, tables and plots on
disk and in MLflow), the notes, which prior was right, the recommendation and the lines printed.

Where it sits: confirm -> **publish**. `publish` is the one ending: the driver calls it at the end
of a search (`SearchView.of_search`) and `search/report.py` calls it to rebuild the same ending
from a store alone (`SearchView.of_store`), so the two cannot drift. With confirmation runs
(`search.phases.confirm`) the frontier is taken over seed means of the confirmed placements
(`analysis.confirmed`); without, over the completed search trials' single runs (score in its
metric's direction, trainable parameters down, compute hours down; `analysis.pareto.frontier`).
Every comparison of scores here follows `trainables.record.sense(metric_name)`: for a
lower-is-better metric (`nll`) the best is the lowest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from analysis.confirmed import (
    CONFIRMED_COLUMNS,
    DEFAULT_MARGIN,
    Confirmed,
    Recommendation,
    confirmed_markdown,
    format_confirmed,
    group_confirmed,
    recommend,
    recommendation_markdown,
)
from analysis.confirmed import mark_frontier as mark_confirmed
from analysis.direction import score_objectives
from analysis.mlflow_read import read_json_artifact
from analysis.pareto import frontier
from analysis.plots import plot_pareto_html, plot_pareto_png
from analysis.report import format_table, write_dicts, write_rows
from search.phases.prior_report import publish_prior_report
from search.tracking.notes import publish_notes, recommended
from search.tracking.ui import ui_lines
from spaces.scores import PriorScores
from spaces.space import ModelSpace
from trainables import record as R
from trainables.record import TrialRecord

FILES = ("trials.csv", "pareto.csv", "pareto.png", "pareto.html")


@dataclass(frozen=True)
class FrontierResult:
    records: list[TrialRecord]  # every trial run, `pareto` set on the frontier's search trials
    confirmed: list[Confirmed]  # the confirmed placements (empty without confirmation runs)
    recommendation: Recommendation | None


def mark_frontier(records: list[TrialRecord], sense: str = "max") -> list[TrialRecord]:
    """The records with `pareto` set: True exactly for the frontier's trials (single runs of the
    search's own trials; confirmation runs never count on their own); `sense`: the metric's direction."""
    searched = [t.as_dict() for t in records if t.confirms is None]
    on_front = {r["run_id"] for r in frontier(searched, score_objectives(sense)) if r["pareto"]}
    return [t.replace(pareto=t.run_id in on_front) for t in records]


def frontier_of(records: list[TrialRecord], max_adapter_params: float | None = None,
                margin: float = DEFAULT_MARGIN, sense: str = "max") -> FrontierResult:
    """The frontier a user deploys from: over seed means when placements were confirmed; the
    recommendation with its decisions within `margin` (`analysis.confirmed.recommend`); `sense`:
    the metric's direction (`trainables.record.sense`)."""
    confirmed = mark_confirmed(group_confirmed(records, sense), sense)
    if not confirmed:
        return FrontierResult(mark_frontier(records, sense), [], None)
    on_front = {c.run_id for c in confirmed if c.pareto}
    marked = [t.replace(pareto=t.run_id in on_front) for t in records]
    return FrontierResult(marked, confirmed, recommend(confirmed, max_adapter_params, margin, sense))


def publish_frontier(client, parent_run_id: str, records: list[TrialRecord], metric_name: str, cost_unit: str,
                     output_dir: str | Path, *, prefix: str = "", title: str | None = None,
                     max_adapter_params: float | None = None, margin: float = DEFAULT_MARGIN) -> FrontierResult:
    """Take the frontier over `records`, record it in MLflow and on disk.

    Writes `<prefix>trials.csv` (every trial run), `<prefix>pareto.csv` (the frontier),
    `<prefix>pareto.png` and `<prefix>pareto.html`, and with confirmation runs
    `<prefix>confirmed.csv` and `<prefix>recommendation.json`, into `output_dir`; logs them to the
    root of the parent run's artifacts, sets tag pareto=true on every frontier trial run and deletes
    it from this search's runs that carry it but are no longer on the frontier.
    """
    sense = R.sense(metric_name)
    result = frontier_of(records, max_adapter_params, margin, sense)
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
    plot_pareto_png(rows, paths[2], metric_name, cost_unit, title=title, background=background, sense=sense)
    plot_pareto_html(rows, paths[3], metric_name, cost_unit, title=title, sense=sense)
    if result.recommendation is not None:
        rec_path = output_dir / f"{prefix}recommendation.json"
        rec = result.recommendation
        rec_path.write_text(json.dumps({
            "lines": rec.lines(metric_name), "run_id": rec.pick.run_id, "trial_id": rec.pick.trial_id,
            "key": rec.pick.key, "lr": rec.pick.lr, "scores_by_seed": rec.pick.scores,
            "mean": rec.pick.stats.mean, "sd": rec.pick.stats.sd, "ci95": [rec.pick.stats.low, rec.pick.stats.high],
            "budget_share": rec.budget_share,
            "best": {"run_id": rec.best.run_id, "key": rec.best.key, "mean": rec.best.stats.mean},
            "vs_best": None if rec.pick_vs_best is None else rec.pick_vs_best.describe(), "margin": rec.margin,
            "vs_best_baseline": None if rec.pick_vs_baseline is None else rec.pick_vs_baseline.describe(),
            "decisions": {c.key: rec.verdict(c) for c in result.confirmed},
        }, indent=2))
        paths.append(rec_path)
        client.set_tag(parent_run_id, "recommendation", "\n".join(rec.lines(metric_name))[:5000])
        for c in result.confirmed:  # the decision against the best, on each confirmed trial's run
            client.set_tag(c.run_id, R.DECISION_TAG, rec.verdict(c))
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


# ---- the one ending ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchView:
    """What the end of a search needs: from the running search, or from its MLflow store alone."""

    name: str  # the search's experiment
    experiment_id: str
    parent_run_id: str
    tracking_uri: str  # as shown: a password masked
    metric_name: str
    cost_unit: str
    max_adapter_params: float | None
    space: ModelSpace | None = None  # with `scores`: for the prior report
    scores: PriorScores | None = None
    lr_range: tuple[float, float] | None = None  # the sampler's learning-rate range (for the edge warning)
    max_compute_hours: float = 0.0
    margin: float = DEFAULT_MARGIN

    @classmethod
    def of_search(cls, session) -> "SearchView":
        s = session.search
        cfg = s.cfg.search
        calibrated = s.calibrated_lr
        lr_range = (calibrated / cfg.lr_band, calibrated * cfg.lr_band) if calibrated else (cfg.lr_min, cfg.lr_max)
        return cls(s.name, session.run.experiment_id, session.parent_run_id, s.tracking_uri, s.metric_name,
                   s.cost_unit, s.budget.max_params, s.space, s.scores, lr_range, cfg.max_compute_hours, cfg.margin)

    @classmethod
    def of_store(cls, client, parent: dict, tracking_uri: str) -> "SearchView":
        """From `analysis.mlflow_read.read_search`'s parent: the config, space and priors the search
        logged on its run."""
        pid, params = parent["run_id"], parent["params"]
        cfg = read_json_artifact(client, pid, "config.json") or {}
        space = read_json_artifact(client, pid, "space.json")
        scores = read_json_artifact(client, pid, "scores.json")
        s = cfg.get("search", {})
        calibrated = float(params["lr_calibrated"]) if "lr_calibrated" in params else None
        lr_range = None
        if calibrated and "lr_band" in s:
            lr_range = (calibrated / s["lr_band"], calibrated * s["lr_band"])
        elif "lr_min" in s:
            lr_range = (s["lr_min"], s["lr_max"])
        cap = params.get("max_adapter_params")
        return cls(parent["experiment"], parent["experiment_id"], pid, tracking_uri, parent["metric_name"],
                   parent["cost_unit"], float(cap) if cap else None,
                   ModelSpace.from_dict(space) if space else None,
                   PriorScores.from_dict(scores) if scores else None, lr_range,
                   float(s.get("max_compute_hours", 0.0)), float(s.get("margin", DEFAULT_MARGIN)))


@dataclass(frozen=True)
class Ending:
    """What `publish` made: the frontier, the search's own trials, and the lines to print."""

    result: FrontierResult
    searched: list[TrialRecord]  # the search's trials, without the confirmation runs
    lines: list[str]

    @property
    def completed(self) -> list[TrialRecord]:
        return [r for r in self.searched if r.status == R.COMPLETED]

    def text(self) -> str:
        return "\n".join(self.lines)


def publish(client, view: SearchView, records: list[TrialRecord], output_dir: str | Path, *,
            prefix: str = "", status: str = "FINISHED", title: str | None = None) -> Ending:
    """The end of a search: the frontier and its files (`publish_frontier`), the notes in MLflow,
    the best score on the search's run (`best_score`: the recommendation's mean, or the best single
    run in the metric's direction), which prior was right, and the lines to print."""
    metric, unit = view.metric_name, view.cost_unit
    sense = R.sense(metric)
    result = publish_frontier(client, view.parent_run_id, records, metric, unit, output_dir, prefix=prefix,
                              title=title, max_adapter_params=view.max_adapter_params, margin=view.margin)
    searched = [r for r in result.records if r.confirms is None]
    completed = [r for r in searched if r.status == R.COMPLETED]
    rec = result.recommendation
    publish_notes(client, view.parent_run_id, searched, view.tracking_uri, status=status, artifact_prefix=prefix,
                  recommendation=None if rec is None else recommendation_markdown(rec, metric),
                  confirmed_table=confirmed_markdown(result.confirmed, metric, unit, rec) if result.confirmed else None,
                  recommended_run_id=None if rec is None else rec.pick.run_id)
    best = None if rec is not None else recommended(searched, sense)  # the best single-run score
    if rec is not None or best is not None:
        client.log_metric(view.parent_run_id, "best_score", float(rec.pick.stats.mean if rec else best.score))
        client.set_tag(view.parent_run_id, "best_placement", (rec.pick.key if rec else best.key)[:5000])

    lines = ["", format_table(searched, metric, unit, confirmed=bool(result.confirmed)), "",
             f"{len(completed)} completed, {sum(r.status == R.PRUNED for r in searched)} stopped early by ASHA, "
             f"{sum(r.status == R.FAILED for r in searched)} failed"]
    if result.confirmed:
        lines += ["", f"confirmed over seeds ({sum(r.confirms is not None for r in result.records)} confirmation runs):",
                  format_confirmed(result.confirmed, metric, unit, rec=rec)]
    if view.space is not None and view.scores is not None:
        quality = publish_prior_report(client, view.parent_run_id, view.space, view.scores, result.records,
                                       Path(output_dir), prefix, sense)
        if quality:
            lines += ["", quality]
    if rec is not None:
        lines += ["", *rec.lines(metric)]
        warning = lr_edge_warning(rec.pick.lr, view.lr_range)
        if warning:
            lines.append(f"warning: {warning}")
    elif completed:
        lines += ["", "no placement was confirmed over seeds (search.confirm_seeds = 0, or the phase did not run): "
                      "single runs differ by seed noise; compare before you deploy"]
    lines.append(f"results: {Path(output_dir) / (prefix + FILES[0])}")
    lines += ui_lines(view.tracking_uri, view.experiment_id, view.parent_run_id)
    return Ending(result, searched, lines)


def lr_edge_warning(lr: float | None, lr_range: tuple[float, float] | None) -> str | None:
    """The recommended placement's learning rate sits at an edge of the range it was drawn from."""
    if lr is None or lr_range is None:
        return None
    lo, hi = lr_range
    if hi > lo and (lr <= lo * 1.25 or lr >= hi / 1.25):
        edge = "bottom" if lr <= lo * 1.25 else "top"
        return (f"the recommended placement's learning rate {lr:.3g} sits at the {edge} of the range the "
                f"sampler drew from ({lo:.3g} to {hi:.3g}): a better rate may lie outside it; widen search.lr_band "
                "(or lr_min / lr_max without calibration)")
    return None


def why_none_completed(searched: list[TrialRecord], cap_hours: float, probe_hours: float = 0.0) -> str:
    """One line: why a search that ran to its end has no completed trial, and what to change.
    `probe_hours`: what the learning-rate probe cost (it counts toward the cap)."""
    failed = [r for r in searched if r.status == R.FAILED]
    if not searched and cap_hours > 0 and probe_hours >= cap_hours:
        return (f"no trial ran: the learning-rate probe spent the cost cap ({probe_hours:.4g} of {cap_hours} "
                "search.max_compute_hours): raise --max-compute-hours, or skip the probe "
                "(--set search.calibrate_lr=false)")
    if not searched:
        return "no trial ran: check the Ray cluster's resources and the search's settings"
    if failed:
        reason, n = Counter((r.error or "no message").strip() for r in failed).most_common(1)[0]
        return (f"no trial completed ({len(failed)} of {len(searched)} failed; {n} with: {reason[:300]}): fix what "
                "the reason names (the MLflow runs hold every trial's error)")
    if cap_hours > 0:
        return (f"no trial completed: the cost cap ({cap_hours} search.max_compute_hours) stopped every trial before "
                "its last epoch: raise --max-compute-hours")
    return "no trial completed (every trial was stopped early): raise search.asha_grace_epochs or search.trials"
