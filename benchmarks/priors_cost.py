"""Benchmark: the cost of the three priors vs one plain no-grad forward pass, and vs one trial.

    python -m benchmarks.priors_cost                 # the default model and task
    python -m benchmarks.priors_cost --config smoke

Both passes run over the same calibration batches, interleaved, `--repeats` times each; the
median of each is reported, so machine noise hits both alike (compare the ratio, not seconds).
Target (docs/methods.md): priors <= 1.25x the plain forward.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=None)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-trial", action="store_true", help="skip timing one default trial")
    args = p.parse_args()

    import torch

    from spaces import Placement
    from spaces.discovery import discover
    from spaces.priors import compute_priors
    from trainables.config import load_config
    from trainables.data import load_task
    from trainables.model import load_model, load_tokenizer, vocab_size
    from trainables.prepare import calibration_batches
    from trainables.train import Resources, TokenizedTask, TrialPlan, resolve_metric, tokenize, train_placement

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config or ["default"], args.overrides)
    task = load_task(cfg.data, vocab_size(cfg.model))
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, task.num_labels, tokenizer=tok).eval()
    space = discover(model)
    train = tokenize(task.train, tok, cfg.model.max_length)
    batches = calibration_batches(cfg, train)
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]

    def plain():
        with torch.no_grad():
            for b in inputs:
                model(**b)

    def priors():
        compute_priors(model, space, inputs, pooling=cfg.priors.pooling)

    plain(), priors()  # warm-up: kernels and allocator
    t_plain, t_priors = [], []
    for _ in range(args.repeats):
        for fn, out in ((plain, t_plain), (priors, t_priors)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    mp, mq = statistics.median(t_plain), statistics.median(t_priors)
    n_tok = sum(int(b["attention_mask"].sum()) for b in inputs)
    print(f"model {cfg.model.name}: {space.describe()}")
    print(f"calibration: {sum(len(b['input_ids']) for b in inputs)} examples, {n_tok} tokens, "
          f"{args.threads} threads, {args.repeats} repeats (median)")
    print(f"plain no-grad forward: {mp * 1000:8.1f} ms")
    print(f"all three priors:      {mq * 1000:8.1f} ms")
    print(f"ratio priors / forward: {mq / mp:.3f}  (target <= 1.25)")
    if not args.no_trial:
        val = tokenize(task.val, tok, cfg.model.max_length)
        t0 = time.perf_counter()
        data = TokenizedTask(train, val, task.num_labels, resolve_metric(cfg, task))
        train_placement(cfg, TrialPlan(Placement.full(space, cfg.search.r_ref), space, 2e-3), model, data,
                        lambda m: None, resources=Resources(n_cpus=args.threads))
        trial_s = time.perf_counter() - t0
        print(f"one trial (every site at r={cfg.search.r_ref}, {cfg.train.epochs} epochs): {trial_s:.1f} s; "
              f"priors = {mq / trial_s * 100:.2f}% of a trial")


if __name__ == "__main__":
    main()
