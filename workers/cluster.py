"""Joining a Ray cluster, or starting a local one in this process, and leaving it again."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray

_log = logging.getLogger(__name__)


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
    if ray_address is None:
        # Ray waits 30 s for a new local GCS and raylet to come up; on 2 busy cores that has run
        # out (the GCS port file never appeared). Ray's own comments suggest 120 s where slow.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
        os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    try:
        _init(ray_address, num_cpus)
    except Exception as error:
        if ray_address is not None:
            raise
        # A local start that failed half-way (seen: the new GCS never wrote its port file):
        # once more, from scratch.
        _log.warning("starting a local Ray instance failed (%s); starting it once more", error)
        ray.shutdown()
        _init(ray_address, num_cpus)
    return True


def _init(ray_address: str | None, num_cpus: int | None) -> None:
    ray.init(
        # "local": start a new instance; None would join any instance already running here.
        address=ray_address or "local",
        include_dashboard=False,
        num_cpus=None if ray_address else num_cpus,
        ignore_reinit_error=True,
        log_to_driver=False,
    )


def disconnect(started: bool) -> None:
    """Shut Ray down if :func:`connect` started it; otherwise leave it running."""
    if started and ray.is_initialized():
        ray.shutdown()


async def resolve(ref: Any, timeout_s: float) -> Any:
    """Await one ObjectRef for at most ``timeout_s`` (``asyncio.TimeoutError`` after)."""

    async def value() -> Any:  # a coroutine, so asyncio.wait_for can time it out
        return await ref

    return await asyncio.wait_for(value(), timeout_s)


def cluster_gpus() -> float:
    """How many GPUs the connected cluster has (0 when none)."""
    return float(ray.cluster_resources().get("GPU", 0.0))
