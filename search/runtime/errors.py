"""The search's own error type for the user's mistakes: one line naming the value and the fix.

Where it sits: everywhere on the driver side. The checks, the driver and the scripts raise it; the
scripts turn it into `error: <message>` on stderr and exit code 2 (`search.cli.fail`). Errors of
the lower layers that are the user's to fix (`trainables.config.ConfigError`,
`trainables.data.DataError`, `trainables.model.ModelError`, `spaces.budget.BudgetError`,
`spaces.errors.DiscoveryError` and `PriorsError`) become a `UsageError` where they
cross into the driver; anything else keeps its traceback.
"""

from __future__ import annotations

import errno

from spaces.budget import BudgetError
from spaces.errors import DiscoveryError, PriorsError
from trainables.config import ConfigError
from trainables.data import DataError
from trainables.model import ModelError


class UsageError(Exception):
    """Bad input from the user; the message names the value and the fix."""


def user_error_types() -> tuple[type[Exception], ...]:
    """The lower layers' error types that mean "the user's input is wrong"."""
    return (ConfigError, DataError, ModelError, BudgetError, DiscoveryError, PriorsError)


# How a full disk or a read-only store shows through the layers: an OSError's errno (Python, pyarrow),
# else SQLite's message inside SQLAlchemy's and MLflow's exceptions.
_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_READ_ONLY_ERRNOS = {errno.EROFS: "read-only file system"}
_FULL_SIGNS = ("database or disk is full", "no space left on device", "disk quota exceeded")
_READ_ONLY_SIGNS = ("attempt to write a readonly database", "read-only file system", "readonly database")


def storage_problem(error: BaseException) -> tuple[str, str] | None:
    """("full" or "read-only", the cause in a few words) when `error`, or an exception it was raised
    from (its chain), says the disk is full or the store cannot be written; else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        number = getattr(error, "errno", None)
        if number in _FULL_ERRNOS:
            return "full", _FULL_ERRNOS[number]
        if number in _READ_ONLY_ERRNOS:
            return "read-only", _READ_ONLY_ERRNOS[number]
        text = str(error).lower()
        for kind, signs in (("full", _FULL_SIGNS), ("read-only", _READ_ONLY_SIGNS)):
            sign = next((s for s in signs if s in text), None)
            if sign:
                return kind, sign
        error = error.__cause__ or error.__context__
    return None
