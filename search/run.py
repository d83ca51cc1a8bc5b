"""Search for where to put LoRA adapters under a trainable-parameter budget.

    python search/run.py --budget 0.5                  # the offline default: MiniLM on chatterbot topics
    python search/run.py --config smoke --trials 2     # a tiny model on synthetic data, < 1 minute

Where it sits: the top. Load and validate the config; prepare the search on a Ray worker (load the
model, discover its sites, summarise the data); check the budget; then Ray Tune runs one LoRA
fine-tune per trial, Optuna proposes placements (repaired to the budget), ASHA stops weak ones on
the per-epoch score, and MLflow records every trial. At the end: a table of trials with the
Pareto-optimal ones marked, and the command that opens the MLflow UI.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from search.cli import add_common_args, choices_help, config_from_args, fail, given_keys, route_library_logs
from search.runtime.errors import UsageError
from trainables.choices import SAMPLERS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python search/run.py",
        description="Find which module kinds in which layers to adapt with LoRA, within a budget of "
        "trainable adapter parameters, and show the trade-off of accuracy, trainable params and "
        "GPU-hours. Every trial is logged to MLflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_args(p)
    p.add_argument("--trials", type=int, default=None, help="number of trials (placements to train); config: search.trials")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                   help=f"how Optuna proposes placements: {choices_help(SAMPLERS)}; config: search.sampler")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="GPUs reserved per trial, fractional allowed (0 = CPU); config: search.gpus_per_trial")
    p.add_argument("--cpus-per-trial", type=int, default=None, help="CPU cores per trial (also torch threads); config: search.cpus_per_trial")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<output-dir>/mlflow.db); config: tracking.uri")
    p.add_argument("--experiment", default=None, help="name of the search: MLflow experiment and Ray Tune experiment (default: <search.experiment>-<timestamp>)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster: auto, ray://HOST:10001 or HOST:6379 (default: start a local runtime); config: search.address")
    p.add_argument("--storage", default=None, help="where Ray Tune keeps the experiment: a shared filesystem path or a cloud URI on multi-node clusters (default: <output-dir>/ray_results); config: search.storage")
    p.add_argument("--study-storage", default=None, help="the Optuna study's database, a SQLAlchemy URL (sqlite:///path.db, postgresql://user@host/db); a restarted driver continues the study from it (default: sqlite:///<output-dir>/optuna.db); config: search.study_storage")
    p.add_argument("--max-compute-hours", "--gpu-hours", type=float, default=None, dest="max_compute_hours",
                   help="end the search once its trials have cost this much, in GPU-hours (CPU-core-hours when trials use no GPU); 0 = no cap; config: search.max_compute_hours")
    p.add_argument("--warm-start", default=None, metavar="EXPERIMENT",
                   help="start from the completed trials of an earlier search on the same model in the same tracking "
                   "store (they inform the sampler and are never retrained); config: search.warm_start")
    p.add_argument("--verbose", action="store_true",
                   help="print the libraries' log lines (Ray, MLflow, Optuna, warnings) here too; by default they "
                   "go to <output-dir>/library.log")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search (the one named by --experiment, else the latest in the output dir): finished trials are kept, unfinished ones rerun")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except UsageError as e:
        return fail(str(e))
    from search.phases.prepare import check_resume_args, ray_environment, starts_local_runtime

    output_dir = Path(args.output_dir)
    if args.resume:
        try:
            check_resume_args(cfg, given_keys(args), output_dir, args.experiment)
        except UsageError as e:
            return fail(str(e))
    # Ray reads its environment when first imported, and the driver imports it: import it inside.
    with ray_environment(starts_local_runtime(cfg, output_dir, args.experiment, args.resume)):
        from search.driver import run_search

        # The tool's lines only: the libraries' go to a file, artifact downloads show no progress bars.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        library_log = None if args.verbose else route_library_logs(output_dir)
        try:
            code = run_search(cfg, output_dir=output_dir, experiment=args.experiment, resume=args.resume)
        except UsageError as e:
            return fail(str(e))
        if library_log is not None and library_log.count:
            print(f"library messages: {library_log.count} in {library_log.baseFilename} (--verbose prints them here)")
        return code


if __name__ == "__main__":
    sys.exit(main())
