"""Session-wide fixtures: the test session's one local Ray instance.

Every test that needs Ray joins this instance: in-process tests through
:func:`ray_connected`, server processes with ``--ray-address``. It is started lazily (by the
first test that needs it) in this process with the dashboard off, and shut down when the
session ends. The deploy tests, which run first, exercise ``samplerd serve``'s embedded
default (its own local Ray) and stop that server before any other folder runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# On 2 shared cores Ray's default 30 s for a raylet to register, or for a new GCS to write its
# port file, can be too short (both seen: a server start failed after 30 s).
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """Compile the fused sampling kernels (samplerd.sampling.fused) once, before any server starts:
    numba caches them on disk, so the sampler actors of every server load them in well under
    a second instead of each compiling them (~30 s on a cold 2-core machine)."""
    import torch

    from samplerd.sampling import SamplingParams, sample

    sample(torch.zeros(2, 16), SamplingParams(), 0)


@pytest.fixture(scope="session")
def ray_connected() -> Iterator[str]:
    """This test process joined to the session's Ray instance; yields its GCS address."""
    import ray

    started = not ray.is_initialized()
    if started:
        # Logical CPUs: sampler and language-model actors reserve one each, and several
        # dispatchers or servers may hold actors at once; the real cores are shared anyway.
        ray.init(include_dashboard=False, num_cpus=16, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_connected: str) -> str:
    """GCS address of the session's Ray instance, for ``samplerd serve --ray-address``."""
    return ray_connected


@pytest.fixture(scope="module")
def server(ray_address: str) -> Iterator:
    """One ``samplerd serve`` for the module (one CPU worker, joined to the session's Ray
    instance), SERVING. Modules that need other options define their own ``server``."""
    from samplerd.service.bench.process import serving

    with serving("--workers", "1", "--device", "cpu", "--ray-address", ray_address) as process:
        yield process
