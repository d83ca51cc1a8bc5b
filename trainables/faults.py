"""Fault injection for the failure tests: a test-only hook, off unless an environment variable
names a fault.

Where it sits: inside a trial (train). `LORA_SEARCH_TEST_FAULT=<fault>:<marker path>` makes the
one trial that first creates the marker file (O_CREAT | O_EXCL: atomic across processes) fault:
- `nan`: the loss becomes NaN at the first step (the trial fails and is not retried);
- `oom`: an out-of-memory error at the first step (fails, not retried);
- `kill`: the trial's worker process SIGKILLs itself after reporting epoch 1 (Ray retries it, up
  to search.max_failures times).
Every later trial, and the retry of the faulted one, finds the marker taken and runs normally. A
local Ray runtime's workers inherit the driver's environment, so the variable set for a search's
process reaches its trials. Nothing here runs when the variable is unset.
"""

from __future__ import annotations

import os
import signal

ENV = "LORA_SEARCH_TEST_FAULT"
FAULTS = ("nan", "oom", "kill")


class FaultError(ValueError):
    """The fault variable is malformed."""


def parse(text: str) -> tuple[str, str]:
    """'<fault>:<marker path>' -> (fault, marker)."""
    fault, sep, marker = text.partition(":")
    if fault not in FAULTS or not sep or not marker:
        raise FaultError(f"{ENV}={text!r}: expected <fault>:<marker path> with fault one of {', '.join(FAULTS)}")
    return fault, marker


class FaultHooks:
    """`trainables.train.TrainHooks` that inject one fault into the trial that claims the marker."""

    def __init__(self, fault: str, marker: str):
        self.fault, self.marker = fault, marker
        self._claimed: bool | None = None

    def claimed(self) -> bool:
        """True for the one trial that creates the marker first (decided once per trial)."""
        if self._claimed is None:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._claimed = False
            else:
                os.write(fd, f"{self.fault} injected in pid {os.getpid()}\n".encode())
                os.close(fd)
                self._claimed = True
        return self._claimed

    def on_loss(self, step, loss):
        if step == 0 and self.fault in ("nan", "oom") and self.claimed():
            if self.fault == "nan":
                return loss * float("nan")
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by "
                                         f"{ENV}=oom)")
        return loss

    def after_report(self, epoch: int) -> None:
        if epoch == 1 and self.fault == "kill" and self.claimed():
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-trial, after epoch 1's report


def from_environment() -> FaultHooks | None:
    text = os.environ.get(ENV, "")
    return FaultHooks(*parse(text)) if text else None
