"""Benchmark: what Ray Tune + Optuna + MLflow add to each trial over a bare training loop.

    python -m benchmarks.trial_overhead --config smoke --trials 8
    python -m benchmarks.trial_overhead --config default --trials 6

First a real search (`search/run.py`, its own process, ASHA's grace set to every epoch so that no
trial is stopped early); then, in this process, a bare loop that trains the very same placements
with the same learning rates, in the same order: load the model, `train_placement`, save the
adapter, nothing else. Data is loaded and tokenised once in both.

Reported:
- per trial: the trial's span in the search (its MLflow run, created when Tune starts it and
  closed when Tune has its last result and adapter) against the bare loop's time for it;
- the trial phase: first trial start to last trial end (includes Tune's gaps between trials,
  Optuna's ask and tell, MLflow logging, the adapter upload) against the bare loop's sum. This is
  the per-trial overhead; the target is under 5% on the default config;
- end to end: the search process's wall time, which adds the fixed costs paid once (Python and
  Ray start, preparing the task and the priors on a worker, the report at the end).
The machine is shared and noisy: compare within one run, and rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_search(config: str, trials: int, out: Path, extra: list[str]) -> float:
    cfg_args = ["--config", config, "--trials", str(trials), "--output-dir", str(out), "--experiment", "overhead"]
    epochs = _epochs(config, extra)
    cmd = [sys.executable, str(ROOT / "search" / "run.py"), *cfg_args,
           "--set", f"search.asha_grace_epochs={epochs}", "--set", "search.max_concurrent_trials=1", *sum((["--set", s] for s in extra), [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the search failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def _epochs(config: str, extra: list[str]) -> int:
    from trainables.config import load_config

    return load_config([config], extra).train.epochs


def search_trials(out: Path) -> list[dict]:
    """The search's trials in start order: placement, lr, span (s) and in-trial training time."""
    from analysis.mlflow_read import find_parent, open_store, trial_runs

    client = open_store(f"sqlite:///{out / 'mlflow.db'}")
    trials = []
    for r in trial_runs(client, find_parent(client, experiment="overhead")):
        if r.data.tags.get("status") != "completed":
            sys.exit(f"trial {r.data.tags['trial_id']} ended {r.data.tags.get('status')}: the comparison needs "
                     "every trial to run all its epochs")
        with tempfile.TemporaryDirectory() as d:
            placement = json.loads(Path(client.download_artifacts(r.info.run_id, "placement.json", d)).read_text())
        trials.append({
            "key": r.data.params["placement_key"], "placement": placement, "lr": float(r.data.params["lr"]),
            "start": r.info.start_time / 1000, "end": r.info.end_time / 1000,
            "span_s": (r.info.end_time - r.info.start_time) / 1000, "train_s": r.data.metrics["wall_s"],
        })
    return trials


def bare_loop(config: str, extra: list[str], trials: list[dict]) -> list[float]:
    """Train each placement with nothing around it; seconds per trial."""
    import torch

    from spaces import Placement
    from spaces.space import ModelSpace
    from trainables.config import load_config
    from trainables.data import load_task
    from trainables.model import load_model, load_tokenizer, vocab_size
    from trainables.train import Resources, TokenizedTask, TrialPlan, resolve_metric, tokenize, train_placement

    cfg = load_config([config], extra)
    torch.set_num_threads(cfg.search.cpus_per_trial)
    task = load_task(cfg.data, vocab_size(cfg.model))
    tok = load_tokenizer(cfg.model)
    train = tokenize(task.train, tok, cfg.model.max_length)
    val = tokenize(task.val, tok, cfg.model.max_length)
    data = TokenizedTask(train, val, task.num_labels, resolve_metric(cfg, task))
    from spaces.discovery import discover

    space: ModelSpace = discover(load_model(cfg.model, task.num_labels, seed=cfg.train.seed, tokenizer=tok))
    times = []
    for t in trials:
        placement = Placement.from_dict(t["placement"]).checked(space)
        with tempfile.TemporaryDirectory() as save_dir:
            t0 = time.perf_counter()
            model = load_model(cfg.model, task.num_labels, seed=cfg.train.seed, tokenizer=tok)
            train_placement(cfg, TrialPlan(placement, space, t["lr"], cfg.train.seed), model, data, lambda m: None,
                            resources=Resources(n_cpus=cfg.search.cpus_per_trial), save_dir=save_dir)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="smoke", help="shipped config name or TOML path")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    p.add_argument("--keep", type=Path, default=None, help="keep the search's output folder here")
    args = p.parse_args()

    out = args.keep or Path(tempfile.mkdtemp(prefix="overhead-"))
    print(f"search: {args.trials} trials of --config {args.config} (no early stopping) ...", flush=True)
    wall = run_search(args.config, args.trials, out, args.overrides)
    trials = search_trials(out)
    print(f"bare loop: the same {len(trials)} placements ...", flush=True)
    bare = bare_loop(args.config, args.overrides, trials)

    print()
    print(f"{'placement':48} {'search span':>11} {'in trial':>9} {'bare':>7} {'overhead':>9}")
    for t, b in zip(trials, bare):
        print(f"{t['key'][:48]:48} {t['span_s']:10.2f}s {t['train_s']:8.2f}s {b:6.2f}s {(t['span_s'] - b) / t['span_s']:8.1%}")
    phase = max(t["end"] for t in trials) - min(t["start"] for t in trials)
    total_bare = sum(bare)
    per_trial = [(t["span_s"] - b) / t["span_s"] for t, b in zip(trials, bare)]
    print()
    print(f"median per-trial overhead (span vs bare): {statistics.median(per_trial):.1%}")
    print(f"trial phase: {phase:.1f} s in the search vs {total_bare:.1f} s bare -> overhead "
          f"{(phase - total_bare) / phase:.1%} of trial wall time ({(phase - total_bare) / len(trials):.2f} s per trial)")
    print(f"end to end: {wall:.1f} s for the search process -> fixed costs (start, prepare + priors, report) "
          f"{wall - phase:.1f} s")
    if not args.keep:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
