"""Ctrl-C and SIGTERM end a search the same way: finished trials kept, unfinished ones marked KILLED,
the `--resume` command printed, exit code 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM).

Where it sits: around the driver (`search.driver`). Slurm and Kubernetes stop jobs with SIGTERM; a
person with Ctrl-C. Left alone, neither ends a search well: Ray Tune answers Ctrl-C inside
`tuner.fit()` with its own handler and returns as if the experiment had finished, and the SIGTERM
handler `ray.init` installs calls `sys.exit` wherever the driver happens to be (then Ray's threads
abort the process: exit 134). So one handler serves both signals, for the whole driver:
- inside a Tune phase (`tune_phase`), the first signal asks Tune to stop the way its own Ctrl-C
  does, through SIGUSR1, which Tune also listens to: it stops the trials, writes a last snapshot of
  the experiment and `fit()` returns; `signum` then says the search was stopped. A second signal
  raises KeyboardInterrupt at once;
- anywhere else (preparing, the learning-rate probe, publishing the frontier): KeyboardInterrupt.
Tune's own SIGINT handler is switched off (`TUNE_DISABLE_SIGINT_HANDLER`), and `install` runs
again after `ray.init` to take SIGTERM back.
`timeout`, Slurm, systemd and Kubernetes send SIGTERM to the driver's whole process group: the
processes of the search's local Ray runtime start in a session of their own
(`search.runtime.ray_internals.ray_processes_apart`), so that the signal reaches the driver alone and it ends the search as above.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stop_requested = False  # a signal reached this process's driver (`stop_requested`)


def stop_requested() -> bool:
    """Whether a signal has stopped the search this process drives: the tracker then leaves the
    trials Tune stopped to the driver, which marks them KILLED."""
    return _stop_requested


class Interrupts:
    def __init__(self):
        self.signum: int | None = None  # the first signal received
        self._in_tune = False
        self._previous: dict[int, object] = {}
        self._env: str | None = None

    def __enter__(self) -> "Interrupts":
        global _stop_requested
        _stop_requested = False
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        global _stop_requested
        _stop_requested = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here (again after `ray.init`, which sets its own SIGTERM handler)."""
        for sig in SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    @contextmanager
    def tune_phase(self):
        """A `tuner.fit()` runs inside: a signal stops it through Tune's own graceful stop."""
        self._in_tune = True
        try:
            yield
        finally:
            self._in_tune = False
            # Tune leaves its SIGUSR1 handler behind after a fit: a signal before the next fit must
            # not go to a Tune run that has ended.
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    def _handle(self, signum, frame) -> None:
        global _stop_requested
        first = self.signum is None
        if first:
            self.signum = signum
            _stop_requested = True
        tune_listens = signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if first and self._in_tune and tune_listens:
            print(f"\n{signal.Signals(signum).name}: stopping the trials (Ray Tune saves the search's state); "
                  "send it again to stop at once", flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        raise KeyboardInterrupt

