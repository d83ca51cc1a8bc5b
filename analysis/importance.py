"""Which prior was right: what each module kind and each layer contributed, and whether each prior's
ordering agreed with it.

Where it sits: frontier, after a search (and on the replay benchmark's table). From completed
trials, a ridge regression of the score on the placement's make-up estimates one effect per module
kind and one per layer:

    score ~ b0 + sum_k b_k * x_k + sum_l c_l * y_l + d * log2(rank) + e * log(lr)

where x_k is the share of layers in which kind k carries an adapter and y_l the share of kinds
adapted in layer l (features standardised; ridge penalty `alpha`). Each prior predicts an order:
PLoP adapts the kinds with the lowest NFN first, so it predicts effects that fall with NFN; CKA and
activation predict layer effects that rise with their scores; KappaTune adapts the sites with the
lowest condition number first, for kinds and for layers. The agreement of a prior is the Spearman
rank correlation of its predicted order with the estimated effects; its 95% interval comes from
refitting on bootstrap resamples of the trials. Verdict: "agreed" when the interval lies above
zero, "disagreed" when below, otherwise "inconclusive" (wide intervals are the honest answer for a
dozen trials). For a lower-is-better metric (`sense` "min", e.g. `nll`) the regression is on the
negated score, so an effect is always a benefit: positive = the unit makes the metric better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.direction import gain

MIN_TRIALS = 6


def features(placement, lr: float | None) -> tuple[list[float], list[float], float, float]:
    """(per-kind shares, per-layer shares, log2 rank, log lr) of a placement."""
    n_kinds, n_layers = len(placement.kinds), placement.n_layers
    sites = placement.sites()
    x = [sum(1 for k, _ in sites if k == kk) / n_layers for kk in range(n_kinds)]
    y = [sum(1 for _, l in sites if l == ll) / n_kinds for ll in range(n_layers)]
    return x, y, math.log2(max(placement.rank_values())), math.log(lr) if lr else 0.0


def ridge_effects(rows: list[tuple], scores: list[float], alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-kind and per-layer effects (in score units per standardised share) from `features` rows."""
    n_kinds, n_layers = len(rows[0][0]), len(rows[0][1])
    X = np.array([[*x, *y, r, lr] for x, y, r, lr in rows], dtype=float)
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd
    t = np.asarray(scores, dtype=float)
    t = t - t.mean()
    beta = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ t)
    return beta[:n_kinds], beta[n_kinds:n_kinds + n_layers]


def spearman(a, b) -> float | None:
    """Rank correlation of two sequences (average ranks for ties); None if either is constant."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for m in range(i, j + 1):
                r[order[m]] = (i + j) / 2.0
            i = j + 1
        return r

    ra, rb = np.array(ranks(list(a))), np.array(ranks(list(b)))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class Agreement:
    prior: str  # e.g. "PLoP NFN (kinds)"
    rho: float | None
    low: float | None
    high: float | None
    verdict: str  # agreed | disagreed | inconclusive | no information

    def describe(self) -> str:
        if self.rho is None:
            return f"{self.prior}: {self.verdict}"
        interval = f", 95% interval {self.low:+.2f} to {self.high:+.2f}" if self.low is not None else ""
        return f"{self.prior}: rank correlation {self.rho:+.2f}{interval}: {self.verdict}"


def predictions(scores) -> dict[str, tuple[str, list[float | None]]]:
    """Each prior's predicted benefit per unit, higher = adapt first: name -> (kinds|layers, values)."""
    out = {"PLoP NFN (kinds)": ("kinds", [None if v is None else -v for v in scores.kind_nfn()]),
           "CKA (layers)": ("layers", list(scores.cka.importance)),
           "activation (layers)": ("layers", list(scores.act.per_layer))}
    kappa = getattr(scores, "kappa", None)
    if kappa is not None:
        out["KappaTune (kinds)"] = ("kinds", [None if v is None else -v for v in (kappa.per_kind[a] for a in scores.kinds)])
        per_layer = [[row[l] for row in kappa.per_site if row[l] is not None] for l in range(scores.n_layers)]
        out["KappaTune (layers)"] = ("layers", [-sum(v) / len(v) if v else None for v in per_layer])
    return out


def _verdict(low, high) -> str:
    if low is None:
        return "inconclusive"
    return "agreed" if low > 0 else "disagreed" if high < 0 else "inconclusive"


def prior_agreement(trials: list[tuple], scores_of_trials: list[float], scores, *, bootstrap: int = 200,
                    seed: int = 0, alpha: float = 1.0, sense: str = "max") -> dict:
    """The report: estimated effects and each prior's agreement with them.

    trials: `features` rows of completed trials; scores_of_trials: their scores; scores: the search's
    `PriorScores`; sense: the metric's direction ("min": the scores are negated first, so that the
    effects are benefits). Returns {"n_trials", "kind_effects", "layer_effects", "agreements": [Agreement]}.
    """
    scores_of_trials = [gain(v, sense) for v in scores_of_trials]
    n = len(trials)
    if n < MIN_TRIALS:
        return {"n_trials": n, "kind_effects": None, "layer_effects": None, "sense": sense,
                "agreements": [Agreement(p, None, None, None, f"no information (fewer than {MIN_TRIALS} completed "
                                                             "trials)") for p in predictions(scores)]}
    kinds, layers = ridge_effects(trials, scores_of_trials, alpha)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        if len(set(idx.tolist())) < 3:
            continue
        boots.append(ridge_effects([trials[i] for i in idx], [scores_of_trials[i] for i in idx], alpha))
    agreements = []
    for name, (unit, predicted) in predictions(scores).items():
        keep = [i for i, v in enumerate(predicted) if v is not None]
        if len(keep) < 3:
            agreements.append(Agreement(name, None, None, None, "no information (fewer than 3 scored units)"))
            continue
        est = kinds if unit == "kinds" else layers
        rho = spearman([predicted[i] for i in keep], [est[i] for i in keep])
        rhos = [spearman([predicted[i] for i in keep], [(bk if unit == "kinds" else bl)[i] for i in keep])
                for bk, bl in boots]
        rhos = [r for r in rhos if r is not None]
        low, high = (float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))) if len(rhos) >= 20 else (None, None)
        agreements.append(Agreement(name, rho, low, high, _verdict(low, high) if rho is not None else "no information"))
    return {"n_trials": n, "kind_effects": kinds.tolist(), "layer_effects": layers.tolist(), "sense": sense,
            "agreements": agreements}


def format_agreement(report: dict, kinds: list[str]) -> str:
    score = "negated score (lower is better)" if report.get("sense") == "min" else "score"
    lines = [f"which prior was right ({report['n_trials']} completed trials; effects from a ridge regression of the "
             f"{score} on each kind's and each layer's share):"]
    if report["kind_effects"] is not None:
        lines.append("  kind effects:  " + "  ".join(f"{a} {v:+.3f}" for a, v in zip(kinds, report["kind_effects"])))
        lines.append("  layer effects: " + "  ".join(f"{l} {v:+.3f}" for l, v in enumerate(report["layer_effects"])))
    lines += [f"  {a.describe()}" for a in report["agreements"]]
    return "\n".join(lines)


def plot_agreement(report: dict, kinds: list[str], path) -> "Path":
    """Bars of the estimated kind and layer effects, with each prior's verdict in the title."""
    from pathlib import Path

    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [len(kinds), max(1, len(report["layer_effects"] or []))]})
    for ax, values, labels, title in ((left, report["kind_effects"], kinds, "module kinds"),
                                      (right, report["layer_effects"], None, "layers")):
        if values is None:
            ax.text(0.5, 0.5, "too few completed trials", ha="center", transform=ax.transAxes)
            continue
        labels = labels or [str(i) for i in range(len(values))]
        ax.bar(range(len(values)), values, color=["tab:green" if v > 0 else "tab:red" for v in values])
        ax.set_xticks(range(len(values)), labels=labels)
        ax.axhline(0, color="0.3", lw=0.8)
        benefit = "benefit (lower score)" if report.get("sense") == "min" else "effect on the score"
        ax.set_title(f"estimated {benefit}: {title}", fontsize=9)
    verdicts = "; ".join(f"{a.prior}: {a.verdict}" for a in report["agreements"])
    fig.suptitle(f"which prior was right ({report['n_trials']} trials) - {verdicts}", fontsize=8)
    fig.savefig(path, dpi=110)
    return path
