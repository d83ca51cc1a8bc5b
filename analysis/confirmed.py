"""The confirmed frontier: placements retrained over seeds, compared in pairs, and one recommendation.

Where it sits: frontier, after the search. Which trials to confirm (`pick_candidates`: the best
placements of the single-run frontier and the best baselines), the seed statistics of each once
its confirmation runs are in (`group_confirmed`), the frontier over seed means, and the plain
recommendation a user deploys from (`recommend`; docs/methods.md, "Confirmation"). Reads
`TrialRecord`s only, so a live search and `search/report.py` on a store give the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from analysis.stats import Paired, SeedStats, paired, seed_stats
from trainables.record import COMPLETED, TrialRecord


def pick_candidates(records: list[TrialRecord], top: int, baselines: int) -> list[TrialRecord]:
    """The search trials to confirm: the `top` best-scoring placements of the frontier (single runs)
    and the `baselines` best-scoring baselines, each once, best first."""
    from analysis.pareto import frontier

    # A warm-start trial (copied from an earlier search) is never retrained, so never confirmed.
    completed = [r for r in records if r.status == COMPLETED and r.confirms is None and r.warm_start is None]
    if not completed:
        return []
    front_ids = {row["run_id"] for row in frontier([r.as_dict() for r in completed]) if row["pareto"]}
    front = sorted((r for r in completed if r.run_id in front_ids), key=lambda r: -r.score)[:top]
    chosen = {r.trial_id for r in front}
    base = sorted((r for r in completed if r.baseline and r.trial_id not in chosen), key=lambda r: -r.score)
    return front + base[:baselines]


@dataclass(frozen=True)
class Confirmed:
    """One placement (a search trial and its confirmation runs) with a score per training seed."""

    trial_id: str
    run_id: str  # the search trial's run: the one tagged pareto and deployed
    key: str
    lr: float | None
    baseline: str | None
    trainable_params: int
    adapter_params: int | None
    scores: dict[int, float]  # training seed -> score
    compute_hours: float  # mean over the seeds' runs
    stats: SeedStats
    pareto: bool = False

    def row(self) -> dict:
        """A plain row for CSVs and plots (`score` is the seed mean)."""
        s = self.stats
        return {"trial_id": self.trial_id, "run_id": self.run_id, "key": self.key, "lr": self.lr,
                "baseline": self.baseline, "status": COMPLETED, "score": s.mean, "score_sd": s.sd,
                "score_low": s.low, "score_high": s.high, "n_seeds": s.n,
                "seeds": " ".join(f"{k}:{v:.4f}" for k, v in sorted(self.scores.items())),
                "trainable_params": self.trainable_params, "adapter_params": self.adapter_params,
                "compute_hours": self.compute_hours, "pareto": self.pareto}


CONFIRMED_COLUMNS = ["trial_id", "run_id", "pareto", "baseline", "key", "lr", "score", "score_sd", "score_low",
                     "score_high", "n_seeds", "seeds", "trainable_params", "adapter_params", "compute_hours"]


def group_confirmed(records: list[TrialRecord]) -> list[Confirmed]:
    """Every completed search trial that has at least one completed confirmation run, with the
    scores of all its completed runs by seed (a seed run twice keeps its first result)."""
    by_trial = {r.trial_id: r for r in records if r.confirms is None}
    runs: dict[str, list[TrialRecord]] = {}
    for r in records:
        if r.confirms is not None and r.status == COMPLETED and r.confirms in by_trial:
            runs.setdefault(r.confirms, []).append(r)
    out = []
    for trial_id, confirmations in runs.items():
        origin = by_trial[trial_id]
        if origin.status != COMPLETED:
            continue
        scores: dict[int, float] = {}
        hours = []
        for r in [origin, *sorted(confirmations, key=lambda r: r.start_time or 0)]:
            seed = 0 if r.seed is None else r.seed
            if seed not in scores:
                scores[seed] = float(r.score)
                hours.append(r.compute_hours or 0.0)
        out.append(Confirmed(trial_id, origin.run_id, origin.key, origin.lr, origin.baseline,
                             int(origin.trainable_params or 0), origin.adapter_params, scores,
                             sum(hours) / len(hours), seed_stats(list(scores.values()))))
    return sorted(out, key=lambda c: -c.stats.mean)


def mark_frontier(confirmed: list[Confirmed]) -> list[Confirmed]:
    """The frontier over seed means: mean score up, trainable params down, mean compute hours down."""
    from analysis.pareto import pareto_mask

    if not confirmed:
        return []
    mask = pareto_mask([(c.stats.mean, c.trainable_params, c.compute_hours) for c in confirmed], ("max", "min", "min"))
    return [replace(c, pareto=on) for c, on in zip(confirmed, mask)]


@dataclass(frozen=True)
class Recommendation:
    """What to deploy: the placement with the highest confirmed mean, how it compares with the best
    confirmed baseline, and the cheapest placement that is not worse than it beyond noise."""

    pick: Confirmed
    best_baseline: Confirmed | None
    pick_vs_baseline: Paired | None  # None without a confirmed baseline, or when the pick is one
    cheaper: Confirmed | None  # fewer trainable params and not worse than the pick beyond noise
    cheaper_vs_pick: Paired | None
    budget_share: float | None  # the pick's adapter params / the budget's maximum

    def lines(self, metric_name: str) -> list[str]:
        p = self.pick
        name = f"[{p.baseline}] {p.key}" if p.baseline else p.key
        share = f", {self.budget_share:.0%} of the budget" if self.budget_share is not None else ""
        lr = f" at lr {p.lr:.3g}" if p.lr else ""
        out = [f"recommendation: deploy {name}{lr} (run {p.run_id})",
               f"  {metric_name} {p.stats.describe()}; {p.trainable_params:,} trainable params "
               f"({p.adapter_params or 0:,} in adapters{share})"]
        if self.best_baseline is None:
            out.append("  no baseline was confirmed: nothing to compare with")
        elif self.pick_vs_baseline is None:
            out.append(f"  it is the baseline '{p.baseline}': no searched placement had a higher confirmed mean")
        else:
            b = self.best_baseline
            out.append(f"  against the best baseline [{b.baseline}] {b.key} ({metric_name} {b.stats.mean:.3f}, "
                       f"{b.trainable_params:,} params): {self.pick_vs_baseline.describe()}")
        if self.cheaper is not None:
            c = self.cheaper
            out.append(f"  cheaper and not worse beyond noise: {c.key} ({c.trainable_params:,} params, "
                       f"{metric_name} {c.stats.mean:.3f}): {self.cheaper_vs_pick.describe()}")
        return out


def recommend(confirmed: list[Confirmed], max_adapter_params: float | None = None) -> Recommendation | None:
    """The highest confirmed mean (ties: fewer trainable params), compared in pairs with the best
    confirmed baseline and with the cheapest placement that is not significantly worse than it."""
    if not confirmed:
        return None
    pick = max(confirmed, key=lambda c: (c.stats.mean, -c.trainable_params))
    baselines = [c for c in confirmed if c.baseline]
    best_baseline = max(baselines, key=lambda c: c.stats.mean) if baselines else None
    vs_baseline = None
    if best_baseline is not None and best_baseline is not pick:
        vs_baseline = paired(pick.scores, best_baseline.scores)
    cheaper = [c for c in confirmed if c.trainable_params < pick.trainable_params
               and paired(c.scores, pick.scores).verdict != "worse"]
    cheapest = min(cheaper, key=lambda c: (c.trainable_params, -c.stats.mean)) if cheaper else None
    share = pick.adapter_params / max_adapter_params if max_adapter_params and pick.adapter_params else None
    return Recommendation(pick, best_baseline, vs_baseline, cheapest,
                          None if cheapest is None else paired(cheapest.scores, pick.scores), share)


def format_confirmed(confirmed: list[Confirmed], metric_name: str, cost_unit: str, key_width: int = 44) -> str:
    """The confirmed placements, best mean first; `*` marks the frontier over seed means."""
    head = (f"{'':1} {'placement':<{key_width}} {'lr':>8} {metric_name + ' (mean ± sd)':>24} {'95% CI':>15} "
            f"{'seeds':>5} {'trainable':>10} {cost_unit:>14}")
    lines = [head, "-" * len(head)]
    for c in sorted(confirmed, key=lambda c: -c.stats.mean):
        key = f"[{c.baseline}] {c.key}" if c.baseline else c.key
        key = key if len(key) <= key_width else key[: key_width - 3] + "..."
        s = c.stats
        spread = f"{s.mean:.4f} ± {s.sd:.4f}" if s.sd is not None else f"{s.mean:.4f}"
        ci = f"{s.low:.3f}-{s.high:.3f}" if s.low is not None else "-"
        lr = f"{c.lr:.2e}" if c.lr else "-"
        lines.append(f"{'*' if c.pareto else ' ':1} {key:<{key_width}} {lr:>8} {spread:>24} {ci:>15} {s.n:>5} "
                     f"{c.trainable_params:>10,} {c.compute_hours:>14.5f}")
    lines.append(f"* = Pareto-optimal over seed means ({metric_name} up, trainable params down, {cost_unit} down)")
    return "\n".join(lines)


def recommendation_markdown(rec: Recommendation, metric_name: str) -> str:
    """The recommendation for the MLflow description: its first line in bold, the rest as bullets."""
    first, *rest = rec.lines(metric_name)
    return f"**{first[0].upper()}{first[1:]}**" + "".join(f"\n- {line.strip()}" for line in rest)


def confirmed_markdown(confirmed: list[Confirmed], metric_name: str, cost_unit: str) -> str:
    """The confirmed placements as a Markdown table, best mean first; frontier rows marked."""
    head = f"| | placement | lr | {metric_name} mean ± sd | 95% CI | seeds | trainable params | {cost_unit} |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in sorted(confirmed, key=lambda c: -c.stats.mean):
        s = c.stats
        name = f"[{c.baseline}] `{c.key}`" if c.baseline else f"`{c.key}`"
        spread = f"{s.mean:.4f} ± {s.sd:.4f}" if s.sd is not None else f"{s.mean:.4f}"
        ci = f"{s.low:.3f} to {s.high:.3f}" if s.low is not None else "-"
        lr = f"{c.lr:.2e}" if c.lr else "-"
        lines.append(f"| {'★' if c.pareto else ''} | {name} | {lr} | {spread} | {ci} | {s.n} | "
                     f"{c.trainable_params:,} | {c.compute_hours:.5f} |")
    return "\n".join(lines)
