"""How much of a placement's seed spread the validation split itself causes.

    python -m benchmarks.split_noise --placements all attention --lr 7.02e-3 --seeds 0 1 2

Where it sits: beside the search, for the default task's claim that its validation split is
large enough. Each (placement, training seed) is trained once with
`trainables.standalone.train_outside_search` (`trainables.train.train_placement`, the code a trial
runs, no Ray); its predictions on the validation split are then resampled with
replacement (--resamples times, stratified by label so every class keeps its size) and the metric
recomputed. The sd over resamples is the noise a split of this size adds to one trained model;
the sd over training seeds is what a user sees between runs. Both are printed per placement, in
points of the config's metric, with the analytic binomial value beside the bootstrap one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
from pathlib import Path

import numpy as np


class _CPU:
    """What `trainables.train.evaluate` needs of an accelerator, on the CPU."""

    device = "cpu"

    @staticmethod
    def autocast():
        return contextlib.nullcontext()


def metric(preds: np.ndarray, labels: np.ndarray, name: str, num_labels: int) -> float:
    """The trial's own metric (`trainables.train.classification_metrics`) of these predictions."""
    from trainables.train import classification_metrics

    return classification_metrics(preds.tolist(), labels.tolist(), num_labels)[name]


def bootstrap_sd(preds, labels, name: str, num_labels: int, resamples: int, seed: int = 0) -> float:
    """sd of the metric over stratified resamples of the split (each label keeps its count)."""
    rng = np.random.default_rng(seed)
    by_label = [np.flatnonzero(labels == c) for c in range(num_labels)]
    values = []
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_label if len(ix)])
        values.append(metric(preds[idx], labels[idx], name, num_labels))
    return float(np.std(values, ddof=1))


def binomial_sd(preds, labels, name: str, num_labels: int) -> float:
    """The same from the binomial variance of each class's recall (or of the accuracy)."""
    if name == "accuracy":
        p = metric(preds, labels, name, num_labels)
        return math.sqrt(p * (1 - p) / len(labels))
    var = 0.0
    classes = [c for c in range(num_labels) if (labels == c).any()]
    for c in classes:
        n = int((labels == c).sum())
        r = float((preds[labels == c] == c).mean())
        var += r * (1 - r) / n
    return math.sqrt(var) / len(classes)


def main() -> None:
    import torch

    from benchmarks.retrain import resolve_placements
    from trainables.config import load_config
    from trainables.model import load_model
    from trainables.prepare import prepare
    from trainables.standalone import train_outside_search
    from trainables.train import Resources, TrialPlan, evaluate
    from trainables.worker import cached_task

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", action="append", default=None, help="config name(s) or path(s), layered")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--placements", nargs="+", default=["all", "attention"], help="baseline names or placement keys")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON summary")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config or ["default"], args.overrides)
    prep = prepare(cfg.to_dict())
    data, tok = cached_task(cfg, prep.metric_name)
    labels = np.asarray(data.val.labels)
    name = prep.metric_name
    rows = []
    for label, placement in resolve_placements(args.placements, prep, cfg).items():
        for seed in args.seeds:
            model = load_model(cfg.model, data.num_labels, seed=seed, tokenizer=tok)
            run = train_outside_search(cfg, TrialPlan(placement, prep.space, args.lr, seed), data, model=model,
                                       resources=Resources(n_cpus=args.threads))
            if run.record.error:
                raise SystemExit(f"{label} seed {seed}: the training failed: {run.record.error}")
            # PEFT injected the adapters into `model` in place: it predicts as the trained trial did.
            preds = np.asarray(evaluate(model, data.val, cfg.train.eval_batch_size, _CPU()))
            score = metric(preds, labels, name, data.num_labels)
            if not math.isclose(score, run.record.score, abs_tol=1e-9):
                raise SystemExit(f"{label} seed {seed}: re-evaluated {score} != the trial's {run.record.score}")
            rows.append({**run.to_row(placement=label),
                         "bootstrap_sd": bootstrap_sd(preds, labels, name, data.num_labels, args.resamples, seed),
                         "binomial_sd": binomial_sd(preds, labels, name, data.num_labels)})
            print(f"{label} seed {seed}: {name} {score:.4f}; split noise sd {100 * rows[-1]['bootstrap_sd']:.2f} "
                  f"points (bootstrap), {100 * rows[-1]['binomial_sd']:.2f} (binomial)", flush=True)
    print(f"\n{len(labels)} validation examples; {name}; lr {args.lr:g}; points = 0.01 of the metric")
    print("| placement | seeds | mean | sd over training seeds | split noise sd (bootstrap, mean over seeds) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label in dict.fromkeys(r["placement"] for r in rows):
        rs = [r for r in rows if r["placement"] == label]
        scores = [r["score"] for r in rs]
        sd = statistics.stdev(scores) if len(scores) > 1 else float("nan")
        print(f"| {label} | {len(rs)} | {statistics.fmean(scores):.3f} | {100 * sd:.1f} | "
              f"{100 * statistics.fmean(r['bootstrap_sd'] for r in rs):.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"lr": args.lr, "metric": name, "n_val": len(labels), "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
