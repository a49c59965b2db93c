"""Joining a Ray cluster, or starting a local one in this process, and leaving it again."""

from __future__ import annotations

import os

import ray


def connect(ray_address: str | None, num_cpus: int | None) -> bool:
    """Make sure this process is connected to Ray; return True when this call started it.

    With no address a local instance is started in-process (no dashboard, worker logs not
    forwarded) with ``num_cpus`` logical CPUs. A process already connected (a test session,
    an embedding application) is joined as it is, and left running by :func:`disconnect`.
    """
    if ray.is_initialized():
        return False
    # Ray's core installs a failure-signal handler that catches SIGTERM, prints a stack and ends
    # the process with SIGABRT, defeating the front end's graceful shutdown on SIGTERM.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    ray.init(
        # "local": start a new instance; None would join any instance already running here.
        address=ray_address or "local",
        include_dashboard=False,
        num_cpus=None if ray_address else num_cpus,
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    return True


def disconnect(started: bool) -> None:
    """Shut Ray down if :func:`connect` started it; otherwise leave it running."""
    if started and ray.is_initialized():
        ray.shutdown()


def cluster_gpus() -> float:
    """How many GPUs the connected cluster has (0 when none)."""
    return float(ray.cluster_resources().get("GPU", 0.0))
