"""Command-line plumbing shared by the scripts (`run.py`, `score.py`, `report.py`, `deploy.py`).

Bad input ends in one line on stderr, `error: <what> : <fix>`, and exit code 2: no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from search.runtime.errors import UsageError
from trainables.choices import describe, one_of
from trainables.config import ConfigError, load_config, shipped_config_names


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def mlflow_client_defaults() -> None:
    """An unreachable MLflow server fails in seconds, not after MLflow's default minutes of retries;
    no progress bars on artifact downloads (environment defaults the user can override)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def choices_help(choices: dict[str, str]) -> str:
    """Every name of an enumeration of `trainables.choices` with its description, for a flag's help
    (argparse reads `%` in help text as a format)."""
    return describe(choices).replace("%", "%%")


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=float, default=None,
                   help="largest allowed ratio of a placement's LoRA parameters to those of adapting every site at search.r_ref, in (0, 1]; config: search.budget")
    p.add_argument("--config", action="append", default=None, metavar="NAME_OR_PATH",
                   help="config file(s) layered left to right over the defaults: a .toml path or a shipped name "
                   f"({one_of(shipped_config_names())}); repeatable")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override one config value, e.g. --set train.epochs=2; repeatable")
    p.add_argument("--output-dir", default="outputs", help="where results, the MLflow store and Ray's files go")
    p.add_argument("--seed", type=int, default=None, help="sampler seed; config: search.seed")


# Named flags map onto config keys; they apply after files and --set.
_FLAG_KEYS = {
    "budget": "search.budget",
    "trials": "search.trials",
    "sampler": "search.sampler",
    "gpus_per_trial": "search.gpus_per_trial",
    "cpus_per_trial": "search.cpus_per_trial",
    "tracking_uri": "tracking.uri",
    "seed": "search.seed",
    "address": "search.address",
    "storage": "search.storage",
    "study_storage": "search.study_storage",
    "max_compute_hours": "search.max_compute_hours",
    "warm_start": "search.warm_start",
}


def config_from_args(args: argparse.Namespace):
    """The layered config: files, then --set, then the named flags; problems as one UsageError."""
    overrides = list(args.overrides)
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    try:
        return load_config(args.config or ["default"], overrides)
    except ConfigError as e:
        raise UsageError("; ".join(e.problems)) from None
