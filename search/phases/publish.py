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

What it writes on the trial runs, for picking in the MLflow runs table (`mark_runs`; docs/mlflow.md):
`recommended=true` on exactly the recommended trial's run; `pareto` on the frontier the
recommendation is taken from, and the two frontiers by name, `pareto_single_run` (non-dominated
among the completed single runs) and `pareto_confirmed` (over seed means); on each confirmed
placement's search trial run its seed statistics (`score_mean`, `score_sd`, `score_low`,
`score_high`: the 95% interval clipped to the metric's range, `n_seeds`); `pick_order` (1 = the
recommended trial) by which the views list it first; and each confirmation run is named after the
trial it confirms and its seed (`<trial run name> seed 2`).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow.entities import Metric

from analysis.confirmed import (
    CONFIRMED_COLUMNS,
    DEFAULT_MARGIN,
    Confirmed,
    Recommendation,
    confirmed_markdown,
    decision_level,
    format_confirmed,
    group_confirmed,
    recommend,
    recommendation_markdown,
)
from analysis.confirmed import mark_frontier as mark_confirmed
from analysis.direction import best_first, score_objectives
from analysis.mlflow_read import read_json_artifact, trial_runs
from analysis.pareto import frontier
from analysis.plots import plot_pareto_html, plot_pareto_png
from analysis.report import format_table, write_dicts, write_rows
from search.phases.prior_report import publish_prior_report
from search.tracking import ui
from search.tracking.notes import Marks, publish_notes, recommended
from search.tracking.ui import ui_lines
from spaces.scores import PriorScores
from spaces.space import ModelSpace
from trainables import record as R
from trainables.record import TrialRecord

FILES = ("trials.csv", "pareto.csv", "pareto.png", "pareto.html")


# The range of each metric bounded by its definition (`trainables.record`): seed intervals are clipped to it.
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    R.ACCURACY: (0.0, 1.0), R.BALANCED_ACCURACY: (0.0, 1.0), R.EXACT_MATCH: (0.0, 1.0),
    R.TOKEN_ACCURACY: (0.0, 1.0), R.NLL: (0.0, None),
}


def metric_range(metric_name: str) -> tuple[float | None, float | None]:
    """(lowest, highest) value `metric_name` can take; None where it is unbounded or unknown."""
    return METRIC_RANGES.get(metric_name, (None, None))


@dataclass(frozen=True)
class FrontierResult:
    records: list[TrialRecord]  # every trial run, `pareto` set on the frontier's search trials
    confirmed: list[Confirmed]  # the confirmed placements (empty without confirmation runs)
    recommendation: Recommendation | None
    single_run: frozenset = frozenset()  # run ids non-dominated among the completed single-run search trials
    names: dict = field(default_factory=dict)  # run id -> run name in the runs table (after `mark_runs`)

    @property
    def confirmed_front(self) -> frozenset:
        """Run ids (search trials) of the confirmed placements non-dominated over seed means."""
        return frozenset(c.run_id for c in self.confirmed if c.pareto)

    def recommended_run_id(self, sense: str = "max") -> str | None:
        """The trial to deploy: the confirmed recommendation, else the best single run."""
        if self.recommendation is not None:
            return self.recommendation.pick.run_id
        best = recommended([r for r in self.records if r.confirms is None], sense)
        return None if best is None else best.run_id


def mark_frontier(records: list[TrialRecord], sense: str = "max") -> list[TrialRecord]:
    """The records with `pareto` set: True exactly for the frontier's trials (single runs of the
    search's own trials; confirmation runs never count on their own); `sense`: the metric's direction."""
    searched = [t.as_dict() for t in records if t.confirms is None]
    on_front = {r["run_id"] for r in frontier(searched, score_objectives(sense)) if r["pareto"]}
    return [t.replace(pareto=t.run_id in on_front) for t in records]


def frontier_of(records: list[TrialRecord], max_adapter_params: float | None = None,
                margin: float = DEFAULT_MARGIN, sense: str = "max",
                bounds: tuple[float | None, float | None] = (None, None), level: float = 0.05) -> FrontierResult:
    """The frontier a user deploys from: over seed means when placements were confirmed; the
    recommendation with its decisions within `margin` (`analysis.confirmed.recommend`); `sense`:
    the metric's direction (`trainables.record.sense`); `bounds`: the metric's range
    (`metric_range`), to which the seed means' 95% intervals are clipped; `level`: the two-sided
    level of better / worse (`analysis.confirmed.decision_level`). The single-run frontier is in
    `single_run` either way."""
    single_marked = mark_frontier(records, sense)
    single = frozenset(t.run_id for t in single_marked if t.pareto)
    grouped = [replace(c, stats=c.stats.clip(*bounds)) for c in group_confirmed(records, sense)]
    confirmed = mark_confirmed(grouped, sense)
    if not confirmed:
        return FrontierResult(single_marked, [], None, single)
    on_front = {c.run_id for c in confirmed if c.pareto}
    marked = [t.replace(pareto=t.run_id in on_front) for t in records]
    return FrontierResult(marked, confirmed, recommend(confirmed, max_adapter_params, margin, sense, level), single)


def publish_frontier(client, parent_run_id: str, records: list[TrialRecord], metric_name: str, cost_unit: str,
                     output_dir: str | Path, *, prefix: str = "", title: str | None = None,
                     max_adapter_params: float | None = None, margin: float = DEFAULT_MARGIN,
                     level: float = 0.05) -> FrontierResult:
    """Take the frontier over `records`, record it in MLflow and on disk.

    Writes `<prefix>trials.csv` (every trial run), `<prefix>pareto.csv` (the frontier),
    `<prefix>pareto.png` and `<prefix>pareto.html`, and with confirmation runs
    `<prefix>confirmed.csv` and `<prefix>recommendation.json`, into `output_dir`; logs them to the
    root of the parent run's artifacts, and marks the trial runs (`mark_runs`: the recommended
    trial, the frontiers, the seed statistics, `pick_order`, the confirmation runs' names), moving
    every mark off the runs that no longer hold it. The result carries the runs' names.
    """
    sense = R.sense(metric_name)
    result = frontier_of(records, max_adapter_params, margin, sense, metric_range(metric_name), level)
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
    plot_pareto_html(rows, paths[3], metric_name, cost_unit, title=title, sense=sense, searched=background)
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
    return replace(result, names=mark_runs(client, parent_run_id, result, sense))


FLAGS = (R.PARETO_TAG, ui.PARETO_SINGLE_TAG, ui.PARETO_CONFIRMED_TAG, ui.RECOMMENDED_TAG)


def pick_order(result: FrontierResult, sense: str = "max") -> list[str]:
    """The search trials' run ids in the order a user picks from: the recommended trial, then the
    other confirmed placements (best seed mean first), then the other completed trials (best single
    run first; ties: fewer trainable parameters, less compute)."""
    first = result.recommended_run_id(sense)
    confirmed = [c.run_id for c in sorted(result.confirmed, key=lambda c: best_first(c.stats.mean, sense))]
    inf = float("inf")
    rest = sorted((r for r in result.records if r.confirms is None and r.status == R.COMPLETED and r.score is not None),
                  key=lambda r: (best_first(r.score, sense), r.trainable_params or inf, r.compute_hours or inf))
    order: list[str] = []
    for run_id in [first, *confirmed, *(r.run_id for r in rest)]:
        if run_id is not None and run_id not in order:
            order.append(run_id)
    return order


def _stat_metrics(c: Confirmed) -> dict[str, float]:
    s = c.stats
    values = {"score_mean": s.mean, "score_sd": s.sd, "score_low": s.low, "score_high": s.high, "n_seeds": s.n}
    return {k: float(v) for k, v in values.items() if v is not None}


def mark_runs(client, parent_run_id: str, result: FrontierResult, sense: str = "max") -> dict[str, str]:
    """Mark the search's trial runs for picking in the runs table (this module's docstring): set the
    flags where they hold and delete them where they no longer do (a `search/report.py` rerun moves
    them), log the seed statistics and `pick_order`, and name each confirmation run after the trial
    it confirms. Writes only what changed; returns the trial runs' names by run id."""
    runs = {r.info.run_id: r for r in trial_runs(client, client.get_run(parent_run_id))}
    want = {R.PARETO_TAG: {r.run_id for r in result.records if r.pareto},
            ui.PARETO_SINGLE_TAG: set(result.single_run), ui.PARETO_CONFIRMED_TAG: set(result.confirmed_front),
            ui.RECOMMENDED_TAG: {result.recommended_run_id(sense)} - {None}}
    for run_id, run in runs.items():
        tags = run.data.tags
        for tag in FLAGS:
            if run_id in want[tag] and tags.get(tag) != "true":
                client.set_tag(run_id, tag, "true")
            elif run_id not in want[tag] and tag in tags:
                client.delete_tag(run_id, tag)
    now = int(time.time() * 1000)
    metrics = {run_id: {ui.PICK_ORDER: float(i)} for i, run_id in enumerate(pick_order(result, sense), start=1)}
    for c in result.confirmed:
        metrics.setdefault(c.run_id, {}).update(_stat_metrics(c))
    for run_id, values in metrics.items():
        held = runs[run_id].data.metrics if run_id in runs else {}
        changed = [Metric(k, v, now, 0) for k, v in values.items()
                   if k not in held or not math.isclose(held[k], v, rel_tol=0, abs_tol=1e-12)]
        if changed:
            client.log_batch(run_id, metrics=changed)
    names = {run_id: run.info.run_name or "" for run_id, run in runs.items()}
    by_trial = {r.trial_id: r.run_id for r in result.records if r.confirms is None}
    for r in result.records:
        origin = names.get(by_trial.get(r.confirms, ""))
        if r.confirms is None or not origin or r.run_id not in runs:
            continue
        suffix = f" seed {r.seed if r.seed is not None else '?'}"
        name = origin[:250 - len(suffix)] + suffix
        if names[r.run_id] != name:
            client.update_run(r.run_id, name=name)
            names[r.run_id] = name
    return names


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
    level: float = 0.05  # the two-sided level of better / worse (`analysis.confirmed.decision_level`)

    @classmethod
    def of_search(cls, session) -> "SearchView":
        s = session.search
        cfg = s.cfg.search
        calibrated = s.calibrated_lr
        lr_range = (calibrated / cfg.lr_band, calibrated * cfg.lr_band) if calibrated else (cfg.lr_min, cfg.lr_max)
        return cls(s.name, session.run.experiment_id, session.parent_run_id, s.tracking_uri, s.metric_name,
                   s.cost_unit, s.budget.max_params, s.space, s.scores, lr_range, cfg.max_compute_hours, cfg.margin,
                   decision_level(cfg.confirm_max_seeds))

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
                   float(s.get("max_compute_hours", 0.0)), float(s.get("margin", DEFAULT_MARGIN)),
                   decision_level(int(s.get("confirm_max_seeds", 0))))


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
                              title=title, max_adapter_params=view.max_adapter_params, margin=view.margin,
                              level=view.level)
    searched = [r for r in result.records if r.confirms is None]
    completed = [r for r in searched if r.status == R.COMPLETED]
    rec = result.recommendation
    picked = result.recommended_run_id(sense)
    names = result.names
    marks = Marks(picked, names, result.single_run, result.confirmed_front,
                  {c.run_id: c.stats for c in result.confirmed})
    publish_notes(client, view.parent_run_id, searched, view.tracking_uri, status=status, artifact_prefix=prefix,
                  recommendation=None if rec is None else _cite_name(recommendation_markdown(rec, metric), rec, names),
                  confirmed_table=confirmed_markdown(result.confirmed, metric, unit, rec) if result.confirmed else None,
                  recommended_run_id=None if rec is None else rec.pick.run_id, marks=marks)
    if picked is not None:  # the views list the recommended trial first (`pick_order`)
        ui.open_views(client, view.experiment_id, view.parent_run_id, sense, picked=True)
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
        if names.get(picked):
            lines.append(f"  in the MLflow runs table: {names[picked]} (tag {ui.RECOMMENDED_TAG}=true, listed first)")
        warning = lr_edge_warning(rec.pick.lr, view.lr_range)
        if warning:
            lines.append(f"warning: {warning}")
    elif completed:
        lines += ["", "no placement was confirmed over seeds (search.confirm_seeds = 0, or the phase did not run): "
                      "single runs differ by seed noise; compare before you deploy"]
        if names.get(picked):
            lines.append(f"best single run: {names[picked]} (tag {ui.RECOMMENDED_TAG}=true, listed first in the "
                         "MLflow runs table)")
    lines.append(f"results: {Path(output_dir) / (prefix + FILES[0])}")
    lines += ui_lines(view.tracking_uri, view.experiment_id, view.parent_run_id)
    return Ending(result, searched, lines)


def study_result(result: FrontierResult, metric_name: str, numbers: dict[str, int]) -> dict:
    """What the search decided, as JSON for its Optuna study (`search.sampling.study.note_result`):
    the recommended placement and every confirmed one with its seed statistics and decision against
    the best, each with its Optuna trial number (`numbers`: Tune trial id -> number) and MLflow run."""
    rec = result.recommendation

    def placement(trial_id: str, run_id: str, key: str, baseline, params) -> dict:
        return {"placement_key": key, "trial_number": numbers.get(trial_id), "run_id": run_id,
                "run_name": result.names.get(run_id), "baseline": baseline, "trainable_params": params}

    confirmed = [{**placement(c.trial_id, c.run_id, c.key, c.baseline, c.trainable_params),
                  "mean": c.stats.mean, "low": c.stats.low, "high": c.stats.high, "n_seeds": c.stats.n,
                  "vs_best": rec.verdict(c) if rec else None} for c in result.confirmed]
    picked = result.recommended_run_id(R.sense(metric_name))
    pick = next((r for r in result.records if r.run_id == picked), None)
    recommended_ = None if pick is None else {
        **placement(pick.trial_id, pick.run_id, pick.key, pick.baseline, pick.trainable_params),
        "confirmed": rec is not None, "score": rec.pick.stats.mean if rec else pick.score}
    return {"metric": metric_name, "recommended": recommended_, "confirmed": confirmed}


def study_note(result: FrontierResult, metric_name: str, cost_unit: str, run_id: str) -> str:
    """The study's note on optuna-dashboard's study page (Markdown): the recommendation and the
    confirmed placements, as the search's MLflow description gives them."""
    rec = result.recommendation
    parts = [f"LoRA placement search, MLflow run `{run_id}`."]
    if rec is not None:
        parts.append(_cite_name(recommendation_markdown(rec, metric_name), rec, result.names))
    if result.confirmed:
        parts.append(confirmed_markdown(result.confirmed, metric_name, cost_unit, rec))
    if rec is None:
        parts.append("No placement was confirmed over seeds: single runs differ by seed noise.")
    return "\n\n".join(parts)


def _cite_name(markdown: str, rec: Recommendation, names: dict) -> str:
    """The recommendation citing its run by the name the runs table shows (not by its id)."""
    name = names.get(rec.pick.run_id)
    return markdown.replace(f"(run {rec.pick.run_id})", f"(run `{name}`)", 1) if name else markdown


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
