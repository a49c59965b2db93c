"""Ray actors that run the sampler suite; the only package of samplerd that imports ray.

- :mod:`workers.batch`: what a batch and its answer look like on the wire;
- :mod:`workers.sampler_actor`: the sampler actor, batched sampling on one device;
- :mod:`workers.path_steps`: path-aware top-p steps (``SampleStream``) on the sampler actor;
- :mod:`workers.lm_actor`, :mod:`workers.lm_replicas`: the language-model actors of ``Generate``;
- :mod:`workers.pool`: N sampler actors, least-loaded routing, death detection, replacement;
- :mod:`workers.socket_link`: batches over a link to each actor (Unix socket and shared-memory
  arena on the front end's node, TCP to other nodes), beside Ray;
- :mod:`workers.cluster`: joining or starting Ray.
"""

from workers.batch import (
    BatchOutput,
    GroupResult,
    PathChoice,
    PathGroup,
    PathGroupResult,
    PathJob,
    RowError,
    RowGroup,
    stack_group,
    take_job,
)
from workers.pool import (
    BatchFailedError,
    NoLiveWorkerError,
    PoolConfig,
    SamplerPool,
    WorkerInfo,
    WorkerState,
)

__all__ = [
    "BatchFailedError",
    "BatchOutput",
    "GroupResult",
    "NoLiveWorkerError",
    "PathChoice",
    "PathGroup",
    "PathGroupResult",
    "PathJob",
    "PoolConfig",
    "RowError",
    "RowGroup",
    "SamplerPool",
    "WorkerInfo",
    "WorkerState",
    "stack_group",
    "take_job",
]
