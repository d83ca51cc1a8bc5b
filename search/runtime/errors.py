"""The search's own error type for the user's mistakes: one line naming the value and the fix.

Where it sits: everywhere on the driver side. The checks, the driver and the scripts raise it; the
scripts turn it into `error: <message>` on stderr and exit code 2 (`search.cli.fail`). Errors of
the lower layers that are the user's to fix (`trainables.config.ConfigError`,
`trainables.data.DataError`, `trainables.model.ModelError`, `spaces.budget.BudgetError`,
`spaces.errors.DiscoveryError` and `PriorsError`) become a `UsageError` where they
cross into the driver; anything else keeps its traceback.
"""

from __future__ import annotations

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
