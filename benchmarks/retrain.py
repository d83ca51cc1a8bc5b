"""Retrain placements outside the search: learning rates x seeds x ranks, to check what a search says.

    python -m benchmarks.retrain --placements all attention "r4 q[1-5] o[1-5]" --lrs 2.8e-3 8e-3 --seeds 0 1 2
    python -m benchmarks.retrain --placements all --ranks 2 4 8 16 --lrs 1e-3 3e-3 1e-2 3e-2 --rslora both

Where it sits: beside the search, for the claims it makes. Each row trains one placement with
`trainables.standalone.train_outside_search` (`trainables.train.train_placement`, the same code a
trial runs, no Ray), on the config's task, at
one learning rate, from one training seed (`train.seed`: head init, LoRA init, data order).
A placement is a baseline's name (all, attention, mlp, plop, cka, activation, plop_x_cka; fitted
to --budget with the config's ranks and the model's priors) or a placement key. `--ranks` retrains
the same sites at other uniform ranks; `--rslora both` runs plain and rsLoRA scaling.

Rows go to a JSON-lines file (--out; `TrainedPlacement.to_row` with the label, the scaling, the metric's
name and the config); rows already there are not trained again, so an interrupted
run continues where it stopped. The summary prints mean +- sd over seeds per placement, rank,
scaling and learning rate, and the best learning rate of each.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from analysis.direction import gain
from trainables import record as R


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resolve_placements(names: list[str], prep, cfg):
    """Baseline names and placement keys -> {label: Placement}."""
    from spaces.baselines import make_baselines
    from spaces.budget import make_budget
    from spaces.placement import Placement

    budget = make_budget(prep.space, cfg.search.budget, cfg.search.r_ref, min(cfg.search.ranks))
    baselines = {n: b.placement for b in make_baselines(prep.space, budget, list(cfg.search.ranks), prep.scores)
                 for n in (b.name, *b.aliases)}
    out = {}
    for name in names:
        out[name] = baselines[name] if name in baselines else Placement.from_key(name, prep.space)
    return out


def at_rank(placement, rank: int):
    from spaces.placement import Placement

    return Placement(placement.kinds, tuple(tuple(rank if r else 0 for r in row) for row in placement.ranks))


def train_rows(args) -> None:
    import torch

    from trainables.config import load_config
    from trainables.prepare import prepare
    from trainables.standalone import train_outside_search
    from trainables.train import Resources, TrialPlan
    from trainables.worker import cached_task

    torch.set_num_threads(args.threads)
    done = {(r["label"], r["rank"], r["rslora"], r["lr"], r["seed"]) for r in _rows(args.out)}
    scalings = {"plain": [False], "rslora": [True], "both": [False, True]}[args.rslora]
    base_cfg = load_config(args.config, args.overrides)
    prep = prepare(base_cfg.to_dict(), with_priors=any(p not in ("all", "attention", "mlp") for p in args.placements))
    placements = resolve_placements(args.placements, prep, base_cfg)
    data, tok = cached_task(base_cfg, prep.metric_name)
    jobs = []
    for label, placement in placements.items():
        for rank in args.ranks or [max(placement.rank_values())]:
            for rs in scalings:
                for lr in args.lrs:
                    for seed in args.seeds:
                        if (label, rank, rs, lr, seed) not in done:
                            jobs.append((label, at_rank(placement, rank), rank, rs, lr, seed))
    print(f"{len(jobs)} trainings to run ({len(done)} already in {args.out}); task: {prep.task}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, (label, placement, rank, rs, lr, seed) in enumerate(jobs, 1):
        cfg = load_config(args.config, [*args.overrides, f"train.rslora={str(rs).lower()}", f"train.seed={seed}"])
        run = train_outside_search(cfg, TrialPlan(placement, prep.space, lr, seed), data, tokenizer=tok,
                                   resources=Resources(n_cpus=args.threads))
        row = run.to_row(label=label, rslora=rs, metric_name=prep.metric_name, config=args.config,
                         overrides=args.overrides)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i}/{len(jobs)}] {label} r{rank} {'rs' if rs else 'plain'} lr {lr:g} seed {seed}: "
              f"{run.record.score if run.record.score is not None else run.record.error}  ({run.wall_s:.0f}s)",
              flush=True)


def summarise(path: Path) -> None:
    rows = [r for r in _rows(path)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["rank"], r["rslora"], r["lr"]), []).append(r)
    metric_name = (rows[0].get("metric_name") or "score") if rows else "score"
    sense = R.sense(metric_name)  # "best" learning rate in the metric's direction (lowest nll)
    failed = 0.0 if sense == "max" else math.inf  # a training that failed scores the worst
    print(f"\n| placement | rank | scaling | lr | {metric_name} mean +- sd | seeds |")
    print("| --- | --- | --- | --- | --- | --- |")
    best: dict[tuple, tuple] = {}
    for (label, rank, rs, lr), rs_rows in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1], kv[0][2], kv[0][3])):
        scores = [r["score"] if r["score"] is not None else failed for r in rs_rows]
        mean = statistics.mean(scores)
        sd = statistics.stdev(scores) if len(scores) > 1 else float("nan")
        print(f"| {label} | {rank} | {'rsLoRA' if rs else 'plain'} | {lr:g} | {mean:.4f} +- {sd:.4f} | {len(scores)} |")
        key = (label, rank, rs)
        if key not in best or gain(mean, sense) > gain(best[key][1], sense):
            best[key] = (lr, mean)
    print("\nbest learning rate per placement, rank and scaling:")
    for (label, rank, rs), (lr, mean) in sorted(best.items(), key=lambda kv: (str(kv[0][0]), kv[0][2], kv[0][1])):
        print(f"  {label} r{rank} {'rsLoRA' if rs else 'plain'}: lr {lr:g} ({mean:.4f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", action="append", default=None, help="config name(s) or path(s), layered")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    p.add_argument("--placements", nargs="+", default=["all"], help="baseline names or placement keys")
    p.add_argument("--ranks", nargs="+", type=int, default=None, help="retrain the same sites at these ranks")
    p.add_argument("--lrs", nargs="+", type=float, required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rslora", choices=["plain", "rslora", "both"], default="plain")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("outputs/retrain.jsonl"))
    p.add_argument("--summary-only", action="store_true", help="print the summary of --out, train nothing")
    args = p.parse_args()
    args.config = args.config or ["default"]
    if not args.summary_only:
        train_rows(args)
    summarise(args.out)


if __name__ == "__main__":
    main()
