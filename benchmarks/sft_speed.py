"""Benchmark: an SFT trial's training speed against a bare PEFT loop, and what generation costs.

    python -m benchmarks.sft_speed --config sft --threads 1          # SmolLM2-135M, the shipped SFT task
    python -m benchmarks.sft_speed --config sft_smoke --repeats 3    # the tiny decoder, seconds
    python -m benchmarks.sft_speed --config sft_smoke --device cuda  # on a GPU, in the trial's precision

Where it sits: beside the search, for the SFT task's speed targets. The same placement (--placement,
a baseline name or key) is trained on the same model, data and learning rate two ways, alternating
(bare, trial, bare, trial, ...) so that a change in the machine's load hits both:

- **trial**: `trainables.train.train_placement`, the function a search's trial runs (no Ray): its
  optimizer, schedule, loss check, per-epoch evaluation and adapter save. Its training time is its
  wall time minus the time spent in evaluation, which is timed apart: teacher-forced scoring (NLL,
  token accuracy) and greedy generation for exact match (`trainables.sft`);
- **bare**: what a user would write by hand with PEFT: `get_peft_model` with the same
  `LoraConfig`, AdamW, then forward, backward, step over the same batches for the same epochs;
  nothing else, under the autocast of the trial's `train.precision` (`auto`: bf16 on a GPU that
  has it, fp32 on the CPU), on the trial's device.

Printed: training examples per second of each (epochs x training pairs / training time), their
ratio (target: the trial at least 0.9x the bare loop), and the share of the trial's wall time spent
evaluating, generation apart. Compare within one run; the machine's other load moves both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "docs" / "data"


def bare_loop(cfg, model, data, placement, space, lr: float, seed: int, device: str = "cpu") -> float:
    """Seconds to wrap, train and save `placement` with plain PEFT + AdamW over the trial's batches."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainables.lora import lora_config_kwargs
    from trainables.train import _precision

    torch.manual_seed(seed)
    t0 = time.perf_counter()  # from wrapping to the saved adapter, as the trial's wall time counts
    peft_model = get_peft_model(model, LoraConfig(**lora_config_kwargs(placement, space, cfg)))  # the same adapters
    peft_model.to(device)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=cfg.train.weight_decay)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(_precision(cfg.train.precision))  # the trial's
    gen = torch.Generator().manual_seed(seed)
    peft_model.train()
    for _ in range(cfg.train.epochs):
        for _, batch in data.train.iterate(cfg.train.batch_size, gen):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                loss = peft_model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    with tempfile.TemporaryDirectory() as save_dir:
        peft_model.save_pretrained(save_dir)
    return time.perf_counter() - t0


@contextlib.contextmanager
def timed_evaluation(times: dict):
    """Time `trainables.sft`'s teacher-forced scoring and its generation while the block runs."""
    import trainables.sft as sft

    originals = {"teacher_forced": sft.teacher_forced, "exact_match": sft.exact_match}

    def timing(name):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        return run

    for name in originals:
        setattr(sft, name, timing(name))
    try:
        yield times
    finally:
        for name, fn in originals.items():
            setattr(sft, name, fn)


def product_trial(cfg, model, data, placement, space, lr: float, seed: int, device: str = "cpu") -> dict:
    """The trial's wall time and its evaluation's parts, in seconds."""
    from trainables.train import Resources, TrialPlan, train_placement

    times: dict = {}
    with tempfile.TemporaryDirectory() as save_dir, timed_evaluation(times):
        t0 = time.perf_counter()
        train_placement(cfg, TrialPlan(placement, space, lr, seed), model, data, lambda r: None,
                        resources=Resources(n_gpus=0.0 if device == "cpu" else 1.0, n_cpus=1), save_dir=save_dir)
        wall = time.perf_counter() - t0
    evaluating = times.get("teacher_forced", 0.0) + times.get("exact_match", 0.0)
    return {"wall_s": wall, "train_s": wall - evaluating, "teacher_forced_s": times.get("teacher_forced", 0.0),
            "generation_s": times.get("exact_match", 0.0)}


def main() -> None:
    import torch

    from benchmarks.retrain import resolve_placements
    from trainables.config import load_config
    from trainables.model import load_task_model
    from trainables.prepare import prepare
    from trainables.worker import cached_task

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", action="append", default=None, help="config name(s) or path(s), layered")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--placement", default="all", help="a baseline name or a placement key")
    p.add_argument("--lr", type=float, default=None, help="default: the calibrated rate of the sft-bbc table, else 1e-3")
    p.add_argument("--repeats", type=int, default=1, help="pairs of (bare, trial) runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: both loops on the GPU, the trial as a trial with one GPU runs")
    p.add_argument("--out", type=Path, default=None, help="JSON summary")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); use --device cpu")
    cfg = load_config(args.config or ["sft"], args.overrides)
    if cfg.task.kind != "sft":
        raise SystemExit(f"--config {' '.join(args.config or ['sft'])} is task.kind {cfg.task.kind!r}; this "
                         "benchmark times SFT trials: use --config sft or sft_smoke")
    meta = DATA / "table-sft-bbc.meta.json"
    lr = args.lr or (json.loads(meta.read_text())["lr"] if meta.exists() and "sft" in (args.config or ["sft"]) else 1e-3)
    prep = prepare(cfg.to_dict())
    data, tok = cached_task(cfg, prep.metric_name)
    placement = resolve_placements([args.placement], prep, cfg)[args.placement]
    n_train = len(data.train.ids)
    print(f"{n_train} training pairs x {cfg.train.epochs} epochs, batch {cfg.train.batch_size}; "
          f"{len(data.val.ids)} validation pairs; {args.placement} = {placement.key}; lr {lr:g}; "
          f"{args.threads} thread(s)" + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
          flush=True)
    bare, trials = [], []
    for i in range(args.repeats):
        model = load_task_model(cfg, 0, seed=args.seed, tokenizer=tok)
        bare.append(bare_loop(cfg, model, data, placement, prep.space, lr, args.seed, args.device))
        print(f"repeat {i}: bare PEFT loop {bare[-1]:.1f} s", flush=True)
        model = load_task_model(cfg, 0, seed=args.seed, tokenizer=tok)
        trials.append(product_trial(cfg, model, data, placement, prep.space, lr, args.seed, args.device))
        t = trials[-1]
        print(f"repeat {i}: trial {t['wall_s']:.1f} s = training {t['train_s']:.1f} + teacher-forced scoring "
              f"{t['teacher_forced_s']:.1f} + generation {t['generation_s']:.1f}", flush=True)
    examples = n_train * cfg.train.epochs
    bare_s = statistics.median(bare)
    train_s = statistics.median(t["train_s"] for t in trials)
    wall_s = statistics.median(t["wall_s"] for t in trials)
    gen_s = statistics.median(t["generation_s"] for t in trials)
    tf_s = statistics.median(t["teacher_forced_s"] for t in trials)
    summary = {"config": args.config or ["sft"], "overrides": args.overrides, "placement": placement.key, "lr": lr,
               "threads": args.threads, "device": args.device, "train_pairs": n_train, "epochs": cfg.train.epochs,
               "val_pairs": len(data.val.ids), "bare_s": bare, "trials": trials,
               "bare_examples_per_s": examples / bare_s, "trial_examples_per_s": examples / train_s,
               "ratio": bare_s / train_s, "generation_share": gen_s / wall_s, "evaluation_share": (gen_s + tf_s) / wall_s}
    print(f"\ntraining examples per second (median of {args.repeats}): trial {summary['trial_examples_per_s']:.2f}, "
          f"bare PEFT loop {summary['bare_examples_per_s']:.2f}: the trial trains at {summary['ratio']:.2f}x the bare "
          f"loop (target >= 0.9x)")
    print(f"evaluation takes {100 * summary['evaluation_share']:.0f}% of the trial's wall time; generation (exact "
          f"match on {len(data.val.ids)} pairs at the last epoch) {100 * summary['generation_share']:.0f}%")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
