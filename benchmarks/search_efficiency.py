"""Benchmark: how many trials each sampler needs on placement landscapes whose answer is known.

    python -m benchmarks.search_efficiency                      # the default: about 1 minute
    python -m benchmarks.search_efficiency --seeds 10 --trials 250 --shape llama
    python -m benchmarks.search_efficiency --fills 0.8 --option w0=0   # ablations of the prior

Where it sits: score -> **sample** -> (train replaced by a formula) -> frontier. Every trial goes
through the real define-by-run space (`PlacementSpace`: flags, rank, lr, budget repair) and the
real samplers from `search.sampling.samplers.make_sampler` (prior | tpe | random), through the
product's offline search (`search.sampling.offline`: a plain Optuna study, ask / tell, no Ray).
Training is replaced by a synthetic landscape (`trainables.landscape`):

    site value     v[k][l] = a_k * b_l * exp(N(0, 0.25^2))       a_k ~ logN(0, 1), b_l ~ logN(0, 0.8^2)
    signal         S = sum over chosen sites of v[k][l] * (r / r_ref) ** 0.5
    metric         m = 0.5 + 0.4 * (1 - exp(-S / (0.3 * S_full)))   (+ N(0, 0.005^2) observed)
    params         exact adapter params of the placement;   cost = params / full_params (propto params)

with S_full = the signal of every site at r_ref. The learning rate is sampled but has no effect:
the priors say nothing about it. The scores handed to the prior sampler are *informative* (NFN
falls with ln a_k, 1 - CKA and activation rise with ln b_l, each with noise: correlation ~0.9
with the true kind / layer value; the per-site factor is invisible to them), *misleading* (the
same with the signs flipped), or absent (`prior` then runs uniform probabilities). Each seed is a
fresh landscape; all methods see the same landscapes and the same noise by trial index.

Measure: hypervolume (analysis.pareto) of the trials so far on (metric max, params min, cost min),
taken on the noise-free metric, normalised with fixed bounds: metric ideal 0.9 / nadir 0.5,
params ideal 0 / nadir budget x full_params, cost ideal 0 / nadir = the budget; reference point
1.1 per objective. Per seed, H* = the best final hypervolume of any method; a run's "trials to
95%" is the first trial count at which it reaches 0.95 H*. Reported: the median over seeds (a run
that never gets there counts as more than --trials). Targets: informative prior <= 1/3 of random's
trials, misleading prior <= 1.5x random's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import optuna

from analysis.pareto import hypervolume, pareto_mask
from search.sampling.offline import Outcome, run_offline
from search.sampling.samplers import SamplerInputs
from spaces.budget import make_budget
from spaces.placement import Placement
from spaces.scores import PriorScores
from trainables.landscape import METRIC_HI, METRIC_LO, Landscape, model_space
from trainables.record import OBJECTIVES

SENSES = tuple(sense for _, sense in OBJECTIVES)  # metric max, params min, cost min
RANKS, R_REF, LR_MIN, LR_MAX = [2, 4, 8, 16], 8, 1e-3, 8e-3


def run(method: str, land: Landscape, scores: PriorScores | None, budget, trials: int, seed: int,
        prior_options: dict | None = None) -> tuple[list[float], list[float]]:
    """Hypervolume and best true metric after each trial of one search."""
    inputs = SamplerInputs(land.space, budget, tuple(RANKS), (LR_MIN, LR_MAX), trials, seed, scores)
    noise = np.random.default_rng([land.seed, 1])  # the same noise by trial index for every run
    truth = []  # the noise-free metric of each proposal, in proposal order

    def train(placement: Placement, lr: float) -> Outcome:
        m, params = land.metric(placement), placement.adapter_params(land.space)
        truth.append(m)
        return Outcome([m + noise.normal(0, 0.005)], params, params / budget.full_params)

    records = run_offline(method, inputs, train, prior_options=prior_options)
    bounds = ((METRIC_HI, 0.0, 0.0), (METRIC_LO, budget.max_params, budget.fraction))
    front, hv, best = [], [], []
    for m, r in zip(truth, records):
        points = front + [(m, r.trainable_params, r.compute_hours)]
        front = [q for q, on in zip(points, pareto_mask(points, SENSES)) if on]
        hv.append(hypervolume(front, SENSES, bounds=bounds))
        best.append(max(m, best[-1]) if best else m)
    return hv, best


def _value(text: str):
    """An option's value from the command line: a bool, an int, a float or the text itself."""
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def trials_to(curve: list[float], target: float) -> float:
    return next((i + 1 for i, h in enumerate(curve) if h >= target), math.inf)


def _fmt(x: float, trials: int) -> str:
    return f">{trials}" if math.isinf(x) else f"{x:g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=150)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--shape", choices=["minilm", "llama"], default="minilm")
    p.add_argument("--fills", type=float, nargs="+", default=None, help="ablation: prior fill levels")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="ablation: a prior sampler option (search.sampling.prior_sampler.PriorOptions: strength, floor, "
                   "n_prior, w0, tau, adaptive, learned, eta, epsilon, min_evidence, handover)")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = model_space(args.shape)
    budget = make_budget(space, args.budget, R_REF, min(RANKS))
    options = {k: _value(v) for k, v in (o.split("=", 1) for o in args.option)}
    if args.fills:
        options["fills"] = tuple(args.fills)
    n = args.trials
    print(f"{args.shape}: {space.describe()}\nbudget {args.budget}, ranks {RANKS}, r_ref {R_REF}, "
          f"{n} trials, seeds 0..{args.seeds - 1}" + (f", prior options {options}" if options else ""))
    print(f"hypervolume bounds (metric, adapter params, cost): ideal ({METRIC_HI}, 0, 0), nadir ({METRIC_LO}, "
          f"{budget.max_params:.0f}, {budget.fraction}); reference 1.1 per normalised objective")
    t0 = time.time()
    conditions = ("informative", "misleading", "none")
    runs: dict[tuple[str, str], list] = {}  # (condition, method) -> per seed (hv curve, best-metric curve)
    for seed in range(args.seeds):
        lands = {c: Landscape(space, seed, c) for c in conditions}  # same true values, other scores
        for method in ("random", "tpe"):  # blind to scores: one run serves every condition
            out = run(method, lands["none"], None, budget, n, seed)
            for c in conditions:
                runs.setdefault((c, method), []).append(out)
        for c in conditions:
            runs.setdefault((c, "prior"), []).append(run("prior", lands[c], lands[c].scores, budget, n, seed, options))
    print(f"\n{'scores':<12} {'method':<7} {'trials to 95% H*':>17}   {'HV / H* after 7 / 20 / ' + str(n):<28}"
          f" {'best metric after 7 / 20':<25} trials to 95% H* per seed")
    need = {}
    for c in conditions:
        best = [max(runs[(c, m)][s][0][-1] for m in ("prior", "tpe", "random")) for s in range(args.seeds)]
        for m in ("prior", "tpe", "random"):
            hvs = [r[0] for r in runs[(c, m)]]
            per_seed = [trials_to(h, 0.95 * b) for h, b in zip(hvs, best)]
            need[(c, m)] = statistics.median(per_seed)
            at = " / ".join(f"{statistics.median(h[k - 1] / b for h, b in zip(hvs, best)):.3f}" for k in (7, 20, n))
            bm = " / ".join(f"{statistics.median(r[1][k - 1] for r in runs[(c, m)]):.4f}" for k in (7, 20))
            print(f"{c:<12} {m:<7} {_fmt(need[(c, m)], n):>17}   {at:<28} {bm:<25} "
                  + " ".join(_fmt(x, n) for x in per_seed))
    print()
    for c, factor, label in (("informative", 1 / 3, "1/3 of"), ("misleading", 1.5, "1.5x")):
        prior, rand = need[(c, "prior")], need[(c, "random")]
        if math.isinf(rand):  # random needs more than n: the target holds if prior <= factor * n
            verdict = "met" if prior <= factor * n else f"undecided (run more than {n} trials)"
        else:
            verdict = "met" if prior <= factor * rand else "NOT met"
        print(f"target ({c}): prior {_fmt(prior, n)} <= {label} random's {_fmt(rand, n)} -> {verdict}")
    print(f"\n{time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
