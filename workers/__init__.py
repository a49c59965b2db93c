"""Ray actors that run the sampler suite; the only package of samplerd that imports ray.

- :mod:`workers.batch`: what a batch and its answer look like on the wire;
- :mod:`workers.sampler_actor`: the sampler actor, batched sampling on one device;
- :mod:`workers.path_steps`: path-aware top-p steps (``SampleStream``) on the sampler actor;
- :mod:`workers.lm_actor`, :mod:`workers.lm_replicas`: the language-model actors of ``Generate``;
- :mod:`workers.pool`: N sampler actors, least-loaded routing, death detection, replacement;
- :mod:`workers.socket_link`: batches over a link to each actor (Unix socket and shared-memory
  arena on the front end's node, TCP to other nodes), beside Ray;
- :mod:`workers.cluster`: joining or starting Ray;
- :mod:`workers.config`: device names, batch transports and the pool's settings (no ray, no torch).
"""

import importlib
from typing import Any

# Public names and the module that defines each. They are imported on first use, so that
# ``workers.config`` (device names, PoolConfig) can be imported without loading ray or torch.
_EXPORTS = {
    "BatchOutput": "workers.batch",
    "GroupResult": "workers.batch",
    "PathChoice": "workers.batch",
    "PathGroup": "workers.batch",
    "PathGroupResult": "workers.batch",
    "PathJob": "workers.batch",
    "RowError": "workers.batch",
    "RowGroup": "workers.batch",
    "stack_group": "workers.batch",
    "take_job": "workers.batch",
    "LinkLimits": "workers.config",
    "PoolConfig": "workers.config",
    "RegionError": "workers.region",
    "RegionSlice": "workers.region",
    "BatchFailedError": "workers.pool",
    "NoLiveWorkerError": "workers.pool",
    "SamplerPool": "workers.pool",
    "WorkerInfo": "workers.pool",
    "WorkerState": "workers.pool",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
