"""The confirmed frontier: placements retrained over seeds, compared in pairs, and one recommendation.

Where it sits: frontier, after the search. Which trials to confirm (`pick_candidates`: placements
across the single-run frontier's sizes, always its best, and the best baselines), the seed
statistics of each once its confirmation runs are in (`group_confirmed`), the frontier over seed
means, and the plain recommendation a user deploys from (`recommend`: the smallest placement shown
as good as the best within `search.margin`; docs/methods.md, "Confirmation" and "Decisions"). Reads
`TrialRecord`s only, so a live search and `search/report.py` on a store give the same answer.
"Best" and "better" follow the metric's direction: `sense` is "max" (the default: every
classification metric) or "min" for a lower-is-better metric such as `nll` (`analysis.direction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from analysis.direction import best_first, checked, gain, score_objectives, word
from analysis.pareto import frontier, pareto_mask
from analysis.stats import (
    AS_GOOD,
    BETTER,
    UNDECIDED,
    WORSE,
    Decision,
    SeedStats,
    decide,
    seed_stats,
)
from trainables import record as R
from trainables.record import COMPLETED, TrialRecord

DEFAULT_MARGIN = 0.01  # search.margin's default: 1 point of a metric in [0, 1]


def pick_candidates(records: list[TrialRecord], top: int, baselines: int, sense: str = "max") -> list[TrialRecord]:
    """The search trials to confirm: `top` placements of the single-run frontier spread across its
    sizes (always its best-scoring one; the others log-spaced in trainable parameters from the
    cheapest up, so that the cheap end a user deploys to save parameters is confirmed too) and the
    `baselines` best-scoring baselines, each once: the best first, then by size, then baselines."""
    # A warm-start trial (copied from an earlier search) is never retrained, so never confirmed.
    completed = [r for r in records if r.status == COMPLETED and r.confirms is None and r.warm_start is None]
    if not completed or top < 1 and baselines < 1:
        return []
    front_ids = {row["run_id"] for row in frontier([r.as_dict() for r in completed], score_objectives(sense))
                 if row["pareto"]}
    front = [r for r in completed if r.run_id in front_ids]
    chosen = []
    if top >= 1:
        best = max(front, key=lambda r: (gain(r.score, sense), -(r.trainable_params or 0)))
        rest = sorted((r for r in front if r is not best),
                      key=lambda r: (r.trainable_params or 0, best_first(r.score, sense)))
        chosen = [best, *sorted(spread_by_size(rest, top - 1), key=lambda r: r.trainable_params or 0)]
    ids = {r.trial_id for r in chosen}
    base = sorted((r for r in completed if r.baseline and r.trial_id not in ids),
                  key=lambda r: best_first(r.score, sense))
    return chosen + base[:baselines]


def spread_by_size(records: list[TrialRecord], k: int) -> list[TrialRecord]:
    """`k` of `records` spread evenly in log trainable parameters from the smallest to the largest
    (the smallest first when k = 1); all of them when there are no more than k."""
    if k <= 0:
        return []
    if len(records) <= k:
        return list(records)
    logs = [math.log(max(1, r.trainable_params or 1)) for r in records]
    lo, hi = min(logs), max(logs)
    targets = [lo] if k == 1 else [lo + (hi - lo) * i / (k - 1) for i in range(k)]
    picked: list[int] = []
    for target in targets:
        free = [i for i in range(len(records)) if i not in picked]
        picked.append(min(free, key=lambda i: (abs(logs[i] - target), i)))
    return [records[i] for i in sorted(picked)]


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


def group_confirmed(records: list[TrialRecord], sense: str = "max") -> list[Confirmed]:
    """Every completed search trial that has at least one completed confirmation run, with the
    scores of all its completed runs by seed (a seed run twice keeps its first result); the best
    mean first."""
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
    return sorted(out, key=lambda c: best_first(c.stats.mean, sense))


def mark_frontier(confirmed: list[Confirmed], sense: str = "max") -> list[Confirmed]:
    """The frontier over seed means: mean score in `sense`, trainable params down, mean compute
    hours down."""
    if not confirmed:
        return []
    mask = pareto_mask([(c.stats.mean, c.trainable_params, c.compute_hours) for c in confirmed],
                       (checked(sense), "min", "min"))
    return [replace(c, pareto=on) for c, on in zip(confirmed, mask)]


@dataclass(frozen=True)
class Recommendation:
    """What to deploy: the smallest confirmed placement shown as good as the best confirmed one
    within the margin (the best itself when none is), with the evidence (docs/methods.md,
    "Decisions")."""

    pick: Confirmed
    best: Confirmed  # the best confirmed mean (the highest; the lowest for a "min" metric)
    pick_vs_best: Decision | None  # None when the pick is the best
    best_baseline: Confirmed | None
    pick_vs_baseline: Decision | None  # None without a confirmed baseline, or when the pick is one
    budget_share: float | None  # the pick's adapter params / the budget's maximum
    margin: float = DEFAULT_MARGIN
    decisions: dict[str, Decision] = field(default_factory=dict)  # trial id -> against the best
    sense: str = "max"  # the metric's direction (`analysis.direction`)

    def verdict(self, c: Confirmed) -> str:
        """The word for a confirmed placement against the best: "best", or a `decide` verdict."""
        return "best" if c is self.best or c.trial_id == self.best.trial_id else self.decisions[c.trial_id].verdict

    def lines(self, metric_name: str) -> list[str]:
        p, b = self.pick, self.best
        name = f"[{p.baseline}] {p.key}" if p.baseline else p.key
        share = f", {self.budget_share:.0%} of the budget" if self.budget_share is not None else ""
        lr = f" at lr {p.lr:.3g}" if p.lr else ""
        out = [f"recommendation: deploy {name}{lr} (run {p.run_id})",
               f"  {metric_name} {p.stats.describe()}; {p.trainable_params:,} trainable params "
               f"({p.adapter_params or 0:,} in adapters{share})"]
        if self.pick_vs_best is not None:
            out.append(f"  the smallest placement shown as good as the best, {b.key} ({metric_name} {b.stats.mean:.3f}, "
                       f"{b.trainable_params:,} params), within a margin of {self.margin:g}: "
                       f"{self.pick_vs_best.describe()}")
        else:
            others = [self.decisions[c] for c in self.decisions]
            counts = {w: sum(d.verdict == w for d in others) for w in (AS_GOOD, UNDECIDED, WORSE)}
            smaller = "no smaller confirmed placement is" if others else "no other placement was confirmed, so none is"
            out.append(f"  it has the {word(self.sense, 'highest', 'lowest')} confirmed mean; {smaller} shown as "
                       f"good within a margin of "
                       f"{self.margin:g} ({counts[UNDECIDED]} undecided, {counts[WORSE]} worse"
                       + (f", {counts[AS_GOOD]} as good but not smaller" if counts[AS_GOOD] else "") + ")")
        if self.best_baseline is None:
            out.append("  no baseline was confirmed: nothing to compare with")
        elif self.pick_vs_baseline is None:
            out.append(f"  it is the baseline '{p.baseline}'")
        else:
            bb = self.best_baseline
            out.append(f"  against the best baseline [{bb.baseline}] {bb.key} ({metric_name} {bb.stats.mean:.3f}, "
                       f"{bb.trainable_params:,} params): {self.pick_vs_baseline.describe()}")
        return out


RACE_LEVEL = 0.01  # the two-sided level of better / worse at each look of a race (docs/methods.md, "Racing")


def decision_level(confirm_max_seeds: int) -> float:
    """The two-sided level of better / worse for a search's decisions: `RACE_LEVEL` when it races
    (`search.confirm_max_seeds` > 0), else 0.05. Testing after every round at 0.05 called 6 to 11%
    of identical placements better or worse on this project's real seed noise; at 0.01 per look,
    1.5 to 3% (docs/benchmarks.md, "Decisions: false-decision rate and power")."""
    return RACE_LEVEL if confirm_max_seeds > 0 else 0.05


def recommend(confirmed: list[Confirmed], max_adapter_params: float | None = None,
              margin: float = DEFAULT_MARGIN, sense: str = "max", level: float = 0.05) -> Recommendation | None:
    """The smallest confirmed placement shown as good as the best (the best mean in `sense`; ties:
    fewer trainable params) within `margin`, or the best itself; compared with the best baseline too.
    `level`: the two-sided level of better / worse (`decision_level`)."""
    if not confirmed:
        return None
    best = max(confirmed, key=lambda c: (gain(c.stats.mean, sense), -c.trainable_params))
    decisions = {c.trial_id: decide(c.scores, best.scores, margin, sense, level) for c in confirmed if c is not best}
    smaller = [c for c in confirmed if c is not best and c.trainable_params < best.trainable_params
               and decisions[c.trial_id].verdict in (AS_GOOD, BETTER)]
    pick = min(smaller, key=lambda c: (c.trainable_params, best_first(c.stats.mean, sense))) if smaller else best
    baselines = [c for c in confirmed if c.baseline]
    best_baseline = max(baselines, key=lambda c: gain(c.stats.mean, sense)) if baselines else None
    vs_baseline = None
    if best_baseline is not None and best_baseline is not pick:
        vs_baseline = decide(pick.scores, best_baseline.scores, margin, sense, level)
    share = pick.adapter_params / max_adapter_params if max_adapter_params and pick.adapter_params else None
    return Recommendation(pick, best, None if pick is best else decisions[pick.trial_id], best_baseline,
                          vs_baseline, share, margin, decisions, sense)


@dataclass(frozen=True)
class RaceRound:
    """One round of racing (docs/methods.md, "Racing"): the undecided placements (`racing`, trial
    ids) and the best each get the seeds they lack of train_seed + 0 .. target - 1 (`jobs`: trial
    id -> the seeds to train)."""

    target: int
    best: str
    racing: tuple[str, ...]
    jobs: dict[str, tuple[int, ...]]


def race_round(confirmed: list[Confirmed], margin: float, sense: str, max_seeds: int, step: int,
               train_seed: int = 0, level: float = RACE_LEVEL) -> RaceRound | None:
    """The next round of racing, or None when no placement is undecided against the best with fewer
    than `max_seeds` seeds. Every racing placement and the best are brought to the same seeds, the
    most any racing one has plus `step` (at most `max_seeds`), so that each pair shares them all.
    Decided at `level` per look (`RACE_LEVEL`)."""
    rec = recommend(confirmed, None, margin, sense, level)
    if rec is None or step < 1:
        return None
    undecided = [c for c in confirmed if c.trial_id != rec.best.trial_id
                 and rec.decisions[c.trial_id].verdict == UNDECIDED and c.stats.n < max_seeds]
    if not undecided:
        return None
    target = min(max_seeds, max(c.stats.n for c in undecided) + step)
    wanted = [train_seed + k for k in range(target)]
    jobs = {}
    for c in [rec.best, *undecided]:
        missing = tuple(seed for seed in wanted if seed not in c.scores)
        if missing:
            jobs[c.trial_id] = missing
    return RaceRound(target, rec.best.trial_id, tuple(c.trial_id for c in undecided), jobs) if jobs else None


def format_confirmed(confirmed: list[Confirmed], metric_name: str, cost_unit: str, key_width: int = 44,
                     rec: Recommendation | None = None) -> str:
    """The confirmed placements, best mean first; `*` marks the frontier over seed means; with the
    recommendation, each placement's decision against the best (docs/methods.md, "Decisions")."""
    sense = R.sense(metric_name)
    head = (f"{'':1} {'placement':<{key_width}} {'lr':>8} {metric_name + ' (mean ± sd)':>24} {'95% CI':>15} "
            f"{'seeds':>5} {'trainable':>10} {cost_unit:>14}" + (f"  {'vs best':<10}" if rec else ""))
    lines = [head, "-" * len(head)]
    for c in sorted(confirmed, key=lambda c: best_first(c.stats.mean, sense)):
        key = f"[{c.baseline}] {c.key}" if c.baseline else c.key
        key = key if len(key) <= key_width else key[: key_width - 3] + "..."
        s = c.stats
        spread = f"{s.mean:.4f} ± {s.sd:.4f}" if s.sd is not None else f"{s.mean:.4f}"
        ci = f"{s.low:.3f}-{s.high:.3f}" if s.low is not None else "-"
        lr = f"{c.lr:.2e}" if c.lr else "-"
        lines.append(f"{'*' if c.pareto else ' ':1} {key:<{key_width}} {lr:>8} {spread:>24} {ci:>15} {s.n:>5} "
                     f"{c.trainable_params:>10,} {c.compute_hours:>14.5f}" + (f"  {rec.verdict(c):<10}" if rec else ""))
    lines.append(f"* = Pareto-optimal over seed means ({metric_name} {word(sense, 'up', 'down')}, trainable params "
                 f"down, {cost_unit} down)")
    if rec:
        level = next((d.level for d in rec.decisions.values()), 0.05)
        at = f", {100 * (1 - level):g}% intervals per look (racing)" if level != 0.05 else ""
        lines.append(f"vs best: against the {word(sense, 'highest', 'lowest')} mean, paired over seeds, margin "
                     f"{rec.margin:g}{at} (better, as good, "
                     "worse, undecided: docs/methods.md, \"Decisions\")")
    return "\n".join(lines)


def recommendation_markdown(rec: Recommendation, metric_name: str) -> str:
    """The recommendation for the MLflow description: its first line in bold, the rest as bullets."""
    first, *rest = rec.lines(metric_name)
    return f"**{first[0].upper()}{first[1:]}**" + "".join(f"\n- {line.strip()}" for line in rest)


def confirmed_markdown(confirmed: list[Confirmed], metric_name: str, cost_unit: str,
                       rec: Recommendation | None = None) -> str:
    """The confirmed placements as a Markdown table, best mean first; frontier rows marked; with the
    recommendation, each placement's decision against the best."""
    sense = R.sense(metric_name)
    head = (f"| | placement | lr | {metric_name} mean ± sd | 95% CI | seeds | trainable params | {cost_unit} |"
            + (" vs best |" if rec else ""))
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|" + ("---|" if rec else "")]
    for c in sorted(confirmed, key=lambda c: best_first(c.stats.mean, sense)):
        s = c.stats
        name = f"[{c.baseline}] `{c.key}`" if c.baseline else f"`{c.key}`"
        spread = f"{s.mean:.4f} ± {s.sd:.4f}" if s.sd is not None else f"{s.mean:.4f}"
        ci = f"{s.low:.3f} to {s.high:.3f}" if s.low is not None else "-"
        lr = f"{c.lr:.2e}" if c.lr else "-"
        lines.append(f"| {'★' if c.pareto else ''} | {name} | {lr} | {spread} | {ci} | {s.n} | "
                     f"{c.trainable_params:,} | {c.compute_hours:.5f} |" + (f" {rec.verdict(c)} |" if rec else ""))
    return "\n".join(lines)
