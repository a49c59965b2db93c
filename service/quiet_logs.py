"""Quiet start-up and shutdown for ``samplerd``: one log line per real event.

Without this, start-up prints gRPC's ``fork_posix.cc ... skipping fork() handlers`` once per
process Ray forks, and Ray's warning that it set no SIGTERM handler (Ray starts in a worker
thread; the server handles SIGTERM itself); SIGTERM printed Ray's failure-signal stack dump
twice. All of it must be set before grpc or ray is imported: both read the environment once.
"""

from __future__ import annotations

import logging
import os

# setdefault: a user who asks for gRPC's or Ray's diagnostics still gets them.
_ENVIRONMENT = {
    "GRPC_VERBOSITY": "ERROR",
    # Ray's C++ core otherwise catches SIGTERM, prints a stack and aborts, instead of letting the
    # front end shut down gracefully.
    "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1",
}


class _DropRayMainThreadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


def quiet_third_party_logs() -> None:
    """Set the environment and log filters above (call before importing grpc or ray)."""
    for name, value in _ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    logging.getLogger("ray._private.worker").addFilter(_DropRayMainThreadWarning())
