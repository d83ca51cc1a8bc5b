"""Errors of the spaces layer that mean "this input cannot be used", each naming the fix (no torch).

Kept apart from the modules that raise them (`spaces.discovery`, `spaces.priors` import torch) so
that the driver can name them without importing torch.
"""

from __future__ import annotations


class DiscoveryError(ValueError):
    """The model has no sites this tool can adapt."""


class PriorsError(ValueError):
    """The calibration data cannot be scored as given."""


class PriorsWarning(UserWarning):
    """The priors were computed but one of them cannot be trusted as it stands (the message says which)."""
