"""Ray actors that run the sampler suite; the only package of samplerd that imports ray.

- :mod:`workers.batch`: what a batch and its answer look like on the wire;
- :mod:`workers.sampler_actor`: the sampler actor, batched sampling on one device;
- :mod:`workers.pool`: N sampler actors, least-loaded routing, death detection, replacement;
- :mod:`workers.socket_link`: batches over a link to each actor (Unix socket and shared-memory
  arena on the front end's node, TCP to other nodes), beside Ray;
- :mod:`workers.cluster`: joining or starting Ray.
"""

from workers.batch import BatchOutput, GroupResult, RowError, RowGroup, stack_group, take_job
from workers.pool import (
    BatchFailedError,
    NoLiveWorkerError,
    PoolConfig,
    SamplerPool,
    WorkerInfo,
    WorkerState,
)
from workers.region import RegionError, RegionSlice

__all__ = [
    "BatchFailedError",
    "BatchOutput",
    "GroupResult",
    "NoLiveWorkerError",
    "PoolConfig",
    "RegionError",
    "RegionSlice",
    "RowError",
    "RowGroup",
    "SamplerPool",
    "WorkerInfo",
    "WorkerState",
    "stack_group",
    "take_job",
]
