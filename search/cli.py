"""Command-line plumbing shared by the scripts (`run.py`, `score.py`, `report.py`, `deploy.py`).

Bad input ends in one line on stderr, `error: <what> : <fix>`, and exit code 2: no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from search.runtime.errors import UsageError
from search.runtime.workspace import LIBRARY_LOG
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


# The libraries whose log lines are theirs, not the tool's: Ray's (token authentication, GCS),
# MLflow's (creating and migrating its tables), Alembic's (the migrations themselves), Optuna's, and
# Python warnings raised inside any of them.
LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "optuna", "py.warnings")


class LibraryLog(logging.FileHandler):
    """An appending log file made, with its folder, on the first message only: a search refused
    before any library speaks leaves nothing behind. `count`: the messages written this run."""

    def __init__(self, path: Path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.count = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """A line the file cannot take (its disk is full) is dropped: logging's own handler would
        print a traceback per line on the terminal; the search says what failed in its own line."""
        self.count -= 1


def route_library_logs(output_dir: Path) -> LibraryLog:
    """Send the libraries' log lines (`LIBRARY_LOGGERS`) to <output_dir>/library.log instead of the
    terminal, so that a user reads the tool's own lines. Ray and MLflow set up their loggers when
    first imported, so both are imported here first; call it where importing Ray is safe (inside
    `search.phases.prepare.ray_environment`). Returns the handler (its `count`, `baseFilename`)."""
    import mlflow  # noqa: F401  (imported for its logger set-up, which this then replaces)
    import ray  # noqa: F401

    handler = LibraryLog(output_dir / LIBRARY_LOG)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    logging.captureWarnings(True)
    return handler


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
    return search_config(args.config or ["default"], overrides)


def search_config(files: list[str], overrides: list[str]):
    """Config files layered left to right, then `section.key=value` overrides (`--set`), validated;
    every problem in one UsageError (the line the scripts print)."""
    try:
        return load_config(files, overrides)
    except ConfigError as e:
        raise UsageError("; ".join(e.problems)) from None


def given_keys(args: argparse.Namespace) -> dict[str, str]:
    """The config keys the command line sets, each with how it was given (`--config NAME`, `--set`
    or the named flag, without its value): what `--resume` checks against the stored search."""
    import tomllib

    from trainables.config import resolve_config_path

    given: dict[str, str] = {}
    for name in args.config or []:  # already read once by `config_from_args`: valid TOML
        data = tomllib.loads(resolve_config_path(name).read_text(encoding="utf-8"))
        for section, table in data.items():
            for key in table if isinstance(table, dict) else ():
                given[f"{section}.{key}"] = f"--config {name}"
    for text in args.overrides:
        given[text.split("=", 1)[0].strip()] = "--set"
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            given[key] = f"--{attr.replace('_', '-')}"  # the value is shown from the config, passwords masked
    return given
