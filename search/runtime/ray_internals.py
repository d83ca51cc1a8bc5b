"""The search's two uses of Ray internals, kept in this one module because Ray (2.60) offers no
public way to do either; `tests/test_layers.py` allows them here and nowhere else, and
`tests/test_ray_internals.py` fails when Ray changes what they rely on.

- `ray_processes_apart`: Ray starts a local runtime's processes (GCS, raylet, and through the
  raylet the workers) in the driver's process group, and `ray.init` has no option to do otherwise.
  `timeout`, Slurm, systemd and Kubernetes send SIGTERM to the whole group: it killed them under
  the driver (`search.runtime.interrupts`).
- `token_refusal`: `ray.init` joining a cluster that requires a token, without one, retries for a
  minute and then says only that it could not connect; no public call asks the GCS whether it
  takes this driver's credentials.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


@contextmanager
def ray_processes_apart():
    """Inside (around the `ray.init` that starts a local runtime), the processes Ray starts get a
    session and process group of their own (`ray._private.services.ConsolePopen`, what Ray starts
    them with, is given `start_new_session`), so a signal to the driver's group reaches the driver
    alone. They stay bound to the driver: Ray has the kernel kill each one when the driver dies
    (PR_SET_PDEATHSIG, its "fate sharing"). Where the kernel cannot, Ray's reaper kills the driver's
    process group when the driver dies instead, so there they stay in it."""
    import ray._private.services as services
    import ray._private.utils as ray_utils

    popen = getattr(services, "ConsolePopen", None)
    if popen is None or sys.platform == "win32" or not ray_utils.detect_fate_sharing_support():
        yield  # Windows: Ray already starts them in a new process group
        return

    class _Apart(popen):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = _Apart
    try:
        yield
    finally:
        services.ConsolePopen = popen


def token_refusal(address: str, timeout_ms: int = 5000) -> str | None:
    """Ray's reason, in one line, when the GCS at HOST:PORT `address` refuses this driver's
    credentials (no token, or the wrong one), else None (it took them, or any other failure, which
    `ray.init` reports itself). One call through Ray's own GCS client (`ray._raylet.InnerGcsClient`),
    0.1 s when the GCS answers; Ray's C++ client logs each refusal on stderr, which is silenced for it."""
    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        InnerGcsClient.standalone(address, None, timeout_ms)  # (address, cluster id, timeout in ms)
    except AuthenticationError as e:
        return " ".join(str(e).split())[:160]
    except Exception:  # noqa: BLE001 - anything else is ray.init's to report
        return None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return None
